"""Video files through PyAV: reading (rotation, 16 bits, time stamps, bad files) and writing (H.264, lossless, the
audio copied), each output checked by an independent reader (tests/frames/videos.probe)."""

import cv2
import numpy as np
import pytest

from tdms.errors import UserError
from tdms.frames.io import FrameSource, open_pair
from tdms.frames.video import Encoding
from tdms.frames.writers import FrameWriter
from tests.frames.videos import audio_bytes, make_video, probe


def moving(n=8, h=24, w=32, seed=0) -> list[np.ndarray]:
    """A smooth random texture (4-px blobs) sliding 3 px a frame, uint8 RGB."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 4 + 1, (w + 3 * n) // 4 + 1, 3), dtype=np.uint8)
    tex = cv2.resize(small, (small.shape[1] * 4, small.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(tex[:h, 3 * t : 3 * t + w]) for t in range(n)]


def test_reads_frames_stamps_and_audio(tmp_path):
    frames = moving()
    src = FrameSource(make_video(tmp_path / "a.mp4", frames, fps=25))
    assert (len(src), src.size, src.fps, src.video.codec, src.video.audio) == (8, (24, 32), 25.0, "h264", "aac")
    assert not src.video.timing.variable
    decoded = [np.rint(f * 255) for f in src]
    errors = np.array([[np.abs(a - b).mean() for b in frames] for a in decoded])
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(8))  # each frame is itself, in order
    assert errors.diagonal().max() < 25  # measured 17.1 (x264 at crf 23, 32×24 frames); other frames are ≥ 48.9 away


def test_rotation_and_16_bits(tmp_path):
    img = np.zeros((24, 32, 3), np.uint8)
    img[:4, :4] = 255
    src = FrameSource(make_video(tmp_path / "r.mp4", [img] * 3, rotation=90, audio=False))
    assert src.size == (32, 24)  # shown upright: turned 90° counter-clockwise, the corner goes to the bottom left
    assert src[0][-2, 1, 0] > 0.9 and src[0][1, 1, 0] < 0.1
    deep = [np.full((24, 32, 3), 4000 * (t + 1), np.uint16) for t in range(3)]
    src = FrameSource(make_video(tmp_path / "d.mkv", deep, pix_fmt="yuv420p10le", audio=False))
    levels = src[1] * 65535
    assert abs(levels.mean() - 8000) < 64  # 10 bits kept: one 8-bit level is 257 of these
    assert np.abs(levels - np.rint(levels / 257) * 257).max() > 1  # not 8-bit values


def test_bad_videos_say_what_is_wrong(tmp_path):
    (tmp_path / "audio_only.mp4").write_bytes(b"")
    import av

    with av.open(str(tmp_path / "audio_only.mp4"), "w") as c:
        a = c.add_stream("aac", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), "fltp", "mono")
        f.sample_rate, f.pts = 8000, 0
        c.mux(a.encode(f))
        c.mux(a.encode(None))
    with pytest.raises(UserError, match=r"audio_only.mp4: no video stream \(it holds audio aac\)"):
        FrameSource(tmp_path / "audio_only.mp4")
    a = make_video(tmp_path / "a.mp4", moving(), fps=25)
    b = make_video(tmp_path / "b.mp4", moving(), fps=30)
    with pytest.raises(UserError, match=r"frame rate mismatch: processed .*b.mp4 is 30 fps, input .*a.mp4 is 25 fps"):
        open_pair(a, b)
    c = make_video(tmp_path / "c.mp4", moving(w=40), fps=25)
    with pytest.raises(UserError, match=r"frame size mismatch: processed .*c.mp4 is 40×24 \(W×H\), input .*a.mp4 is "
                                        r"32×24 \(W×H\) \(--resize-processed resizes it\)"):
        open_pair(a, c)
    d = make_video(tmp_path / "d.mp4", moving(n=7), fps=25)
    with pytest.raises(UserError, match=r"frame count mismatch \(missing frames\): processed .*d.mp4 has 7 frames"):
        open_pair(a, d)


def test_variable_frame_rate_keeps_its_stamps(tmp_path):
    pts = [0, 1, 2, 4, 5, 8, 9, 10]  # frames 3 and 6-7 were dropped
    src = FrameSource(make_video(tmp_path / "v.mp4", moving(), fps=25, pts=pts))
    assert src.video.timing.variable
    with FrameWriter(tmp_path / "o.mp4", encoding=Encoding(timing=src.video.timing)) as w:
        for f in src:
            w.write(f)
    out = FrameSource(tmp_path / "o.mp4").video.timing
    assert [round(out.seconds(t), 4) for t in range(8)] == [round(src.video.timing.seconds(t), 4) for t in range(8)]


def test_writes_h264_with_the_audio_copied(tmp_path):
    src = FrameSource(make_video(tmp_path / "in.mp4", moving(n=10), fps=25))
    encoding = Encoding(audio_from=src.path, timing=src.video.timing)
    with FrameWriter(tmp_path / "o.mp4", encoding=encoding) as w:
        for f in src:
            w.write(f)
    got, want = probe(tmp_path / "o.mp4"), probe(src.path)
    assert (got["codec"], got["pix_fmt"], got["profile"], got["frames"], got["fps"]) == ("h264", "yuv420p", "High",
                                                                                         10, 25.0)
    assert abs(got["duration"] - want["duration"]) < 0.05
    assert got["audio"] == "aac" and got["audio_bytes"] == want["audio_bytes"] != b""  # copied, not re-encoded
    with FrameWriter(tmp_path / "silent.mp4") as w:
        w.write(src[0])
        w.write(src[1])
    assert probe(tmp_path / "silent.mp4")["audio"] is None and audio_bytes(tmp_path / "silent.mp4") == b""


def test_lossless_is_exact_and_crf_sets_the_size(tmp_path):
    frames = moving(n=6, h=23, w=31)  # odd sizes: the RGB encoding takes them
    floats = [f.astype(np.float32) / 255 for f in frames]
    with FrameWriter(tmp_path / "l.mkv", encoding=Encoding(lossless=True)) as w:
        for f in floats:
            w.write(f)
    assert probe(tmp_path / "l.mkv")["codec"] == "h264"
    back = [np.rint(f * 255).astype(np.uint8) for f in FrameSource(tmp_path / "l.mkv")]
    for a, b in zip(back, frames, strict=True):
        np.testing.assert_array_equal(a, b)
    sizes = {}
    for crf in (10, 40):
        with FrameWriter(tmp_path / f"c{crf}.mp4", encoding=Encoding(crf=crf)) as w:
            for f in moving(n=6, h=48, w=64):
                w.write(f.astype(np.float32) / 255)
        sizes[crf] = (tmp_path / f"c{crf}.mp4").stat().st_size
    assert sizes[10] > 2 * sizes[40]
    with pytest.raises(UserError, match=r"o.webm: tdms writes H.264 videos as .mp4, .mov, .mkv, .avi, not .webm"):
        FrameWriter(tmp_path / "o.webm")
