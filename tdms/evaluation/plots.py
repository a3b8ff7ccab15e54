"""Pictures of an evaluation: per-frame curves and bar charts (PNG, matplotlib's Agg canvas: no pyplot state,
never a window) and labelled side-by-side videos; then the ones a batch evaluation writes from its rows
(warping error over time per video, D_t bars per task, trade-off charts per task and per dataset, comparison
videos of the first videos).
"""

import io
import re
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

from tdms.errors import UserError
from tdms.files import write_bytes_atomic
from tdms.frames.io import FrameSource
from tdms.frames.writers import FrameWriter

# --- charts -------------------------------------------------------------------------------------------------


def plot_series(series: dict, out_png, title: str, ylabel: str, xlabel: str = "frame", start: int = 0) -> None:
    """Plot per-frame curves {name: values} into a PNG; the first value sits at x = start."""
    if not series:
        raise UserError(f"{out_png}: nothing to plot")
    fig, ax = new_axes((8, 4))
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(start, start + len(values)), values, label=name, linewidth=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # frames are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, out_png)


def bar_chart(values: dict, out_png: Path, title: str, ylabel: str) -> None:
    """Bars {name: value}; None values are drawn as an empty slot labelled n/a."""
    fig, ax = new_axes((max(4.0, 1.2 * len(values)), 3.5))
    names = list(values)
    heights = [values[n] if values[n] is not None else 0.0 for n in names]
    bars = ax.bar(np.arange(len(names)), heights, color=[f"C{k}" for k in range(len(names))])
    for bar, name in zip(bars, names, strict=True):
        label = "n/a" if values[name] is None else f"{values[name]:.3f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, out_png)


def grouped_bars(groups: dict, out_png: Path, title: str, ylabel: str) -> None:
    """Bars {group: {series: value}}: one cluster per group, one colour per series, each bar labelled."""
    series = list(dict.fromkeys(name for values in groups.values() for name in values))
    if not series:
        raise UserError(f"{out_png}: nothing to plot")
    fig, ax = new_axes((max(5.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5), 4.0))
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        xs = [g + (k - (len(series) - 1) / 2) * width for g, values in enumerate(groups.values()) if name in values]
        heights = [values[name] for values in groups.values() if name in values]
        bars = ax.bar(xs, heights, width, label=name, color=f"C{k}")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(np.arange(len(groups)), list(groups), fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, out_png)


def tradeoff_chart(points: dict, curve: dict | None, out_png, title: str, lpips: dict | None = None) -> None:
    """The trade-off chart: PSNR(O, P) against D_t, every method a point {name: (D_t, PSNR)} and the naive blend's
    curve a line, each of its points labelled with its a; with lpips {name: (D_t, LPIPS)} a second panel of LPIPS
    against D_t (methods only: the curve has no LPIPS, it runs no network). Points with a None value are left out."""
    panels = 2 if lpips else 1
    fig = Figure(figsize=(6.5 * panels, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    if curve is not None:
        ax.plot(curve["relative_reduction"], curve["psnr"], "-o", color="0.5", markersize=3, linewidth=1.2,
                label="naive blend, a = 0.1 … 0.9")
        for a, d, p in zip(curve["alphas"], curve["relative_reduction"], curve["psnr"], strict=True):
            ax.annotate(f"{a:g}", (d, p), textcoords="offset points", xytext=(3, 3), fontsize=7, color="0.4")
    draw_points(ax, points)
    ax.set(title=title, xlabel="D_t (higher: more consistent)", ylabel="PSNR(O, P) dB (higher: more faithful)")
    if lpips:
        right = fig.add_subplot(1, panels, 2)
        draw_points(right, lpips)
        right.set(title="LPIPS to P against D_t", xlabel="D_t (higher: more consistent)",
                  ylabel="LPIPS(O, P) (lower: more faithful)")
    save_png(fig, out_png)


def draw_points(ax, points: dict) -> None:
    """One labelled marker per method {name: (x, y)}, colours C1.. as the other charts' methods; then grid, legend."""
    for k, (name, (x, y)) in enumerate(points.items()):
        if x is not None and y is not None and np.isfinite([x, y]).all():
            ax.plot([x], [y], "D", color=f"C{k + 1}", markersize=7, label=name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def new_axes(size: tuple[float, float]):
    """(figure, axes) of a new figure of `size` inches at 100 dpi, drawn on matplotlib's Agg canvas directly:
    no pyplot state, never a window."""
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_png(fig: Figure, out_png) -> None:
    """Lay the figure out and write it as a PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(out_png, buf.getvalue())


# --- side-by-side videos ------------------------------------------------------------------------------------


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
        raise UserError(f"side_by_side: {len(sources)} sources but {len(labels)} labels")
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


# --- the pictures of a batch evaluation ---------------------------------------------------------------------


def slug(text: str) -> str:
    """A file-name-safe form of a task or video name ("WCT/wave" -> "WCT_wave")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def error_plots(rows: list[dict], processed: str, out: Path) -> list[Path]:
    """One PNG per video: E_warp per frame of the processed video and of every evaluated method."""
    videos: dict = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["dataset"], r["task"], r["video"])
            videos.setdefault(key, {})[r["method"]] = r["per_frame"]["warping_error"]
    written = []
    for (dataset, task, video), series in videos.items():
        if processed in series:  # processed first, so it keeps the first colour in every plot
            series = {processed: series.pop(processed), **series}
        path = out / dataset / slug(task) / f"{slug(video)}.png"
        plot_series(series, path, f"{task} / {dataset} / {video}", "warping error", start=1)
        written.append(path)
    return written


def task_bars(table: list[dict], methods: list[str], out: Path, metric: str = "D_t") -> list[Path]:
    """One bar chart per row of a table ({"dataset", "task", <method>: value}), e.g. D_t per method; the
    per-dataset "mean" row gets one too, the "sum" row (the same bars scaled) does not."""
    written = []
    for row in (r for r in table if r["task"] != "sum"):
        path = out / row["dataset"] / f"{slug(row['task'])}_{metric}.png"
        bar_chart({m: row.get(m) for m in methods}, path, f"{row['task']} / {row['dataset']}: {metric}", metric)
        written.append(path)
    return written


def tradeoff_plots(summary: dict, methods: list[str], out: Path) -> list[Path]:
    """The trade-off chart of every task (out/tradeoff_<dataset>_<task>.png) and of each dataset's mean over its
    tasks (out/tradeoff_<dataset>.png), from a report summary: the methods' mean points, the mean naive curve."""
    written = []
    for (dataset, task), curve in summary["curves"].items():
        entries = {m: (summary["overall"] if task == "mean" else summary["tasks"]).get(
            (m, dataset) if task == "mean" else (m, dataset, task), {}) for m in methods}
        at = {m: e["tradeoff"] if "psnr" in e.get("tradeoff", {}) else e for m, e in entries.items()}  # the margin's
        names = {m: m + (f" ({e['margin']:+.2f} dB)" if e.get("margin") is not None else "")
                 for m, e in entries.items()}
        points = {names[m]: (e.get("relative_reduction"), e.get("psnr")) for m, e in at.items()}
        lpips = {names[m]: (e.get("relative_reduction"), e.get("lpips")) for m, e in entries.items()}
        name = f"tradeoff_{slug(dataset)}.png" if task == "mean" else f"tradeoff_{slug(dataset)}_{slug(task)}.png"
        title = f"{dataset}: mean over tasks" if task == "mean" else f"{task} / {dataset}"
        tradeoff_chart(points, curve, out / name, title,
                       lpips if any(v[1] is not None for v in lpips.values()) else None)
        written.append(out / name)
    return written


def comparison_videos(rows: list[dict], jobs, methods: list[str], processed: str, out: Path, count: int,
                      fps: float | None = None) -> list[Path]:
    """input | processed | methods videos for the first `count` videos with every listed method scored.

    Existing files are kept (a rerun does not redo them). Returns the paths written or kept.
    """
    ok = {(r["method"], r["dataset"], r["task"], r["video"]) for r in rows if r["status"] == "ok"}
    results = {(j.method, j.dataset, j.task, j.video): j for j in jobs}
    written = []
    for job in (j for j in jobs if j.method == processed):
        if len(written) >= count:
            break
        video = (job.dataset, job.task, job.video)
        shown = [m for m in methods if (m, *video) in ok]
        if (processed, *video) not in ok or not shown:
            continue
        path = out / job.dataset / slug(job.task) / f"{slug(job.video)}.mp4"
        if not path.exists():
            side_by_side([job.input, job.processed] + [results[(m, *video)].results for m in shown],
                         ["input", "processed"] + shown, path, fps=fps)
        written.append(path)
    return written
