"""A bf16 step reads the frames in fp32: TDMS-Net's layers that read them (fast.FRAME_LAYERS) stay fp32, so the
recurrence does not drift on frames rounded to bf16's 8 bits."""

import pytest
import torch

from tdms.inference.fast import FRAME_LAYERS, Step
from tdms.nets.tdms_net import TDMSNet


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_step_reads_the_frames_unrounded(channels_last):
    torch.manual_seed(0)
    model = TDMSNet(nf=8).eval()
    g = torch.Generator().manual_seed(3)
    frames = [0.25 + 0.5 * torch.rand(1, 3, 16, 24, generator=g) for _ in range(4)]
    rounded = [x.bfloat16().float() for x in frames]  # the same frames at bf16's precision
    step = Step(model, torch.bfloat16, channels_last, "cpu")
    with torch.inference_mode():
        got, from_rounded, want = step(*frames)[0], step(*rounded)[0], model(*frames)["output"]
    assert all(getattr(step.net, name).layer.conv2d.weight.dtype == torch.float32 for name in FRAME_LAYERS)
    assert step.net.conv2a.conv2d.weight.dtype == torch.bfloat16  # the rest runs in bf16
    assert not torch.equal(got, from_rounded)  # rounded to bf16 on the way in, they would give the same O_t
    assert (got - want).abs().mean() < 5e-3
