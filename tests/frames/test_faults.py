"""Frame I/O under faults: a damaged video says how much it read and nothing else, a video that does not read back
whole is never renamed into place, and a stopped prefetch leaves no thread behind."""

import errno
import os
import threading
import time

import av
import numpy as np
import pytest

from tdms.errors import UserError
from tdms.frames import io, video, writers
from tdms.frames.io import FrameSource, prefetch
from tdms.frames.writers import FrameWriter, write_frame


def test_a_truncated_video_is_one_line_without_decoder_noise(tmp_path, capfd):
    rng = np.random.default_rng(0)
    with FrameWriter(tmp_path / "good.mp4") as w:
        for _ in range(10):
            w.write(rng.random((48, 64, 3)).astype(np.float32))
    data = (tmp_path / "good.mp4").read_bytes()
    capfd.readouterr()
    # the index is at the front (faststart): a cut file still opens, and says how much of it decodes
    for name, cut in (("half.mp4", data[: len(data) // 2]), ("tail.mp4", data[:-200])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(UserError, match=rf"{name}: truncated or damaged: [1-9] frames of the 10 its header lists"):
            FrameSource(tmp_path / name)
    for name, cut in (("head.mp4", data[:100]), ("empty.mp4", b""), ("text.mp4", b"not a video")):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(UserError, match=rf"{name}: cannot read video \(0 frames decoded: truncated, damaged"):
            FrameSource(tmp_path / name)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # FFmpeg's own lines ("moov atom not found", ...) are silenced


def test_a_video_that_does_not_read_back_whole_is_removed(tmp_path, monkeypatch):
    def refuses(self, rgb):  # the encoder saying it could not take a frame
        raise av.error.ArgumentError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(video.VideoEncoder, "write", refuses)
    w = FrameWriter(tmp_path / "o.mp4")
    with pytest.raises(UserError, match=r"o.mp4: the video encoder failed \(the encoder refused frame 0: Invalid"):
        w.write(np.zeros((8, 8, 3), np.float32))
    assert list(tmp_path.iterdir()) == []

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers, "write_bytes_atomic", full)  # the disk is full: the space probe fails too
    with pytest.raises(UserError, match=r"^no space left on device: .*o.mp4 \(the encoder refused frame 0: Invalid "
                                        r"argument; the "):
        FrameWriter(tmp_path / "o.mp4").write(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(UserError, match=r"^no space left on device: .*a.png; free some space or write elsewhere$"):
        write_frame(tmp_path / "a.png", np.zeros((8, 8, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_frames_keep_given_numbers_and_record_their_files(tmp_path):
    frames = [np.full((4, 6, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    with FrameWriter(tmp_path / "o", numbers=[1, 2, 5]) as w:
        for f in frames:
            w.write(f)
    assert sorted(w.files) == ["00001.png", "00002.png", "00005.png"]
    assert w.files["00005.png"] == writers.file_record((tmp_path / "o" / "00005.png").read_bytes())
    with FrameWriter(tmp_path / "o", numbers=[6], keep=True) as w:  # appends, as a resumed run does
        w.write(frames[0])
    assert [p.name for p in FrameSource(tmp_path / "o").paths] == ["00001.png", "00002.png", "00005.png", "00006.png"]
    assert io.cuts(FrameSource(tmp_path / "o")) == [2]  # 00002 -> 00005 jumps


def test_a_stopped_prefetch_leaves_no_thread(tmp_path):
    def endless():
        while True:
            yield np.zeros(3)

    before = threading.active_count()
    it = prefetch(endless(), depth=2)
    next(it)
    time.sleep(0.1)  # the thread has filled its queue and waits
    assert threading.active_count() == before + 1
    it.close()
    assert threading.active_count() == before

    def fails():
        yield 1
        raise UserError("bad frame")

    with pytest.raises(UserError, match="bad frame"):
        list(prefetch(fails()))
    assert threading.active_count() == before
