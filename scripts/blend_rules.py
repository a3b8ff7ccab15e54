"""Where a blend can sit above the naive curve: a network's mask against two rules that need no training.

    python scripts/blend_rules.py --data data --phase val [--checkpoint checkpoints/tdms_offline.pth]

For every video of a phase (lists/<phase>_tasks.txt × lists/<dataset>_<phase>.txt) it runs, with the flows of the
DIS flow cache (the ones tdms-evaluate reads), O_0 = P_0 and

    naive curve      O_t = (1 - a) P_t + a W_t,  W_t = warp(O_{t-1}, F_t),  a = 0.1 .. 0.9
    occlusion        the same with a·(1 - occ_t): occ_t = 1 where the forward-backward test of F_t fails (Ruder et
                     al., as the warping error masks its pixels), so no pixel the metric ignores pays fidelity
    gate             a·(1 - ramp(max(occ_t, out_t), r)): the shipped checkpoint's occlusion gate over a constant,
                     out_t where F_t points out of the frame, ramp its (2r+1)² mean (--ramp, default 4)
    occlusion+frame  a·(1 - occ_t)·s_t with s_t = min(1, e_t / mean(e_1..e_t)), e_t the mean of (P_t - W_t)^2 over
                     visible pixels: a frame whose processed image already agrees with the past is smoothed less
    network          the checkpoint's own mask, flow and residual (fp32), and the same with its mask times
                     (1 - occ_t), times s_t, and times both

and prints each one's D_t, PSNR and margin above the naive curve (tdms.evaluation.tradeoff: the mean curve of the
videos, at the mean D_t; and the mean of the per-video margins). Why these: with both metrics mean squares of the
same difference d = P_t - W_t, O = P - a·d costs a²·d² in fidelity and buys (1 - a)²·d² of consistency at every
pixel alike, so a per-pixel a gains nothing where the warping error counts the pixel; where it does not (occlusion)
a = 0 is free, and PSNR is averaged over frames in dB, so an a that differs between frames can gain.
Slow on big splits (a network forward per frame per network variant): the builder's val split takes minutes.
"""

import argparse
import functools
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
from tqdm import tqdm

from tdms.evaluation.metrics import relative_reduction
from tdms.evaluation.tradeoff import as_written, curve_of, margin, mean_curve
from tdms.evaluation.video import means, score_frames
from tdms.flow.cache import FlowCache
from tdms.flow.dis import DISFlow
from tdms.flow.occlusion import occlusion_mask
from tdms.flow.warp import warp
from tdms.frames.io import FrameSource, frames_to_tensor, tensor_to_frame
from tdms.frames.layout import entries, tasks_file
from tdms.inference.recurrence import pad_to
from tdms.nets.build import load_model
from tdms.nets.tdms_net import compose, occlusion_gate

NETWORK = ("network", "network×(1-occ)", "network×s", "network×(1-occ)×s")


class FrameFactor:
    """s_t = min(1, e_t / mean(e_1..e_t)) over one video, e_t the visible pixels' mean of (P_t - W_t)^2."""

    def __init__(self):
        self.energies = []

    def __call__(self, p_t, warped, visible) -> float:
        e = float((((p_t - warped) ** 2).mean(1, keepdim=True) * visible).sum() / visible.sum().clamp(min=1))
        self.energies.append(e)
        mean = fmean(self.energies)
        return min(1.0, e / mean) if mean > 0 else 1.0


def blend(i_frames, p_frames, pair, variant: str, a: float = 0.0, model=None, r: int = 4) -> list[np.ndarray]:
    """O of one video by a rule ("occlusion", "gate", "occlusion+frame") or a network variant (NETWORK), as
    written; r: the gate's ramp."""
    factor, outs, o_prev = FrameFactor(), [], None
    h, w = i_frames[0].shape[:2]
    for t, p in enumerate(p_frames):
        p_t = frames_to_tensor(p)
        if o_prev is None:
            o_t = p_t
        else:
            fw, bw, _ = pair(t - 1)  # fw = flow(t-1 -> t), bw = F_t = flow(t -> t-1)
            visible = 1 - occlusion_mask(bw[None], fw[None])  # in frame t
            if model is None:
                warped = warp(o_prev, bw[None])
                if variant == "gate":
                    m = a * occlusion_gate(1 - visible, bw[None], r)
                else:
                    m = a * visible * (factor(p_t, warped, visible) if variant == "occlusion+frame" else 1.0)
                o_t = m * warped + (1 - m) * p_t
            else:
                i_prev, i_t = frames_to_tensor(i_frames[t - 1]), frames_to_tensor(i_frames[t])
                xs = [pad_to(x)[0] for x in (i_prev, i_t, o_prev, p_t)]
                given = {"prior": pad_to(bw[None])[0]} if model.flow_prior else {}
                if getattr(model, "occlusion_gate", "none") != "none":  # the cache's test, as the rules have it
                    given["occlusion"] = pad_to(1 - visible)[0]
                with torch.inference_mode():
                    heads = model.heads(*xs, **given)
                mask, flow, residual = (x[..., :h, :w] for x in heads)
                if "occ" in variant:
                    mask = mask * visible
                if variant.endswith("s"):
                    mask = mask * factor(p_t, warp(o_prev, flow), visible)
                o_t = compose(mask, flow, residual, o_prev, p_t, model.residual_gate)[0]
        outs.append(as_written(tensor_to_frame(o_t)))
        o_prev = o_t
    return outs


def point(outs, p_frames, pair, e_processed: float) -> tuple[float, float]:
    """(D_t, PSNR) of one video's outputs, scored by tdms-evaluate's per-pair loop (evaluation.video.score_frames);
    e_processed: E_warp of P (the naive curve's, which is the same video's)."""
    steps = ((o, p, None if t == 0 else pair(t - 1)[::2]) for t, (o, p) in enumerate(zip(outs, p_frames, strict=True)))
    scores = means(score_frames(steps, ["warping_error", "psnr", "ssim"], progress=False)[0])
    return relative_reduction(scores["warping_error"], e_processed), scores["psnr"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a Lai et al. layout (tdms-build-data's)")
    p.add_argument("--phase", default="val")
    p.add_argument("--checkpoint", default="", help="also score this network (default: the rules only)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--ramp", type=int, default=4, help="the gate rule's softening r (model.occlusion_ramp)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).eval() if args.checkpoint else None
    if model is not None and not hasattr(model, "heads"):
        p.error(f"{args.checkpoint}: not a TDMS-Net checkpoint (its mask, flow and residual heads are what is scored)")
    cache = FlowCache(args.data / "cache" / "flow", DISFlow("medium"))
    runs = {f"{rule} a={a:g}": (rule, a) for rule in ("occlusion", "gate", "occlusion+frame") for a in args.alphas}
    runs |= {name: (name, 0.0) for name in (NETWORK if model is not None else ())}
    points, curves = {name: [] for name in runs}, []
    for entry in tqdm(entries(args.data, args.phase, tasks_file(args.data, args.phase)), desc="videos"):
        i_frames, p_frames = list(FrameSource(entry.input)), list(FrameSource(entry.processed))
        pair = functools.lru_cache(maxsize=None)(lambda t, v=entry.input: cache.pair(v, t))
        curve = curve_of(i_frames, p_frames, pair, len(i_frames))
        curves.append(curve)
        for name, (variant, a) in runs.items():
            outs = blend(i_frames, p_frames, pair, variant, a, model if variant in NETWORK else None, args.ramp)
            points[name].append((*point(outs, p_frames, pair, curve["warping_error_processed"]), curve))
    curve = mean_curve(curves)
    print(f"{len(curves)} videos of {args.data} ({args.phase}); naive curve D_t / PSNR: " +
          ", ".join(f"{d:.3f}/{v:.2f}" for d, v in zip(curve["relative_reduction"], curve["psnr"], strict=True)))
    for name, pts in points.items():
        d_t, value = fmean(x[0] for x in pts), fmean(x[1] for x in pts)
        at_mean, note = margin(d_t, value, curve)
        per_video = [m for m in (margin(*x)[0] for x in pts) if m is not None]
        shown = f"{at_mean:+.2f} dB" if at_mean is not None else note
        print(f"  {name:22s} D_t {d_t:.3f}  PSNR {value:6.2f}  margin {shown}  "
              f"(mean of {len(per_video)} per-video margins {fmean(per_video):+.2f} dB)")


if __name__ == "__main__":
    main()
