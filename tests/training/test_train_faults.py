"""tdms-train on settings it cannot honour and on SIGTERM: a crop the data cannot give, non-finite or out-of-range
numbers, a resume to fewer steps than the run has, a missing data root (each one line naming the key, nothing
written), and SIGTERM handled like Ctrl-C (exit 143, the last checkpoint whole, no hidden partial)."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from tdms import interrupts
from tdms.commands import train as cli
from tdms.errors import MissingFile, UserError
from tdms.flow.cache import FlowCache
from tdms.interrupts import Terminated
from tdms.training import dataset
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.loop import train
from tdms.weights import read_checkpoint
from tests.conftest import flicker, moving_frames, write_video
from tests.training.common import ShiftFlow, config


def shrink_v1(root, h=24, w=28):
    """Video v1 of the fixture at h×w (input and processed): the smallest video of the data."""
    ins = moving_frames(h=h, w=w, shift=2)
    for sub, frames in (("input/toy/v1", ins), ("processed/gain/flicker/toy/v1", flicker(ins, seed=1))):
        for f in (root / "train" / sub).iterdir():
            f.unlink()
        write_video(root / "train" / sub, frames)


@pytest.mark.parametrize("crop", [32, 4000])
def test_a_crop_larger_than_the_data_allows_is_refused_by_key(lai_root, tmp_path, crop):
    shrink_v1(lai_root)  # v0 is 40×32, v1 28×24; with data.scale_max=1.2 a crop of at most 24·1.2 = 28.8
    with pytest.raises(UserError) as e:
        train(config(lai_root, tmp_path, **{"data.crop": crop, "train.steps": 1}))
    msg = str(e.value)
    assert msg.startswith(f"data.crop={crop} ") and "\n" not in msg, msg
    assert "toy/v1" in msg and "28×24 (W×H)" in msg and "data.scale_max=1.2" in msg, msg
    assert "data.crop <= 28" in msg, msg  # the largest multiple of 4 the data gives
    assert not (tmp_path / "run").exists() and not (lai_root / "cache").exists()  # before the flows, too


def test_the_augmentation_never_upsizes_past_scale_max(lai_root, tmp_path, monkeypatch):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    cache = FlowCache(tmp_path / "c", ShiftFlow())
    heights = []
    resize = dataset._resize

    def spy(img, h, w):
        heights.append(h)
        return resize(img, h, w)

    monkeypatch.setattr(dataset, "_resize", spy)
    ds = ClipDataset(clips, cache, 3, 36, scale_min=0.5, scale_max=1.2)  # frames 40×32: a scale in [1.125, 1.2]
    for k in range(12):
        assert ds[k]["input"].shape[-2:] == (36, 36)
    assert heights and 36 <= min(heights) and max(heights) <= round(32 * 1.2)
    for augment in (True, False):  # 40 > 32·1.2: refused, never upsized to 40
        heights.clear()
        big = ClipDataset(clips, cache, 3, 40, scale_min=0.5, scale_max=1.2, augment=augment)
        with pytest.raises(UserError, match=r"data.crop=40 .*toy/v[01].* 40×32 \(W×H\)"):
            big[0]
        assert not heights


@pytest.mark.parametrize("key, value, want", [
    ("optim.lr", "inf", "a finite number"), ("optim.lr", "nan", "a finite number"),
    ("optim.lr", -1e-4, "> 0"), ("optim.lr", 0.0, "> 0"),
    ("optim.beta1", 1.0, "in [0, 1)"), ("optim.beta2", -0.1, "in [0, 1)"),
    ("optim.lr_gamma", "nan", "a finite number"), ("optim.lr_gamma", 0.0, "in (0, 1]"),
    ("optim.lr_min", -1e-5, "in [0, optim.lr=0.0001]"), ("optim.lr_step", 0, ">= 1"),
    ("optim.grad_clip", "inf", "a finite number"), ("optim.grad_clip", -1.0, ">= 0"),
    ("loss.temporal", -1.0, ">= 0"), ("loss.fidelity", "nan", "a finite number"), ("loss.alpha", -50.0, ">= 0"),
    ("loss.mask_scale", "nan", "a finite number"), ("loss.mask_scale", 2.0, "in (0, 1]"),
    ("data.scale_max", "inf", "a finite number"),
])
def test_numbers_a_run_cannot_take_are_refused_by_key(lai_root, tmp_path, key, value, want):
    with pytest.raises(UserError) as e:
        train(config(lai_root, tmp_path, **{key: value, "train.steps": 1}))
    msg = str(e.value)
    assert msg.startswith(f"{key} must be {want}") and "\n" not in msg, msg
    got = msg.rsplit(", got ", 1)[1]
    assert math.isnan(float(got)) if value == "nan" else float(got) == float(value), msg
    assert not (tmp_path / "run").exists() and not (lai_root / "cache").exists()


def test_resume_to_fewer_steps_than_the_run_has_is_refused(lai_root, tmp_path, capsys):
    over = {"data.root": lai_root, "data.crop": 16, "data.sample_frames": 3, "data.workers": 0,
            "data.scale_min": 0.8, "data.scale_max": 1.2, "train.out": tmp_path / "run", "train.device": "cpu",
            "train.threads": 1, "loss.perceptual": 0.0, "model.nf": 8}
    args = [f"{k}={v}" for k, v in over.items()]
    assert cli.main([*args, "train.steps=2"]) == 0
    run = tmp_path / "run"
    saved = [(run / name).read_bytes() for name in ("last.pth", "config.yaml", "run.json")]
    capsys.readouterr()
    assert cli.main(["--resume", *args, "train.steps=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.steps=1" in err and "at step 2" in err, err
    assert [(run / name).read_bytes() for name in ("last.pth", "config.yaml", "run.json")] == saved
    assert cli.main(["--resume", *args, "train.steps=2"]) == 0  # the run as it is: nothing to do, nothing lost
    assert read_checkpoint(run / "last.pth")["step"] == 2


def test_a_missing_data_root_says_to_set_it_or_build_the_data(tmp_path):
    cfg = config(tmp_path / "nowhere", tmp_path, **{"train.steps": 1})
    with pytest.raises(MissingFile) as e:
        train(cfg)
    msg = str(e.value)
    assert "data.root" in msg and str(tmp_path / "nowhere") in msg and "tdms-build-data" in msg, msg
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a real training process, stopped by SIGTERM
def test_sigterm_stops_training_like_ctrl_c(lai_root, tmp_path):
    run = tmp_path / "run"
    over = {"data.root": lai_root, "data.crop": 16, "data.sample_frames": 3, "data.workers": 0,
            "data.scale_min": 0.8, "data.scale_max": 1.2, "train.out": run, "train.device": "cpu",
            "train.threads": 1, "train.steps": 10**6, "train.ckpt_every": 1, "train.log_every": 0,
            "train.image_every": 0, "loss.perceptual": 0.0, "model.nf": 8}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "tdms.commands.train",
                             *(f"{k}={v}" for k, v in over.items())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (run / "last.pth").exists(), proc.communicate(timeout=5) if proc.poll() is not None else "no ckpt"
        time.sleep(0.5)  # a few more steps: the signal falls inside the loop, maybe inside a checkpoint write
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # still running: where every thread is, from faulthandler
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"tdms-train still ran 60 s after SIGTERM; its threads:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert f"tdms-train: interrupted; the last checkpoint in {run} is intact" in err and "Traceback" not in err, err
    assert read_checkpoint(run / "last.pth")["step"] >= 1
    hidden = [p for p in tmp_path.rglob(".*")]
    assert not hidden, hidden


def test_a_sigterm_whose_raise_was_dropped_stops_the_loop_at_the_next_step(lai_root, tmp_path, monkeypatch):
    monkeypatch.setattr(interrupts, "_received", True)  # as the handler leaves it when its raise was dropped
    with pytest.raises(Terminated):
        train(config(lai_root, tmp_path, **{"train.steps": 3, "train.ckpt_every": 1}))
    assert not (tmp_path / "run" / "last.pth").exists()  # stopped before its first step
