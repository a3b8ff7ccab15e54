from pathlib import Path

import numpy as np
import pytest
import torch

from tdms.config import load_config
from tdms.flow.cache import FlowCache
from tdms.flow.warp import warp
from tdms.nets.tdms_net import TDMSNet
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.loop import differentiable, train
from tdms.training.step import Aux, NonFiniteLoss, clip_losses
from tdms.weights import read_checkpoint


class ShiftFlow:
    """Exact flow for the fixture's pans: the integer horizontal shift that best maps a onto b."""

    name = "shift"

    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        out = []
        for x, y in zip(a, b, strict=True):
            errs = {s: (warp(y[None], torch.full((1, 2, *x.shape[1:]), 0.0).index_fill_(1, torch.tensor([0]), s))
                        - x[None])[..., 4:-4].abs().mean().item() for s in range(-4, 5)}
            s = min(errs, key=errs.get)
            f = torch.zeros(2, *x.shape[1:])
            f[0] = s
            out.append(f)
        return torch.stack(out)


def config(root, tmp_path, **over):
    items = {"data.root": str(root), "data.crop": 16, "data.sample_frames": 3, "data.workers": 0,
             "data.scale_min": 0.8, "data.scale_max": 1.2, "train.batch": 2, "train.out": str(tmp_path / "run"),
             "train.log_every": 1, "train.ckpt_every": 2, "train.image_every": 2, "train.device": "cpu",
             "loss.perceptual": 0.0, "model.nf": 8}
    items.update(over)
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


@pytest.mark.parametrize("k", range(12))
def test_augmented_flow_still_aligns_the_frames(lai_root, tmp_path, k):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 24, 0.8, 1.3, True, seed=k)
    s = ds[k]
    assert s["input"].shape == (3, 3, 24, 24) and s["flow"].shape == (2, 2, 24, 24)
    assert 0 <= s["input"].min() and s["input"].max() <= 1
    i_prev, i_t, f = s["input"][:1], s["input"][1:2], s["flow"][:1]
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
    aligned = (warp(i_prev, f) - i_t)[inner].abs().mean()
    raw = (i_prev - i_t)[inner].abs().mean()
    assert aligned < 0.35 * raw, (aligned, raw)
    assert s["flow"].abs().amax() > 0.5  # the pans move 1-2 px per frame


def test_frame_gap_draws_clips_with_larger_motion_that_the_flow_still_aligns(lai_root, tmp_path):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    cache = FlowCache(tmp_path / "c", ShiftFlow())
    ds = ClipDataset(clips, cache, 3, 24, 1.0, 1.0, True, seed=0, frame_gap=2)
    assert list(ds.gaps()) == [1, 2]
    seen = set()
    for k in range(16):
        s = ds[k]
        name, first = s["name"].split("@")
        gap = int(first.split("+")[1]) if "+" in first else 1
        seen.add(gap)
        shift = 1 + int(name.endswith("v1"))  # the fixture's pans: v0 1 px, v1 2 px a frame
        assert s["flow"].abs().amax().item() == pytest.approx(shift * gap), s["name"]
        i_prev, i_t, f = s["input"][:1], s["input"][1:2], s["flow"][:1]
        inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
        assert (warp(i_prev, f) - i_t)[inner].abs().mean() < 0.35 * (i_prev - i_t)[inner].abs().mean()
    assert seen == {1, 2}
    # the default draws no gap: its samples are those of earlier versions
    plain = ClipDataset(clips, cache, 3, 24, 1.0, 1.0, True, seed=0)
    assert all("+" not in plain[k]["name"] for k in range(16))
    with pytest.raises(ValueError, match="frame_gap must be >= 1"):
        ClipDataset(clips, cache, 3, 24, frame_gap=0)


def test_flow_cache_pairs_with_a_gap(lai_root, tmp_path):
    from tdms.flow.cache import frames_to_tensor

    video = lai_root / "train" / "input" / "toy" / "v0"  # a 1 px pan; ShiftFlow finds up to 4 px
    flow = ShiftFlow()
    cache = FlowCache(tmp_path / "c", flow)
    cache.prepare(video, progress=False, gaps=(1, 3))
    assert flow.calls == 5 + 3  # pairs (t, t+1) of 6 frames and (t, t+3)
    assert all(p.is_file() for t in range(3) for p in cache.paths(video, t, 3))
    assert cache.paths(video, 0, 1)[0].name == "fw_00000.flo"  # consecutive pairs keep their names
    fw, bw, _ = cache.pair(video, 2, 3)
    src = cache.source(video)
    expected = ShiftFlow()(frames_to_tensor(src[2]), frames_to_tensor(src[5]))[0]
    assert torch.equal(fw, expected) and fw[0].abs().max() == 3 and torch.equal(bw, -fw)
    cache.prepare(video, progress=False, gaps=(1, 3))
    assert flow.calls == 8  # all there: nothing recomputed
    with pytest.raises(IndexError, match=r"no frame pair \(3, 6\)"):
        cache.pair(video, 3, 3)


def test_sample_is_a_function_of_seed_and_index(lai_root, tmp_path):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, seed=3)
    a, b, c = ds[7], ds[7], ds[8]
    assert torch.equal(a["input"], b["input"]) and a["name"] == b["name"]
    assert not torch.equal(a["input"], c["input"])


def test_missing_video_and_short_processed_are_named(lai_root):
    (lai_root / "lists" / "toy_train.txt").write_text("v0\nv9\n")
    with pytest.raises(FileNotFoundError, match="v9"):
        find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    (lai_root / "lists" / "toy_train.txt").write_text("v0\n")
    (lai_root / "train" / "processed" / "gain" / "flicker" / "toy" / "v0" / "00005.png").unlink()
    with pytest.raises(ValueError, match="5 processed frames but 6 input frames"):
        find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")


def test_two_steps_then_exact_resume(lai_root, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    straight = config(lai_root, tmp_path, **{"train.steps": 4, "train.out": str(tmp_path / "a")})
    train(straight)
    part = config(lai_root, tmp_path, **{"train.steps": 2, "train.out": str(tmp_path / "b")})
    train(part)
    assert read_checkpoint(tmp_path / "b" / "last.pth")["step"] == 2
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


def test_losses_fall_on_a_tiny_problem(lai_root, tmp_path):
    torch.manual_seed(0)
    cfg = config(lai_root, tmp_path)
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, augment=False)
    batch = {k: (torch.stack([ds[i][k] for i in range(2)]) if k != "name" else "x") for k in ds[0]}
    model = TDMSNet(nf=8)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    totals = []
    for _ in range(30):
        opt.zero_grad()
        total, terms = clip_losses(model, batch, cfg)
        opt.step()
        totals.append(total)
    assert set(terms) == {"temporal", "fidelity", "flow", "mask"}
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:5])


def test_non_finite_loss_stops(lai_root, tmp_path):
    cfg = config(lai_root, tmp_path)
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, augment=False)
    s = ds[0]
    batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}
    batch["processed"][0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss at frame 1"):
        clip_losses(TDMSNet(nf=8), batch, cfg)


# --- issue 3: long-term and flow-cycle terms, flow backends, the paper's config, GPU options -------------------
PAPER = Path(__file__).parents[2] / "configs" / "paper_tdms.yaml"


def one_batch(lai_root, tmp_path, n=2, frames=3, crop=16):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), frames, crop, augment=False)
    return {k: (torch.stack([ds[i][k] for i in range(n)]) if k != "name" else "x") for k in ds[0]}


def test_long_term_term_is_lai_et_al_s(lai_root, tmp_path):
    """L1(O_t·V, warp(P_0, F*_{t->0})·V) for t >= 2, recomputed here by a plain loop over the same model."""
    torch.manual_seed(0)
    batch = one_batch(lai_root, tmp_path, frames=4)
    cfg = config(lai_root, tmp_path, **{"loss.long_term": 100.0})
    model = TDMSNet(nf=8)
    _, terms = clip_losses(model, batch, cfg, Aux(flow=ShiftFlow()))
    i, p = batch["input"], batch["processed"]
    expect, o_prev = 0.0, p[:, 0]
    with torch.no_grad():
        for t in (1, 2, 3):
            o_t = model(i[:, t - 1], i[:, t], o_prev, p[:, t])["output"]
            if t >= 2:
                f0 = ShiftFlow()(i[:, t], i[:, 0])
                assert f0.abs().max() >= 2  # the pans move 1-2 px a frame: frame 0 is >= 2 px away
                v = torch.exp(-50.0 * (i[:, t] - warp(i[:, 0], f0)).sum(1, keepdim=True) ** 2)
                expect += (o_t * v - warp(p[:, 0], f0) * v).abs().mean().item() / 3
            o_prev = o_t
    assert terms["long_term"] == pytest.approx(expect, rel=1e-5)
    assert terms["long_term"] > 0


class ConvFlow:
    """A tiny frozen 'flow network' with the backends' contract: no autograd unless `differentiable`."""

    name = "convflow"

    def __init__(self):
        torch.manual_seed(5)
        self.net = torch.nn.Conv2d(6, 2, 3, padding=1).requires_grad_(False)
        self.differentiable = False

    def __call__(self, a, b):
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            return self.net(torch.cat((a, b), 1))


def test_flow_cycle_trains_the_model_through_the_frozen_flow_net(lai_root, tmp_path):
    torch.manual_seed(0)
    batch = one_batch(lai_root, tmp_path, frames=2)
    zero = {f"loss.{k}": 0.0 for k in ("temporal", "fidelity", "flow", "mask")}
    cfg = config(lai_root, tmp_path, **zero, **{"loss.flow_cycle": 1.0})
    model, flow = TDMSNet(nf=8), ConvFlow()
    _, terms = clip_losses(model, batch, cfg, Aux(cycle_flow=differentiable(flow)))
    assert set(terms) == {"flow_cycle"} and not flow.differentiable  # the twin shares the net, not the flag
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []  # O_t depends on all three heads
    assert flow.net.weight.grad is None
    i, p = batch["input"], batch["processed"]
    with torch.no_grad():
        o_1 = model(i[:, 0], i[:, 1], p[:, 0], p[:, 1])["output"]
        expect = (flow.net(torch.cat((i[:, 0], i[:, 1]), 1)) - flow.net(torch.cat((p[:, 0], o_1), 1))).abs().mean()
    assert terms["flow_cycle"] == pytest.approx(expect.item(), rel=1e-5)
    from tdms.training.losses import flow_cycle_loss

    o_1.requires_grad_(True)  # the original's no_grad flow: the term has no gradient at all
    assert not flow_cycle_loss(flow, i[:, 0], i[:, 1], p[:, 0], o_1).requires_grad


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
    assert read_checkpoint(train(cfg))["step"] == 3  # the end of the run still saves
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in logged] == ["3"]  # and logs once
    with pytest.raises(ValueError, match="train.ckpt_every must be >= 0"):
        train(config(lai_root, tmp_path, **{"train.ckpt_every": -1, "train.out": str(tmp_path / "neg")}))


def test_run_records_a_dirty_tree(tmp_path):
    import subprocess

    from tdms.training.loop import git_sha

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
    assert load_config(PAPER.parent / "tdms_offline.yaml").loss.flow_cycle == 0  # the shipped recipe is unchanged


def test_shipped_checkpoint_was_made_by_the_shipped_recipe():
    from tdms.config import config_from_dict

    ckpt = read_checkpoint(PAPER.parent.parent / "checkpoints" / "tdms_offline.pth")
    # through the loader: a config key added later takes its default on both sides
    assert config_from_dict(ckpt["config"]) == load_config(PAPER.parent / "tdms_offline.yaml")
    assert ckpt["step"] == ckpt["config"]["train"]["steps"]


def test_checkpoints_are_written_with_the_usual_file_mode(tmp_path):
    import os
    import stat

    from tdms.checkpoint import atomic_save

    old = os.umask(0o022)
    try:
        atomic_save({"a": 1}, tmp_path / "x.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.pth").stat().st_mode) == 0o644  # not mkstemp's 0600


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


def test_paper_config_with_a_flownet2_checkpoint(tmp_path, capsys):
    from tdms.flow.flownet2_net import FlowNet2

    torch.manual_seed(0)
    weights = tmp_path / "FlowNet2_checkpoint.pth.tar"  # NVIDIA's format, random weights
    torch.save({"epoch": 0, "state_dict": FlowNet2().state_dict(), "best_EPE": 1.0}, weights)
    root = one_video_root(tmp_path, 64, 72)
    over = {"flow.checkpoint": str(weights), "loss.perceptual": 0, "data.crop": 64, "data.sample_frames": 2,
            "train.batch": 1}
    frozen_nets_stay_out(train(paper(root, tmp_path / "run", **over)), capsys)
    assert (tmp_path / "cache" / "flownet2").is_dir()


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


def test_mask_target_own_flow_uses_the_nets_flow(lai_root, tmp_path):
    from tdms.flow.occlusion import visibility_mask
    from tdms.nets.tdms_net import TDMSNet
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_target": "own_flow"})
    torch.manual_seed(0)
    model = TDMSNet(nf=8)
    i_prev, i_t, p_t = (torch.rand(1, 3, 16, 16) for _ in range(3))
    f_star = torch.full((1, 2, 16, 16), 2.0)
    out = model(i_prev, i_t, p_t, p_t)
    frames = {"i_prev": i_prev, "i_t": i_t, "o_prev": p_t, "o_first": p_t, "p_t": p_t, "f_star": f_star,
              "vis": torch.ones(1, 1, 16, 16)}
    own = step_losses(out, frames, cfg.loss, None)["mask"]
    v = visibility_mask(i_t, warp(i_prev, out["flow"].detach()), 50.0)
    assert torch.allclose(own, (out["mask"] - v).abs().mean())
    cfg.loss.mask_target = "flow_star"
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], (out["mask"] - 1).abs().mean())
    cfg.loss.mask_target = "nope"
    batch = {"input": torch.rand(1, 3, 3, 16, 16), "processed": torch.rand(1, 3, 3, 16, 16),
             "flow": torch.zeros(1, 2, 2, 16, 16), "name": "x"}
    with pytest.raises(ValueError, match="mask_target"):
        clip_losses(model, batch, cfg)


def small_step():
    """A small TDMSNet's outputs on random frames, the step_losses frames with a random V, and a 3-frame batch."""
    torch.manual_seed(0)
    model = TDMSNet(nf=8)
    x = [torch.rand(1, 3, 16, 16) for _ in range(3)]
    out = model(x[0], x[1], x[2], x[2])
    vis = torch.rand(1, 1, 16, 16)
    frames = {"i_prev": x[0], "i_t": x[1], "o_prev": x[2], "o_first": x[2], "p_t": x[2],
              "f_star": torch.zeros(1, 2, 16, 16), "vis": vis}
    batch = {"input": torch.rand(1, 3, 3, 16, 16), "processed": torch.rand(1, 3, 3, 16, 16),
             "flow": torch.zeros(1, 2, 2, 16, 16), "name": "x"}
    return model, out, vis, frames, batch


def test_mask_scale_scales_the_target_and_is_checked(lai_root, tmp_path):
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_scale": 0.65})
    model, out, vis, frames, batch = small_step()
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], (out["mask"] - 0.65 * vis).abs().mean())
    cfg.loss.mask_norm = "l2"
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], ((out["mask"] - 0.65 * vis) ** 2).mean())
    cfg.loss.mask_scale = 1.5
    with pytest.raises(ValueError, match="mask_scale"):
        clip_losses(model, batch, cfg)
    cfg.loss.mask_scale, cfg.loss.mask_norm = 0.65, "l3"
    with pytest.raises(ValueError, match="mask_norm must be l1 or l2"):
        clip_losses(model, batch, cfg)


def test_l1_mask_loss_learns_the_median_and_l2_the_mean():
    from tdms.training.losses import mask_loss

    # one free mask value against a target that is 1 at 70 % of the pixels and 0 elsewhere
    target = (torch.arange(100.0) < 70).float().view(1, 1, 10, 10)
    for norm, expected in (("l1", 1.0), ("l2", 0.7)):
        m = torch.full((1, 1, 1, 1), 0.5, requires_grad=True)
        opt = torch.optim.SGD([m], lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            mask_loss(m.expand(1, 3, 10, 10), target, norm).backward()
            opt.step()
        assert abs(m.item() - expected) < 0.02, (norm, m.item())


def test_balanced_mask_loss_weighs_occluded_pixels_as_much_as_the_rest():
    from tdms.training.losses import mask_loss

    target = torch.ones(1, 1, 10, 10)
    target.view(-1)[:5] = 0.1  # 5 % occluded
    occluded = target < 0.5
    mask = torch.full((1, 3, 10, 10), 0.9)
    err = (mask - target).abs()
    assert mask_loss(mask, target, "l1", occluded).item() == pytest.approx(
        0.5 * err[occluded.expand_as(err)].mean().item() + 0.5 * err[~occluded.expand_as(err)].mean().item())
    # one kind only: a plain mean, not half of it
    none = torch.zeros_like(occluded)
    assert mask_loss(mask, target, "l1", none).item() == pytest.approx(mask_loss(mask, target, "l1").item())
    assert mask_loss(mask, target, "l2", ~none).item() == pytest.approx(mask_loss(mask, target, "l2").item())
    # the gradient: the 5 % occluded pixels pull as hard in total as the 95 % visible ones (plain L1: 5 to 95)
    for occ, share in ((None, 0.05), (occluded, 0.5)):
        m = mask.clone().requires_grad_()
        mask_loss(m, target, "l1", occ).backward()
        g = m.grad.abs()
        assert g[occluded.expand_as(g)].sum() / g.sum() == pytest.approx(share)


def test_mask_balance_in_training_marks_the_low_visibility_pixels(lai_root, tmp_path):
    from tdms.training.losses import mask_loss
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_balance": 0.5, "loss.mask_scale": 0.6})
    model, out, vis, frames, batch = small_step()
    got = step_losses(out, frames, cfg.loss, None)["mask"]
    assert torch.allclose(got, mask_loss(out["mask"], 0.6 * vis, "l1", vis < 0.5))
    assert not torch.allclose(got, mask_loss(out["mask"], 0.6 * vis, "l1"))
    cfg.loss.mask_balance = 1.0
    with pytest.raises(ValueError, match="mask_balance must be in"):
        clip_losses(model, batch, cfg)


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
