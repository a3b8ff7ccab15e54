"""What the training tests share: flow stand-ins with the backends' contract, a tiny config, one batch."""

import torch

from tdms.config import load_config
from tdms.flow.cache import FlowCache
from tdms.flow.warp import warp
from tdms.training.dataset import ClipDataset, find_clips


class ShiftFlow:
    """Exact flow for the fixture's pans: the integer horizontal shift that best maps a onto b."""

    name = "shift"

    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        out = []
        for x, y in zip(a, b, strict=True):
            errs = {s: (warp(y[None], torch.full((1, 2, *x.shape[1:]), 0.0).index_fill_(1, torch.tensor([0]), s))
                        - x[None])[..., 4:-4].abs().mean().item() for s in range(-4, 5)}
            s = min(errs, key=errs.get)
            f = torch.zeros(2, *x.shape[1:])
            f[0] = s
            out.append(f)
        return torch.stack(out)


def config(root, tmp_path, **over):
    items = {"data.root": str(root), "data.crop": 16, "data.sample_frames": 3, "data.workers": 0,
             "data.scale_min": 0.8, "data.scale_max": 1.2, "train.batch": 2, "train.out": str(tmp_path / "run"),
             "train.log_every": 1, "train.ckpt_every": 2, "train.image_every": 2, "train.device": "cpu",
             "loss.perceptual": 0.0, "model.nf": 8}
    items.update(over)
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def one_batch(lai_root, tmp_path, n=2, frames=3, crop=16):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), frames, crop, augment=False)
    return {k: (torch.stack([ds[i][k] for i in range(n)]) if k != "name" else "x") for k in ds[0]}


class ConvFlow:
    """A tiny frozen 'flow network' with the backends' contract: no autograd unless `differentiable`."""

    name = "convflow"

    def __init__(self):
        torch.manual_seed(5)
        self.net = torch.nn.Conv2d(6, 2, 3, padding=1).requires_grad_(False)
        self.differentiable = False

    def __call__(self, a, b):
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            return self.net(torch.cat((a, b), 1))

