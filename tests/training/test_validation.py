"""Validation during training: the validation split, its faults, best.pth by the margin, and exact resume."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from tdms.errors import UserError
from tdms.evaluation.tradeoff import margin
from tdms.training.loop import train
from tdms.training.validation import load_validation, validate
from tdms.weights import read_checkpoint
from tests.conftest import flicker, moving_frames, write_video
from tests.training.common import config


def add_val(root, videos=("v0", "v1")):
    """A val phase: the test phase's videos under another name, and a val tasks file."""
    shutil.copytree(root / "test", root / "val")
    (root / "lists" / "toy_val.txt").write_text("".join(f"{v}\n" for v in videos))
    (root / "lists" / "val_tasks.txt").write_text("toy gain/flicker\n")
    return root


def test_no_validation_data_is_refused_before_training(lai_root, tmp_path):
    cfg = config(lai_root, tmp_path, **{"train.steps": 2, "train.val_every": 1})
    with pytest.raises(UserError, match="val_tasks.txt"):
        train(cfg)
    assert not (tmp_path / "run" / "last.pth").exists()


def test_impossible_validation_settings_are_refused_by_key(lai_root, tmp_path):
    for key, value, said in (("train.val_dtype", "fp8", "train.val_dtype must be auto, fp32"),
                             ("train.val_frames", 1, "train.val_frames must be >= 2"),
                             ("train.val_every", -1, "train.val_every must be >= 0")):
        with pytest.raises(UserError, match=said):
            train(config(lai_root, tmp_path, **{key: value}))


def test_short_and_mismatched_videos_are_named_and_skipped(lai_root, tmp_path):
    root = add_val(lai_root, ("v0", "v1", "short", "small"))
    short = moving_frames(n=1)
    write_video(root / "val" / "input" / "toy" / "short", short)
    write_video(root / "val" / "processed" / "gain" / "flicker" / "toy" / "short", flicker(short))
    write_video(root / "val" / "input" / "toy" / "small", moving_frames())
    write_video(root / "val" / "processed" / "gain" / "flicker" / "toy" / "small", moving_frames(h=24))
    cfg = config(root, tmp_path, **{"train.val_every": 1})
    with pytest.warns(UserWarning) as caught:
        videos = load_validation(cfg, progress=False)
    said = " ".join(str(w.message) for w in caught)
    assert "gain/flicker/toy/short skipped: 1 frame" in said
    assert "gain/flicker/toy/small skipped: processed frames are 40×24 (W×H), the input's 40×32 (W×H)" in said
    assert [v.name for v in videos] == ["gain/flicker/toy/v0", "gain/flicker/toy/v1"]


class Blend(torch.nn.Module):
    """A 'network' that is the naive blend at a = 0.5 with the metric's flow: its margin must be 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, i_prev, i_t, o_prev, p_t, **_):
        from tdms.flow.dis import DISFlow
        from tdms.flow.warp import warp

        flow = DISFlow("medium")(i_t.float(), i_prev.float())
        return {"output": 0.5 * p_t + 0.5 * warp(o_prev, flow)}


def test_a_network_that_is_the_blend_has_margin_zero(lai_root, tmp_path):
    cfg = config(add_val(lai_root), tmp_path, **{"train.val_every": 1})
    videos = load_validation(cfg, progress=False)
    result = validate(Blend(), videos, "fp32")
    for v in videos:
        row = result["videos"][v.name]
        j = v.curve["alphas"].index(0.5)
        assert row["psnr"] == pytest.approx(v.curve["psnr"][j], abs=1e-9)
        assert row["relative_reduction"] == pytest.approx(v.curve["relative_reduction"][j], abs=1e-9)
        assert margin(row["relative_reduction"], row["psnr"], v.curve)[0] == pytest.approx(0.0, abs=1e-6)
    assert result["overall"]["margin"] == pytest.approx(0.0, abs=1e-6)


def test_best_is_kept_by_the_margin_and_resume_is_exact(lai_root, tmp_path):
    root = add_val(lai_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    over = {"train.val_every": 2, "train.val_frames": 4, "loss.log_fidelity": 1.0, "loss.relative_temporal": 2.0,
            "loss.mask": 0.0, "model.residual_gate": "difference", "train.val_dtype": "bf16"}
    straight = config(root, tmp_path, **over, **{"train.steps": 4, "train.out": str(tmp_path / "a")})
    train(straight)
    train(config(root, tmp_path, **over, **{"train.steps": 2, "train.out": str(tmp_path / "b")}))
    log_b = (tmp_path / "b" / "val.jsonl").read_text()
    # a validation line past the checkpoint (the run killed between the two) is measured again on resume
    (tmp_path / "b" / "val.jsonl").write_text(log_b + json.dumps({"step": 3, "overall": {}}) + "\n")
    train(config(root, tmp_path, **over, **{"train.steps": 4, "train.out": str(tmp_path / "b")}), resume=True)
    torch.set_num_threads(threads)
    a_lines = [json.loads(x) for x in (tmp_path / "a" / "val.jsonl").read_text().splitlines()]
    b_lines = [json.loads(x) for x in (tmp_path / "b" / "val.jsonl").read_text().splitlines()]
    assert [x["step"] for x in a_lines] == [2, 4] and a_lines == b_lines
    last, best = read_checkpoint(tmp_path / "a" / "last.pth"), read_checkpoint(tmp_path / "a" / "best.pth")
    margins = {x["step"]: x["overall"]["margin"] for x in a_lines}
    top = max(margins, key=lambda s: -math.inf if margins[s] is None else margins[s])
    assert last["best"]["step"] == best["step"] == top and best["best"]["margin"] == margins[top]
    assert read_checkpoint(tmp_path / "b" / "last.pth")["best"] == last["best"]
    assert (tmp_path / "a" / "val.png").stat().st_size > 1000
    for key, value in best["model"].items():
        assert torch.isfinite(value.float()).all(), key


def test_log_fidelity_is_minus_psnr_over_ten_and_relative_temporal_is_one_minus_d():
    from tdms.training import losses as L

    rng = np.random.default_rng(0)
    p = torch.as_tensor(rng.uniform(size=(2, 3, 8, 8)), dtype=torch.float32)
    o = p + 0.01
    assert L.log_fidelity_loss(o, p, 1e-12).item() == pytest.approx(math.log10(1e-4), abs=1e-4)
    warped_p = torch.as_tensor(rng.uniform(size=(2, 3, 8, 8)), dtype=torch.float32)
    vis = torch.ones(2, 1, 8, 8)
    # O halfway between P and warp(P_{t-1}) with O_{t-1} = P_{t-1}: a quarter of P's squared warping error
    o = 0.5 * p + 0.5 * warped_p
    assert L.relative_temporal_loss(o, warped_p, p, warped_p, vis, eps=0).item() == pytest.approx(0.25, rel=1e-5)


def test_each_validation_runs_the_weights_of_its_step(lai_root, tmp_path):
    """Training changes the weights in place between two validations: the second must score the new weights in
    every precision (no cached copy of the old ones), and the same weights must score the same."""
    import copy

    from tdms.nets.tdms_net import TDMSNet

    cfg = config(add_val(lai_root), tmp_path, **{"train.val_every": 1, "train.val_frames": 3})
    videos = load_validation(cfg, progress=False)
    torch.manual_seed(0)
    model = TDMSNet(8)
    for dtype in ("fp32", "bf16"):
        first = validate(model, videos, dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        second = validate(model, videos, dtype)
        again = validate(copy.deepcopy(model), videos, dtype)
        assert second["videos"] == again["videos"], dtype
        assert second["videos"] != first["videos"], dtype
