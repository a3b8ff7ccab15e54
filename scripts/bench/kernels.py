"""What one layer or one kernel costs on this machine: conv MACs of the network, the matmul and 128-channel conv
rates it is held against, the narrow output layers by both routes, and the device's clocks and memory."""

import argparse
import copy
import functools
import resource
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from skimage import data as skdata

from tdms.frames.writers import write_frame
from tdms.inference.fast import AMP
from tdms.nets.column_conv import ColumnConvLayer
from tdms.nets.layers import ConvLayer
from tdms.nets.upsampling import UpsampleConvLayer


def size(text: str) -> tuple[int, int]:
    """'854x480' (width x height) -> (480, 854): the scripts' frame-size argument."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 854x480, got {text!r}") from None
    if min(w, h) < 16:
        raise argparse.ArgumentTypeError(f"frames must be at least 16×16, got {text!r}")
    return h, w


def conv_macs(model: nn.Module, h: int, w: int) -> int:
    """Multiply-accumulates of one forward at (h, w), from the conv layers' output shapes (on the meta device)."""
    return sum(conv_macs_by_layer(model, h, w).values())


def conv_macs_by_layer(model: nn.Module, h: int, w: int) -> dict[str, int]:
    """conv_macs per top-level layer of `model` (its named children), those with convolutions."""
    macs: dict[str, int] = {}

    def hook(name, mod, inp, out):
        if isinstance(mod, UpsampleConvLayer):  # 4 phases × 2×2 taps on the input padded by 1 (its conv2d idles)
            c = mod.conv2d
            n = (inp[0].shape[2] + 1) * (inp[0].shape[3] + 1) * 4 * c.out_channels * c.in_channels * 4
        elif isinstance(mod, nn.ConvTranspose2d):  # every input pixel meets every kernel tap
            n = inp[0].numel() // inp[0].shape[0] * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            n = out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        macs[name] = macs.get(name, 0) + n

    meta = copy.deepcopy(model).to("meta")
    for name, layer in meta.named_children():
        for m in layer.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, UpsampleConvLayer)):
                m.register_forward_hook(functools.partial(hook, name))
    x = torch.zeros(1, 3, h, w, device="meta")
    # a flow prior (DIS) and the occlusion gate's second DIS call are not convolutions and cannot run on meta
    # tensors: a given zero prior and occlusion skip them
    given = {}
    if getattr(model, "flow_prior", False):
        given["prior"] = torch.zeros(1, 2, h, w, device="meta")
    if getattr(model, "occlusion_gate", "none") != "none":
        given["occlusion"] = torch.zeros(1, 1, h, w, device="meta")
    with torch.inference_mode():
        meta(x, x, x, x, **given)
    return macs


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def route_ms(fn, x: torch.Tensor, device: torch.device, amp: str, reps: int) -> tuple[torch.Tensor, float, float]:
    """fn(x)'s output, and ms forward and forward+backward (the best of `reps`, after a warm-up) under `amp`."""
    dt = AMP[amp]

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dt or torch.float32, enabled=dt is not None):
            return fn(x)

    def both():
        with torch.autocast(device.type, dt or torch.float32, enabled=dt is not None):
            y = fn(x.detach().requires_grad_())
        y.float().sum().backward()

    times = []
    for run in (forward, both):
        run()  # kernel choice
        times.append(1e3 * min(timed(run, device) for _ in range(reps)))
    return forward().float(), times[0], times[1]


def output_layer_routes(model, device: torch.device, h: int, w: int, amp: str, channels_last: bool,
                        reps: int = 3) -> dict:
    """The model's narrow k×k output layers (ColumnConvLayer) on h×w inputs, in `amp` and the memory format, by the
    plain conv and by columns: ms forward and forward+backward and the largest difference of the two outputs. It
    says whether the column route pays on the device (forward takes it on ColumnConvLayer.devices only, CPU).
    Layers are copied: the model's own parameters get no gradients."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, ColumnConvLayer):
            continue
        layer = copy.deepcopy(layer).float().to(device, memory_format=fmt)
        x = torch.rand(1, layer.conv2d.in_channels, h, w, device=device).contiguous(memory_format=fmt)
        x = x.to(AMP[amp]) if AMP[amp] else x
        plain, *plain_ms = route_ms(lambda x, layer=layer: ConvLayer.forward(layer, x), x, device, amp, reps)
        cols, *cols_ms = route_ms(layer.by_columns, x, device, amp, reps)
        out[name] = {"plain_forward_ms": plain_ms[0], "plain_forward_backward_ms": plain_ms[1],
                     "columns_forward_ms": cols_ms[0], "columns_forward_backward_ms": cols_ms[1],
                     "max_abs_diff": (plain - cols).abs().max().item()}
    return out


def reference_conv(device: torch.device, h: int, w: int, dtype: str, channels_last: bool):
    """One 128-channel 3×3 conv at the residual blocks' size (1×128×h/4×w/4) in `dtype` (torch's own conv, the
    rate the network's bulk could reach, to hold its whole forward against): (run, FLOPs of one run)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dt = AMP[dtype] or torch.float32
    conv = nn.Conv2d(128, 128, 3, padding=1).to(device, dt, memory_format=fmt).eval()
    x = torch.rand(1, 128, h // 4, w // 4, device=device).to(dt).contiguous(memory_format=fmt)
    return (lambda: conv(x)), 2 * 128 * 128 * 9 * (h // 4) * (w // 4)


def rate_for(run, flops: float, device: torch.device, seconds: float) -> float:
    """GFLOP/s of `run` (doing `flops`) repeated for about `seconds` (at least once)."""
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        run()
        count += 1
    sync(device)
    return flops * count / (time.perf_counter() - start) / 1e9


def reference_matmul(device: torch.device, dtype: str, n: int = 2048):
    """A square n×n matmul in `dtype` (the machine's practical roofline for conv layers): (run, FLOPs of one run)."""
    dt = AMP[dtype] or torch.float32
    a, b = (torch.randn(n, n, device=device).to(dt) for _ in range(2))
    return (lambda: a @ b), 2 * n**3


def paired_ratio(forward, forward_flops: float, reference, device: torch.device, rounds: int = 7) -> dict:
    """The forward's GFLOP/s against a reference kernel's (reference = (run, FLOPs of one run): reference_conv,
    reference_matmul), measured in turns: each round times one `forward()` and then the reference for as long, and
    the ratio is the median of the rounds' ratios. This machine's speed moves by 2-3× within seconds (other
    tenants), so rates taken minutes apart would compare two different machines. Returns reference_gflops and
    forward_gflops (medians of the rounds) and ratio."""
    run, flops = reference
    ref, fwd, ratios = [], [], []
    with torch.inference_mode():
        for _ in range(3):
            run()
        forward()
        for _ in range(rounds):
            start = time.perf_counter()
            forward()
            sync(device)
            took = time.perf_counter() - start
            fwd.append(forward_flops / took / 1e9)
            ref.append(rate_for(run, flops, device, took))
            ratios.append(fwd[-1] / ref[-1])
    return {"reference_gflops": statistics.median(ref), "forward_gflops": statistics.median(fwd),
            "ratio": statistics.median(ratios)}


def make_clip(input_dir: Path, processed_dir: Path, frames: int, h: int, w: int, seed: int = 0):
    """A real photograph panning 4 px a frame at (h, w), and a flickering 'processed' copy: JPEG frames (as in
    Lai et al.'s data)."""
    rng = np.random.default_rng(seed)
    photo = cv2.resize(skdata.coffee(), (w + 4 * frames, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    for t in range(frames):
        f = photo[:, 4 * t:4 * t + w]
        write_frame(input_dir / f"{t:05d}.jpg", f, quality=95)
        write_frame(processed_dir / f"{t:05d}.jpg", np.clip(f * rng.uniform(0.9, 1.1), 0, 1), quality=95)
