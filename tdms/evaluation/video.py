"""Evaluation of one result video: warping error (Lai et al. 2018), relative reduction D_t, PSNR/SSIM, LPIPS,
tracking IoU and the composite score (TDMS), in one pass over the frames (`score_frames`).

tdms-evaluate reads the frames from files and the flows through a FlowCache (`evaluate_video`), so each input
video's flows and tracking reference are computed once however many tasks and methods are evaluated on it;
the Python API passes frames held in memory and computes each flow as it goes (`evaluate_clips`). Flows come
from the original frames only.
"""

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from statistics import fmean, median

from tqdm import tqdm

from tdms.errors import UserError
from tdms.evaluation.lpips import lpips_distance
from tdms.evaluation.metrics import composite, psnr, relative_reduction, ssim, warping_error_pair
from tdms.evaluation.tracking import (
    BOXES,
    CHECK_QUALITY,
    FLAT_STD,
    MOTION_PAIRS,
    STABLE_IOU,
    Tracks,
    annotation_boxes,
    check_box,
    jpeg_copy,
    motion_box,
    score_boxes,
    stable,
    texture_boxes,
)
from tdms.files import write_bytes_atomic
from tdms.flow.cache import FlowCache, pair_flows
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


# --- the one pass over the frames ------------------------------------------------------------------------


def metric_names(processed: bool, processed_error: bool, lpips) -> list[str]:
    """The per-frame metrics of a pass: the warping error; with P also PSNR and SSIM of O vs P, E(P) (unless
    processed_error is off) and LPIPS (with a model)."""
    names = ["warping_error"] + (["psnr", "ssim"] if processed else [])
    names += ["warping_error_processed"] if processed and processed_error else []
    return names + (["lpips"] if processed and lpips is not None else [])


def score_frames(steps: Iterable, names: list[str], lpips=None, tracker: Tracks | None = None, n: int | None = None,
                 desc: str = "evaluate", progress: bool = True) -> tuple[dict, list | None, str | None]:
    """One pass over a video: (per_frame, boxes, tracking note).

    steps: (O_t, P_t or None, (fw, occ) of the input pair (t-1, t) or None at t = 0) for t = 0..N-1, frames
    float (H,W,3) in [0,1], fw = flow(I_{t-1} -> I_t) (2,H,W), occ (1,H,W) 1 = occluded. per_frame[name] holds
    entry k for the pair (k, k+1). boxes: per frame the list of the tracker's boxes (one per reference track),
    or None without a tracker or when it cannot start (the note says why).
    """
    per_frame = {k: [] for k in names}
    boxes, note, prev = ([] if tracker is not None else None), None, None
    for o, p, flow in tqdm(steps, total=n, desc=desc, unit="frame", disable=not progress, leave=False):
        if flow is not None:
            score_pair(per_frame, lpips, (o, p), prev, flow)
        if tracker is not None:
            try:
                boxes.append(tracker.step(o))
            except ValueError as err:  # cannot start on this box
                tracker, boxes, note = None, None, str(err)
        prev = o, p
    return per_frame, boxes, note


def score_pair(per_frame: dict, lpips, now: tuple, prev: tuple, flow: tuple) -> None:
    """Append the metrics in per_frame of the frames now = (O_t, P_t) after prev = (O_{t-1}, P_{t-1})."""
    (o, p), (o_prev, p_prev), (fw, occ) = now, prev, flow
    per_frame["warping_error"].append(warping_error_pair(o, o_prev, fw, occ))
    if "warping_error_processed" in per_frame:
        per_frame["warping_error_processed"].append(warping_error_pair(p, p_prev, fw, occ))
    if "psnr" in per_frame:
        per_frame["psnr"].append(psnr(o, p))
        per_frame["ssim"].append(ssim(o, p))
    if "lpips" in per_frame:
        per_frame["lpips"].append(lpips_distance(lpips, o, p))


def means(per_frame: dict) -> dict:
    """The mean of every per-frame list (psnr is inf when a frame of O equals P's)."""
    return {k: fmean(v) for k, v in per_frame.items()}


def add_derived(row: dict, e_processed: float, use_iou: bool) -> dict:
    """Set warping_error_processed, relative_reduction (D_t) and composite of a row, with notes for gaps.

    The one place D_t and the composite are computed: for one video here, for batch rows (whose E(processed)
    is its own job's) in report.add_relative."""
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


def evaluate_clips(tuples: Iterable, backend, processed: bool, lpips=None, n: int | None = None) -> dict:
    """Metrics of frames held in memory: tuples (I_t, O_t[, P_t]) of float frames (tdms.frames.arrays.start).

    The flow of each input pair is computed as the pass reaches it (pair_flows, as the flow cache computes
    it). Returns the means of metric_names(processed, True, lpips) and, with P, D_t and the composite
    without tracking."""

    def steps():
        flow, i_prev = None, None
        for frames in tuples:
            if i_prev is not None:
                fw, _, occ = pair_flows(backend, i_prev, frames[0])
                flow = fw, occ
            yield frames[1], frames[2] if processed else None, flow
            i_prev = frames[0]

    per_frame, _, _ = score_frames(steps(), metric_names(processed, True, lpips), lpips, n=n, desc="scores")
    row = means(per_frame)
    if processed:
        add_derived(row, row["warping_error_processed"], use_iou=False)
    return row


# --- one video of files, through the flow cache ---------------------------------------------------------


def open_videos(videos: dict[str, Path], resize: bool = False) -> dict[str, FrameSource]:
    """Open {role: path} (frames.io.open_clips: counts, numbers and sizes checked) with >= 2 frames."""
    sources = open_clips(videos, resize, "--resize")
    ref = next(iter(sources.values()))
    if len(ref) < 2:
        raise UserError(f"{ref.path}: the warping error needs at least 2 frames, found {len(ref)}")
    return sources


def prepare_input(cache: FlowCache, video, tracking: Tracking | None, progress: bool = False
                  ) -> tuple[dict | None, str]:
    """Flows of every pair of an input video, then its tracking reference: (reference, note) or, when there is
    no tracking or no reference track, (None, why not: "" without tracking). Both are stored in the cache."""
    cache.prepare(video, progress=progress)
    if tracking is None:
        return None, ""
    try:
        ref = reference(cache, Path(video), tracking, progress)
    except ValueError as err:
        return None, str(err)
    return (ref if ref["tracks"] else None), ref["note"]


def first_boxes(cache: FlowCache, video: Path, spec: Tracking) -> list[tuple[tuple, str]]:
    """Candidate (box, how it was chosen) of a video without annotations, from its original frames only: the
    user's box alone, else motion_box's (when there is one) then texture_boxes of frame 0."""
    src = cache.source(video)
    if spec.box is not None:
        check_box(spec.box, src.size, video)
        return [(tuple(spec.box), "user")]
    pairs = min(MOTION_PAIRS, len(src) - 1)
    box = motion_box([cache.pair(video, t)[0].numpy() for t in range(pairs)])
    return ([(box, "motion")] if box else []) + [(b, "texture") for b in texture_boxes(src[0])]


def reference(cache: FlowCache, video: Path, spec: Tracking, progress: bool = False) -> dict:
    """Reference tracks of an input video, cached beside its flows.

    From the annotations when spec.annotations exists, else `tracker_reference`. Returns {"reference",
    "object_id", "tracks": [{"box", "source", "boxes"}], "note"}; no tracks means no tracking IoU (the note).
    """
    annotated = spec.annotations is not None and Path(spec.annotations).is_dir()
    key = json.dumps([2, spec.tracker, spec.box, str(spec.annotations) if annotated else None, spec.object_id])
    path = cache.folder(video) / f"track_{hashlib.sha1(key.encode()).hexdigest()[:10]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if annotated:
        object_id, boxes = annotation_boxes(spec.annotations, len(cache.source(video)), spec.object_id)
        ref = {"reference": "annotations", "object_id": object_id, "note": "",
               "tracks": [{"box": boxes[0], "source": "annotation", "boxes": boxes}]}
    else:
        ref = tracker_reference(cache, video, spec, progress)
    write_bytes_atomic(path, json.dumps(ref).encode())
    return ref


def tracker_reference(cache: FlowCache, video: Path, spec: Tracking, progress: bool) -> dict:
    """The tracker on the original frames from every candidate of first_boxes, and on their JPEG copies in the
    same pass; the first BOXES stable ones (tracking.stable) are the reference tracks. A user box is kept
    either way, with a note when it is not stable; without a stable box there are no tracks, and the note."""
    cands, name = first_boxes(cache, video, spec), spec.tracker
    ref = {"reference": "tracker", "object_id": None, "tracks": [], "note": ""}
    if not cands:
        return {**ref, "note": f"nothing to track: the first input frame is flat (below {FLAT_STD} grey levels)"}
    on_input, on_copy = Tracks([b for b, _ in cands], name), Tracks([b for b, _ in cands], name)
    frames = tqdm(cache.source(video), desc=f"{name} reference", unit="frame", disable=not progress, leave=False)
    runs = [(on_input.step(f), on_copy.step(jpeg_copy(f))) for f in frames]  # per frame: (boxes, boxes on the copy)
    tracks = []
    for i, (box, how) in enumerate(cands):
        boxes, check = [r[0][i] for r in runs], [r[1][i] for r in runs]
        tracks.append({"box": box, "source": how, "boxes": boxes, "stable": stable(boxes, check)})
    keep = [t for t in tracks if t["stable"]][:BOXES]
    why = (f"the {name} tracker on the input is not stable (on a JPEG copy of quality {CHECK_QUALITY} it follows"
           f" another path, mean IoU < {STABLE_IOU}, or it loses the box in over half the frames)")
    if spec.box is not None and not keep:
        return {**ref, "tracks": tracks, "note": f"box {tuple(spec.box)}: {why}; the IoU may measure chance"}
    if not keep:
        return {**ref, "note": f"no reference track: in all {len(tracks)} boxes tried {why}"}
    return {**ref, "tracks": keep}


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
    n, size, with_p = len(src["input"]), src["input"].size, processed_path is not None
    ref, note = prepare_input(cache, roles["input"], opt.tracking, progress)
    tracker = Tracks([t["box"] for t in ref["tracks"]], opt.tracking.tracker) if ref is not None else None
    processed = resized(src["processed"], size) if with_p else repeat(None, n)
    flows = chain([None], (cache.forward(roles["input"], t) for t in range(n - 1)))
    steps = zip(resized(src["results"], size), processed, flows, strict=True)
    names = metric_names(with_p, opt.processed_error, opt.lpips)
    per_frame, boxes, track_note = score_frames(steps, names, opt.lpips, tracker, n, progress=progress)
    out = {"flow": cache.backend.name, "n_frames": n}
    if note or track_note:
        out.update(tracking_iou=None, tracking_note=track_note or note)
    out.update(means(per_frame))
    if with_p and opt.lpips is None:
        out.update(lpips=None, lpips_note=opt.lpips_note or "LPIPS not computed")
    if boxes is not None:
        add_tracking(out, boxes, ref, opt.tracking.tracker)
        per_frame["boxes"] = [b[0] for b in boxes]  # the first reference track's
    if with_p and opt.processed_error:
        add_derived(out, out["warping_error_processed"], opt.tracking is not None)
    out["per_frame"] = per_frame
    return out


def add_tracking(out: dict, boxes: list, ref: dict, tracker: str) -> None:
    """Set tracking_iou, the median over the reference tracks of their mean IoU (score_boxes), with a note when
    no frame has a reference box or every track is lost; first_box, box_source, frames, lost and no_reference
    in out["tracking"] are the first track's, out["tracking"]["tracks"] has every track's box, source and IoU."""
    scores = [score_boxes([b[i] for b in boxes], t["boxes"]) for i, t in enumerate(ref["tracks"])]
    ious = [s["iou"] for s in scores if s["iou"] is not None]
    out["tracking_iou"] = median(ious) if ious else None
    if not ious:
        out["tracking_note"] = "no frame after the first has a reference box"
    elif all(s["lost"] == s["frames"] for s in scores):
        out["tracking_note"] = "the tracker lost every box on the result (is it blank where the input is not?)"
    first, track0 = {k: v for k, v in scores[0].items() if k != "iou"}, ref["tracks"][0]
    out["tracking"] = {**first, "first_box": track0["box"], "box_source": track0["source"],
                       "reference": ref["reference"], "object_id": ref["object_id"], "tracker": tracker,
                       "tracks": [{"box": t["box"], "source": t["source"], "iou": s["iou"], "lost": s["lost"]}
                                  for t, s in zip(ref["tracks"], scores, strict=True)]}
