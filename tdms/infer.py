"""Making a processed video temporally consistent: TDMS-Net, and the naive and identity baselines.

Each method is a generator over (I_t, P_t) frame pairs yielding O_t as float32 (H,W,3) numpy frames,
unclipped; the writer clips. Reading and writing run in threads beside the network (prefetch, process_video).
Several videos in one batch: tdms/batched.py; the fast forward options: tdms/runner.py.
"""

import glob
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tdms.io import (
    VIDEO_EXTS,
    FrameSource,
    FrameWriter,
    check_output,
    check_paired,
    frames_to_tensor,
    stamp_files,
    tensor_to_frame,
    write_bytes_atomic,
)
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
    """Open I and P and check they match in frame count, frame numbers and (unless P is to be resized) size."""
    src_i, src_p = FrameSource(input_path), FrameSource(processed_path)
    if len(src_i) != len(src_p):
        raise ValueError(f"frame counts differ: {len(src_i)} in {src_i.path}, {len(src_p)} in {src_p.path}")
    check_paired(src_i, src_p)
    if src_i.size != src_p.size and not resize:
        raise ValueError(f"frame sizes differ: {src_i.size[1]}×{src_i.size[0]} in {src_i.path}, "
                         f"{src_p.size[1]}×{src_p.size[0]} in {src_p.path} (--resize-processed to resize P)")
    return src_i, src_p


def resized(src: FrameSource, size: tuple[int, int]):
    import cv2

    for f in src:
        yield f if f.shape[:2] == size else cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def is_video(out: Path) -> bool:
    return out.suffix.lower() in VIDEO_EXTS


def marker_path(out: Path) -> Path:
    """Where an output's record lies: inside a frame folder, or hidden beside a video (.o.mp4.tdms-output.json)."""
    return out.with_name(f".{out.name}{MARKER}") if is_video(out) else out / MARKER


def video_stamp(video: Path) -> list[int]:
    st = video.stat()
    return [st.st_size, st.st_mtime_ns]


def read_marker(out: Path) -> dict:
    """What a finished output records (method, checkpoint, inputs, frames, ...); {} when there is none, or when a
    video was replaced after tdms wrote it (its record names the video's size and mtime)."""
    try:
        marker = json.loads(marker_path(out).read_text())
        if not isinstance(marker, dict) or is_video(out) and marker.get("video") != video_stamp(out):
            return {}
        return marker
    except (OSError, ValueError):
        return {}


# what an output depends on: the maker (method, weights digest, options, frame format) and the inputs
MAKER_KEYS = ("method", "checkpoint_sha256", "flow", "lambda", "format", "input", "processed", "inputs_sha256")


def input_identity(src_i: FrameSource, src_p: FrameSource) -> dict:
    """The inputs as is_complete compares them: resolved paths and a digest of each frame file's (or video's)
    name, size and mtime_ns, so frames edited in place count as other inputs (content is not read)."""
    h = hashlib.sha256()
    for src in (src_i, src_p):
        h.update(f"{src.path.resolve()}|".encode())
        stamp_files(h, src.paths or [src.path])
    return {"input": str(src_i.path.resolve()), "processed": str(src_p.path.resolve()),
            "inputs_sha256": h.hexdigest()[:16]}


def is_complete(out: Path, n: int, made_by: dict | None = None) -> bool:
    """A finished tdms output of n frames (folder with the marker, or a video with its record beside it). With
    `made_by`, it counts only if the record names the same maker and inputs (MAKER_KEYS)."""
    marker = read_marker(out)
    if marker.get("frames") != n:
        return False
    return made_by is None or all(marker.get(k) == made_by.get(k) for k in MAKER_KEYS)


FRAME_NAME = re.compile(r"\d{5}\.(png|jpg)")  # the frames a tdms output folder holds


def foreign_files(out: Path) -> list[str]:
    """Names in an output folder that tdms did not write (anything but %05d frames and the marker)."""
    return sorted(p.name for p in out.iterdir()
                  if p.name != MARKER and not (p.is_file() and FRAME_NAME.fullmatch(p.name)))


def check_replaceable(out: Path) -> None:
    """Refuse an output that tdms could never replace: a file that is not a video, a video without tdms's record,
    a non-empty folder without the marker. Nothing there, or an empty folder, is fine."""
    if not out.exists():
        return
    if is_video(out):
        if not out.is_file():
            raise ValueError(f"{out}: exists and is not a video file; choose another output")
        if not read_marker(out):
            raise ValueError(f"{out}: a video tdms did not write (no {marker_path(out).name} beside it that matches "
                             f"it), not replaced even with --redo; move it away or choose another output")
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (nor a .mp4/.avi video); choose another output")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out}: exists, is not empty and was not written by tdms; choose another output")


def prepare_output(out: Path, inputs: list, redo: bool):
    """Refuse to touch anything that is an input or that tdms did not write (an empty folder is fine), and a
    tdms output unless redo (and then not if the user put files of their own in it)."""
    check_output(out, inputs)
    check_replaceable(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    extra = foreign_files(out) if out.is_dir() else []
    if extra:
        raise ValueError(f"{out}: holds files tdms did not write ({', '.join(extra[:5])}"
                         f"{', ...' if len(extra) > 5 else ''}); move them away, or choose another output")
    if not redo:
        marker = read_marker(out)
        made = ", ".join(f"{k} {marker[k]}" for k in ("method", "checkpoint", "frames") if k in marker)
        raise ValueError(f"{out}: holds an earlier output{f' ({made})' if made else ''} that this run does not "
                         f"reuse (another method, other weights or options, other inputs or another frame count): "
                         f"pass --redo to replace it, or choose another output")


def process_video(frames, out: Path, n: int, fps: float, meta: dict, ext: str = ".png", quality=None,
                  desc: str = "") -> dict:
    """Write the generator `frames` to out (folder or video) through a hidden partial, moved into place when
    complete. An exception removes the partial; a killed run leaves it, and the next run removes it."""
    tmp = partial_path(out)
    remove_partial(out)
    start = time.time()
    q: queue.Queue = queue.Queue(8)
    errors: list[BaseException] = []

    def write():
        ended = False
        try:
            with FrameWriter(tmp, fps=fps, ext=ext, quality=quality) as w:
                while (img := q.get()) is not None:
                    w.write(np.clip(img, 0.0, 1.0))
                ended = True
        except BaseException as e:
            errors.append(e)
            while not ended and q.get() is not None:  # drain so the producer never blocks
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
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
        meta = {**meta, "frames": n, "seconds": round(time.time() - start, 3)}
        commit(tmp, out, meta)
    except BaseException:  # KeyboardInterrupt too: no partial output stays behind
        remove_partial(out)
        raise
    return meta


def partial_path(out: Path) -> Path:
    """The hidden folder (or video) an output is written into until it is complete: .o.partial, .o.partial.mp4."""
    return out.with_name(f".{out.stem}.partial{out.suffix}" if is_video(out) else f".{out.name}.partial")


def remove_partial(out: Path) -> None:
    """Delete out's partial output, and for a video the PID-named temp files FrameWriter leaves when killed."""
    tmp = partial_path(out)
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    if is_video(out):
        stems = (f".{out.stem}", f".{tmp.stem}")  # FrameWriter's temp of out (older tdms) or of the partial
        for p in out.parent.glob(f".*.partial{glob.escape(out.suffix)}"):
            m = re.fullmatch(rf"(.*)\.\d+\.partial{re.escape(out.suffix)}", p.name)
            if m and m[1] in stems:
                p.unlink(missing_ok=True)


def commit(tmp: Path, out: Path, meta: dict) -> None:
    """Move a finished output into place with its record, replacing an older tdms output (never a user's files)."""
    if is_video(out):
        os.replace(tmp, out)
        record = {**meta, "video": video_stamp(out)}  # a video copied over out later has no record
        write_bytes_atomic(marker_path(out), json.dumps(record, indent=1).encode())
        return
    (tmp / MARKER).write_text(json.dumps(meta, indent=1))
    if out.is_dir():
        if extra := foreign_files(out):
            raise ValueError(f"{out}: files tdms did not write appeared during the run ({', '.join(extra[:5])}); "
                             f"the new output stays in {tmp}")
        shutil.rmtree(out)
    os.replace(tmp, out)
