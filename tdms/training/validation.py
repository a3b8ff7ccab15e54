"""Validation during training: every train.val_every steps the current weights are scored on held-out videos
(data.val_phase; other videos and other operators than training's) as tdms-test would run them and tdms-evaluate
would score them, and the run keeps best.pth by the margin above the naive blend's trade-off curve.

Per video: the warping error E of the output (Lai et al.; DIS flows on the original frames, occlusion by the
forward-backward test), D_t = max(0, 1 - E(O) / E(P)) (TDMS Table 1), PSNR(O, P) over frames 1..N-1, and the margin
= PSNR minus the naive blend curve's PSNR at the same D_t (tdms/evaluation/tradeoff.py). Per task: the mean point
of its videos; overall: the mean point of the tasks. Flows, the curve and the frames are computed once, when
training starts, and kept in memory (validation clips are small).
"""

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import numpy as np
import torch

from tdms.config import Config
from tdms.errors import UserError
from tdms.evaluation.metrics import relative_reduction
from tdms.evaluation.plots import new_axes, save_png
from tdms.evaluation.tradeoff import as_written, curve_of, mean_point
from tdms.evaluation.video import means, metric_names, score_frames
from tdms.files import json_safe, save_atomic, write_bytes_atomic
from tdms.flow import build_flow
from tdms.flow.cache import pair_flows
from tdms.frames.io import FrameSource, size_text
from tdms.frames.layout import entries, tasks_file
from tdms.inference.methods import make_method

LOG = "val.jsonl"
CHART = "val.png"
BEST = "best.pth"
METRIC_FLOW = ("dis", "medium")  # tdms-evaluate's default metric flow, so the figures compare with its tables


@dataclass
class ValVideo:
    name: str  # task/dataset/video
    task: str
    input: list  # (H,W,3) float32 frames
    processed: list
    pairs: list  # (fw, bw, occ) of the pairs (t, t+1)
    curve: dict  # the naive blend's trade-off curve (tradeoff.curve_of)


def load_validation(cfg: Config, progress: bool = True) -> list[ValVideo]:
    """The validation videos of cfg.data, with their flows and blend curves. A missing list, folder or task file is
    an error (before training starts); a video shorter than 2 frames or whose P differs from I in size or length
    is named and skipped."""
    root, phase = Path(cfg.data.root), cfg.data.val_phase
    tasks = tasks_file(root, phase, cfg.data.val_tasks_list)
    try:
        found = entries(root, phase, tasks)
    except UserError as e:
        raise UserError(f"train.val_every={cfg.train.val_every} needs validation data: {e}") from None
    flow = build_flow(*METRIC_FLOW)
    videos = []
    for entry in found:
        frames = read_clip(entry, cfg.train.val_frames)
        if frames is None:
            continue
        i, p = frames
        pairs = [pair_flows(flow, a, b) for a, b in zip(i, i[1:], strict=False)]
        videos.append(ValVideo(entry.name, entry.task, i, p, pairs, curve_of(i, p, pairs.__getitem__, len(i))))
    if not videos:
        raise UserError(f"train.val_every={cfg.train.val_every}: no usable validation video in {tasks} "
                        f"(videos under {root / phase}; set data.val_phase / data.val_tasks_list, or "
                        f"train.val_every=0)")
    if progress:
        print(f"validation: {len(videos)} videos of {len({v.task for v in videos})} tasks ({tasks})")
    return videos


def read_clip(entry, frames: int):
    """(I frames, P frames) of one entry, or None with a warning naming it when it cannot be validated on."""
    try:
        i_src, p_src = FrameSource(entry.input), FrameSource(entry.processed)
    except UserError as e:
        warnings.warn(f"validation video {entry.name} skipped: {e}", stacklevel=2)
        return None
    problem = ""
    if i_src.size != p_src.size:
        problem = f"processed frames are {size_text(p_src.size)}, the input's {size_text(i_src.size)}"
    elif len(i_src) != len(p_src):
        problem = f"{len(i_src)} input frames but {len(p_src)} processed frames"
    elif len(i_src) < 2:
        problem = f"{len(i_src)} frame (the warping error needs 2)"
    if problem:
        warnings.warn(f"validation video {entry.name} skipped: {problem}", stacklevel=2)
        return None
    n = min(len(i_src), frames) if frames else len(i_src)
    return [i_src[t] for t in range(n)], [p_src[t] for t in range(n)]


class Validator:
    """The validation of one run (rank 0): scores, logs (TensorBoard, <out>/val.jsonl, <out>/val.png) and keeps
    <out>/best.pth, the training state of the step with the best overall margin; `best` is that step's summary."""

    def __init__(self, cfg: Config, out: Path, tb, best: dict | None, step: int):
        self.videos = load_validation(cfg)
        self.out, self.tb, self.best, self.dtype = out, tb, best, cfg.train.val_dtype
        self.lines = read_log(out, step)
        if (out / LOG).is_file():
            write_log(out, self.lines)

    def __call__(self, model, step: int, state, bar) -> None:
        """Validate `model` at `step`; state(best) is the training state to save as best.pth when it is the best."""
        result = validate(model, self.videos, self.dtype)
        self.lines.append(json_safe({"step": step, **result}))
        write_log(self.out, self.lines)
        chart(self.lines, self.out / CHART)
        if self.tb is not None:
            log_tensorboard(self.tb, step, result)
        new = better(result, self.best)
        if new:
            self.best = summary(step, result)
            save_atomic(state(self.best), self.out / BEST)
        bar.write(f"step {step} {text(result)}" + (" (best)" if new else ""))


def score_video(model, video: ValVideo, amp: str) -> dict:
    """Run the network over one validation video as tdms-test does and score it as tdms-evaluate does (the frames
    as written: clipped, 8 bits), with the flows computed when training started."""
    method = make_method("tdms", model=model, amp=amp)
    outputs = method.frames(zip(video.input, video.processed, strict=True))
    steps = ((as_written(o), p, None if t == 0 else video.pairs[t - 1][::2])  # (fw, occ) of the pair (t-1, t)
             for t, (o, p) in enumerate(zip(outputs, video.processed, strict=True)))
    row = means(score_frames(steps, metric_names(True, False, None), progress=False)[0])
    row["relative_reduction"] = relative_reduction(row["warping_error"], video.curve["warping_error_processed"])
    return row


@torch.no_grad()
def validate(model, videos: list[ValVideo], amp: str) -> dict:
    """{"overall": point, "tasks": {task: point}, "videos": {name: row}}; a point is tradeoff.mean_point's
    (relative_reduction, psnr, margin, curve, videos) without the curve."""
    was_training = model.training
    model.eval()
    try:
        rows = {v.name: score_video(model, v, amp) | {"task": v.task} for v in videos}
    finally:
        model.train(was_training)
    by_task: dict[str, list] = {}
    for v in videos:
        row = rows[v.name]
        if math.isfinite(row["psnr"]) and math.isfinite(row["relative_reduction"]):
            by_task.setdefault(v.task, []).append((row["relative_reduction"], row["psnr"], v.curve))
    tasks = {task: mean_point(points) for task, points in by_task.items()}
    overall = mean_point([(t["relative_reduction"], t["psnr"], t["curve"]) for t in tasks.values()
                          if "curve" in t])
    for task, point in tasks.items():
        point["warping_error"] = fmean(rows[v.name]["warping_error"] for v in videos if v.task == task)
    overall["warping_error"] = fmean(t["warping_error"] for t in tasks.values()) if tasks else math.nan
    strip = {k: {kk: vv for kk, vv in p.items() if kk != "curve"} for k, p in tasks.items()}
    return {"overall": {k: v for k, v in overall.items() if k != "curve"}, "tasks": strip, "videos": rows}


def better(result: dict, best: dict | None) -> bool:
    """Whether a validation result's overall margin beats the best so far (a result with no margin never does)."""
    m = result["overall"].get("margin")
    return m is not None and (best is None or best.get("margin") is None or m > best["margin"])


def summary(step: int, result: dict) -> dict:
    """What the checkpoints keep of a validation: {"step", "margin", "relative_reduction", "psnr"}."""
    o = result["overall"]
    return {"step": step, "margin": o.get("margin"), "relative_reduction": o.get("relative_reduction"),
            "psnr": o.get("psnr")}


def text(result: dict) -> str:
    o = result["overall"]
    margin = "n/a" if o.get("margin") is None else f"{o['margin']:+.3f} dB"
    return (f"val D_t {o.get('relative_reduction', math.nan):.4f} PSNR {o.get('psnr', math.nan):.2f} dB "
            f"margin {margin} E {o.get('warping_error', math.nan):.6f}")


def log_tensorboard(tb, step: int, result: dict) -> None:
    for scope, point in [("val", result["overall"])] + [(f"val_task/{t}", p) for t, p in result["tasks"].items()]:
        for key in ("margin", "relative_reduction", "psnr", "warping_error"):
            value = point.get(key)
            if value is not None and math.isfinite(value):
                tb.add_scalar(f"{scope}/{key}", value, step)


def read_log(out: Path, upto: int) -> list[dict]:
    """The lines of <out>/val.jsonl of steps <= upto (a resumed run drops the lines that its checkpoint's step had
    not reached: they are measured again)."""
    path = out / LOG
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["step"] <= upto]


def write_log(out: Path, lines: list[dict]) -> None:
    """<out>/val.jsonl, one line {"step", "overall", "tasks", "videos"} a validation, rewritten whole atomically."""
    write_bytes_atomic(out / LOG, "".join(json.dumps(line) + "\n" for line in lines).encode())


def chart(lines: list[dict], out_png: Path) -> None:
    """The run's validation curve: margin (dB, left) and D_t (right) against the step."""
    steps = [line["step"] for line in lines]
    margin = [np.nan if line["overall"].get("margin") is None else line["overall"]["margin"] for line in lines]
    d_t = [line["overall"].get("relative_reduction", np.nan) for line in lines]
    fig, ax = new_axes((7, 3.5))
    ax.plot(steps, margin, "o-", color="C0", label="margin above the naive curve (dB)")
    ax.axhline(0.0, color="C0", linewidth=0.6, linestyle=":")
    ax.set(xlabel="step", ylabel="margin (dB)", title="validation")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(steps, d_t, "s--", color="C1", label="D_t")
    right.set_ylabel("D_t")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    save_png(fig, out_png)
