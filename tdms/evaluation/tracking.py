"""Tracking IoU (TDMS's own metric): a single-object tracker run on a result video from a first-frame box,
scored by IoU against reference boxes.

Boxes are (x, y, w, h) integer pixels; None means "no box" (object absent, or the tracker lost it).
Reference boxes come from DAVIS annotations (palette PNGs, 0 = background) when there are any, otherwise
from the same tracker run on the original frames. Without annotations several first boxes are chosen from the
original frames only (`motion_box`: the largest region moving against the camera, then `texture_boxes`), each
kept only where the tracker is stable on the original (`stable`); the score is the median over the boxes.
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tdms.errors import UserError
from tdms.frames.io import list_frames

TRACKERS = ("csrt", "kcf")
MOTION_PAIRS = 5  # the first box looks at the flows of frames 0..5
MIN_MOTION_PX = 0.5  # residual motion (px per frame) below this is camera motion or flow noise
MIN_AREA, MAX_AREA = 0.002, 0.5  # a moving region outside these fractions of the frame is not an object
BOXES = 5  # boxes tracked per video without annotations; tracking_iou is the median of their mean IoUs
CANDIDATES = 10  # textured boxes of the first original frame tried as references
FLAT_STD = 1.0  # grey levels (of 255): a patch whose standard deviation is below this has nothing to track
CHECK_QUALITY = 85  # a reference is stable when the tracker follows the same path on a JPEG copy this good ...
STABLE_IOU = 0.8  # ... with a mean IoU of at least this against the track on the original frames


def make_tracker(name: str):
    """A fresh OpenCV-contrib tracker (no downloaded model): csrt or kcf."""
    classes = {"csrt": "TrackerCSRT", "kcf": "TrackerKCF"}
    if name not in classes:
        raise UserError(f"unknown tracker {name!r}; choose from {list(TRACKERS)}")
    cls = getattr(cv2, classes[name], None)  # OpenCV >= 4.5.1 (and 5) keep them here; cv2.legacy has old ones
    if cls is None:
        raise UserError(f"OpenCV {cv2.__version__} has no {classes[name]}: install opencv-contrib-python-headless")
    return cls.create()


def to_bgr8(img) -> np.ndarray:
    """float RGB (H,W,3) in [0,1] -> uint8 BGR, what the trackers take."""
    return cv2.cvtColor(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def is_flat(bgr: np.ndarray, box) -> bool:
    """True when the part of a uint8 BGR frame under an (x, y, w, h) box varies by less than FLAT_STD grey levels
    (an all-black frame, a blank region): there is nothing a tracker could follow."""
    x, y, w, h = box
    patch = bgr[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]
    return patch.size == 0 or float(cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).std()) < FLAT_STD


class Track:
    """Feed frames one at a time: the first call starts the tracker on `box`, later ones return its box or None.

    A box over a flat patch (is_flat) is a loss: on a blank frame a tracker reports success while following
    nothing. A box that is flat on the first frame loses every later frame."""

    def __init__(self, box, tracker: str = "csrt"):
        self.box, self.name, self.tracker, self.dead = tuple(int(v) for v in box), tracker, None, False

    def step(self, frame):
        bgr = to_bgr8(frame)
        if self.tracker is None:
            self.tracker, self.dead = make_tracker(self.name), is_flat(bgr, self.box)
            try:
                self.tracker.init(bgr, self.box)
            except cv2.error as err:  # e.g. CSRT on a 1x1 box
                raise UserError(f"{self.name} tracker cannot start on box {self.box}: {err.err}") from None
            return self.box
        if self.dead:
            return None
        try:
            ok, box = self.tracker.update(bgr)
        except cv2.error:  # a tracker that fails inside has lost the object
            return None
        box = tuple(int(round(v)) for v in box)
        return box if ok and box[2] > 0 and box[3] > 0 and not is_flat(bgr, box) else None


class Tracks:
    """Several Track of one video in one pass: step(frame) -> the list of their boxes (or None)."""

    def __init__(self, boxes, tracker: str = "csrt"):
        self.tracks = [Track(b, tracker) for b in boxes]

    def step(self, frame) -> list:
        return [t.step(frame) for t in self.tracks]


def track(frames, box, tracker: str = "csrt") -> list:
    """Boxes of every frame (frame 0: `box`), None where the tracker reports a loss."""
    t = Track(box, tracker)
    return [t.step(f) for f in frames]


def jpeg_copy(frame, quality: int = CHECK_QUALITY) -> np.ndarray:
    """A float RGB frame through a JPEG round trip: a copy that looks the same to a person."""
    ok, buf = cv2.imencode(".jpg", to_bgr8(frame), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is None or the union is empty."""
    if a is None or b is None:
        return 0.0
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def score_boxes(boxes: list, reference: list) -> dict:
    """Mean IoU over frames 1..N-1 that have a reference box (frame 0 is the shared start).

    A lost track (None) scores 0 and is counted in `lost`; frames without a reference box are left out
    and counted in `no_reference`. iou is None when no frame is left.
    """
    if len(boxes) != len(reference):
        raise UserError(f"{len(boxes)} tracked boxes but {len(reference)} reference boxes")
    scored = [(b, r) for b, r in zip(boxes[1:], reference[1:], strict=True) if r is not None]
    return {
        "iou": float(np.mean([box_iou(b, r) for b, r in scored])) if scored else None,
        "frames": len(scored),
        "lost": sum(b is None for b, _ in scored),
        "no_reference": len(boxes) - 1 - len(scored),
    }


def mean_iou(boxes: list, reference: list) -> float:
    """Mean IoU over frames 1..N-1 of two tracks (None = lost or no box counts 0)."""
    return float(np.mean([box_iou(b, r) for b, r in zip(boxes[1:], reference[1:], strict=True)]))


def stable(reference: list, check: list) -> bool:
    """A reference track is stable when it is lost in at most half of the frames and the tracker started on the
    same box of the JPEG copy (jpeg_copy) follows it with a mean IoU of at least STABLE_IOU: where an unseen
    change of the pixels already moves the tracker elsewhere, its IoU would measure chance, not the result."""
    lost = sum(b is None for b in reference[1:])
    return 2 * lost <= len(reference) - 1 and mean_iou(check, reference) >= STABLE_IOU


def mask_box(mask: np.ndarray):
    """Bounding box (x, y, w, h) of the True pixels of an (H,W) mask, or None if there are none."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def read_ids(path: Path) -> np.ndarray:
    """Object ids (H,W) of a DAVIS annotation: palette index of a 'P' PNG, or the value of a grey one."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1"):
                raise UserError(f"{path}: annotation is a {img.mode} image, want a palette or grey PNG of ids")
            return np.asarray(img.convert("L") if img.mode == "1" else img)
    except OSError as err:
        raise UserError(f"{path}: cannot read annotation ({err})") from None


def annotation_boxes(folder, n_frames: int, object_id: int | None = None) -> tuple[int, list]:
    """(object id, box per frame) from DAVIS annotations <folder>/%05d.png; None where it is absent.

    object_id None picks the largest object of the first frame. A first frame without that object (or
    without any) is a ValueError naming the file: there is nothing to start a tracker on.
    """
    files = {int(p.stem): p for p in list_frames(folder)} if Path(folder).is_dir() else {}
    if 0 not in files:
        raise UserError(f"{folder}: no annotation of frame 0 (want {Path(folder) / '00000.png'})")
    first = read_ids(files[0])
    if object_id is None:
        ids, counts = np.unique(first[first > 0], return_counts=True)
        if len(ids) == 0:
            raise UserError(f"{files[0]}: no object in the first frame (all background)")
        object_id = int(ids[np.argmax(counts)])
    if not (first == object_id).any():
        raise UserError(f"{files[0]}: object id {object_id} is not in the first frame")
    boxes = [mask_box(read_ids(files[t]) == object_id) if t in files else None for t in range(n_frames)]
    return object_id, boxes


def motion_box(flows):
    """The largest region moving against the camera over a few frames, as a box, or None.

    flows: (2,H,W) arrays flow(t -> t+1) of the first frames. The camera's motion is taken as the
    per-axis median flow; a pixel moves on its own where its mean residual |flow - median| exceeds
    max(MIN_MOTION_PX, 3 x the median residual). After a 3x3 opening the largest connected region wins
    if its box covers MIN_AREA..MAX_AREA of the frame.
    """
    residual = np.mean(
        [np.linalg.norm(f - np.median(f.reshape(2, -1), axis=1)[:, None, None], axis=0) for f in flows], axis=0
    )  # (H,W) pixels per frame
    moving = (residual > max(MIN_MOTION_PX, 3 * float(np.median(residual)))).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
    if count < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the still part
    x, y, w, h = (int(v) for v in stats[k, :4])
    area = w * h / residual.size
    return (x, y, w, h) if MIN_AREA <= area <= MAX_AREA else None


def texture_boxes(frame, count: int = CANDIDATES) -> list[tuple]:
    """Up to `count` square boxes of a float RGB frame where the image has the most corners, best first.

    Side: a quarter of the frame's short side; candidates on a grid of half that step, ranked by the mean
    minimum eigenvalue of the gradient structure tensor (Shi & Tomasi 1994, "Good features to track"); flat
    boxes (is_flat) are never chosen, and a chosen box overlaps no other by an IoU of 0.1 or more."""
    bgr = to_bgr8(frame)
    h, w = bgr.shape[:2]
    side = max(8, min(h, w) // 4)
    eigen = cv2.cornerMinEigenVal(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 3)
    grid = [(x, y, side, side) for y in range(0, h - side + 1, side // 2) for x in range(0, w - side + 1, side // 2)]
    ranked = sorted(grid, key=lambda b: -float(eigen[b[1] : b[1] + side, b[0] : b[0] + side].mean()))
    chosen = []
    for box in ranked:
        if len(chosen) < count and not is_flat(bgr, box) and all(box_iou(box, c) < 0.1 for c in chosen):
            chosen.append(box)
    return chosen


def centre_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The middle half of an (H, W) frame in each direction."""
    h, w = size
    return w // 4, h // 4, max(1, w // 2), max(1, h // 2)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' -> a box of positive size."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise UserError(f"box {text!r} is not x,y,w,h in pixels with w, h > 0")
    return box


def check_box(box, size: tuple[int, int], where) -> None:
    """ValueError unless the (x, y, w, h) box lies inside an (H, W) frame of `where`."""
    x, y, w, h = box
    if x < 0 or y < 0 or x + w > size[1] or y + h > size[0]:
        raise UserError(f"box {tuple(box)} leaves the {size[1]}x{size[0]} frame of {where}")
