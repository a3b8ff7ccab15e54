"""tdms-train end to end on tiny data: an exact resume, refusals before anything is written, periodic actions, the
run record, the paper's config with each flow backend, GPU options, the flow prior, Ctrl-C."""

import math
import os
import stat
from pathlib import Path

import pytest
import torch

from tdms.config import load_config
from tdms.files import save_atomic
from tdms.nets.tdms_net import TDMSNet
from tdms.training.loop import train
from tdms.weights import read_checkpoint
from tests.training.common import config


@pytest.mark.slow  # three runs
def test_two_steps_then_exact_resume(lai_root, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    straight = config(lai_root, tmp_path, **{"train.steps": 4, "train.out": str(tmp_path / "a")})
    train(straight)
    part = config(lai_root, tmp_path, **{"train.steps": 2, "train.out": str(tmp_path / "b")})
    half = read_checkpoint(train(part))
    assert half["step"] == 2
    # earlier versions also wrote 'best' (always NaN) and 'rng' (never restored): such a file resumes the same
    old = {**half, "best": math.nan, "rng": {"torch": torch.get_rng_state(), "python": None}}
    save_atomic(old, tmp_path / "b" / "last.pth")
    with pytest.raises(FileExistsError, match="--resume"):
        train(part)
    rest = config(lai_root, tmp_path, **{"train.steps": 4, "train.out": str(tmp_path / "b")})
    train(rest, resume=True)
    torch.set_num_threads(threads)
    a, b = read_checkpoint(tmp_path / "a" / "last.pth"), read_checkpoint(tmp_path / "b" / "last.pth")
    assert b["step"] == 4 and b["config"]["train"]["steps"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    first = read_checkpoint(tmp_path / "a" / "last.pth")["model"]["conv1a.conv2d.weight"]
    assert not torch.equal(first, torch.zeros_like(first))
    assert (tmp_path / "a" / "config.yaml").is_file() and any((tmp_path / "a" / "tb").iterdir())


PAPER = Path(__file__).parents[2] / "configs" / "paper_tdms.yaml"


def test_flow_cycle_with_dis_is_refused_before_anything_is_written(lai_root, tmp_path):
    cfg = config(lai_root, tmp_path, **{"loss.flow_cycle": 1.0, "train.steps": 1})
    with pytest.raises(ValueError, match=r"the dis-medium backend is not \(OpenCV DIS[\s\S]*flow_cycle=0"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_bad_arch_and_amp(lai_root, tmp_path):
    with pytest.raises(ValueError, match="unknown model.arch 'unet'"):
        train(config(lai_root, tmp_path, **{"model.arch": "unet"}))
    with pytest.raises(ValueError, match="train.amp must be one of"):
        train(config(lai_root, tmp_path, **{"train.amp": "fp8"}))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(config(lai_root, tmp_path, **{"train.amp": "fp16"}))


def test_periodic_actions_turn_off_with_zero(lai_root, tmp_path, capsys):
    cfg = config(lai_root, tmp_path, **{"train.steps": 3, "train.log_every": 0, "train.image_every": 0,
                                        "train.ckpt_every": 0})
    ckpt = read_checkpoint(train(cfg))
    assert ckpt["step"] == 3  # the end of the run still saves
    assert "rng" not in ckpt and ckpt["best"] is None  # no field nothing reads; no validation, no best
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in logged] == ["3"]  # and logs once
    with pytest.raises(ValueError, match="train.ckpt_every must be >= 0"):
        train(config(lai_root, tmp_path, **{"train.ckpt_every": -1, "train.out": str(tmp_path / "neg")}))


def test_run_records_a_dirty_tree(tmp_path):
    import subprocess

    from tdms.training.checks import git_sha

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "a")
    head = git("rev-parse", "--short=7", "HEAD")
    assert git_sha(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == head + "-dirty"
    assert git_sha(tmp_path / "missing") == "unknown"


@pytest.fixture(scope="module")
def builder_root(tmp_path_factory):
    """The offline builder's own output (2 train videos of 4 frames, 7 operators each)."""
    from tdms.commands.build_data import main

    root = tmp_path_factory.mktemp("built") / "data"
    assert main(["--out", str(root), "--frames", "4", "--max-videos", "1", "--splits", "train"]) == 0
    return root


def paper(root, out, **over):
    items = {"data.root": str(root), "data.tasks_list": "lists/train_tasks.txt", "data.sample_frames": 3,
             "data.workers": 0, "data.flow_cache": str(out.parent / "cache"), "train.out": str(out),
             "train.steps": 1, "train.threads": 1, "train.device": "cpu", "model.nf": 8}
    items.update(over)
    return load_config(PAPER, [f"{k}={v}" for k, v in items.items()])


def test_paper_config_is_the_papers_setup():
    cfg = load_config(PAPER)
    assert (cfg.data.crop, cfg.train.batch, cfg.data.sample_frames, cfg.optim.lr, cfg.optim.lr_min) == \
        (192, 2, 11, 1e-4, 1e-5)
    assert (cfg.loss.temporal, cfg.loss.perceptual, cfg.loss.fidelity, cfg.loss.flow, cfg.loss.flow_cycle,
            cfg.loss.mask) == (100, 10, 1, 0.5, 1, 1)
    assert cfg.flow.backend == "flownet2" and cfg.data.tasks_list == "lists/train_tasks_W3_D1_C1_I1.txt"
    assert load_config(PAPER.parent / "tdms_offline.yaml").loss.flow_cycle == 0  # the shipped recipe has no cycle


def test_shipped_checkpoint_was_made_by_the_shipped_recipe():
    from tdms.config import config_from_dict, to_dict
    from tdms.training.checks import RESUMABLE, flatten

    ckpt = read_checkpoint(PAPER.parent.parent / "checkpoints" / "tdms_offline.pth")
    # through the loader: a config key added later takes its default on both sides; the keys a run may change when
    # it resumes (threads, workers, where the data lies) do not make another recipe
    made = flatten(to_dict(config_from_dict(ckpt["config"])))
    recipe = flatten(to_dict(load_config(PAPER.parent / "tdms_offline.yaml")))
    assert {k: v for k, v in made.items() if k not in RESUMABLE} == \
        {k: v for k, v in recipe.items() if k not in RESUMABLE}
    # the run's last step, or the step its validation chose (train.val_every: best.pth by the margin)
    assert ckpt["step"] == ckpt["config"]["train"]["steps"] or ckpt.get("best", {}).get("step") == ckpt["step"]


def test_checkpoints_are_written_with_the_usual_file_mode(lai_root, tmp_path):
    old = os.umask(0o022)
    try:
        last = train(config(lai_root, tmp_path, **{"train.steps": 1}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(last.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


def test_paper_config_runs_on_builder_data_with_dis(builder_root, tmp_path, capsys):
    over = {"flow.backend": "dis", "loss.perceptual": 0, "loss.flow_cycle": 0, "data.crop": 64}
    last = train(paper(builder_root, tmp_path / "run", **over))
    ckpt = read_checkpoint(last)
    assert ckpt["step"] == 1 and ckpt["config"]["flow"]["backend"] == "dis"
    assert "temporal" in capsys.readouterr().out


def one_video_root(tmp_path, h, w, n=3):
    """Lai et al.'s layout with one panning video of n frames of h×w (network backends need >= 64 or 128 px)."""
    from tests.conftest import flicker, moving_frames, write_video

    root = tmp_path / "data"
    ins = moving_frames(n=n, h=h, w=w, shift=2)
    write_video(root / "train" / "input" / "toy" / "v0", ins)
    write_video(root / "train" / "processed" / "gain" / "flicker" / "toy" / "v0", flicker(ins))
    (root / "lists").mkdir()
    (root / "lists" / "toy_train.txt").write_text("v0\n")
    (root / "lists" / "train_tasks.txt").write_text("toy gain/flicker\n")
    return root


def frozen_nets_stay_out(last, capsys):
    """The checkpoint holds TDMS-Net and its optimizer only; the flow-cycle term was trained on."""
    ckpt = read_checkpoint(last)
    model = TDMSNet(nf=8)
    assert ckpt["model"].keys() == model.state_dict().keys()
    assert len(ckpt["optimizer"]["state"]) == len(list(model.parameters()))
    logged = capsys.readouterr().out
    assert float(logged.split("flow_cycle ")[1].split()[0]) > 0, logged


@pytest.mark.slow  # FlowNet2 on CPU
def test_paper_config_with_a_flownet2_checkpoint(tmp_path, capsys):
    from tdms.flow.flownet2_net import FlowNet2

    torch.manual_seed(0)
    weights = tmp_path / "FlowNet2_checkpoint.pth.tar"  # NVIDIA's format, random weights
    torch.save({"epoch": 0, "state_dict": FlowNet2().state_dict(), "best_EPE": 1.0}, weights)
    root = one_video_root(tmp_path, 64, 72)
    over = {"flow.checkpoint": str(weights), "loss.perceptual": 0, "data.crop": 64, "data.sample_frames": 2,
            "train.batch": 1}
    frozen_nets_stay_out(train(paper(root, tmp_path / "run", **over)), capsys)
    assert (tmp_path / "cache" / "flownet2-up64").is_dir()


def test_paper_config_with_a_raft_checkpoint(tmp_path, capsys):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft_small.pth"  # torchvision's format, random weights
    torch.save(raft_small().state_dict(), weights)
    root = one_video_root(tmp_path, 128, 136)
    over = {"flow.backend": "raft-small", "flow.checkpoint": str(weights), "loss.perceptual": 0,
            "data.crop": 64, "data.sample_frames": 2, "train.batch": 1}
    with pytest.raises(ValueError, match=r"data.crop=64 is too small[\s\S]*RAFT needs frames of at least 128"):
        train(paper(root, tmp_path / "small", **over))
    tiny = one_video_root(tmp_path / "tiny", 64, 72)  # the cache, on whole frames, names the video
    with pytest.raises(ValueError, match=r"toy/v0: RAFT needs frames of at least 128×128 px, got 72×64"):
        train(paper(tiny, tmp_path / "tiny_run", **{**over, "loss.flow_cycle": 0}))
    frozen_nets_stay_out(train(paper(root, tmp_path / "run", **{**over, "data.crop": 128})), capsys)


def one_step(lai_root, tmp_path, name, **over):
    cfg = config(lai_root, tmp_path, **{"train.steps": 1, "train.threads": 1, "train.out": str(tmp_path / name),
                                        "data.flow_cache": str(tmp_path / "cache"), **over})
    return read_checkpoint(train(cfg))


@pytest.mark.slow  # four runs
def test_channels_last_bf16_and_compile_on_cpu(lai_root, tmp_path, monkeypatch):
    eager = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: eager(m, backend="eager"))  # inductor takes ~1 min here
    base = one_step(lai_root, tmp_path, "fp32")
    torch.manual_seed(0)  # train.seed: the weights before the step
    start = TDMSNet(nf=8).state_dict()
    for over in ({"train.channels_last": True}, {"train.compile": True}, {"train.amp": "bf16"}):
        got = one_step(lai_root, tmp_path, next(iter(over)), **over)
        assert got["model"].keys() == base["model"].keys()  # no "_orig_mod." from compile
        assert got["model"]["conv1a.conv2d.weight"].dtype == torch.float32
        step, ref = (torch.cat([(m[k] - start[k]).flatten() for k in start]) for m in (got["model"], base["model"]))
        if "train.amp" in over:  # bf16 gradients: Adam's first step (~ -lr·sign(g)) mostly agrees with fp32's
            assert torch.cosine_similarity(step, ref, 0) > 0.8 and not torch.equal(step, ref)
        else:  # the same arithmetic in another memory layout / traced
            assert (step - ref).abs().max() < 1e-6 and step.abs().max() > 1e-5


@pytest.mark.slow  # three runs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_scaler_is_saved_and_resumed_and_bf16_runs(lai_root, tmp_path):
    cuda = {"train.device": "cuda", "data.crop": 32}
    fp16 = one_step(lai_root, tmp_path, "fp16", **cuda, **{"train.amp": "fp16"})
    assert fp16["scaler"]["scale"] > 0 and fp16["step"] == 1
    cfg = config(lai_root, tmp_path, **cuda, **{"train.amp": "fp16", "train.steps": 2,
                                                "train.out": str(tmp_path / "fp16")})
    assert read_checkpoint(train(cfg, resume=True))["step"] == 2
    bf16 = one_step(lai_root, tmp_path, "bf16", **cuda, **{"train.amp": "bf16", "train.channels_last": True})
    assert bf16["scaler"] is None and all(torch.isfinite(v).all() for v in bf16["model"].values())


def test_flow_prior_trains_on_the_cached_flow_and_must_match_it(lai_root, tmp_path, monkeypatch):
    from tdms.nets.build import load_model
    from tdms.training import loop as train_module

    cfg = config(lai_root, tmp_path, **{"model.flow_prior": "dis-medium", "train.steps": 2})
    seen = []
    forward = TDMSNet.forward

    def spy(self, *args, prior=None):
        seen.append(prior)
        return forward(self, *args, prior=prior)

    monkeypatch.setattr(TDMSNet, "forward", spy)
    train_module.train(cfg)
    # the training forward gets F* from the cache (log_images lets the model compute its own prior)
    assert sum(p is not None for p in seen) == 2 * 2 and all(p.shape == (2, 2, 16, 16) for p in seen if p is not None)
    model = load_model(tmp_path / "run" / "last.pth")
    assert model.flow_prior and model.prior_flow.name == "dis-medium"
    bad = config(lai_root, tmp_path, **{"model.flow_prior": "dis-fast", "train.out": str(tmp_path / "b")})
    with pytest.raises(ValueError, match="flow_prior=dis-fast must be the training flow"):
        train_module.train(bad)


def test_ctrl_c_says_the_last_checkpoint_is_intact(monkeypatch, capsys, tmp_path):
    """Ctrl-C in tdms-train: one line (no traceback) pointing at the run folder, exit status 130."""
    import tdms.commands.train as cli

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert cli.main([f"train.out={tmp_path / 'run'}"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; the last checkpoint in {tmp_path / 'run'} is intact" in err and "Traceback" not in err

