"""The one pass over a video (tdms.evaluation.video): numbers by hand, and files through the flow cache against
frames in memory with flows computed on the fly."""

import numpy as np
import pytest
import torch

from tdms.commands.evaluate import flag_overrides, parser, settings
from tdms.evaluation.metrics import psnr, ssim
from tdms.evaluation.video import evaluate_clips, evaluate_video, metric_names, score_frames
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache, pair_flows
from tdms.frames.io import FrameSource
from tests.conftest import flicker, moving_frames, write_video

N = 5


def eight_bit(frames):
    """Frames of 8-bit values, which PNG files hold exactly."""
    return [np.round(f * 255).astype(np.float32) / 255 for f in frames]


class BrightnessFlow:
    """A deterministic flow of a few pixels that depends on both frames, (B,2,H,W)."""

    name = "brightness"

    def __call__(self, a, b):
        return 20 * (b - a).mean(1, keepdim=True).repeat(1, 2, 1, 1) + torch.linspace(-2, 2, a.shape[-1])


def zero_flow(a, b):
    return torch.zeros(a.shape[0], 2, *a.shape[2:])


def test_score_frames_with_zero_flow_by_hand():
    o, p = moving_frames(N), flicker(moving_frames(N))
    zero = (torch.zeros(2, *o[0].shape[:2]), torch.zeros(1, *o[0].shape[:2]))  # identity warp, nothing occluded
    steps = zip(o, p, [None] + [zero] * (N - 1), strict=True)
    per_frame, boxes, note = score_frames(steps, metric_names(True, True, None), progress=False)
    assert list(per_frame) == ["warping_error", "psnr", "ssim", "warping_error_processed"]
    assert boxes is None and note is None
    mse = lambda frames, k: np.mean((frames[k].astype(np.float64) - frames[k - 1]) ** 2)
    assert per_frame["warping_error"] == pytest.approx([mse(o, k) for k in range(1, N)], rel=1e-6)
    assert per_frame["warping_error_processed"] == pytest.approx([mse(p, k) for k in range(1, N)], rel=1e-6)
    assert per_frame["psnr"] == [psnr(o[k], p[k]) for k in range(1, N)]
    assert per_frame["ssim"] == [ssim(o[k], p[k]) for k in range(1, N)]
    row = evaluate_clips(zip(o, o, p, strict=True), zero_flow, processed=True)  # the same pass, as the API runs it
    assert row["warping_error"] == pytest.approx(np.mean(per_frame["warping_error"]), rel=1e-9)
    assert row["relative_reduction"] == pytest.approx(1 - row["warping_error"] / row["warping_error_processed"])
    assert row["composite"] is None and row["composite_note"] == "needs lpips"


def test_files_through_the_cache_score_as_frames_in_memory(tmp_path):
    """The cache stores exactly what pair_flows computes, so both ways of feeding the pass agree to rounding."""
    i = eight_bit(moving_frames(N, shift=2))
    p = eight_bit(flicker(i))
    o = eight_bit([0.5 * a + 0.5 * b for a, b in zip(i, p, strict=True)])
    folders = [write_video(tmp_path / name, frames) for name, frames in (("I", i), ("O", o), ("P", p))]
    # one DIS object each: OpenCV's DIS answers a pair a little differently after other pairs, so both compute
    # the same pairs in the same order
    files = evaluate_video(FlowCache(tmp_path / "cache", build_flow("dis")), *folders, progress=False)
    memory = evaluate_clips(zip(i, o, p, strict=True), build_flow("dis"), processed=True, n=N)
    for key in ("warping_error", "warping_error_processed", "relative_reduction", "psnr", "ssim"):
        assert memory[key] == pytest.approx(files[key], rel=1e-9), key
    src, flow = FrameSource(folders[0]), BrightnessFlow()
    computed = FlowCache(tmp_path / "cache", flow).pair(folders[0], 1)
    for got, want in zip(FlowCache(tmp_path / "cache", flow).pair(folders[0], 1),  # read back
                         pair_flows(flow, src[1], src[2]), strict=True):
        assert torch.equal(got, want)
    assert computed[2].sum() > 0  # some pixels occluded: the occlusion PNG is checked too


def test_flags_are_config_overrides_that_win_over_set():
    args = parser().parse_args(["--data-dir", "2024", "--phase", "yes", "--jobs", "3", "--no-lpips", "--resize",
                                "--results", "a=x", "y/b", "--set", "run.jobs=5", "data.phase=train"])
    assert 'data.root="2024"' in flag_overrides(args, batch=True)  # quoted: YAML would read 2024 as a number
    cfg = settings(args, batch=True)
    assert (cfg.data.root, cfg.data.phase, cfg.run.jobs) == ("2024", "yes", 3)  # strings stay strings
    assert cfg.lpips.enabled is False and cfg.run.resize is True and cfg.tracking.enabled is True
    assert cfg.methods == {"a": "x", "b": "y/b"}
    single = settings(parser().parse_args(["--input", "i", "--results", "r", "--out", "o", "--set", "run.jobs=5"]),
                      batch=False)
    assert single.run.out == "o" and single.run.jobs == 1  # one video: no --set, the flags only
