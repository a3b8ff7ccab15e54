"""FFmpeg's deflicker as a method: each frame's mean luma becomes the mean over its window, and a cut restarts it."""

import numpy as np
import pytest

from tdms.errors import UserError
from tdms.frames.cuts import ShotStarts
from tdms.inference.deflicker import deflicker_frames
from tdms.inference.methods import make_method
from tdms.inference.recurrence import restart_at_cuts
from tests.frames.videos import real_shot


def luma(f: np.ndarray) -> float:
    """Mean BT.601 limited-range luma (16..235) of a float RGB frame, as FFmpeg's RGB -> YUV conversion makes it."""
    return float((16 + 219 * (f @ np.array([0.299, 0.587, 0.114]))).mean())


def flickering(n=9, seed=0):
    """A real frame (carphone) under per-frame gains 0.8..1.2, float RGB."""
    base = real_shot("carphone_pristine.mp4", 1)[0].astype(np.float32) / 255 * 0.8  # no gain clips it
    gains = np.random.default_rng(seed).uniform(0.8, 1.2, n)
    return [np.clip(base * g, 0, 1).astype(np.float32) for g in gains]


def test_each_frame_takes_the_mean_luma_of_its_window():
    p = flickering()
    size = 4
    outs = list(deflicker_frames([(f, f) for f in p], size))
    assert len(outs) == len(p)
    y_in, y_out = [luma(f) for f in p], [luma(o) for o in outs]
    for t in range(len(p)):
        window = (y_in + [y_in[-1]] * size)[t : t + size]  # the frame and the size-1 after it; the last repeated
        assert abs(y_out[t] - np.mean(window)) < 0.01 * y_out[t], t
    assert np.std(y_out) < 0.7 * np.std(y_in)  # measured 0.54: a mean of 4 independent gains


def test_a_cut_restarts_the_window():
    a, b = flickering(5, seed=1), [f[:, ::-1] * 0.5 for f in flickering(5, seed=2)]
    method = make_method("ffmpeg-deflicker", deflicker_size=3)
    i_a, i_b = real_shot("carphone_pristine.mp4", 1)[0] / 255, real_shot("bigbuckbunny.mp4", 1)[0] / 255
    pairs = [(i_a, f) for f in a] + [(i_b, f) for f in b]  # the original frames hold still, and cut at 5
    starts = ShotStarts()
    joined = list(restart_at_cuts(method.frames, pairs, starts))
    assert starts.cuts == [5]
    alone = list(method.frames(pairs[:5])) + list(method.frames(pairs[5:]))
    for x, y in zip(joined, alone, strict=True):
        np.testing.assert_array_equal(x, y)
    mixed = list(method.frames(pairs))  # without the restart, shot b's first frames take shot a's frames' luma
    assert abs(luma(mixed[4]) - luma(joined[4])) > 0.05 * luma(joined[4])
    assert method.made_by == {"method": "ffmpeg-deflicker", "deflicker_size": 3}


def test_size_bounds():
    with pytest.raises(UserError, match="must be in 2..129"):
        make_method("ffmpeg-deflicker", deflicker_size=1)
