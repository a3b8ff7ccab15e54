"""Metrics against independently computed numbers on synthetic motion with exact flow."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from tdms.evaluation.metrics import composite, psnr, relative_reduction, ssim, warping_error_pair

H, W = 40, 56
DX, DY = 3, 2  # integer global motion from frame t-1 to frame t


def frame(offset_x: int, offset_y: int) -> np.ndarray:
    """A crop of a real photo; frame(k*DX, k*DY) moves with the scene so that O_t(p + d) = O_{t-1}(p)."""
    img = data.coffee().astype(np.float32) / 255.0
    y, x = 150 - offset_y, 250 - offset_x
    return img[y : y + H, x : x + W].copy()


def exact_flow_and_occlusion():
    """fw = d everywhere; occluded where p + d leaves the frame (warp would clamp there)."""
    fw = torch.zeros(2, H, W)
    fw[0], fw[1] = DX, DY
    occ = np.zeros((1, H, W), np.float32)
    occ[:, H - DY :, :] = 1.0
    occ[:, :, W - DX :] = 1.0
    return fw, occ


def test_shifted_frame_has_zero_error():
    prev, cur = frame(0, 0), frame(DX, DY)
    assert np.array_equal(cur[DY:, DX:], prev[:-DY, :-DX])  # the fixture really moves by d
    fw, occ = exact_flow_and_occlusion()
    assert warping_error_pair(cur, prev, fw, occ) < 1e-10
    # without the occlusion mask the clamped border pixels count
    assert warping_error_pair(cur, prev, fw, np.zeros((H, W))) > 1e-4


def test_flicker_gives_c_squared():
    prev, cur = frame(0, 0), frame(DX, DY)
    fw, occ = exact_flow_and_occlusion()
    assert warping_error_pair(cur + 0.05, prev, fw, occ) == pytest.approx(0.05**2, rel=1e-4)
    # flicker on one channel of three: the mean runs over channels too, so c^2 / 3
    red = cur.copy()
    red[..., 0] += 0.06
    assert warping_error_pair(red, prev, fw, occ) == pytest.approx(0.06**2 / 3, rel=1e-4)


def test_occluded_pixels_are_excluded():
    prev, cur = frame(0, 0), frame(DX, DY)
    fw, occ = exact_flow_and_occlusion()
    cur = cur + 0.05
    cur[10:20, 10:30] = 0.0  # garbage in frame t, seen from (10 - DY.., 10 - DX..) of frame t-1
    occ_more = occ.copy()
    occ_more[:, 10 - DY : 20 - DY, 10 - DX : 30 - DX] = 1.0
    assert warping_error_pair(cur, prev, fw, occ_more) == pytest.approx(0.05**2, rel=1e-4)
    # by hand: visible pixels of the garbage block contribute prev^2, the rest 0.05^2
    visible = occ[0] == 0
    diff = np.full((H, W, 3), 0.05**2)
    diff[10 - DY : 20 - DY, 10 - DX : 30 - DX] = prev[10 - DY : 20 - DY, 10 - DX : 30 - DX] ** 2
    expected = diff[visible].mean()
    assert warping_error_pair(cur, prev, fw, occ) == pytest.approx(expected, rel=1e-4)


def test_all_occluded_is_zero_not_nan():
    prev, cur = frame(0, 0), frame(DX, DY)
    fw, _ = exact_flow_and_occlusion()
    assert warping_error_pair(cur + 0.3, prev, fw, np.ones((1, H, W))) == 0.0


def test_warping_error_per_pair_sees_flicker_only_where_it_is():
    frames = [frame(k * DX, k * DY) for k in range(3)]
    frames[2] = frames[2] + 0.1  # flicker only at frame 2
    fw, occ = exact_flow_and_occlusion()
    errors = [warping_error_pair(frames[t], frames[t - 1], fw, occ) for t in (1, 2)]
    assert errors[0] < 1e-10 and errors[1] == pytest.approx(0.01, rel=1e-4)


def test_relative_reduction():
    assert relative_reduction(0.25, 1.0) == 0.75
    assert relative_reduction(0.0, 0.5) == 1.0
    assert relative_reduction(2.0, 1.0) == 0.0  # worse than processed: floored at 0
    with pytest.warns(UserWarning, match="zero warping error"):
        assert math.isnan(relative_reduction(0.0, 0.0))


def test_psnr_and_ssim():
    a = np.zeros((8, 8, 3), np.float32)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # mse 0.01 -> 10 log10(1 / 0.01)
    assert psnr(a, a) == math.inf
    img = frame(0, 0)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.05, img.shape), 0, 1).astype(np.float32)
    assert ssim(img, img) == pytest.approx(1.0)
    per_channel = [structural_similarity(img[..., c], noisy[..., c], data_range=1.0) for c in range(3)]
    assert ssim(img, noisy) == pytest.approx(np.mean(per_channel), rel=1e-5)
    assert ssim(img, noisy) < 0.9


def test_ssim_equals_skimage_on_random_sizes():
    rng = np.random.default_rng(1)
    for h, w in ((7, 7), (13, 30), (64, 48)):
        a = rng.random((h, w, 3))
        b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
        want = structural_similarity(a, b, channel_axis=-1, data_range=1.0)
        assert ssim(a, b) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    "lpips_, iou, d_t, published",
    [(0.0582, 0.4434, 0.5396, 0.6161), (0.0251, 0.4250, 0.3911, 0.5455)],  # CycleGAN/photo2ukiyoe, DAVIS video 1
)
def test_composite_reproduces_published_values(lpips_, iou, d_t, published):
    # TDMS-Net (first row) and Lai et al. (second) as the authors' per-video results list them
    assert round(composite(lpips_, d_t, iou), 4) == published


def test_composite_forms_and_missing_parts():
    assert composite(0.2, 0.6, use_iou=False) == pytest.approx(0.5 * 0.8 + 0.5 * 0.6)
    assert composite(0.2, 0.6, 0.9, use_iou=False) == pytest.approx(0.7)  # IoU ignored without tracking
    assert composite(None, 0.6, 0.5) is None
    assert composite(0.1, math.nan, 0.5) is None
    assert composite(0.1, 0.6, None) is None
    assert composite(0.1, 0.6, None, use_iou=False) == pytest.approx(0.75)
