"""Middlebury .flo: float32 magic 202021.25, int32 width, int32 height, float32 (H,W,2) u,v; little-endian."""

from pathlib import Path

import numpy as np

from tdms.errors import UserError
from tdms.files import write_bytes_atomic

MAGIC = 202021.25
MAX_SIDE = 1 << 15  # larger sides mean a broken header, not a real frame


def write_flo(path, flow) -> None:
    """Write flow (2,H,W) float (x first) to a .flo file, atomically."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise UserError(f"write_flo {path}: flow must be (2,H,W), got {flow.shape}")
    _, h, w = flow.shape
    header = np.array([MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
    body = np.ascontiguousarray(flow.transpose(1, 2, 0), dtype="<f4").tobytes()  # (H,W,2) interleaved
    write_bytes_atomic(path, header + body)


def read_flo(path) -> np.ndarray:
    """Read a .flo file -> (2,H,W) float32; ValueError naming the file if it is not a valid .flo."""
    data = Path(path).read_bytes()
    if len(data) < 12:
        raise UserError(f"{path}: not a .flo file (only {len(data)} bytes)")
    magic = np.frombuffer(data, "<f4", count=1)[0]
    if magic != np.float32(MAGIC):
        raise UserError(f"{path}: not a .flo file (magic {magic!r}, expected {MAGIC})")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", count=2, offset=4))
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise UserError(f"{path}: absurd .flo size {w}×{h} (W×H)")
    expected = 12 + 8 * w * h
    if len(data) != expected:
        raise UserError(f"{path}: .flo of {w}×{h} (W×H) needs {expected} bytes, file has {len(data)} (truncated?)")
    flow = np.frombuffer(data, "<f4", offset=12).reshape(h, w, 2)
    return flow.transpose(2, 0, 1).astype(np.float32, order="C")  # a writable native copy
