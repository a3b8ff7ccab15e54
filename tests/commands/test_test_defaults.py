"""What tdms-test does without flags: the precision the machine is fast at, channels_last, and memory kept mapped;
and --protocol original, recorded in the output's marker."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tdms import devices
from tdms.commands.test import main as run_cli
from tdms.frames.io import FrameSource
from tdms.frames.outputs import MARKER
from tdms.inference.original import written
from tdms.nets.tdms_net import TDMSNet
from tests.conftest import flicker, moving_frames, write_video


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "released.pth"
    torch.save({"model": TDMSNet(nf=8, original_quirks=True).state_dict()}, ckpt)
    ins = moving_frames(n=4, h=30, w=38)
    i, p = write_video(tmp_path / "I", ins), write_video(tmp_path / "P", flicker(ins))

    def go(name, *flags):
        out = tmp_path / name
        assert run_cli(["--input", str(i), "--processed", str(p), "--output", str(out), "--checkpoint", str(ckpt),
                        *flags]) == 0
        return json.loads((out / MARKER).read_text()), np.stack(list(FrameSource(out)))

    return go


def test_auto_dtype_follows_the_cpu(run, monkeypatch, capsys):
    native = devices.native_bf16("cpu")
    record, frames = run("auto")
    assert record["dtype"] == ("bf16" if native else "fp32") and record["channels_last"] is True
    assert f"in {record['dtype']}, channels_last on cpu" in capsys.readouterr().out
    record32, frames32 = run("fp32", "--dtype", "fp32", "--no-channels-last")
    assert (record32["dtype"], record32["channels_last"]) == ("fp32", False)
    assert np.abs(frames - frames32).max() <= 8 / 255  # bf16 heads, O and the blend in fp32
    monkeypatch.setattr(devices, "cpu_info", lambda: {"model": "old", "avx512_bf16": False, "amx_bf16": False})
    assert run("old_cpu")[0]["dtype"] == "fp32"  # no native bf16: fp32


def test_protocol_original_is_recorded_and_refused_where_it_cannot_apply(run, tmp_path, capsys):
    record, frames = run("orig", "--protocol", "original")
    assert (record["protocol"], record["dtype"]) == ("original", "fp32")
    assert "the original test loop" in capsys.readouterr().out
    plain, plain_frames = run("plain", "--dtype", "fp32")
    assert "protocol" not in plain
    p0 = FrameSource(tmp_path / "P")[0]
    assert np.allclose(frames[0], written(p0), atol=1e-6) and not np.allclose(frames[0], p0, atol=1e-3)  # P_0's JPEG
    assert np.abs(frames[1:] - plain_frames[1:]).max() > 1 / 255  # 30×38: resized to 32×40, not padded
    for flags in (["--method", "naive"], ["--compile"]):
        with pytest.raises(SystemExit):
            run_cli(["--input", "i", "--processed", "p", "--output", str(tmp_path / "x"), "--protocol", "original",
                     *flags])
        assert "--protocol original" in capsys.readouterr().err


@pytest.mark.slow
def test_freed_memory_stays_mapped():
    """Frame after frame the network allocates the same large activations: kept in the heap they fault no pages.
    In a fresh process (the setting is process-wide), 1920×1080 frames, a small network."""
    script = """
import resource, sys, torch
from tdms.inference.original import written
from tdms.inference.fast import make_step
from tdms.nets.tdms_net import TDMSNet
step = make_step(TDMSNet(nf=8).eval(), "cpu", "fp32", keep_memory=sys.argv[1] == "keep")
x = [torch.rand(1, 3, 1080, 1920) for _ in range(4)]
with torch.inference_mode():
    step(*x)
    step(*x)  # after the first frame the heap grows once to what a frame needs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(*x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("plain", "keep")}
    assert faults["plain"] > 50_000 and faults["keep"] < faults["plain"] / 20, faults
