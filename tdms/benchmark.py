"""Measured speed of TDMS-Net on this machine: end-to-end (test.py's path), forward-only, FLOP counts, peak."""

import time
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from skimage import data as skdata

from tdms.infer import AMP, open_pair, pad_to, prefetch, process_video, tdms_frames
from tdms.io import write_frame
from tdms.model import TDMSNet


def conv_macs(model: nn.Module, h: int, w: int) -> int:
    """Multiply-accumulates of one forward at (h, w), counted from the conv layers' real output shapes."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.ConvTranspose2d):  # every input pixel meets every kernel tap
            total += inp[0].numel() // inp[0].shape[0] * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] \
                * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    x = torch.zeros(1, 3, h, w)
    with torch.inference_mode():
        model(x, x, x, x)
    for hd in handles:
        hd.remove()
    return total


def peak_matmul_gflops(device: torch.device, dtype=torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of a large square matmul: the machine's practical roofline for conv layers."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def make_clip(folder: Path, frames: int, h: int, w: int, seed: int = 0) -> tuple[Path, Path]:
    """A panning real photograph at (h, w) and a flickering 'processed' copy, as PNG folders."""
    rng = np.random.default_rng(seed)
    photo = cv2.resize(skdata.coffee(), (w + 4 * frames, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    for t in range(frames):
        f = photo[:, 4 * t:4 * t + w]
        write_frame(folder / "input" / f"{t:05d}.png", f)
        write_frame(folder / "processed" / f"{t:05d}.png", np.clip(f * rng.uniform(0.9, 1.1), 0, 1))
    return folder / "input", folder / "processed"


def forward_fps(model, device, h: int, w: int, frames: int, amp: str = "fp32") -> float:
    """Frames/s of the network alone on tensors already on the device (recurrence included)."""
    x = torch.rand(1, 3, h, w, device=device)
    x, _ = pad_to(x)
    ctx = torch.autocast(device.type, dtype=AMP[amp]) if AMP[amp] else nullcontext()
    with torch.inference_mode(), ctx:
        o = model(x, x, x, x)["output"]  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(frames):
            o = model(x, x, o.float(), x)["output"]
        sync(device)
    return frames / (time.perf_counter() - start)


def end_to_end_fps(model, device, folder: Path, amp: str = "fp32") -> float:
    """Frames/s of test.py's path: decode PNGs, pad, network, crop, encode PNGs (threads overlap the I/O).

    Frame 0 is a copy (O_0 = P_0), so the rate counts the N-1 frames the network produced.
    """
    src_i, src_p = open_pair(folder / "input", folder / "processed")
    n = len(src_i)
    out = folder / "out"
    start = time.perf_counter()
    process_video(tdms_frames(model, prefetch(zip(src_i, src_p, strict=True)), device, amp), out, n, 30.0, {})
    sync(device)
    return (n - 1) / (time.perf_counter() - start)


def run(h: int, w: int, frames: int, device: torch.device, workdir: Path, checkpoint: str = "") -> dict:
    from tdms.checkpoint import load_model

    model = load_model(checkpoint, device) if checkpoint else TDMSNet().to(device).eval()
    hp, wp = pad_to(torch.zeros(1, 1, h, w))[0].shape[-2:]
    macs = conv_macs(model.cpu(), hp, wp)
    model.to(device)
    make_clip(workdir, frames + 1, h, w)
    e2e = end_to_end_fps(model, device, workdir)
    fwd = forward_fps(model, device, h, w, frames)
    peak = peak_matmul_gflops(device)
    return {
        "device": device_name(device),
        "height": h, "width": w, "frames": frames, "gmac_per_frame": macs / 1e9,
        "end_to_end_fps": e2e, "forward_fps": fwd, "end_to_end_over_forward": e2e / fwd,
        "achieved_gflops": 2 * macs / 1e9 * fwd, "peak_gflops": peak,
        "fraction_of_peak": 2 * macs / 1e9 * fwd / peak, "torch": torch.__version__,
    }
