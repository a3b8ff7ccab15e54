"""tdms-test's settings: defaults, a --config YAML file, key=value overrides, then the flags (they win)."""

import dataclasses
import json

import pytest

from tdms.commands.test import main as run_cli
from tdms.commands.test import parser, settings
from tdms.config import InferenceConfig
from tdms.frames.io import FrameSource
from tdms.frames.outputs import MARKER
from tests.conftest import flicker, moving_frames, write_video


@pytest.fixture
def clip(tmp_path):
    ins = moving_frames(n=3, h=16, w=20)
    return write_video(tmp_path / "I", ins), write_video(tmp_path / "P", flicker(ins))


def yaml_file(path, text):
    path.write_text(text)
    return str(path)


def test_every_flag_is_a_config_key():
    dests = {a.dest for a in parser()._actions} - {"help", "config", "overrides"}
    assert dests == {f.name for f in dataclasses.fields(InferenceConfig)}


def test_defaults_file_overrides_then_flags(clip, tmp_path):
    assert settings(["--output", "o", "--input", "i", "--processed", "p"]) == InferenceConfig(
        input="i", processed="p", output="o")
    cfg_file = yaml_file(tmp_path / "run.yaml", f"input: {clip[0]}\nprocessed: {clip[1]}\noutput: {tmp_path / 'O'}\n"
                                               "method: bonneel\nlam: 2\njpeg_quality: 90\nbatch_videos: 1\n")
    cfg = settings(["--config", cfg_file])
    assert (cfg.method, cfg.lam, cfg.jpeg_quality, cfg.redo) == ("bonneel", 2.0, 90, False)
    cfg = settings(["--config", cfg_file, "method=naive", "redo=true", "lam=0.5"])
    assert (cfg.method, cfg.lam, cfg.redo) == ("naive", 0.5, True)
    cfg = settings(["method=naive", "--config", cfg_file, "--method", "identity", "--lambda", "0", "--jpeg-quality",
                    "50"])  # flags win over both; overrides may come before the flags
    assert (cfg.method, cfg.lam, cfg.jpeg_quality) == ("identity", 0.0, 50)
    assert run_cli(["--config", cfg_file, "method=identity"]) == 0
    record = json.loads((tmp_path / "O" / MARKER).read_text())
    assert record["method"] == "identity" and record["format"] == ".jpg q90" and len(FrameSource(tmp_path / "O")) == 3


@pytest.mark.parametrize("text, extra, message", [
    ("methd: naive\n", [], "unknown config key 'methd'"),
    ("", ["batch_videos=two"], "config key 'batch_videos' wants int, got 'two'"),
    ("redo: 1\n", [], "config key 'redo' wants bool"),
    ("", ["method"], "not of the form"),
    ("method: lai\n", [], "--method: unknown method 'lai'"),
    ("dtype: int8\n", [], "--dtype: unknown dtype 'int8'"),
    ("jpeg_quality: 101\n", [], "(jpeg_quality) must be in 1..100 (0: PNG), got 101"),
    ("lam: -1\n", [], "(lam) must be a finite number >= 0"),
    ("batch_videos: 0\n", [], "--batch-videos must be >= 1, got 0"),
    ("device: gpu\n", [], "unknown device 'gpu'"),
    ("method: [\n", [], "not valid YAML"),
])
def test_bad_settings_are_usage_errors(clip, tmp_path, capsys, text, extra, message):
    cfg_file = yaml_file(tmp_path / "run.yaml", text)
    with pytest.raises(SystemExit) as e:
        run_cli(["--config", cfg_file, "--input", str(clip[0]), "--processed", str(clip[1]),
                 "--output", str(tmp_path / "O"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "O").exists()


def test_output_and_inputs_come_from_somewhere(clip, tmp_path, capsys):
    for args, message in ((["--input", str(clip[0]), "--processed", str(clip[1])], "give --output"),
                          (["--output", str(tmp_path / "O")], "give --input and --processed"),
                          (["--config", str(tmp_path / "none.yaml"), "--output", "o"], "config file not found")):
        with pytest.raises(SystemExit) as e:
            run_cli(args)
        assert e.value.code == 2 and message in capsys.readouterr().err
