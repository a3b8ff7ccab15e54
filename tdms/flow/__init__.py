"""Optical flow backends behind one contract (STYLE §6).

A backend is a callable `flow(img_a, img_b) -> (B,2,H,W)` float32 pixels from a to b, with inputs
(B,3,H,W) RGB in [0,1], returned on the inputs' device; its `.name` keys the flow cache.
Network backends (flownet2, raft, raft-small) run under no_grad unless `flow.differentiable = True`, which
lets gradients reach the images (their weights stay frozen); DIS is never differentiable.
"""

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
    raise ValueError(f"unknown flow backend {backend!r}; choose from {list(BACKENDS)}")
