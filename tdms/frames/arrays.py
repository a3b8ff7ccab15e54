"""Clips held in memory, as the Python API takes them: numpy (T,H,W,3) uint8 or float in [0,1], torch (T,3,H,W),
frame folders or video files, or any iterable of frames ((H,W,3) arrays or (3,H,W) tensors).

Frames are checked and turned into float32 (H,W,3) in [0,1] one at a time, so a long clip never has to sit in
memory; a result frame is turned back into the processed clip's kind (dtype, layout, device).
"""

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, count, islice
from pathlib import Path

import numpy as np
import torch

from tdms.errors import UserError
from tdms.frames.io import FrameSource, check_paired, size_text

NEED_TWO = "temporal consistency needs T >= 2 frames (frame 0 comes back as it is: O_0 = P_0)"


END = object()  # an exhausted iterator's marker


@dataclass
class Clip:
    """One input clip: its raw frames, and what a result frame is converted to so it looks like them."""

    name: str  # "processed", or "processed <path>" for files
    frames: Iterable  # raw frames: numpy (H,W,3), torch (3,H,W), or float32 numpy read from a file
    scale: str  # "uint8" (values 0-255) or "float" (values in [0,1])
    dtype: object  # numpy or torch dtype of the raw frames
    device: torch.device | None = None  # torch frames: their device; None for numpy
    n: int | None = None  # frame count, when known before reading
    path: Path | None = None
    fps: float = 30.0
    stack: object = list  # list of result frames -> what stabilize returns


def check_layout(x, where: str, clip: bool) -> None:
    """ValueError unless x is a clip (T,H,W,3) (tensor: (T,3,H,W)) or one such frame; names x's apparent layout."""
    tensor = torch.is_tensor(x)
    if not tensor and not isinstance(x, np.ndarray):
        raise UserError(f"{where}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    t = "T," if clip else ""
    last, first = f"({t}H,W,3)", f"({t}3,H,W)"
    want, other, kind, fix = (first, last, "channel-last", "x.movedim(-1, -3)") if tensor else (
        last, first, "channel-first", "np.moveaxis(x, -3, -1)")
    shape = tuple(x.shape)
    if len(shape) != (4 if clip else 3):
        hint = ""
        if clip and len(shape) == 3:
            one_frame = (shape[0] if tensor else shape[-1]) == 3
            hint = ("; one frame? a clip needs T >= 2 frames" if one_frame else
                    "; a grayscale clip (T,H,W)? make its frames RGB first, e.g. "
                    + ("x[:, None].expand(-1, 3, -1, -1)" if tensor else "np.repeat(x[..., None], 3, axis=-1)"))
        raise UserError(f"{where}: expected {want}, got shape {shape}{hint}")
    channels, across = (shape[-3], shape[-1]) if tensor else (shape[-1], shape[-3])
    if channels != 3:
        if across == 3:
            raise UserError(f"{where}: shape {shape} looks {kind} {other}; pass {want} ({fix})")
        raise UserError(f"{where}: expected {want} RGB, got shape {shape} (make grayscale or RGBA frames RGB first)")


def scale_of(x, where: str) -> str:
    """'uint8' or 'float' from an array's or tensor's dtype; ValueError for any other dtype."""
    if torch.is_tensor(x):
        uint8, floating = x.dtype == torch.uint8, x.is_floating_point()
    else:
        uint8, floating = x.dtype == np.uint8, np.issubdtype(x.dtype, np.floating)
    if not (uint8 or floating):
        raise UserError(f"{where}: dtype {x.dtype} is not taken; pass uint8 (0-255) or float in [0, 1]")
    return "uint8" if uint8 else "float"


def check_values(x, where: str, scale: str) -> None:
    """Float frames must lie in [0, 1] (a float clip of 0-255 values is the usual mistake)."""
    if scale != "float":
        return
    lo, hi = float(x.min()), float(x.max())
    if not 0.0 <= lo <= hi <= 1.0:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            hint = "it holds NaN or inf"
        else:
            hint = "0-255 values? divide by 255" if hi > 2 else "clip it to [0, 1]"
        raise UserError(f"{where}: float values must lie in [0, 1], found min {lo:.4g}, max {hi:.4g} ({hint})")


def clip_of(x, role: str) -> Clip:
    """A Clip of x, checked as far as it can be without reading frames beyond the first."""
    if isinstance(x, (str, os.PathLike)):
        src = FrameSource(x)
        return Clip(f"{role} {src.path}", src, "float", np.float32, n=len(src), path=src.path, fps=src.fps,
                    stack=np.stack)
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        check_layout(x, role, clip=True)
        if len(x) < 2:
            raise UserError(f"{role}: T = {len(x)}; {NEED_TWO}")
        scale = scale_of(x, role)
        check_values(x, role, scale)
        tensor = torch.is_tensor(x)
        return Clip(role, x, scale, x.dtype, x.device if tensor else None, n=len(x),
                    stack=torch.stack if tensor else np.stack)
    if not isinstance(x, Iterable):
        raise UserError(f"{role}: expected an array, tensor, path or iterable of frames, got {type(x).__name__}")
    frames = iter(x)
    first = next(frames, END)
    if first is END:
        raise UserError(f"{role}: no frames; {NEED_TWO}")
    check_layout(first, f"{role} frame 0", clip=False)
    return Clip(role, chain([first], frames), scale_of(first, f"{role} frame 0"), first.dtype,
                first.device if torch.is_tensor(first) else None, n=len(x) if hasattr(x, "__len__") else None)


def as_float(frame, clip: Clip, t: int) -> np.ndarray:
    """Raw frame t of clip -> float32 (H,W,3) in [0,1], checked."""
    where = f"{clip.name} frame {t}"
    check_layout(frame, where, clip=False)
    scale = scale_of(frame, where)
    if scale != clip.scale:
        raise UserError(f"{where}: {scale} but frame 0 is {clip.scale}")
    check_values(frame, where, scale)
    if torch.is_tensor(frame):
        frame = frame.detach().to("cpu", torch.uint8 if scale == "uint8" else torch.float32).permute(1, 2, 0).numpy()
    return frame.astype(np.float32) / 255 if scale == "uint8" else frame.astype(np.float32, copy=False)


def convert(o: np.ndarray, like: Clip):
    """A float result frame (H,W,3), clipped to [0,1], as a frame of like's kind (dtype, layout, device)."""
    o = np.clip(o, 0.0, 1.0)
    if like.scale == "uint8":
        o = np.rint(o * 255).astype(np.uint8)
    if like.device is None:
        return o.astype(like.dtype, copy=False)
    return torch.from_numpy(o).permute(2, 0, 1).to(like.device, like.dtype).contiguous()


def frame_tuples(clips: list[Clip]) -> Iterator[tuple]:
    """One float frame of every clip per time step, checking sizes and counts as it goes."""
    iters = [iter(c.frames) for c in clips]
    for t in count():
        raw = [next(it, END) for it in iters]
        ended = [c.name for c, r in zip(clips, raw, strict=True) if r is END]
        if len(ended) == len(clips):
            return
        if ended:
            going = [c.name for c, r in zip(clips, raw, strict=True) if r is not END]
            raise UserError(f"frame counts differ: {', '.join(ended)} ended after {t} frames, "
                             f"{', '.join(going)} did not")
        frames = tuple(as_float(r, c, t) for r, c in zip(raw, clips, strict=True))
        if len({f.shape for f in frames}) > 1:
            sizes = ", ".join(f"{c.name} {size_text(f.shape[:2])}" for c, f in zip(clips, frames, strict=True))
            raise UserError(f"frame {t}: sizes differ: {sizes}")
        yield frames


def start(clips: list[Clip], need_two: str) -> Iterator[tuple]:
    """frame_tuples(clips) after every check that can run before the work: dtypes, counts, the numbers of frame
    folders (io.check_paired), T >= 2."""
    scales = {c.scale for c in clips if c.path is None}  # files are read as float, whatever their bit depth
    if len(scales) > 1:
        kinds = ", ".join(f"{c.name} {c.scale}" for c in clips if c.path is None)
        raise UserError(f"dtypes differ: {kinds}; pass all as uint8 (0-255) or all as float in [0, 1]")
    counts = {c.n for c in clips if c.n is not None}
    if len(counts) > 1:
        raise UserError("frame counts differ: " + ", ".join(f"{c.name} {c.n}" for c in clips if c.n is not None))
    check_paired(*(c.frames for c in clips if isinstance(c.frames, FrameSource)))
    tuples = frame_tuples(clips)
    head = list(islice(tuples, 2))
    if len(head) < 2:
        raise UserError(f"{clips[0].name}: {len(head)} frame(s); {need_two}")
    return chain(head, tuples)
