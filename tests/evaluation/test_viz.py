"""tdms.evaluation.plots: side-by-side comparison videos and per-frame plots."""

import cv2
import numpy as np
import pytest

from tdms.evaluation.plots import plot_series, side_by_side
from tdms.frames.io import FrameSource, list_frames
from tdms.frames.writers import FrameWriter


def write_folder(folder, n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """n random uint8-exact float frames (h,w,3) written as PNGs; returns them."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (h, w, 3)).astype(np.float32) / 255.0 for _ in range(n)]
    with FrameWriter(folder) as writer:
        for f in frames:
            writer.write(f)
    return frames


def test_side_by_side_video_size_and_count(tmp_path):
    write_folder(tmp_path / "a", 5, 24, 32, seed=0)
    write_folder(tmp_path / "b", 4, 48, 40, seed=1)
    n = side_by_side([tmp_path / "a", str(tmp_path / "b")], ["input", "output"], tmp_path / "cmp.mp4", fps=12)
    # Height defaults to the first source's (24); b becomes 24 x 20 (40 * 24 / 48); the shortest (4) wins.
    assert n == 4
    out = FrameSource(tmp_path / "cmp.mp4")
    assert (len(out), out.size, out.fps) == (4, (24, 32 + 20), 12.0)


def test_side_by_side_folder_labels_and_pixels(tmp_path):
    frames = write_folder(tmp_path / "a", 3, 40, 64, seed=2)
    n = side_by_side([FrameSource(tmp_path / "a")] * 2, ["A", "B"], tmp_path / "cmp", max_frames=2, height=40)
    assert n == 2
    assert len(list_frames(tmp_path / "cmp")) == 2
    got = FrameSource(tmp_path / "cmp")[1]
    assert got.shape == (40, 128, 3)
    # Away from the labels each panel is the untouched input (same size, PNG is lossless).
    np.testing.assert_array_equal(got[20:, :64], frames[1][20:])
    np.testing.assert_array_equal(got[20:, 64:], frames[1][20:])
    # The label box darkens the top-left corner of each panel.
    for x0 in (0, 64):
        np.testing.assert_allclose(got[:3, x0 : x0 + 3], 0.3 * frames[1][:3, :3], atol=0.5 / 255)


def test_labels_are_white_text_on_a_dark_box(tmp_path):
    grey = [np.full((48, 64, 3), 0.5, np.float32)]
    side_by_side([grey, grey], ["left", "right"], tmp_path / "cmp")
    got = FrameSource(tmp_path / "cmp")[0]
    for x0 in (0, 64):
        label = got[:20, x0 : x0 + 30]
        assert label.min() == pytest.approx(38 / 255)  # box: 0.5 * 0.3 = 0.15, stored as 38/255
        assert label.max() > 0.85  # white anti-aliased text (thin strokes at this size peak ~0.9)
        np.testing.assert_array_equal(got[24:, x0 : x0 + 64], np.float32(128 / 255))  # the rest untouched


def test_side_by_side_arrays_and_odd_height(tmp_path):
    clip = [np.full((30, 45, 3), i / 10, np.float32) for i in range(3)]
    n = side_by_side([clip, iter(clip)], ["x", "y"], tmp_path / "cmp.avi", height=25)
    out = FrameSource(tmp_path / "cmp.avi")
    # Height 25 rounds down to 24 for the codec; 45 * 24 / 30 = 36 per panel; fps defaults to 30.
    assert (n, len(out), out.size, out.fps) == (3, 3, (24, 72), 30.0)
    assert abs(out[2][20:, 40:].mean() - 0.2) < 0.02  # lossy MJPG, flat grey


def test_side_by_side_rejects_label_mismatch(tmp_path):
    write_folder(tmp_path / "a", 2, 8, 8, seed=3)
    with pytest.raises(ValueError, match="2 sources but 1 labels"):
        side_by_side([tmp_path / "a", tmp_path / "a"], ["only one"], tmp_path / "cmp.mp4")
    assert not (tmp_path / "cmp.mp4").exists()


def test_plot_series_writes_png(tmp_path):
    out = tmp_path / "plots" / "warp_error.png"
    plot_series({"processed": [0.005, 0.006, 0.004], "ours": [0.002, 0.0025, 0.002]}, out, "E_warp", "error", start=1)
    img = cv2.imread(str(out))
    assert img.shape == (400, 800, 3)  # 8 x 4 inches at 100 dpi
    assert img.std() > 10  # axes and curves, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["warp_error.png"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_series({}, tmp_path / "empty.png", "t", "y")
