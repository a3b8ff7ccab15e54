"""RAFT flow backend: torchvision's raft_large / raft_small with weights from torchvision's cache or a file.

    flow = RAFTFlow("small", device="cuda")        # $TORCH_HOME/hub/checkpoints/raft_small_C_T_V2-01064c6d.pth
    f = flow(img_a, img_b)                         # (B,2,H,W) pixels a -> b, no autograd
    flow.differentiable = True                     # gradients flow to img_a/img_b (weights stay frozen)

Never downloads: put the file in torchvision's cache (e.g. run `raft_small(weights="DEFAULT")` once on a machine
with internet) or pass its path.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from tdms.errors import UserError
from tdms.flow import check_pair
from tdms.weights import differences, load_strict, read_weights

# size -> (builder, torchvision's default weights: large C_T_SKHT_V2, small C_T_V2)
MODELS = {"large": (raft_large, Raft_Large_Weights.DEFAULT), "small": (raft_small, Raft_Small_Weights.DEFAULT)}
MIN_SIDE = 128  # torchvision: features at 1/8, pooled 3 times by the correlation pyramid, need >= 16 px


def default_checkpoint(size: str) -> Path:
    """The file torchvision's weights enum downloads to: $TORCH_HOME/hub/checkpoints/<last part of its URL>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / MODELS[size][1].url.rsplit("/", 1)[-1]


def load_raft(size: str, path: Path) -> torch.nn.Module:
    """torchvision RAFT of `size` with the file's weights, loaded strictly, on CPU."""
    what = f"torchvision raft_{size} weights ({MODELS[size][1]})"
    default = default_checkpoint(size)
    hint = (f"tdms never downloads: put {default.name} in {default.parent} (torchvision's cache; "
            f"torchvision.models.optical_flow.raft_{size}(weights='DEFAULT') fetches it where there is internet), "
            f"or give its path (flow.checkpoint).")
    state = read_weights(path, what, hint)
    other = "small" if size == "large" else "large"
    if isinstance(state, dict) and differences(state, model := MODELS[size][0]()) \
            and not differences(state, MODELS[other][0]()):
        raise UserError(f"{path} holds torchvision raft_{other} weights, not raft_{size}: use flow backend "
                         f"'{'raft' if other == 'large' else 'raft-small'}' for it.")
    load_strict(model, state, path, what)
    return model


def pad8(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad (B,C,H,W) evenly on both sides to multiples of 8; returns the (top, left) offsets."""
    h, w = x.shape[2:]
    ph, pw = -h % 8, -w % 8
    top, left = ph // 2, pw // 2
    return F.pad(x, (left, pw - left, top, ph - top), mode="replicate"), (top, left)


class RAFTFlow:
    """flow(img_a, img_b) -> (B,2,H,W) float32 pixels a -> b; inputs (B,3,H,W) RGB [0,1], sides >= 128.

    Input scaled to [-1,1] and padded to multiples of 8; the last of `num_flow_updates` estimates, cropped back.
    `differentiable=True` keeps autograd on (for a loss through the flow); otherwise it runs under no_grad.
    """

    def __init__(self, size: str = "large", checkpoint="", device="cpu", num_flow_updates: int = 12,
                 differentiable: bool = False, model: torch.nn.Module | None = None):
        """`model`: a ready network to use instead of loading `checkpoint` (benchmarks with random weights, tests)."""
        if size not in MODELS:
            raise UserError(f"unknown RAFT size {size!r}; choose from {sorted(MODELS)}")
        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(size)
        self.device = torch.device(device)
        model = load_raft(size, self.checkpoint) if model is None else model
        self.model = model.to(self.device).eval().requires_grad_(False)  # frozen: gradients only reach the images
        self.num_flow_updates = num_flow_updates
        self.differentiable = differentiable
        # The cache key: flows from another update count are other numbers.
        self.name = f"raft-{size}" + ("" if num_flow_updates == 12 else f"-{num_flow_updates}it")

    def __call__(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        check_pair(img_a, img_b, MIN_SIDE, "RAFT")
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            return self.forward(img_a, img_b)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        h, w = img_a.shape[2:]
        (a, (top, left)), (b, _) = (pad8(2 * x.to(self.device, torch.float32) - 1) for x in (img_a, img_b))
        flow = self.model(a, b, num_flow_updates=self.num_flow_updates)[-1].float()
        return flow[:, :, top:top + h, left:left + w].to(img_a.device)
