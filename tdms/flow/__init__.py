"""Optical flow backends behind one contract (STYLE §6).

A backend is a callable `flow(img_a, img_b) -> (B,2,H,W)` float32 pixels from a to b, with inputs
(B,3,H,W) RGB in [0,1], returned on the inputs' device; its `.name` keys the flow cache.
"""

BACKENDS = ("dis",)


def build_flow(backend: str = "dis", preset: str = "medium", device="cpu"):
    """Build a flow backend by name; `preset` picks the DIS preset, `device` is for network backends."""
    if backend == "dis":
        from tdms.flow.dis import DISFlow

        return DISFlow(preset)
    raise ValueError(f"unknown flow backend {backend!r}; choose from {list(BACKENDS)}")
