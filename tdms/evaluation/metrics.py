"""Evaluation metrics: small pure functions on numpy frames (H,W,3) float RGB in [0,1]."""

import math
import warnings

import cv2
import numpy as np
import torch

from tdms.flow.warp import warp

SSIM_WIN = 7  # skimage's default uniform window


def as_image_tensor(img) -> torch.Tensor:
    """numpy (H,W,3) -> torch (1,3,H,W) float32."""
    return torch.as_tensor(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def warping_error_pair(o_t, o_prev, fw_prev, occ_prev) -> float:
    """Lai et al.'s warping error of one pair: sum(noc * (warp(O_t, fw_{t-1}) - O_{t-1})^2) / sum(noc).

    o_t, o_prev: (H,W,3); fw_prev = flow(t-1 -> t) (2,H,W) pixels; occ_prev (1,H,W) or (H,W), 1 = occluded.
    Both sums run over pixels and RGB channels (Lai's code broadcasts noc to 3 channels), so this is
    the mean squared difference over visible pixels and channels; with no visible pixel the
    denominator is the element count H*W*3.
    """
    warped = warp(as_image_tensor(o_t), torch.as_tensor(fw_prev, dtype=torch.float32)[None])[0]
    diff = warped.permute(1, 2, 0).double().numpy() - np.asarray(o_prev, dtype=np.float64)  # (H,W,3)
    noc = 1.0 - np.asarray(occ_prev, dtype=np.float64).reshape(diff.shape[:2])[..., None]  # (H,W,1)
    count = noc.sum() * diff.shape[2]
    if count == 0:
        count = diff.size
    return float((noc * diff**2).sum() / count)


def relative_reduction(e_method: float, e_processed: float) -> float:
    """D = max(0, 1 - E(method) / E(processed)) (TDMS Table 1); NaN with a warning when E(processed) is 0."""
    if e_processed == 0:
        warnings.warn(
            "relative reduction is undefined: the processed video has zero warping error", stacklevel=2
        )
        return math.nan
    return max(0.0, 1.0 - e_method / e_processed)


def psnr(a, b) -> float:
    """PSNR in dB of two images in [0,1] (data range 1); inf when they are equal."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a, b) -> float:
    """SSIM of two (H,W,3) images in [0,1]: skimage's structural_similarity (7x7 uniform window, sample
    covariance, K1 0.01, K2 0.03, data range 1, mean over the interior and the channels) computed with
    OpenCV box filters in float32: ~1e-6 from skimage's float64 at a tenth of its cost per frame."""
    x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)

    def mean(img):  # the window mean; border values differ from scipy's but are cropped below
        return cv2.boxFilter(img, -1, (SSIM_WIN, SSIM_WIN), borderType=cv2.BORDER_REFLECT)

    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx, vy = cov_norm * (mean(x * x) - ux * ux), cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))  # (H,W,3)
    pad = (SSIM_WIN - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


def composite(lpips, d_t, iou=None, use_iou: bool = True) -> float | None:
    """TDMS Table 3 score: 0.25(1 - LPIPS) + 0.25 IoU + 0.5 D_t with tracking, 0.5(1 - LPIPS) + 0.5 D_t
    without. None when a part it needs is None or NaN."""
    parts = (lpips, d_t, iou) if use_iou else (lpips, d_t)
    if any(v is None or not math.isfinite(v) for v in parts):
        return None
    if use_iou:
        return 0.25 * (1.0 - lpips) + 0.25 * iou + 0.5 * d_t
    return 0.5 * (1.0 - lpips) + 0.5 * d_t
