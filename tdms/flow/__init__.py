"""Optical flow backends behind one contract.

A backend is a callable `flow(img_a, img_b) -> (B,2,H,W)` float32 pixels from a to b, with inputs
(B,3,H,W) RGB in [0,1], returned on the inputs' device; its `.name` keys the flow cache.
Network backends (flownet2, raft, raft-small) run under no_grad unless `flow.differentiable = True`, which
lets gradients reach the images (their weights stay frozen); DIS is never differentiable.
"""

import torch

from tdms.errors import UserError

BACKENDS = ("dis", "flownet2", "raft", "raft-small")


def build_flow(backend: str = "dis", preset: str = "medium", device="cpu", checkpoint: str = ""):
    """Build a flow backend by name.

    `preset` picks the DIS preset; `device` and `checkpoint` (a weights file; empty: the default file in torch's
    hub cache) are for the network backends and ignored by DIS.
    """
    if backend == "dis":
        from tdms.flow.dis import DISFlow

        return DISFlow(preset)
    if backend == "flownet2":
        from tdms.flow.flownet2 import FlowNet2Flow

        return FlowNet2Flow(checkpoint, device)
    if backend in ("raft", "raft-small"):
        from tdms.flow.raft import RAFTFlow

        return RAFTFlow("small" if backend == "raft-small" else "large", checkpoint, device)
    raise UserError(f"unknown flow backend {backend!r}; choose from {list(BACKENDS)}")


def check_pair(img_a: torch.Tensor, img_b: torch.Tensor, min_side: int, who: str) -> None:
    """ValueError unless img_a and img_b are (B,3,H,W) of one shape with both sides >= min_side."""
    if img_a.shape != img_b.shape or img_a.dim() != 4 or img_a.shape[1] != 3:
        raise UserError(f"{who} wants two (B,3,H,W) images of one shape, got {tuple(img_a.shape)} "
                         f"and {tuple(img_b.shape)}")
    if min(img_a.shape[2:]) < min_side:
        raise UserError(f"{who} needs frames of at least {min_side}×{min_side} px, got "
                         f"{img_a.shape[3]}×{img_a.shape[2]} (W×H)")
