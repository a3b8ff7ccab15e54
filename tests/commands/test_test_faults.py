"""tdms-test under faults: a full disk, a read-only folder, a writer that fails, SIGTERM: one line, nothing lost."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tdms import files
from tdms.commands.test import main as run_cli
from tdms.errors import UserError
from tdms.frames import io, outputs, video, writers
from tdms.frames.io import FrameSource
from tdms.frames.outputs import MARKER
from tdms.frames.writers import FrameWriter
from tdms.inference import methods
from tests.conftest import flicker, moving_frames, write_video


@pytest.fixture
def clip(tmp_path):
    ins = moving_frames(n=6, h=24, w=32)
    return write_video(tmp_path / "I", ins), write_video(tmp_path / "P", flicker(ins))


def cli(clip, out, *extra):
    return run_cli(["--method", "identity", "--input", str(clip[0]), "--processed", str(clip[1]),
                    "--output", str(out), *extra])


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and "partial" in p.name)


def snapshot(folder):
    """Every file under folder (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("tdms-test:")], err


def disk_full_after(monkeypatch, limit: int):
    """Every atomic file write of tdms (frames, records, the space probe) fails with ENOSPC once `limit` bytes are
    written, as on a full disk."""
    used = [0]

    def write(path, data):
        if used[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        used[0] += len(data)
        files.write_bytes_atomic(path, data)

    monkeypatch.setattr(writers, "write_bytes_atomic", write)
    monkeypatch.setattr(outputs, "write_bytes_atomic", write)


@pytest.mark.parametrize("limit", [0, 1500, 6000])  # no frame, some frames, every frame but not the record
def test_a_full_disk_under_a_frame_folder(clip, tmp_path, capsys, monkeypatch, limit):
    out = tmp_path / "O"
    assert cli(clip, out, "--method", "naive") == 0
    before = snapshot(out)
    capsys.readouterr()
    disk_full_after(monkeypatch, limit)
    for extra in (["--redo"], []):  # over a good earlier output, and a fresh one
        target = out if extra else tmp_path / "fresh"
        assert cli(clip, target, *extra) == 1
        lines, err = error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("tdms-test: error: no space left on device: "), err
        assert "Traceback" not in err and hidden(tmp_path) == []
    assert snapshot(out) == before and not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    assert cli(clip, out, "--method", "naive") == 0 and "already complete" in capsys.readouterr().out


class SilentlyFull(video.VideoEncoder):
    """An encoder on a full disk that nobody hears of: it takes the first 2 frames, then writes nothing more and
    at the end leaves a file cut short (the muxer never gets the container's index out)."""

    def write(self, rgb):
        if self.count < 2:
            super().write(rgb)
        else:
            self.count += 1

    def close(self):
        super().close()
        self.path.write_bytes(self.path.read_bytes()[:40])


def test_a_full_disk_under_a_video(clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.mp4"
    assert cli(clip, out) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(writers, "VideoEncoder", SilentlyFull)
    disk_full_after(monkeypatch, 0)  # the space probe fails too
    for target, extra in ((out, ["--redo"]), (tmp_path / "fresh.mp4", [])):
        assert cli(clip, target, *extra) == 1
        lines, err = error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("tdms-test: error: no space left on device: "), err
        assert "0 of its 6 frames read back" in lines[0] and "Traceback" not in err
        assert snapshot(tmp_path) == before  # the earlier video and its record as they were, no partial
    monkeypatch.undo()
    assert cli(clip, out) == 0 and "already complete" in capsys.readouterr().out
    # a broken video on a disk with room: the encoder failed, said as such
    monkeypatch.setattr(writers, "VideoEncoder", SilentlyFull)
    assert cli(clip, tmp_path / "other.mp4") == 1
    lines, _ = error_lines(capsys)
    assert "the video encoder failed (0 of its 6 frames read back)" in lines[0]
    assert snapshot(tmp_path) == before


def test_a_full_disk_when_the_video_record_is_written(clip, tmp_path, capsys, monkeypatch):
    """The record is written before the video moves into place: a fresh video never stays without it."""
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "write_bytes_atomic", full)
    out = tmp_path / "o.mp4"
    assert cli(clip, out) == 1
    lines, err = error_lines(capsys)
    assert len(lines) == 1 and "no space left on device" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["I", "P"]
    monkeypatch.undo()
    assert cli(clip, out) == 0 and cli(clip, out, "--redo") == 0  # not "a video tdms did not write"


def read_only(monkeypatch, *folders):
    """Files can no longer be created directly in `folders` (as in a folder without write permission: root
    passes chmod, so the file creation is refused where tdms makes it)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() in [Path(f).resolve() for f in folders]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("name", ["O", "o.mp4", "new/deeper/O"])
def test_a_read_only_output_location_is_refused_before_any_work(clip, tmp_path, capsys, monkeypatch, name):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(monkeypatch, ro)
    args = ["--input", str(clip[0]), "--processed", str(clip[1]), "--output", str(ro / name),
            "--checkpoint", str(tmp_path / "none.pth")]  # refused before the checkpoint is looked for
    assert run_cli(args) == 1
    lines, err = error_lines(capsys)
    why = {"O": "tdms writes O there as .O.partial first", "o.mp4": "tdms writes o.mp4 there as .o.partial.mp4 first",
           "new/deeper/O": "tdms makes new/deeper there for O"}[name]
    assert lines == [f"tdms-test: error: cannot write in {ro}: Permission denied ({why}); choose an output in a "
                     f"writable folder"], err
    assert list(ro.iterdir()) == []


def test_a_writable_empty_folder_in_a_read_only_parent(clip, tmp_path, capsys, monkeypatch):
    """The partial is made beside the output: a read-only parent is named, before any work."""
    parent = tmp_path / "mnt"
    (parent / "O").mkdir(parents=True)
    read_only(monkeypatch, parent)
    assert cli(clip, parent / "O") == 1
    lines, err = error_lines(capsys)
    assert len(lines) == 1 and f"cannot write in {parent}: Permission denied (tdms writes O there as .O.partial" \
        in lines[0], err
    assert list(parent.iterdir()) == [parent / "O"] and list((parent / "O").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_for_real(clip, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for name in ("O", "o.mp4"):
            assert cli(clip, ro / name) == 1
            lines, err = error_lines(capsys)
            assert len(lines) == 1 and f"cannot write in {ro}" in lines[0] and "Traceback" not in err
    finally:
        ro.chmod(0o755)


def test_a_writer_error_stops_the_producer_and_is_reported_once(clip, tmp_path, capsys, monkeypatch):
    computed = []

    def counted(pairs):
        for _, p in pairs:
            computed.append(1)
            yield p

    def broken(self, img):
        if self.count == 1:
            raise UserError("cannot write: boom")
        self.count += 1

    monkeypatch.setattr(methods, "identity_frames", counted)
    monkeypatch.setattr(FrameWriter, "write", broken)
    threads = threading.active_count()
    for out in (tmp_path / "O", tmp_path / "o.mp4"):
        computed.clear()
        assert cli(clip, out) == 1
        lines, err = error_lines(capsys)
        assert lines == ["tdms-test: error: cannot write: boom"] and err.count("boom") == 1
        assert threading.active_count() == threads  # the decoding thread stopped and was joined
        assert hidden(tmp_path) == [] and not out.exists()


def test_an_edited_frame_is_not_overwritten_by_redo(clip, tmp_path, capsys):
    out = tmp_path / "O"
    assert cli(clip, out) == 0
    record = json.loads((out / MARKER).read_text())
    assert sorted(record["files"]) == [f"{t:05d}.png" for t in range(6)]
    edited = out / "00003.png"
    writers.write_frame(edited, np.zeros((24, 32, 3), np.float32))  # the user touched up a frame
    kept = edited.read_bytes()
    assert cli(clip, out, "--redo") == 1
    lines, _ = error_lines(capsys)
    assert lines == [f"tdms-test: error: {out}: 00003.png changed since tdms wrote them (their names, sizes and "
                     f"SHA-256 are in its {MARKER}); not overwritten even with --redo: move them away, or choose "
                     f"another output"]
    assert edited.read_bytes() == kept
    shutil.copy(out / "00001.png", out / "00099.png")  # a frame of the user's own added
    edited.unlink()  # a removed frame loses nothing
    assert cli(clip, out, "--redo") == 1
    assert "00099.png changed since tdms wrote them" in capsys.readouterr().err
    (out / "00099.png").unlink()
    assert cli(clip, out, "--redo") == 0 and len(FrameSource(out)) == 6


def test_frames_take_the_input_numbers_and_a_gap_is_a_cut(tmp_path, capsys):
    ins = moving_frames(n=6, h=24, w=32)
    numbers = [1, 2, 3, 7, 8, 9]  # ffmpeg numbers from 1; frames 4-6 were removed from both folders
    procs = flicker(ins)
    for name, frames in (("I", ins), ("P", procs)):
        (tmp_path / name).mkdir()
        for k, f in zip(numbers, frames, strict=True):
            writers.write_frame(tmp_path / name / f"{k:05d}.png", f)
    out = tmp_path / "O"
    assert run_cli(["--method", "naive", "--input", str(tmp_path / "I"), "--processed", str(tmp_path / "P"),
                    "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "O: frames 00003.png to 00007.png: the frame numbers jump, processed as a cut" in printed
    assert sorted(p.name for p in out.glob("*.png")) == [f"{k:05d}.png" for k in numbers]
    p = [io.read_frame(tmp_path / "P" / f"{k:05d}.png") for k in numbers]
    o = [io.read_frame(out / f"{k:05d}.png") for k in numbers]
    assert np.array_equal(o[0], p[0]) and np.array_equal(o[3], p[3])  # O = P where the recurrence (re)starts
    assert not np.array_equal(o[4], p[4])  # and then blends again


def test_unused_flags_are_said_to_be_unused(clip, tmp_path, capsys):
    assert cli(clip, tmp_path / "O", "--checkpoint", "mine.pth", "--lambda", "2") == 0
    err = capsys.readouterr().err
    assert "tdms-test: note: --checkpoint is unused by --method identity" in err
    assert "tdms-test: note: --lambda is unused by --method identity" in err
    assert cli(clip, tmp_path / "O2") == 0 and "note" not in capsys.readouterr().err


def test_one_frame_is_refused_as_by_the_api(tmp_path, capsys):
    ins = moving_frames(n=1, h=24, w=32)
    i, p = write_video(tmp_path / "I", ins), write_video(tmp_path / "P", ins)
    assert cli((i, p), tmp_path / "O") == 1
    lines, _ = error_lines(capsys)
    assert lines == [f"tdms-test: error: {i}: 1 frame; temporal consistency needs T >= 2 frames (frame 0 comes "
                     f"back as it is: O_0 = P_0)"]
    assert not (tmp_path / "O").exists()


SLOW_RUN = """
import sys, time
from tdms.inference import methods
from tdms.commands.test import main

def slow(pairs):
    for _, p in pairs:
        time.sleep(0.1)
        yield p

methods.identity_frames = slow
sys.exit(main(sys.argv[1:]))
"""


def wait_for(condition, seconds=60.0):
    end = time.time() + seconds
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["O", "o.mp4"])
def test_sigterm_mid_run_is_handled_like_ctrl_c(tmp_path, name):
    ins = moving_frames(n=60, h=24, w=32)
    i, p = write_video(tmp_path / "I", ins), write_video(tmp_path / "P", ins)
    out = tmp_path / name
    run = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "--method", "identity", "--input", str(i),
                            "--processed", str(p), "--output", str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    partial = outputs.partial_path(out)
    # mid-run: the folder's third frame written, or (a video) its encoder's temp file there
    wait_for(lambda: (partial / "00002.png").exists() or any(tmp_path.glob(".*.partial.mp4")))
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("tdms-test")]
    assert lines == [f"tdms-test: interrupted: nothing was written to {out} (the partial output is removed)"]
    assert "Traceback" not in stderr and hidden(tmp_path) == [] and not out.exists()
