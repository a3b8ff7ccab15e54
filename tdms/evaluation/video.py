"""Evaluation of one result video (DESIGN §8): warping error, relative reduction, PSNR/SSIM, LPIPS,
tracking IoU and the composite score, in one pass over the frames.

Flows and the tracking reference come from the original frames only, through a FlowCache, so each input
video's flow and reference boxes are computed once however many tasks and methods are evaluated on it.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from statistics import fmean

from tqdm import tqdm

from tdms.errors import UserError
from tdms.evaluation.lpips import lpips_distance
from tdms.evaluation.metrics import composite, psnr, relative_reduction, ssim, warping_error_pair
from tdms.evaluation.tracking import (
    MOTION_PAIRS,
    Track,
    annotation_boxes,
    centre_box,
    check_box,
    motion_box,
    score_boxes,
    track,
)
from tdms.files import write_bytes_atomic
from tdms.flow.cache import FlowCache
from tdms.frames.io import FrameSource, open_clips, resized


@dataclass(frozen=True)
class Tracking:
    """How to get tracking IoU for one video: tracker name, a user first box, DAVIS annotations."""

    tracker: str = "csrt"
    box: tuple | None = None  # (x, y, w, h) overriding the automatic first box (no annotations)
    annotations: Path | None = None  # folder of %05d.png palette annotations, used when it exists
    object_id: int | None = None  # annotation id to follow; None = the largest in frame 0


@dataclass
class Options:
    """What evaluate_video computes beyond the warping error."""

    lpips: object = None  # an lpips model (tdms.evaluation.lpips.load_lpips), or None
    lpips_note: str = ""  # why lpips is None (weights absent, or skipped)
    tracking: Tracking | None = None  # None: no tracking IoU, composite without it
    resize: bool = False  # resize result/processed frames to the input's size instead of failing
    processed_error: bool = True  # also compute E(processed) (batch mode computes it once per video)


def open_videos(videos: dict[str, Path], resize: bool = False) -> dict[str, FrameSource]:
    """Open {role: path} (frames.io.open_clips: counts, numbers and sizes checked) with >= 2 frames."""
    sources = open_clips(videos, resize, "--resize")
    ref = next(iter(sources.values()))
    if len(ref) < 2:
        raise UserError(f"{ref.path}: the warping error needs at least 2 frames, found {len(ref)}")
    return sources


def first_box(cache: FlowCache, video: Path, spec: Tracking) -> tuple[tuple, str]:
    """(box, how it was chosen) for a video without annotations: the user's, motion_box's, or the centre's."""
    size = cache.source(video).size
    if spec.box is not None:
        check_box(spec.box, size, video)
        return tuple(spec.box), "user"
    pairs = min(MOTION_PAIRS, len(cache.source(video)) - 1)
    box = motion_box([cache.pair(video, t)[0].numpy() for t in range(pairs)])
    return (box, "motion") if box else (centre_box(size), "centre")


def reference(cache: FlowCache, video: Path, spec: Tracking, progress: bool = False) -> dict:
    """First box and reference boxes of an input video, cached beside its flows.

    From the annotations when spec.annotations exists, else the tracker on the original frames from
    `first_box`. Returns {"first_box", "box_source", "reference", "object_id", "boxes"}.
    """
    video = Path(video)
    annotated = spec.annotations is not None and Path(spec.annotations).is_dir()
    key = json.dumps([spec.tracker, spec.box, str(spec.annotations) if annotated else None, spec.object_id])
    path = cache.folder(video) / f"track_{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    n = len(cache.source(video))
    if annotated:
        object_id, boxes = annotation_boxes(spec.annotations, n, spec.object_id)
        ref = {"first_box": boxes[0], "box_source": "annotation", "reference": "annotations",
               "object_id": object_id, "boxes": boxes}
    else:
        box, how = first_box(cache, video, spec)
        frames = tqdm(cache.source(video), total=n, desc=f"{spec.tracker} reference", disable=not progress)
        ref = {"first_box": box, "box_source": how, "reference": "tracker", "object_id": None,
               "boxes": track(frames, box, spec.tracker)}
    write_bytes_atomic(path, json.dumps(ref).encode())
    return ref


def evaluate_video(cache: FlowCache, input_path, result_path, processed_path=None, options: Options | None = None,
                   progress: bool = True) -> dict:
    """Metrics of one result video O against its input I and (optionally) processed video P.

    Per video: warping_error (mean over pairs); with P also psnr, ssim, lpips of O vs P (means over
    frames 1..N-1) and, unless options.processed_error is off, warping_error_processed,
    relative_reduction and composite; tracking_iou with options.tracking. per_frame holds the lists
    (entry k for frame k+1); a metric that could not be computed is None with a `<name>_note`.
    """
    opt = options or Options()
    roles = {"input": Path(input_path), "results": Path(result_path)}
    if processed_path is not None:
        roles["processed"] = Path(processed_path)
    src = open_videos(roles, opt.resize)
    n, size = len(src["input"]), src["input"].size
    cache.prepare(roles["input"], progress=progress)
    out = {"flow": cache.backend.name, "n_frames": n}
    tracker = None
    if opt.tracking is not None:
        try:
            ref = reference(cache, roles["input"], opt.tracking, progress)
            tracker, boxes = Track(ref["first_box"], opt.tracking.tracker), []
        except ValueError as err:
            out.update(tracking_iou=None, tracking_note=str(err))
    with_p = processed_path is not None
    names = ["warping_error"] + (["psnr", "ssim"] if with_p else [])
    names += ["warping_error_processed"] if with_p and opt.processed_error else []
    names += ["lpips"] if with_p and opt.lpips is not None else []
    per_frame = {k: [] for k in names}
    processed = resized(src["processed"], size) if with_p else repeat(None, n)
    frames = zip(resized(src["results"], size), processed, strict=True)
    o_prev = p_prev = None
    for t, (o, p) in enumerate(tqdm(frames, total=n, desc="evaluate", disable=not progress, leave=False)):
        if t > 0:
            fw, occ = cache.forward(roles["input"], t - 1)
            per_frame["warping_error"].append(warping_error_pair(o, o_prev, fw, occ))
            if "warping_error_processed" in per_frame:
                per_frame["warping_error_processed"].append(warping_error_pair(p, p_prev, fw, occ))
            if with_p:
                per_frame["psnr"].append(psnr(o, p))
                per_frame["ssim"].append(ssim(o, p))
            if "lpips" in per_frame:
                per_frame["lpips"].append(lpips_distance(opt.lpips, o, p))
        if tracker is not None:
            try:
                boxes.append(tracker.step(o))
            except ValueError as err:  # cannot start on this box
                tracker = None
                out.update(tracking_iou=None, tracking_note=str(err))
        o_prev, p_prev = o, p
    out.update({k: fmean(v) for k, v in per_frame.items()})  # psnr is inf when a frame of O equals P's
    if with_p and opt.lpips is None:
        out.update(lpips=None, lpips_note=opt.lpips_note or "LPIPS not computed")
    if tracker is not None:
        scored = score_boxes(boxes, ref["boxes"])
        out["tracking_iou"] = scored.pop("iou")
        if out["tracking_iou"] is None:
            out["tracking_note"] = "no frame after the first has a reference box"
        out["tracking"] = {**scored, **{k: ref[k] for k in ("first_box", "box_source", "reference", "object_id")},
                           "tracker": opt.tracking.tracker}
        per_frame["boxes"] = boxes
    if with_p and opt.processed_error:
        add_derived(out, out["warping_error_processed"], opt.tracking is not None)
    out["per_frame"] = per_frame
    return out


def add_derived(row: dict, e_processed: float, use_iou: bool) -> dict:
    """Set warping_error_processed, relative_reduction (D_t) and composite of a row, with notes for gaps."""
    row["warping_error_processed"] = e_processed
    row["relative_reduction"] = relative_reduction(row["warping_error"], e_processed)
    if math.isnan(row["relative_reduction"]):
        row["relative_reduction_note"] = "undefined: the processed video has zero warping error"
    row["composite"] = composite(row.get("lpips"), row["relative_reduction"], row.get("tracking_iou"), use_iou)
    if row["composite"] is None:
        parts = ["lpips", "relative_reduction"] + (["tracking_iou"] if use_iou else [])
        missing = [k for k in parts if row.get(k) is None or not math.isfinite(row[k])]
        row["composite_note"] = f"needs {', '.join(missing)}"
    return row
