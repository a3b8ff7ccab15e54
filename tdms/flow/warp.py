"""Backward warping with a pixel flow field: warp(x, f) samples x at p + f(p), bilinear, border clamp.

This is the `Resample2d` op of the original FlowNet2/TDMS-Net code, which equals
`grid_sample(mode="bilinear", padding_mode="border", align_corners=True)` with the grid normalised by W-1 and H-1.
"""

import torch
import torch.nn.functional as F


def base_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates (1, 2, H, W), channel 0 = x."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy)).unsqueeze(0)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample x (B,C,H,W) at p + flow(p): bilinear, border clamp.

    flow is (B,2,H,W) in pixels, x first. Equal to the original code's Resample2d op.
    """
    b, _, h, w = x.shape
    if flow.shape[0] != b or flow.shape[1] != 2 or flow.shape[2:] != x.shape[2:]:
        raise ValueError(f"warp: flow {tuple(flow.shape)} does not match image {tuple(x.shape)}")
    pos = base_grid(h, w, flow.device, flow.dtype) + flow
    # grid_sample wants (B,H,W,2) in [-1, 1] with align_corners=True: -1 is pixel 0, 1 is pixel W-1.
    gx = 2.0 * pos[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * pos[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
