"""tdms-build-data stopped by SIGTERM (timeout, a scheduler, a container stop) as by Ctrl-C."""

import signal
import subprocess
import sys
import time

import pytest


def interrupted_build(tmp_path):
    """Start a build, send SIGTERM while a video is being written, return (exit status, stderr, out folder)."""
    out = tmp_path / "data"
    run = subprocess.Popen([sys.executable, "-m", "tdms.commands.build_data", "--out", str(out), "--frames", "40",
                            "--splits", "test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while not any(out.rglob(".tmp-*")):  # the builder's hidden partial of a video in progress
        assert time.time() < end and run.poll() is None, "the build did not start writing"
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    return run.returncode, stderr, out


@pytest.mark.slow
def test_sigterm_stops_the_build_with_one_line(tmp_path):
    code, stderr, out = interrupted_build(tmp_path)
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("tdms-build-data")]
    assert code == 143 and "Traceback" not in stderr
    assert lines == [f"tdms-build-data: interrupted: the videos finished are kept in {out}; run the same command "
                     f"again to complete it"]


@pytest.mark.slow
def test_sigterm_leaves_no_hidden_partial(tmp_path):
    _, _, out = interrupted_build(tmp_path)
    assert list(out.rglob(".tmp-*")) == []
