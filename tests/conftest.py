"""Shared fixtures: a tiny video with known motion and flicker, laid out as Lai et al.'s data."""

import numpy as np
import pytest
from skimage import data as skdata

from tdms.frames.writers import write_frame


def moving_frames(n=6, h=32, w=40, shift=1, seed=0):
    """Frames of a real photo panning `shift` px right per frame: frame t+1 at x equals frame t at x-shift."""
    photo = skdata.astronaut()[100:100 + h, 150:150 + w + n * shift].astype(np.float32) / 255
    return [photo[:, (n - t) * shift:(n - t) * shift + w].copy() for t in range(n)]


def flicker(frames, amount=0.08, seed=0):
    """A 'processed' video: per-frame random gain and offset, the simplest real flicker."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        gain, offset = 1 + rng.uniform(-amount, amount), rng.uniform(-amount, amount)
        out.append(np.clip(f * gain + offset, 0, 1))
    return out


def write_video(folder, frames, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        write_frame(folder / f"{t:05d}{ext}", f)
    return folder


@pytest.fixture
def lai_root(tmp_path):
    """root/{train,test}/input/toy/v{0,1}, root/{train,test}/processed/gain/flicker/toy/v*, root/lists/."""
    root = tmp_path / "data"
    (root / "lists").mkdir(parents=True)
    for phase in ("train", "test"):
        for k in range(2):
            ins = moving_frames(seed=k, shift=1 + k)
            write_video(root / phase / "input" / "toy" / f"v{k}", ins)
            write_video(root / phase / "processed" / "gain" / "flicker" / "toy" / f"v{k}", flicker(ins, seed=k))
        (root / "lists" / f"toy_{phase}.txt").write_text("v0\nv1\n")
    (root / "lists" / "train_tasks.txt").write_text("toy gain/flicker\n")
    (root / "lists" / "test_tasks.txt").write_text("toy gain/flicker\n")
    return root
