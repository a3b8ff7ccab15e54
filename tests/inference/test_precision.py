"""A bf16 step reads the frames unrounded: TDMS-Net's layers that read them (fast.FRAME_LAYERS) take each frame as
bf16 hi + lo parts (fast.SplitFrames), so the recurrence does not drift on frames rounded to bf16's 8 bits."""

import copy

import pytest
import torch

from tdms.inference.fast import FRAME_LAYERS, SplitFrames, Step
from tdms.nets.prepacked import can_prepack, prepack
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
    assert all(getattr(step.net, name).layer.conv2d.weight.dtype == torch.bfloat16 for name in FRAME_LAYERS)
    assert step.net.conv2a.conv2d.weight.dtype == torch.bfloat16  # the rest runs in bf16
    assert not torch.equal(got, from_rounded)  # rounded to bf16 on the way in, they would give the same O_t
    assert (got - want).abs().mean() < 5e-3


def test_split_frames_sums_to_the_conv_of_the_unrounded_frames():
    """hi + lo carry a frame to ~2^-16: the split layer gives what its bf16 weights give on the exact frames, rounded
    once to bf16 at the output (off by one bf16 step at a few near-ties), unlike the layer on frames rounded to bf16."""
    torch.manual_seed(1)
    layer = TDMSNet(nf=8).eval().conv1a
    g = torch.Generator().manual_seed(5)
    parts = [torch.rand(1, 3, 20, 28, generator=g) for _ in range(2)]
    ref = copy.deepcopy(layer).bfloat16().double()  # the same bf16 weights, exact arithmetic
    fast = can_prepack(torch.bfloat16)  # the path a bf16 step takes here: oneDNN's prepacked conv, else torch's
    split = SplitFrames(layer.to(memory_format=torch.channels_last) if fast else layer, torch.bfloat16)
    if fast:
        prepack(split)
        parts = [p.contiguous(memory_format=torch.channels_last) for p in parts]
    with torch.inference_mode():
        want = ref(*(p.double() for p in parts)).bfloat16()
        got = split(*parts)
        rounded = ref(*(p.bfloat16().double() for p in parts)).bfloat16()
    off, off_rounded = (got != want).float().mean().item(), (rounded != want).float().mean().item()
    # measured: 0.3 % prepacked, 13 % through torch's bf16 conv (it rounds partial sums), 45 % from rounded frames
    assert off < (0.01 if fast else 0.2) and off_rounded > 2 * off, (off, off_rounded)
