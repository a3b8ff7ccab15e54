"""Occlusion (Ruder et al. 2016, as Lai et al. 2018 compute it) and visibility masks (TDMS-Net's training losses):
the one place for this logic."""

import torch

from tdms.flow.warp import warp


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,1,H,W) squared L2 norm over channels."""
    return x.pow(2).sum(dim=1, keepdim=True)


def flow_gradient_sq(flow: torch.Tensor) -> torch.Tensor:
    """|grad u|^2 + |grad v|^2 (B,1,H,W) with forward differences; the last row/column difference is 0."""
    dx = torch.zeros_like(flow)
    dy = torch.zeros_like(flow)
    dx[..., :, :-1] = flow[..., :, 1:] - flow[..., :, :-1]
    dy[..., :-1, :] = flow[..., 1:, :] - flow[..., :-1, :]
    return sq_norm(dx) + sq_norm(dy)


def occlusion_mask(fw: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) float {0,1}, 1 = occluded in frame t, from fw = flow(t->t+1) and bw = flow(t+1->t).

    Ruder et al. as Lai et al. compute it: a pixel is occluded where the backward flow at its match
    does not undo the forward flow, or where it sits on a motion boundary.
    """
    bw_at_match = warp(bw, fw)  # b~(x) = bw(x + fw(x)), in frame t's coordinates
    fw_mag = sq_norm(fw)
    inconsistent = sq_norm(bw_at_match + fw) > 0.01 * (sq_norm(bw_at_match) + fw_mag) + 0.5
    boundary = flow_gradient_sq(fw) > 0.01 * fw_mag + 0.002
    return (inconsistent | boundary).float()


def leaves_frame(flow: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) float {0,1}: 1 where p + flow(p) falls outside the frame [0, W-1] × [0, H-1], so a warp along
    `flow` has nothing there but the clamped border (content that enters the view). The forward-backward test
    does not see it: under a pan the clamped backward flow still undoes the forward one."""
    _, _, h, w = flow.shape
    x = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, 1, w) + flow[:, :1]
    y = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, 1, h, 1) + flow[:, 1:]
    return ((x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)).float()


def visibility_mask(
    img_t: torch.Tensor, img_prev_warped: torch.Tensor, alpha: float = 50.0, squared_norm: bool = False
) -> torch.Tensor:
    """V (B,1,H,W) in (0,1] from I_t and warp(I_{t-1}, F*), both (B,3,H,W).

    Default: exp(-alpha * (sum_c diff)^2), the original code (channels summed, then squared);
    squared_norm=True: exp(-alpha * sum_c diff^2), the paper's formula.
    """
    diff = img_t - img_prev_warped
    if squared_norm:
        err = sq_norm(diff)
    else:
        err = diff.sum(dim=1, keepdim=True).pow(2)
    return torch.exp(-alpha * err)
