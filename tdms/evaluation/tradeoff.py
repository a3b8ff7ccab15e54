"""The naive blend's trade-off curve and a method's margin above it.

The blend O_0 = P_0, O_t = (1 - a) P_t + a warp(O_{t-1}, F_t) with F_t = flow(I_t -> I_{t-1})
(tdms.inference.recurrence.naive_frames) trades fidelity for consistency as a grows: over a = 0.1 .. 0.9 its
(D_t, PSNR(O, P)) points trace a curve. A method is worth running where it sits above that curve, so its
margin is PSNR(O, P) minus the curve's PSNR at the method's own D_t, in dB: linear between the curve's points
taken in order of D_t, and None (with a note) outside the curve's D_t range, where nothing is interpolated.

The curve reads the flows of the flow cache (F_t is bw of the pair (t-1, t)), computes no flow and runs no
network; it is scored as tdms-test would write the blend (clipped, rounded to 8 bits, fed back unrounded) with the
metrics evaluate_video uses, so a method that is the blend at a curve point has margin 0 exactly. One pass
over the frames runs the nine blends side by side; the result is stored as JSON beside the input's flows.
"""

import functools
import json
import math
from itertools import tee
from pathlib import Path
from statistics import fmean

import numpy as np
from tqdm import tqdm

from tdms.evaluation.metrics import psnr, relative_reduction, warping_error_pair
from tdms.evaluation.video import open_videos
from tdms.files import from_json_safe, json_safe, write_bytes_atomic
from tdms.flow.cache import FlowCache, video_key
from tdms.frames.io import resized
from tdms.inference.recurrence import naive_frames

ALPHAS = tuple(k / 10 for k in range(1, 10))  # a = 0.1 .. 0.9
CURVE_VERSION = 1  # in the cache file's name: bump it when the curve's definition changes


class CachedFlow:
    """A flow(I_t, I_{t-1}) for naive_frames that computes nothing: its k-th call returns bw of the pair (k-1, k),
    i.e. flow(I_k -> I_{k-1}), from `pair(t) -> (fw, bw, occ)`. naive_frames calls it once per frame from t = 1."""

    def __init__(self, pair):
        self.pair, self.calls = pair, 0

    def __call__(self, img_a, img_b):
        self.calls += 1
        return self.pair(self.calls - 1)[1][None]  # (1,2,H,W)


def as_written(frame: np.ndarray) -> np.ndarray:
    """A float frame as tdms writes and reads it back: clipped to [0, 1], rounded to 8 bits (tdms.frames.io)."""
    return np.rint(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8).astype(np.float32) / 255.0


def curve_of(i_frames, p_frames, pair, n: int, progress: bool = False) -> dict:
    """The blend's points of one video: {"alphas", "relative_reduction", "psnr", "warping_error",
    "warping_error_processed", "n_frames"}, each metric a list over ALPHAS (means over the pairs / frames 1..N-1).

    i_frames, p_frames: the N frames (H,W,3) of I and P; pair(t) -> (fw, bw, occ) of the input pair (t, t+1).
    """
    streams = tee(zip(i_frames, p_frames, strict=True), len(ALPHAS) + 1)  # consumed in step: one frame buffered
    blends = [naive_frames(CachedFlow(pair), s, a) for s, a in zip(streams, ALPHAS, strict=False)]
    errors, psnrs, e_p = [[] for _ in ALPHAS], [[] for _ in ALPHAS], []
    prev = None
    frames = zip(streams[-1], *blends, strict=True)
    for t, ((_, p), *outs) in enumerate(tqdm(frames, total=n, desc="naive curve", disable=not progress, leave=False)):
        outs = [as_written(o) for o in outs]
        if prev is not None:
            fw, _, occ = pair(t - 1)
            e_p.append(warping_error_pair(p, prev[0], fw, occ))
            for k, o in enumerate(outs):
                errors[k].append(warping_error_pair(o, prev[1][k], fw, occ))
                psnrs[k].append(psnr(o, p))
        prev = p, outs
    e_processed = fmean(e_p)
    e = [fmean(v) for v in errors]
    return {"alphas": list(ALPHAS), "relative_reduction": [relative_reduction(v, e_processed) for v in e],
            "psnr": [fmean(v) for v in psnrs], "warping_error": e, "warping_error_processed": e_processed,
            "n_frames": n}


def blend_curve(cache: FlowCache, input_path, processed_path, resize: bool = False, progress: bool = False) -> dict:
    """The curve of one (input, processed) video pair, read from beside the input's flows or computed and stored
    there (the file's name holds the processed video's key, so P changed in place gets a new curve)."""
    src = open_videos({"input": Path(input_path), "processed": Path(processed_path)}, resize)
    path = cache.folder(input_path) / f"blend_v{CURVE_VERSION}_{video_key(src['processed'])}.json"
    if path.is_file():
        try:
            return from_json_safe(json.loads(path.read_text()))
        except ValueError:
            pass  # a damaged file: computed again below
    cache.prepare(input_path, progress=progress)
    pair = functools.lru_cache(maxsize=2)(lambda t: cache.pair(input_path, t))
    n, size = len(src["input"]), src["input"].size
    curve = curve_of(src["input"], resized(src["processed"], size), pair, n, progress)
    write_bytes_atomic(path, json.dumps(json_safe(curve)).encode())
    return curve


# --- the margin -------------------------------------------------------------------------------------------


def curve_range(curve: dict) -> tuple[list[float], list[float]]:
    """The curve's finite points as (D_t values, PSNR values), sorted by D_t; of equal D_t the first a's."""
    points = {}
    for d, p in sorted(zip(curve["relative_reduction"], curve["psnr"], strict=True), key=lambda dp: dp[0]):
        if math.isfinite(d) and math.isfinite(p):
            points.setdefault(d, p)
    return list(points), list(points.values())


def margin(d_t, psnr_value, curve: dict | None) -> tuple[float | None, str]:
    """(PSNR - the curve's PSNR at d_t, "") in dB, or (None, why not): no curve, a value that is None/NaN, or
    d_t outside the curve's D_t range."""
    if curve is None:
        return None, "no naive curve (needs the processed video)"
    if d_t is None or psnr_value is None or math.isnan(d_t) or math.isnan(psnr_value):
        return None, "needs D_t and PSNR"
    xs, ys = curve_range(curve)
    if not xs:
        return None, "the naive curve is undefined (the processed video has zero warping error)"
    if not xs[0] <= d_t <= xs[-1]:
        return None, f"D_t {d_t:.4f} outside the naive curve's D_t range {xs[0]:.4f}–{xs[-1]:.4f}"
    return psnr_value - float(np.interp(d_t, xs, ys)), ""


def set_margin(metrics: dict, curve: dict) -> None:
    """Put the blend curve and the margin at the row's own D_t into one video's metrics (margin_note when none)."""
    metrics["blend_curve"] = curve
    metrics["margin"], note = margin(metrics.get("relative_reduction"), metrics.get("psnr"), curve)
    if note:
        metrics["margin_note"] = note


def curve_text(curve: dict) -> list[str]:
    """The curve's points as "a: D_t / PSNR" texts, "0.5: 0.528 / 34.84"."""
    return [f"{a:g}: {d:.3f} / {p:.2f}" for a, d, p in zip(curve["alphas"], curve["relative_reduction"],
                                                            curve["psnr"], strict=True)]


def mean_curve(curves: list[dict]) -> dict:
    """The curve of several videos (or tasks): at each a, the mean D_t and the mean PSNR (unweighted)."""
    alphas = curves[0]["alphas"]
    return {"alphas": list(alphas),
            **{k: [fmean(c[k][j] for c in curves) for j in range(len(alphas))] for k in ("relative_reduction", "psnr")}}


def mean_point(points: list[tuple[float, float, dict]]) -> dict:
    """The trade-off point of several (D_t, PSNR, curve) (a task's videos, a dataset's tasks): the mean D_t, the mean
    PSNR, the mean curve and the margin between them, with margin_note when there is no margin."""
    if not points:
        return {"margin": None, "margin_note": "no video with D_t, PSNR and a naive curve"}
    d_t, value = fmean(p[0] for p in points), fmean(p[1] for p in points)
    curve = mean_curve([p[2] for p in points])
    out = {"relative_reduction": d_t, "psnr": value, "curve": curve, "videos": len(points)}
    out["margin"], note = margin(d_t, value, curve)
    return out | ({"margin_note": note} if note else {})
