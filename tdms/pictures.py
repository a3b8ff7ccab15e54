"""Pictures of a batch evaluation: warping error over time per video, D_t bars per task, comparison videos."""

import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tdms.viz import plot_series, save_png, side_by_side


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


def bar_chart(values: dict, out_png: Path, title: str, ylabel: str) -> None:
    """Bars {name: value}; None values are drawn as an empty slot labelled n/a."""
    fig = Figure(figsize=(max(4.0, 1.2 * len(values)), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
        raise ValueError(f"{out_png}: nothing to plot")
    fig = Figure(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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


def task_bars(table: list[dict], methods: list[str], out: Path, metric: str = "D_t") -> list[Path]:
    """One bar chart per row of a table ({"dataset", "task", <method>: value}), e.g. D_t per method; the
    per-dataset "mean" row gets one too, the "sum" row (the same bars scaled) does not."""
    written = []
    for row in (r for r in table if r["task"] != "sum"):
        path = out / row["dataset"] / f"{slug(row['task'])}_{metric}.png"
        bar_chart({m: row.get(m) for m in methods}, path, f"{row['task']} / {row['dataset']}: {metric}", metric)
        written.append(path)
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
