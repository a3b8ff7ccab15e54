"""Tracking IoU pieces: boxes, DAVIS palette annotations, the automatic first box, real OpenCV trackers."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tdms.evaluation.tracking import (
    annotation_boxes,
    box_iou,
    centre_box,
    is_flat,
    jpeg_copy,
    mask_box,
    motion_box,
    parse_box,
    read_ids,
    score_boxes,
    stable,
    texture_boxes,
    to_bgr8,
    track,
)

BG = data.coffee().astype(np.float32)[100:220, 100:260] / 255  # (120,160) real photo background
PATCH = data.astronaut().astype(np.float32)[30:62, 180:212] / 255  # (32,32) textured patch: a face


def moving_patch(n=12, dx=3, dy=2, x0=30, y0=20, vanish=None):
    """Frames with PATCH at (x0 + dx t, y0 + dy t) on BG; from frame `vanish` on the frame is flat grey."""
    frames, boxes = [], []
    for t in range(n):
        f = BG.copy()
        x, y = x0 + dx * t, y0 + dy * t
        if vanish is None or t < vanish:
            f[y : y + 32, x : x + 32] = PATCH
        else:
            f[:] = 0.5
        frames.append(f)
        boxes.append((x, y, 32, 32))
    return frames, boxes


def test_box_iou_by_hand():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (2, 3, 4, 5)) == pytest.approx(20 / 100)  # one inside the other
    assert box_iou((0, 0, 4, 4), (4, 0, 4, 4)) == 0.0  # touching edges share no pixel
    assert box_iou((0, 0, 4, 4), None) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_score_boxes_counts_lost_and_unreferenced_frames():
    ref = [(0, 0, 10, 10), (0, 0, 10, 10), None, (5, 0, 10, 10), (0, 0, 10, 10)]
    got = [(0, 0, 10, 10), (0, 0, 10, 10), (1, 1, 2, 2), (0, 0, 10, 10), None]
    # frame 0 is the shared start; frame 2 has no reference; frame 4 is lost and scores 0
    s = score_boxes(got, ref)
    assert s == {"iou": pytest.approx((1.0 + 50 / 150 + 0.0) / 3), "frames": 3, "lost": 1, "no_reference": 1}
    assert score_boxes([(0, 0, 1, 1), None], [(0, 0, 1, 1), None])["iou"] is None
    with pytest.raises(ValueError, match="2 tracked boxes but 3"):
        score_boxes(got[:2], ref[:3])


def test_mask_box_and_parse_box():
    mask = np.zeros((20, 30), bool)
    mask[4:9, 10:13] = True
    mask[15, 2] = True
    assert mask_box(mask) == (2, 4, 11, 12)
    assert mask_box(np.zeros((5, 5), bool)) is None
    assert parse_box("3,4,10,20") == (3, 4, 10, 20)
    for bad in ("3,4,10", "a,b,c,d", "1,1,0,5"):
        with pytest.raises(ValueError, match="x,y,w,h"):
            parse_box(bad)


def write_palette(path, ids: np.ndarray):
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)  # DAVIS-like: 0 black, 1 red, 2 green
    img.save(path)


def test_annotation_boxes_from_palette_pngs(tmp_path):
    for t in range(3):
        ids = np.zeros((24, 32), np.uint8)
        ids[2 + t : 6 + t, 3:7] = 1  # small object 1, moving down
        if t != 1:  # the large object 2 is missing from frame 1
            ids[10:20, 12:30] = 2
        write_palette(tmp_path / f"{t:05d}.png", ids)
    assert read_ids(tmp_path / "00000.png")[3, 4] == 1  # palette indices, not colours
    assert annotation_boxes(tmp_path, 3) == (2, [(12, 10, 18, 10), None, (12, 10, 18, 10)])  # largest by default
    assert annotation_boxes(tmp_path, 4, object_id=1) == (1, [(3, 2, 4, 4), (3, 3, 4, 4), (3, 4, 4, 4), None])


def test_annotation_without_object_in_first_frame(tmp_path):
    write_palette(tmp_path / "00000.png", np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"00000\.png: no object in the first frame"):
        annotation_boxes(tmp_path, 2)
    ids = np.zeros((8, 8))
    ids[2:4, 2:4] = 1
    write_palette(tmp_path / "00000.png", ids)
    with pytest.raises(ValueError, match="object id 3 is not in the first frame"):
        annotation_boxes(tmp_path, 2, object_id=3)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "00000.png")
    with pytest.raises(ValueError, match="RGB image"):
        annotation_boxes(tmp_path, 2)
    with pytest.raises(ValueError, match="no annotation of frame 0"):
        annotation_boxes(tmp_path / "none", 2)


def test_motion_box_finds_the_object_against_a_panning_camera():
    h, w = 60, 80
    flow = np.zeros((2, h, w), np.float32)
    flow[0] = 3.0  # the camera pans 3 px right
    flow[:, 20:35, 40:52] = np.array([6.0, 2.0])[:, None, None]  # the object moves on its own
    assert motion_box([flow, flow]) == (40, 20, 12, 15)
    assert motion_box([np.full((2, h, w), 2.0, np.float32)]) is None  # camera motion only
    band = flow.copy()
    ys, xs = np.mgrid[:h, :w]
    band[0][np.abs(xs - ys * w / h) < 6] = 9.0  # a moving band whose box is the whole frame is not an object
    assert motion_box([band]) is None
    speck = flow.copy()
    speck[0, 30:32, 30:32] = 9.0  # 4 pixels: removed by the opening
    assert motion_box([speck]) == (40, 20, 12, 15)
    assert centre_box((h, w)) == (20, 15, 40, 30)


def test_csrt_follows_a_moving_patch_on_a_photo():
    frames, truth = moving_patch()
    got = track(frames, truth[0], "csrt")
    assert got[0] == truth[0]
    ious = [box_iou(a, b) for a, b in zip(got, truth, strict=True)]
    assert min(ious) > 0.8 and np.mean(ious) > 0.9
    # a tracker that stays put would score much worse: the patch moves 33 px in x over the clip
    assert np.mean([box_iou(truth[0], b) for b in truth]) < 0.5
    assert score_boxes(got, truth)["lost"] == 0


def test_lost_track_scores_zero_and_is_counted():
    frames, truth = moving_patch(vanish=7)  # the object vanishes at frame 7: flat frames
    got = track(frames, truth[0], "csrt")
    assert got[7:] == [None] * 5
    s = score_boxes(got, truth)
    assert s["lost"] == 5 and s["frames"] == 11
    ious = [box_iou(a, b) for a, b in zip(got[1:7], truth[1:7], strict=True)]
    assert s["iou"] == pytest.approx(sum(ious) / 11)  # five zeros in the mean, not left out


def test_kcf_option_and_unknown_tracker():
    frames, truth = moving_patch(n=4, dx=1, dy=0)
    assert track(frames, truth[0], "kcf")[0] == truth[0]
    with pytest.raises(ValueError, match="unknown tracker 'mosse'"):
        track(frames, truth[0], "mosse")


def test_a_box_the_tracker_cannot_start_on_is_an_error():
    frames, _ = moving_patch(n=2)
    with pytest.raises(ValueError, match=r"csrt tracker cannot start on box \(5, 5, 1, 1\)"):
        track(frames, (5, 5, 1, 1), "csrt")


def test_flat_patches_and_textured_boxes():
    frame = np.full((96, 128, 3), 0.5, np.float32)
    frame[40:72, 70:102] = PATCH  # the only texture: a face
    bgr = to_bgr8(frame)
    assert is_flat(bgr, (0, 0, 40, 40)) and not is_flat(bgr, (70, 40, 32, 32))
    assert is_flat(bgr, (200, 200, 10, 10))  # outside the frame: nothing there
    boxes = texture_boxes(frame, count=3)
    assert all(b[2] == b[3] == 24 for b in boxes)  # a quarter of the short side
    assert box_iou(boxes[0], (70, 40, 32, 32)) > 0.3  # the best box lies on the face
    assert all(box_iou(a, b) < 0.1 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert texture_boxes(np.zeros((96, 128, 3), np.float32)) == []  # all black: no box at all
    copy = jpeg_copy(frame)
    assert copy.shape == frame.shape and 0 < np.abs(copy - frame).max() < 0.2


def test_stable_needs_the_same_path_on_the_copy_and_few_losses():
    ref = [(0, 0, 10, 10)] * 5
    assert stable(ref, ref)
    assert not stable(ref, [(0, 0, 10, 10)] + [(8, 0, 10, 10)] * 4)  # another path: IoU 2/18 per frame
    assert not stable(ref, ref[:4] + [None])  # one of the 4 scored frames lost on the copy: mean IoU 0.75
    six = [(0, 0, 10, 10)] * 6
    assert stable(six, six[:5] + [None])  # one of 5 lost: 0.8, just enough
    assert not stable(six[:2] + [None] * 4, six[:2] + [None] * 4)  # the reference itself is lost in 4 of 5
