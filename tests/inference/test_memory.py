"""Memory that stays mapped (devices.keep_freed_memory through fast.make_step's keep_memory): the first frame
already reuses what it frees."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from tdms.inference.fast import make_step
from tdms.nets.tdms_net import TDMSNet
step = make_step(TDMSNet(nf=8).eval(), "cpu", "fp32", channels_last=True, keep_memory=sys.argv[1] == "keep")
x = [torch.rand(1, 3, 1080, 1920) for _ in range(4)]
with torch.inference_mode():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(*x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
def test_first_frame_maps_its_heap_once():
    """With keep_memory the first frame's activations come from a heap that keeps what they free: it faults each
    page of what a frame needs at once, not every activation's pages afresh (in a fresh process: the setting is
    process-wide; 1920×1080, a small network)."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("plain", "keep")}
    assert faults["plain"] > 50_000 and faults["keep"] < 0.75 * faults["plain"], faults
