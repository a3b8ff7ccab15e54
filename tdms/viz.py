"""Pictures for people: labelled side-by-side comparison videos and per-frame curves."""

import io
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from tdms.io import FrameSource, FrameWriter, write_bytes_atomic


def resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    """Resize (H,W,3) to (height, W', 3) keeping the aspect ratio; W' is even so videos can encode it."""
    h, w = img.shape[:2]
    width = max(2, 2 * round(w * height / h / 2))
    if (h, w) == (height, width):
        return img
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def draw_label(img: np.ndarray, text: str) -> np.ndarray:
    """Copy of a float RGB frame (H,W,3) with white text on a darkened box in its top-left corner."""
    out = img.copy()
    h, w = out.shape[:2]
    scale = max(0.3, h / 600)  # ~0.8 at 480p, still legible on tiny test frames
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, th // 3)
    x1, y1 = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    # putText only draws on uint8: draw an anti-aliased coverage mask (y1, x1) and blend white through it.
    mask = np.zeros((y1, x1), np.uint8)
    cv2.putText(mask, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    out[:y1, :x1] = out[:y1, :x1] * 0.3 * (1.0 - alpha) + alpha  # box darkened, not blanked
    return out


def side_by_side(sources, labels, out_path, fps=None, max_frames=None, height=None, overwrite=False) -> int:
    """Write the sources next to each other, each labelled, to a video (.mp4/.avi/...) or a frame folder.

    sources are paths (frame folders or videos) or iterables of float RGB (H,W,3) frames. All are resized
    to one height (default: the first source's), rounded down to even for the video encoders. Stops at
    the shortest source or max_frames. fps defaults to the first source's (30.0 if it has none).
    Returns the number of frames written.
    """
    sources = [FrameSource(s) if isinstance(s, (str, Path)) else s for s in sources]
    labels = list(labels)
    if not sources or len(labels) != len(sources):
        raise ValueError(f"side_by_side: {len(sources)} sources but {len(labels)} labels")
    fps = fps or getattr(sources[0], "fps", 30.0)
    lengths = [len(s) for s in sources if hasattr(s, "__len__")] + ([max_frames] if max_frames else [])
    frames_iter = islice(zip(*sources, strict=False), max_frames)  # islice(..., None) keeps everything
    with FrameWriter(out_path, fps=fps, overwrite=overwrite) as writer:
        for frames in tqdm(frames_iter, total=min(lengths, default=None), desc="side by side", leave=False):
            height = height or frames[0].shape[0]
            height = max(2, height - height % 2)
            panels = [draw_label(resize_to_height(f, height), t) for f, t in zip(frames, labels, strict=True)]
            writer.write(np.concatenate(panels, axis=1))
    return writer.count


def plot_series(series: dict, out_png, title: str, ylabel: str, xlabel: str = "frame", start: int = 0) -> None:
    """Plot per-frame curves {name: values} into a PNG; the first value sits at x = start.

    Uses matplotlib's Agg canvas directly: no pyplot state, never opens a window.
    """
    if not series:
        raise ValueError(f"{out_png}: nothing to plot")
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(start, start + len(values)), values, label=name, linewidth=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # frames are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, out_png)


def save_png(fig: Figure, out_png) -> None:
    """Lay the figure out and write it as a PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(out_png, buf.getvalue())
