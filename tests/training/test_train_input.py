"""tdms-train on bad values, bad data and a changed config at --resume: one-line errors naming the key or the file,
and nothing in the run folder changes until every check has passed."""

import json

import cv2
import numpy as np
import pytest

from tdms.config import load_config
from tdms.flow.cache import FlowCache
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.loop import train
from tdms.training.step import NonFiniteLoss
from tdms.weights import read_checkpoint
from tests.training.common import ShiftFlow, config

PROCESSED = ("train", "processed", "gain", "flicker", "toy")


def processed(root, video="v0", frame=3):
    return root.joinpath(*PROCESSED, video, f"{frame:05d}.png")


def two_steps(root, tmp_path):
    """A finished 2-step run in tmp_path/run; returns its folder."""
    train(config(root, tmp_path, **{"train.steps": 2, "train.threads": 1}))
    return tmp_path / "run"


def test_failed_resume_leaves_the_run_record_alone(lai_root, tmp_path):
    run = two_steps(lai_root, tmp_path)
    saved = (run / "config.yaml").read_text(), (run / "run.json").read_text()
    processed(lai_root).write_bytes(b"")  # the data breaks between the sessions
    with pytest.raises(ValueError, match="00003.png: empty file"):
        train(config(lai_root, tmp_path, **{"train.steps": 4}), resume=True)
    assert ((run / "config.yaml").read_text(), (run / "run.json").read_text()) == saved
    with pytest.raises(ValueError, match="data.sample_frames 3 -> 9"):
        train(config(lai_root, tmp_path, **{"train.steps": 4, "data.sample_frames": 9}), resume=True)
    assert ((run / "config.yaml").read_text(), (run / "run.json").read_text()) == saved


def test_resume_appends_to_the_run_record(lai_root, tmp_path):
    run = two_steps(lai_root, tmp_path)
    first = json.loads((run / "run.json").read_text())
    assert first["resumed_at"] == 0 and first["resumes"] == []
    train(config(lai_root, tmp_path, **{"train.steps": 3}), resume=True)
    record = json.loads((run / "run.json").read_text())
    assert {k: record[k] for k in first if k != "resumes"} == {k: first[k] for k in first if k != "resumes"}
    assert [r["step"] for r in record["resumes"]] == [2]
    assert load_config(run / "config.yaml").train.steps == 3


def test_resume_refuses_a_changed_config_and_names_each_change(lai_root, tmp_path):
    run = two_steps(lai_root, tmp_path)
    saved = (run / "last.pth").read_bytes(), (run / "config.yaml").read_text()
    changed = {"optim.lr": 0.5, "data.crop": 40, "data.sample_frames": 4, "train.steps": 4}
    with pytest.raises(ValueError) as e:
        train(config(lai_root, tmp_path, **changed), resume=True)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("optim.lr 0.0001 -> 0.5", "data.crop 16 -> 40", "data.sample_frames 3 -> 4"):
        assert part in msg, msg
    assert "train.steps 2" not in msg  # extending the run is what --resume is for
    with pytest.raises(ValueError, match="model.arch 'tdms' -> 'lai'"):
        train(config(lai_root, tmp_path, **{"model.arch": "lai"}), resume=True)
    assert ((run / "last.pth").read_bytes(), (run / "config.yaml").read_text()) == saved
    # the run's length, the intervals and the loader's workers may change
    allowed = {"train.steps": 3, "train.log_every": 5, "train.ckpt_every": 0, "train.image_every": 0,
               "data.workers": 1}
    assert read_checkpoint(train(config(lai_root, tmp_path, **allowed), resume=True))["step"] == 3


@pytest.mark.parametrize("steps", [0, -2])
def test_steps_must_be_at_least_one(lai_root, tmp_path, steps):
    with pytest.raises(ValueError, match=f"train.steps must be >= 1, got {steps}"):
        train(config(lai_root, tmp_path, **{"train.steps": steps}))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, want", [
    ("data.sample_frames", 0, ">= 2"), ("data.sample_frames", 1, ">= 2"),
    ("data.crop", 0, "a positive multiple of 4"), ("data.crop", -8, "a positive multiple of 4"),
    ("data.crop", 18, "a positive multiple of 4"), ("train.batch", 0, ">= 1"), ("data.workers", -1, ">= 0"),
    ("data.scale_min", 0.0, "> 0"), ("data.scale_max", 0.5, ">= data.scale_min=0.8"),
])
def test_bad_values_name_their_key(lai_root, tmp_path, key, value, want):
    with pytest.raises(ValueError) as e:
        train(config(lai_root, tmp_path, **{key: value, "train.steps": 1}))
    msg = str(e.value)
    assert msg.startswith(f"{key} must be {want}") and msg.endswith(f", got {value}") and "\n" not in msg, msg
    assert not (tmp_path / "run").exists()


def test_an_error_in_a_loader_worker_reads_as_without_workers(lai_root, tmp_path):
    for video in ("v0", "v1"):  # PNGs cut after their header: the size check passes, decoding fails
        for t in range(6):
            path = processed(lai_root, video, t)
            path.write_bytes(path.read_bytes()[:100])
    messages = []
    for workers in (0, 1):
        with pytest.raises(ValueError) as e:
            train(config(lai_root, tmp_path, **{"data.workers": workers, "train.steps": 1,
                                                "train.out": str(tmp_path / f"w{workers}")}))
        messages.append(str(e.value))
    assert messages[0] == messages[1], messages
    assert "cannot read image (truncated" in messages[1] and "\n" not in messages[1]


def test_processed_frames_are_all_checked_before_training(lai_root, tmp_path):
    frame = processed(lai_root, "v1", 4)  # not a clip's first frame
    cv2.imwrite(str(frame), np.zeros((32, 44, 3), np.uint8))
    with pytest.raises(ValueError, match=r"v1/00004.png: processed frame is 44×32, the input frames in .*v1 are 40×32"):
        train(config(lai_root, tmp_path, **{"train.steps": 1}))
    assert not (tmp_path / "run").exists() and not (lai_root / "cache").exists()  # before the flows, too
    frame.write_bytes(b"")
    with pytest.raises(ValueError, match="v1/00004.png: empty file"):
        train(config(lai_root, tmp_path, **{"train.steps": 1}))


def test_the_sampler_never_resizes_a_frame_to_fit(lai_root, tmp_path):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 6, 16, augment=False)
    frame = processed(lai_root, "v0", 5)  # a 6-frame clip holds every frame
    cv2.imwrite(str(frame), np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(ValueError, match=r"v0/00005.png: frame is 20×16, .*v0/00000.png is 40×32"):
        for k in range(8):
            ds[k]


def test_an_empty_video_list_is_named(lai_root, tmp_path):
    (lai_root / "lists" / "toy_train.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"lists/toy_train.txt: lists no videos"):
        train(config(lai_root, tmp_path, **{"train.steps": 1}))


def test_a_non_finite_weighted_sum_gives_the_step_and_each_weighted_term(lai_root, tmp_path):
    with pytest.raises(NonFiniteLoss) as e:
        train(config(lai_root, tmp_path, **{"train.steps": 2, "loss.mask": 1e39}))
    msg = str(e.value)
    assert msg.startswith("step 1: non-finite loss at frame 1 of "), msg
    assert "temporal 100×" in msg and "mask 1e+39×" in msg, msg
    terms = {part.split()[0]: part for part in msg.split("]: ", 1)[1].split(", ")}
    assert terms["mask"].endswith("= inf (non-finite)") and not terms["temporal"].endswith("(non-finite)"), msg
