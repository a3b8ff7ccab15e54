"""The recurrence over one video: O_0 = P_0, then O_t from (I_{t-1}, I_t, O_{t-1}, P_t); restarted at scene cuts.

Each method is a generator over (I_t, P_t) frame pairs yielding O_t as float32 (H,W,3) numpy frames, unclipped
(the writer clips).
"""

from itertools import chain, groupby, islice

import torch
import torch.nn.functional as F

from tdms.flow.warp import warp
from tdms.frames.io import frames_to_tensor, tensor_to_frame
from tdms.inference.fast import make_step


def pad_to(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflection-pad (B,C,H,W) on the right and bottom to multiples of `multiple`; returns the old size."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x, (h, w)


def tdms_frames(model, pairs, device="cpu", amp: str = "fp32"):
    """O_0 = P_0, then O_t = model(I_{t-1}, I_t, O_{t-1}, P_t): the plain path (fp32 NCHW unless amp says)."""
    return step_frames(make_step(model, device, amp), pairs, device)


@torch.inference_mode()
def step_frames(step, pairs, device="cpu"):
    """O_t of one video from its (I_t, P_t) frames; `step` from fast.make_step. O_{t-1} stays on the device."""
    i_prev = o_prev = state = None
    for i_np, p_np in pairs:
        i_t, size = pad_to(frames_to_tensor(i_np).to(device))
        p_t, _ = pad_to(frames_to_tensor(p_np).to(device))
        if o_prev is None:
            o_t = p_t
        else:
            o_t, state = step(i_prev, i_t, o_prev, p_t, state)
        yield tensor_to_frame(o_t[..., : size[0], : size[1]])
        i_prev, o_prev = i_t, o_t


def naive_frames(flow, pairs, a: float = 0.5):
    """O_t = (1 - a) P_t + a warp(O_{t-1}, flow(I_t -> I_{t-1})): the blend baseline of the model card (a = ½) and,
    over a = 0.1 .. 0.9, the trade-off curve of tdms.evaluation.tradeoff."""
    i_prev = o_prev = None
    for i_np, p_np in pairs:
        i_t, p_t = frames_to_tensor(i_np), frames_to_tensor(p_np)
        o_t = p_t if o_prev is None else (1 - a) * p_t + a * warp(o_prev, flow(i_t, i_prev))
        yield tensor_to_frame(o_t)
        i_prev, o_prev = i_t, o_t


def identity_frames(pairs):
    for _, p_np in pairs:
        yield p_np


def restart_at_cuts(frames, pairs, starts, t0: int = 0):
    """O_t of one video from a method's `frames` (iterator of (I_t, P_t) -> iterator of O_t), run afresh on each
    shot: O_t = P_t at every t where `starts(t, I_t)` (frames.cuts.ShotStarts) says a new shot begins. Frames
    are numbered from t0."""
    shot = 0

    def key(item) -> int:  # groupby calls it once per pair, in order
        nonlocal shot
        t, (i_t, _) = item
        shot += bool(starts(t, i_t))
        return shot

    pieces = groupby(enumerate(pairs, t0), key=key)
    return chain.from_iterable(frames(pair for _, pair in piece) for _, piece in pieces)


def restarted(frames, pairs, starts, first: int = 0, o_last=None):
    """O_t for t = first.. from frames(pairs) (a method's recurrence), restarted (O_t = P_t) where `starts` finds a
    new shot.

    With o_last, the O of frame first-1 read back, pairs begin at frame first-1 and the recurrence continues from
    o_last: it goes in as that frame's P, which the recurrences return as it is (O_0 = P_0), and is not yielded (not for
    ffmpeg-deflicker, whose window looks ahead).
    Closing this generator closes `pairs` (and so stops their decoding thread)."""
    t0 = first - 1 if o_last is not None else first

    def numbered():
        for t, (i_t, p_t) in enumerate(pairs, t0):
            yield t, (i_t, o_last if t < first else p_t)

    outs = restart_at_cuts(frames, (pair for _, pair in numbered()), starts, t0)
    try:
        yield from islice(outs, 1 if o_last is not None else 0, None)
    finally:
        pairs.close()
