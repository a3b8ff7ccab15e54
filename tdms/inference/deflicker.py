"""FFmpeg's `deflicker` filter as a method (libavfilter through PyAV): the baseline a practitioner tries first.

It scales each frame's luma by one gain, the mean luma of a window of `size` frames (the frame and the size-1
after it; at the end of a shot the last frame stands in for those missing) over the frame's own mean luma,
`mode=am` (the arithmetic mean). It reads
only P: no flow, no original frames. P goes through the filter as 16-bit YUV 4:4:4 (its chroma untouched, at full
resolution) and comes back as 16-bit RGB, so the round trip adds at most about one 16-bit level.
FFmpeg's `median` mode is not offered: it is broken in FFmpeg 5.x.
"""

from fractions import Fraction

import av
import numpy as np

from tdms.errors import UserError

MODE = "am"
SIZE = 5  # FFmpeg's default window
MAX_SIZE = 129  # FFmpeg's bound on size


def check_size(size: int) -> None:
    if not 2 <= size <= MAX_SIZE:
        raise UserError(f"--deflicker-size (deflicker_size) must be in 2..{MAX_SIZE} frames (FFmpeg's bounds), "
                        f"got {size}")


def graph(h: int, w: int, size: int) -> av.filter.Graph:
    """buffer (rgb48le) -> yuv444p16le -> deflicker -> rgb48le -> sink, for frames of (h, w)."""
    g = av.filter.Graph()
    nodes = [g.add_buffer(width=w, height=h, format="rgb48le", time_base=Fraction(1, 30)),
             g.add("format", "yuv444p16le"), g.add("deflicker", f"size={size}:mode={MODE}"),
             g.add("format", "rgb48le"), g.add("buffersink")]
    for a, b in zip(nodes, nodes[1:], strict=False):
        a.link_to(b)
    g.configure()
    return g


def ready(g: av.filter.Graph):
    """The frames the filter has finished, as float32 RGB (H,W,3) in [0,1]."""
    while True:
        try:
            frame = g.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return
        yield frame.to_ndarray().astype(np.float32) / 65535.0


def deflicker_frames(pairs, size: int = SIZE):
    """O_t of one shot from its (I_t, P_t) pairs: P_t with its luma scaled by FFmpeg's deflicker gain. The filter
    holds size-1 frames back, so O_t comes once P_{t+size-1} has gone in (or the shot ended)."""
    check_size(size)
    g = None
    for t, (_, p_t) in enumerate(pairs):
        if g is None:
            g = graph(*p_t.shape[:2], size)
        frame = av.VideoFrame.from_ndarray(np.rint(np.clip(p_t, 0.0, 1.0) * 65535.0).astype(np.uint16), "rgb48le")
        frame.pts = t
        g.push(frame)
        yield from ready(g)
    if g is not None:
        g.push(None)  # end of the shot: the filter lets its last frames go
        yield from ready(g)
