"""tdms-test on videos as people have them: an H.264 mp4 with an AAC track in, the same back (read by an
independent reader), and a clip of two real shots joined end to end restarted at the cut."""

import json

import numpy as np
import pytest

from tdms.commands.test import main as run_cli
from tdms.frames.io import FrameSource, list_frames, read_frame
from tdms.frames.outputs import marker_path
from tests.frames.videos import make_video, probe, real_shot

CUT = 6  # the first frame of the second shot


def flickered(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """A per-frame brightness gain in 0.75..1.25: the processed video."""
    gains = np.random.default_rng(seed).uniform(0.75, 1.25, len(frames))
    return [np.clip(f * g, 0, 255).astype(np.uint8) for f, g in zip(frames, gains, strict=True)]


@pytest.fixture
def joined(tmp_path):
    """I: 6 frames of bigbuckbunny.mp4 then 6 of carphone_pristine.mp4 (64×48, H.264, 25 fps); P: I flickering,
    with an AAC track."""
    shots = real_shot("bigbuckbunny.mp4", CUT) + real_shot("carphone_pristine.mp4", CUT)
    return (make_video(tmp_path / "in.mp4", shots, audio=False),
            make_video(tmp_path / "processed.mp4", flickered(shots)))


def cli(i, p, out, *extra):
    return run_cli(["--input", str(i), "--processed", str(p), "--output", str(out), *extra])


def test_an_h264_mp4_with_aac_comes_back_as_one(joined, tmp_path, capsys):
    i, p = joined
    assert cli(i, p, tmp_path / "o.mp4", "--method", "naive") == 0
    out = capsys.readouterr().out
    assert "audio: the aac track of" in out and "processed.mp4 goes into o.mp4" in out
    assert f"o.mp4: scene cuts found before frame {CUT} (" in out
    got, want = probe(tmp_path / "o.mp4"), probe(p)
    assert (got["codec"], got["pix_fmt"], got["profile"]) == ("h264", "yuv420p", "High")  # what browsers play
    assert (got["frames"], got["fps"]) == (12, 25.0)
    assert abs(got["duration"] - want["duration"]) < 0.05
    assert got["audio"] == "aac" and got["audio_bytes"] == want["audio_bytes"] != b""  # the same audio, copied
    marker = json.loads(marker_path(tmp_path / "o.mp4").read_text())
    assert marker["cuts"] == [CUT] and marker["encoding"] == "h264 crf 18" and marker["frames"] == 12
    # no audio when asked, or when neither video has any; the rerun of the same settings is skipped
    assert cli(i, p, tmp_path / "o.mp4", "--method", "naive") == 0 and "already complete" in capsys.readouterr().out
    assert cli(i, p, tmp_path / "quiet.mp4", "--method", "naive", "--no-audio", "--crf", "30") == 0
    assert probe(tmp_path / "quiet.mp4")["audio"] is None
    assert json.loads(marker_path(tmp_path / "quiet.mp4").read_text())["encoding"] == "h264 crf 30, no audio"
    assert cli(i, i, tmp_path / "none.mp4", "--method", "identity") == 0
    assert "audio: none in" in capsys.readouterr().out and probe(tmp_path / "none.mp4")["audio"] is None


@pytest.mark.parametrize("method", ["naive", "bonneel"])
def test_no_ghost_of_the_first_shot_after_the_cut(joined, tmp_path, capsys, method):
    i, p = joined
    assert cli(i, p, tmp_path / "o", "--method", method) == 0
    out = capsys.readouterr().out
    assert f"scene cuts found before {CUT:05d}.png" in out
    procs = list(FrameSource(p))
    outs = [read_frame(f) for f in list_frames(tmp_path / "o")]
    assert np.abs(outs[CUT] - procs[CUT]).max() <= 0.5 / 255 + 1e-6  # O = P at the cut: PNG rounding only
    assert json.loads((tmp_path / "o" / ".tdms-output.json").read_text())["cuts"] == [CUT]
    assert cli(i, p, tmp_path / "ghost", "--method", method, "--no-cut-reset") == 0
    ghost = [read_frame(f) for f in list_frames(tmp_path / "ghost")]
    np.testing.assert_array_equal(ghost[:CUT], outs[:CUT])  # the same first shot
    assert np.abs(ghost[CUT] - procs[CUT]).mean() > 0.01  # the first shot carried into the second (bonneel: 0.0198)


def test_a_folder_output_and_the_video_flags(joined, tmp_path, capsys):
    i, p = joined
    assert cli(i, p, tmp_path / "o", "--method", "identity", "--crf", "30") == 0
    assert "--crf is for a video output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(i, p, tmp_path / "x.mp4", "--crf", "60")
    assert "--crf (crf) must be in 0..51" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(i, p, tmp_path / "x.mp4", "--method", "ffmpeg-deflicker", "--deflicker-size", "1")
    assert "--deflicker-size (deflicker_size) must be in 2..129" in capsys.readouterr().err
