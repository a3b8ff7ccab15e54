"""tdms-test's outputs: what a rerun reuses, what --redo may replace, and what an error or Ctrl-C leaves."""

import json
import os
import shutil

import numpy as np
import pytest

from tdms.commands.test import main as run_cli
from tdms.errors import UserError
from tdms.frames.io import FrameSource, read_frame
from tdms.frames.outputs import MARKER, claim_folder, read_record, write_record
from tdms.frames.writers import FrameWriter, write_frame
from tdms.inference import methods
from tests.conftest import flicker, moving_frames, write_video


@pytest.fixture
def clip(tmp_path):
    ins = moving_frames(n=4, h=24, w=32)
    return write_video(tmp_path / "I", ins), write_video(tmp_path / "P", flicker(ins))


def to_video(folder, path):
    with FrameWriter(path, fps=10) as w:
        for f in FrameSource(folder):
            w.write(f)
    return path


def cli(clip, out, *extra):
    return run_cli(["--method", "identity", "--input", str(clip[0]), "--processed", str(clip[1]),
                    "--output", str(out), *extra])


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


def test_a_video_output_is_reused_only_with_its_record(clip, tmp_path, capsys):
    mine = tmp_path / "mine.mp4"
    to_video(clip[0], mine)
    before = mine.read_bytes()
    for extra in ([], ["--redo"]):  # a video tdms did not write: never "complete", never replaced
        assert cli(clip, mine, *extra) == 1
        err = capsys.readouterr().err
        assert str(mine) in err and "a video tdms did not write" in err
    assert mine.read_bytes() == before
    out = tmp_path / "o.mp4"
    # partial videos of killed runs (FrameWriter's temps are PID-named) are removed by the next run; others stay
    for name in (".o.partial.mp4", "..o.partial.123.partial.mp4", "..o.partial.x1.partial.mp4"):
        (tmp_path / name).write_bytes(b"half")
    assert cli(clip, out) == 0
    assert leftovers(tmp_path) == ["..o.partial.x1.partial.mp4"]
    (tmp_path / "..o.partial.x1.partial.mp4").unlink()
    record = json.loads((tmp_path / f".o.mp4{MARKER}").read_text())
    assert record["method"] == "identity" and record["frames"] == 4 and len(FrameSource(out)) == 4
    assert cli(clip, out) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli(clip, out, "--method", "naive") == 1
    assert "holds an earlier output (method identity, frames 4)" in capsys.readouterr().err
    assert cli(clip, out, "--method", "naive", "--redo") == 0
    assert json.loads((tmp_path / f".o.mp4{MARKER}").read_text())["method"] == "naive"
    shutil.copy(mine, out)  # the record no longer matches the video
    assert cli(clip, out, "--method", "naive", "--redo") == 1
    assert "a video tdms did not write" in capsys.readouterr().err and out.read_bytes() == before


def test_other_or_edited_inputs_are_not_reused(clip, tmp_path, capsys):
    other = write_video(tmp_path / "P2", flicker(moving_frames(n=4, h=24, w=32), seed=5))
    out = tmp_path / "O"
    assert cli(clip, out) == 0
    assert cli((clip[0], other), out) == 1
    assert "holds an earlier output" in capsys.readouterr().err
    assert np.array_equal(read_frame(out / "00002.png"), read_frame(clip[1] / "00002.png"))
    assert cli((clip[0], other), out, "--redo") == 0
    assert np.array_equal(read_frame(out / "00002.png"), read_frame(other / "00002.png"))
    assert cli((clip[0], other), out) == 0
    assert "already complete" in capsys.readouterr().out
    edited = other / "00002.png"  # edited in place, a second later
    write_frame(edited, np.zeros((24, 32, 3), np.float32))
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cli((clip[0], other), out) == 1
    assert "holds an earlier output" in capsys.readouterr().err
    # JPEG frames are another output than PNG frames
    assert cli((clip[0], other), out, "--redo") == 0
    assert cli((clip[0], other), out, "--jpeg-quality", "90") == 1


def test_dataset_mode_notices_an_edited_video(lai_root, tmp_path, capsys):
    out = tmp_path / "results"
    base = ["--data-dir", str(lai_root), "--output", str(out), "--method", "identity"]
    assert run_cli(base) == 0
    assert run_cli(base) == 0
    assert "2 already complete" in capsys.readouterr().out
    frame = lai_root / "test" / "processed" / "gain" / "flicker" / "toy" / "v1" / "00003.png"
    write_frame(frame, np.zeros((32, 40, 3), np.float32))
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run_cli(base) == 1
    assert f"{out / 'gain' / 'flicker' / 'toy' / 'v1'}: holds an earlier output" in capsys.readouterr().err
    assert run_cli(base + ["--redo"]) == 0
    assert read_frame(out / "gain" / "flicker" / "toy" / "v1" / "00003.png").max() == 0


def test_an_output_that_is_a_file_is_refused_before_the_model_loads(clip, tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    for extra in ([], ["--redo"]):
        args = ["--input", str(clip[0]), "--processed", str(clip[1]), "--output", str(file),
                "--checkpoint", str(tmp_path / "none.pth"), *extra]
        assert run_cli(args) == 1
        err = capsys.readouterr().err
        assert f"{file}: exists and is not a folder" in err and "checkpoint" not in err
    assert file.read_text() == "mine" and leftovers(tmp_path) == []


def test_redo_never_deletes_files_the_user_added(clip, tmp_path, capsys):
    out = tmp_path / "O"
    assert cli(clip, out) == 0
    (out / "notes.txt").write_text("x")
    (out / "more").mkdir()
    assert cli(clip, out, "--redo") == 1
    err = capsys.readouterr().err
    assert f"{out}: holds files tdms did not write (more, notes.txt)" in err
    assert (out / "notes.txt").read_text() == "x" and len(FrameSource(out)) == 4


def test_jpeg_quality_and_options_are_checked_at_parsing(clip, tmp_path, capsys):
    for bad in (["--jpeg-quality", "0"], ["--jpeg-quality", "101"], ["--jpeg-quality", "-5"],
                ["--lambda", "-1"], ["--lambda", "nan"], ["--device", "gpu"]):
        with pytest.raises(SystemExit) as e:
            cli(clip, tmp_path / "O", *bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert bad[0] in err and ("1..100" in err or ">= 0" in err or "unknown device 'gpu'" in err), err
    with pytest.raises(SystemExit):
        cli(clip, tmp_path / "o.mp4", "--jpeg-quality", "90")
    assert "--jpeg-quality is for frame folders" in capsys.readouterr().err
    assert not (tmp_path / "O").exists() and leftovers(tmp_path) == []
    assert cli(clip, tmp_path / "O", "--jpeg-quality", "1") == 0
    assert sorted(p.name for p in (tmp_path / "O").glob("*.jpg"))[0] == "00000.jpg"


def test_an_error_midway_removes_the_partial_output(clip, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(clip[1], bad)
    (bad / "00002.png").write_bytes((bad / "00002.png").read_bytes()[:100])  # truncated
    for out in (tmp_path / "O", tmp_path / "o.mp4"):
        assert cli((clip[0], bad), out) == 1
        assert "00002.png: cannot read image" in capsys.readouterr().err
        assert not out.exists() and leftovers(tmp_path) == []
    # a failed --redo leaves the earlier video as it was
    video = tmp_path / "o.mp4"
    assert cli(clip, video) == 0
    before = video.read_bytes()
    assert cli((clip[0], bad), video, "--redo") == 1
    assert video.read_bytes() == before and leftovers(tmp_path) == []
    assert cli(clip, video) == 0
    assert "already complete" in capsys.readouterr().out


def test_ctrl_c_says_so_in_one_line_and_leaves_no_partial(clip, tmp_path, capsys, monkeypatch):
    def interrupted(pairs):
        for t, (_, p) in enumerate(pairs):
            if t == 2:
                raise KeyboardInterrupt
            yield p

    monkeypatch.setattr(methods, "identity_frames", interrupted)
    for out in (tmp_path / "O", tmp_path / "o.mp4"):
        assert cli(clip, out) == 130
        err = capsys.readouterr().err
        assert f"tdms-test: interrupted: nothing was written to {out}" in err and "Traceback" not in err
        assert not out.exists() and leftovers(tmp_path) == []


def test_a_frame_missing_from_one_folder_is_an_error(clip, tmp_path, capsys):
    """P numbered 0, 2, 3, 4 against I's 0..3: the counts match but frame 1 of I would meet frame 2 of P."""
    (clip[1] / "00001.png").rename(clip[1] / "00004.png")
    assert cli(clip, tmp_path / "O") == 1
    assert "frame numbers do not pair up" in capsys.readouterr().err
    assert not (tmp_path / "O").exists()


def test_the_marker_protocol(tmp_path):
    """The protocol tdms-test, tdms-evaluate and the builder share: claim a folder, read and write its marker."""
    new = tmp_path / "new"
    assert claim_folder(new, ".m", "tool") is False and new.is_dir()  # created
    write_record(new / ".m", {"a": 1})
    assert read_record(new / ".m") == {"a": 1} and read_record(tmp_path / "none") is None
    (new / "x.txt").write_text("x")
    assert claim_folder(new, ".m", "tool") is True  # ours: the caller checks what the record says
    assert sorted(p.name for p in new.iterdir()) == [".m", "x.txt"]  # no temp file left by the atomic write
    for text, why in (("{", "Expecting"), ("[1]", "not a JSON object")):
        (new / ".m").write_text(text)
        with pytest.raises(UserError, match=f"{new / '.m'}: not a tdms marker.*{why}.*remove it"):
            read_record(new / ".m")
    user = tmp_path / "user"
    user.mkdir()
    for k in range(7):
        (user / f"f{k}").write_text("mine")
    with pytest.raises(UserError, match=rf"{user}: not empty and not written by tool \(it holds f0, f1, f2, f3, f4 "
                                        rf"and 2 more; no \.m\); refusing to write into it"):
        claim_folder(user, ".m", "tool")
    with pytest.raises(UserError, match=r"it holds f6; no \.m"):
        claim_folder(user, ".m", "tool", foreign=lambda folder: ["f6"])
    assert claim_folder(user, ".m", "tool", foreign=lambda folder: []) is False
    assert not (user / ".m").exists() and len(list(user.iterdir())) == 7
    with pytest.raises(UserError, match=f"{user / 'f0'} is a file, not a folder"):
        claim_folder(user / "f0", ".m", "tool")
