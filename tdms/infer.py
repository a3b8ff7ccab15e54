"""Making a processed video temporally consistent: TDMS-Net, and the naive and identity baselines.

Each method is a generator over (I_t, P_t) frame pairs yielding O_t as float32 (H,W,3) numpy frames,
unclipped; the writer clips. Reading and writing run in threads beside the network (prefetch, process_video).
Several videos in one batch: tdms/batched.py; the fast forward options: tdms/runner.py.
"""

import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tdms.io import VIDEO_EXTS, FrameSource, FrameWriter, check_output, frames_to_tensor, tensor_to_frame
from tdms.runner import AMP as AMP  # re-exported: the --dtype choices
from tdms.runner import make_step
from tdms.warp import warp

METHODS = ("tdms", "naive", "bonneel", "identity")
MARKER = ".tdms-output.json"  # marks a folder tdms wrote, the only kind --redo may replace


def pad_to(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflection-pad (B,C,H,W) on the right and bottom to multiples of `multiple`; returns the old size."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x, (h, w)


def tdms_frames(model, pairs, device="cpu", amp: str = "fp32"):
    """O_0 = P_0, then O_t = model(I_{t-1}, I_t, O_{t-1}, P_t): the plain path (fp32 NCHW unless amp says)."""
    return step_frames(make_step(model, device, amp), pairs, device)


@torch.inference_mode()
def step_frames(step, pairs, device="cpu"):
    """O_t of one video from its (I_t, P_t) frames; `step` from runner.make_step. O_{t-1} stays on the device."""
    i_prev = o_prev = state = None
    for i_np, p_np in pairs:
        i_t, size = pad_to(frames_to_tensor(i_np).to(device))
        p_t, _ = pad_to(frames_to_tensor(p_np).to(device))
        if o_prev is None:
            o_t = p_t
        else:
            o_t, state = step(i_prev, i_t, o_prev, p_t, state)
        yield tensor_to_frame(o_t[..., : size[0], : size[1]])
        i_prev, o_prev = i_t, o_t


def naive_frames(flow, pairs):
    """O_t = ½ P_t + ½ warp(O_{t-1}, flow(I_t -> I_{t-1})): the blend baseline of the model card."""
    i_prev = o_prev = None
    for i_np, p_np in pairs:
        i_t, p_t = frames_to_tensor(i_np), frames_to_tensor(p_np)
        o_t = p_t if o_prev is None else 0.5 * p_t + 0.5 * warp(o_prev, flow(i_t, i_prev))
        yield tensor_to_frame(o_t)
        i_prev, o_prev = i_t, o_t


def identity_frames(pairs):
    for _, p_np in pairs:
        yield p_np


def prefetch(iterable, depth: int = 4):
    """Iterate in a background thread, `depth` items ahead (decoding overlaps the network)."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def work():
        try:
            for item in iterable:
                q.put(item)
        except BaseException as e:  # handed to the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def open_pair(input_path, processed_path, resize: bool = False) -> tuple[FrameSource, FrameSource]:
    """Open I and P and check they match in frame count and (unless P is to be resized) size."""
    src_i, src_p = FrameSource(input_path), FrameSource(processed_path)
    if len(src_i) != len(src_p):
        raise ValueError(f"frame counts differ: {len(src_i)} in {src_i.path}, {len(src_p)} in {src_p.path}")
    if src_i.size != src_p.size and not resize:
        raise ValueError(f"frame sizes differ: {src_i.size[1]}×{src_i.size[0]} in {src_i.path}, "
                         f"{src_p.size[1]}×{src_p.size[0]} in {src_p.path} (--resize-processed to resize P)")
    return src_i, src_p


def resized(src: FrameSource, size: tuple[int, int]):
    import cv2

    for f in src:
        yield f if f.shape[:2] == size else cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def read_marker(out: Path) -> dict:
    """What a finished folder output records (method, checkpoint, frames, ...); {} when there is none."""
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return {}


MAKER_KEYS = ("method", "checkpoint_sha256", "flow", "lambda")  # what an output depends on (not the path)


def is_complete(out: Path, n: int, made_by: dict | None = None) -> bool:
    """A finished tdms output of n frames (folder with the marker, or a video file). With `made_by`, a folder
    counts only if its marker records the same maker: method, weights digest and options (MAKER_KEYS)."""
    if out.suffix.lower() in VIDEO_EXTS:
        return out.is_file()
    marker = read_marker(out)
    if marker.get("frames") != n:
        return False
    return made_by is None or all(marker.get(k) == made_by.get(k) for k in MAKER_KEYS)


def prepare_output(out: Path, inputs: list, redo: bool):
    """Refuse to touch anything that is an input or that tdms did not write (an empty folder is fine)."""
    check_output(out, inputs)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if out.is_dir() and not (out / MARKER).is_file():
        raise ValueError(f"{out}: exists, is not empty and was not written by tdms; choose another --output")
    if not redo:
        marker = read_marker(out)
        made = ", ".join(f"{k} {marker[k]}" for k in ("method", "checkpoint", "frames") if k in marker)
        raise ValueError(f"{out}: holds an earlier output{f' ({made})' if made else ''} that this run does not "
                         f"reuse (another method, other weights or another frame count): pass --redo to replace "
                         f"it, or choose another --output")


def process_video(frames, out: Path, n: int, fps: float, meta: dict, ext: str = ".png", quality=None,
                  desc: str = "") -> dict:
    """Write the generator `frames` to out (folder or video); a killed run leaves only a hidden partial."""
    is_video = out.suffix.lower() in VIDEO_EXTS
    tmp = out if is_video else partial_path(out)
    if not is_video and tmp.exists():
        shutil.rmtree(tmp)
    start = time.time()
    q: queue.Queue = queue.Queue(8)
    errors: list[BaseException] = []

    def write():
        try:
            with FrameWriter(tmp, fps=fps, ext=ext, quality=quality, overwrite=is_video) as w:
                while (img := q.get()) is not None:
                    w.write(np.clip(img, 0.0, 1.0))
        except BaseException as e:
            errors.append(e)
            while q.get() is not None:  # drain so the producer never blocks
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for img in tqdm(frames, total=n, desc=desc or out.name, unit="frame", leave=False):
            if errors:
                break
            q.put(img)
    finally:
        q.put(None)
        writer.join()
    if errors:
        raise errors[0]
    seconds = time.time() - start
    meta = {**meta, "frames": n, "seconds": round(seconds, 3)}
    if not is_video:
        commit(tmp, out, meta)
    return meta


def partial_path(out: Path) -> Path:
    """The hidden folder a frame-folder output is written into until it is complete."""
    return out.with_name(f".{out.name}.partial")


def commit(tmp: Path, out: Path, meta: dict) -> None:
    """Mark a finished folder output and move it into place, replacing an older tdms output."""
    (tmp / MARKER).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
