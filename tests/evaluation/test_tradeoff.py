"""The naive blend's trade-off curve and the margin: known answers on a tiny real clip and on hand-made curves."""

import math

import numpy as np
import pytest

from tdms.evaluation.tradeoff import ALPHAS, blend_curve, margin, mean_curve, mean_point
from tdms.evaluation.video import evaluate_video
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.io import FrameSource
from tdms.inference.recurrence import naive_frames
from tests.conftest import flicker, moving_frames, write_video

CURVE = {"alphas": [0.1, 0.5, 0.9], "relative_reduction": [0.2, 0.5, 0.8], "psnr": [40.0, 34.0, 31.0]}


@pytest.fixture
def clip(tmp_path):
    frames = moving_frames(n=6, h=32, w=40, shift=2)
    return write_video(tmp_path / "input", frames), write_video(tmp_path / "processed", flicker(frames, 0.1))


class Counting:
    """A flow backend that counts its calls."""

    def __init__(self, backend):
        self.backend, self.name, self.calls = backend, backend.name, 0

    def __call__(self, a, b):
        self.calls += 1
        return self.backend(a, b)


def test_the_blend_itself_has_margin_zero_at_its_curve_point(clip, tmp_path):
    inp, proc = clip
    cache = FlowCache(tmp_path / "cache", build_flow("dis", "medium"))
    curve = blend_curve(cache, inp, proc)
    assert curve["alphas"] == list(ALPHAS) and len(curve["psnr"]) == 9
    d = curve["relative_reduction"]
    assert all(x < y for x, y in zip(d, d[1:], strict=False)) and 0 < d[0] and d[-1] < 1  # more a, more consistent
    assert curve["psnr"][0] > curve["psnr"][-1]  # and less faithful
    for k in (2, 4):  # a = 0.3 (a parameter) and 0.5 (naive_frames' default: tdms-test --method naive)
        pairs = zip(FrameSource(inp), FrameSource(proc), strict=True)
        blend = naive_frames(build_flow("dis", "medium"), pairs, ALPHAS[k]) if k != 4 else naive_frames(
            build_flow("dis", "medium"), pairs)
        out = write_video(tmp_path / f"blend{k}", list(blend))  # written as tdms-test writes: 8-bit PNG
        m = evaluate_video(cache, inp, out, proc, progress=False)
        assert m["relative_reduction"] == pytest.approx(d[k], abs=1e-12)
        value, note = margin(m["relative_reduction"], m["psnr"], curve)
        assert note == "" and value == pytest.approx(0.0, abs=1e-9)


def test_the_curve_computes_no_flow_and_is_reused(clip, tmp_path):
    inp, proc = clip
    backend = Counting(build_flow("dis", "ultrafast"))
    cache = FlowCache(tmp_path / "cache", backend)
    cache.prepare(inp, progress=False)
    computed = backend.calls
    first = blend_curve(cache, inp, proc)
    assert backend.calls == computed  # the flows of the cache only
    files = list(cache.folder(inp).glob("blend_*.json"))
    assert len(files) == 1
    again = blend_curve(FlowCache(tmp_path / "cache", backend), inp, proc)
    assert again == first and backend.calls == computed
    flat = write_video(tmp_path / "flat", list(FrameSource(inp)))  # another P: another curve beside the flows
    assert blend_curve(cache, inp, flat) != first and len(list(cache.folder(inp).glob("blend_*.json"))) == 2


def test_margin_between_curve_points_and_outside():
    assert margin(0.5, 35.0, CURVE) == (1.0, "")  # at a point: exact
    value, _ = margin(0.35, 38.0, CURVE)  # halfway between 0.2 (40 dB) and 0.5 (34 dB): 37 dB
    assert value == pytest.approx(1.0, abs=1e-12)
    value, _ = margin(0.8, 30.5, CURVE)  # at the last point, below it
    assert value == pytest.approx(-0.5, abs=1e-12)
    for d_t in (0.1, 0.85):
        value, note = margin(d_t, 35.0, CURVE)
        assert value is None and f"D_t {d_t:.4f} outside" in note and "0.2000–0.8000" in note
    assert margin(0.5, 35.0, None)[0] is None and margin(math.nan, 35.0, CURVE)[0] is None
    undefined = {**CURVE, "relative_reduction": [math.nan] * 3}
    value, note = margin(0.5, 35.0, undefined)
    assert value is None and "zero warping error" in note


def test_margin_takes_curve_points_in_order_of_d_t():
    shuffled = {"alphas": [0.9, 0.1, 0.5], "relative_reduction": [0.8, 0.2, 0.5], "psnr": [31.0, 40.0, 34.0]}
    assert margin(0.35, 38.0, shuffled)[0] == pytest.approx(1.0, abs=1e-12)


def test_mean_point_of_videos_against_their_mean_curve():
    lower = {**CURVE, "psnr": [p - 2.0 for p in CURVE["psnr"]]}
    curves = [CURVE, lower]
    mean = mean_curve(curves)
    assert mean["psnr"] == pytest.approx([39.0, 33.0, 30.0])
    assert mean["relative_reduction"] == pytest.approx([0.2, 0.5, 0.8])
    # videos at D_t 0.4 and 0.6 (mean 0.5), PSNR 34 and 36 (mean 35): 2 dB above the mean curve's 33 dB at 0.5
    point = mean_point([(0.4, 34.0, CURVE), (0.6, 36.0, lower)])
    assert point["relative_reduction"] == pytest.approx(0.5) and point["margin"] == pytest.approx(2.0)
    far = mean_point([(0.9, 30.0, CURVE)])
    assert far["margin"] is None and "outside" in far["margin_note"]
    assert mean_point([])["margin"] is None


def test_blend_frames_follow_the_formula():
    rng = np.random.default_rng(0)
    frames = [rng.random((8, 10, 3)).astype(np.float32) for _ in range(3)]
    zero = lambda a, b: a.new_zeros((1, 2, 8, 10))  # noqa: E731  no motion: warp is the identity
    out = list(naive_frames(zero, zip(frames, frames, strict=True), 0.25))
    assert np.array_equal(out[0], frames[0])
    np.testing.assert_allclose(out[1], 0.75 * frames[1] + 0.25 * frames[0], atol=1e-6)
    np.testing.assert_allclose(out[2], 0.75 * frames[2] + 0.25 * out[1], atol=1e-6)
