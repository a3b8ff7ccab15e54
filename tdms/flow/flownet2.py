"""FlowNet2 flow backend: NVIDIA's `FlowNet2_checkpoint.pth.tar` run by the pure-PyTorch port.

    flow = FlowNet2Flow("FlowNet2_checkpoint.pth.tar", device="cuda")
    f = flow(img_a, img_b)                 # (B,2,H,W) pixels a -> b, no autograd
    flow.differentiable = True             # gradients flow to img_a/img_b (weights stay frozen)

fp16/bf16 on CUDA: call it under torch.autocast; correlation, resampling and norms run in float32 as in the
original. One 854×480 pair on CPU (run at 896×512) peaks at ~2.3 GB for the whole process: 1.44 GB once built
(Python, torch, OpenCV and 0.65 GB of weights), ~0.8 GB of activations; with autograd on, ~4.7 GB (measured with
`python scripts/bench/benchmark_flow.py --backends flownet2 --pairs 1 --grad`).
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tdms.flow import check_pair
from tdms.flow.flownet2_net import FlowNet2
from tdms.weights import load_strict, read_weights

FILE_NAME = "FlowNet2_checkpoint.pth.tar"
WHAT = "NVIDIA FlowNet2 (flownet2-pytorch's FlowNet2_checkpoint.pth.tar)"
MIN_SIDE = 64


def default_checkpoint() -> Path:
    """Where the weights are looked for when no path is given: torch's hub cache, like torchvision's files."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def load_flownet2(path: Path) -> FlowNet2:
    """A FlowNet2 with the file's weights, loaded strictly, on CPU."""
    hint = (f"Download {FILE_NAME} (linked from NVIDIA's flownet2-pytorch README) and put it at "
            f"{default_checkpoint()}, or give its path (flow.checkpoint / --flow-checkpoint).")
    obj = read_weights(path, WHAT, hint)
    # NVIDIA's file is torch.save({'epoch', 'state_dict', 'best_EPE'}); a bare state dict is accepted as well.
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    net = FlowNet2()
    load_strict(net, state, path, WHAT)
    return net


def size64(n: int) -> int:
    """The network's input side for a frame side n: n rounded UP to a multiple of 64, as Lai et al.'s
    compute_flow_occlusion.py does (math.ceil; DAVIS's 854×480 runs at 896×512)."""
    return max(MIN_SIDE, math.ceil(n / 64) * 64)


def normalise_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract each channel's mean over both frames. The original does (x - mean) / rgb_max with rgb_max = 255
    on 0..255 input, which on our [0,1] input is x - mean."""
    mean = 0.5 * (a.mean((2, 3), keepdim=True) + b.mean((2, 3), keepdim=True))  # (B,3,1,1); frames of one size
    return a - mean, b - mean


def resize_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (B,2,h,w) pixel flow to (height, width), each axis scaled by its own ratio."""
    h, w = flow.shape[2:]
    if (h, w) == (height, width):
        return flow
    out = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    scale = torch.tensor([width / w, height / h], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * scale


class FlowNet2Flow:
    """flow(img_a, img_b) -> (B,2,H,W) float32 pixels a -> b; inputs (B,3,H,W) RGB [0,1], H and W >= 64.

    Frames are resized up to multiples of 64 (size64), the flow resized back and rescaled per axis.
    `differentiable=True` keeps autograd on (for a loss through the flow); otherwise it runs under no_grad.
    """

    # keys the flow cache: flows of the earlier rounding to the nearest multiple of 64 were cached as "flownet2"
    name = "flownet2-up64"

    def __init__(self, checkpoint="", device="cpu", differentiable: bool = False, net: torch.nn.Module | None = None):
        """`net`: a ready network to use instead of loading `checkpoint` (benchmarks with random weights, tests)."""
        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        self.device = torch.device(device)
        net = load_flownet2(self.checkpoint) if net is None else net
        self.net = net.to(self.device).eval().requires_grad_(False)  # frozen: gradients only reach the images
        self.differentiable = differentiable

    def __call__(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        check_pair(img_a, img_b, MIN_SIDE, "FlowNet2")
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            return self.forward(img_a, img_b)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        h, w = img_a.shape[2:]
        size = (size64(h), size64(w))
        pair = [x.to(self.device, torch.float32) for x in (img_a, img_b)]
        if size != (h, w):
            pair = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in pair]
        flow = self.net(*normalise_pair(*pair)).float()
        return resize_flow(flow, h, w).to(img_a.device)
