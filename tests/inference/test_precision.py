"""A bf16 step reads its inputs without rounding what matters: TDMS-Net's layers that read the frames
(fast.FRAME_LAYERS, fast.SplitFrames) take an 8-bit frame exactly (255·x) and O_{t-1} as bf16 hi + lo parts, so the
recurrence does not drift on inputs rounded to bf16's 8 bits."""

import copy

import pytest
import torch

from tdms.inference.fast import FRAME_LAYERS, FRAME_SCALE, SplitFrames, Step
from tdms.nets.prepacked import can_prepack, prepack
from tdms.nets.tdms_net import TDMSNet


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_step_reads_o_prev_unrounded(channels_last):
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
    assert not torch.equal(got, from_rounded)  # O_{t-1} rounded to bf16 on the way in would give the same O_t
    assert (got - want).abs().mean() < 5e-3


@pytest.mark.parametrize("name", list(FRAME_LAYERS))
def test_split_frames_reads_8_bit_frames_exactly_and_o_prev_to_16_bits(name):
    """An 8-bit frame part enters exactly (255·x, read by its weights / 255) and O_{t-1} as hi + lo (to ~2^-16): the
    split layer gives what its own bf16 weights give on the exact inputs in exact arithmetic, rounded once to bf16 at
    the output (off by one bf16 step at a few near-ties), unlike the same layer on inputs rounded to bf16 first."""
    torch.manual_seed(1)
    layer = getattr(TDMSNet(nf=8).eval(), name)
    g = torch.Generator().manual_seed(5)
    # the frames 8-bit, O_{t-1} (conv1b's part 0) any fp32 value, as the recurrence makes it
    parts = [torch.randint(0, 256, (1, 3, 20, 28), generator=g).float() / 255 for _ in range(2)]
    split = FRAME_LAYERS[name]
    for j in split:
        parts[j] = torch.rand(1, 3, 20, 28, generator=g)
    fast = can_prepack(torch.bfloat16)  # the path a bf16 step takes here: oneDNN's prepacked conv, else torch's
    layer = SplitFrames(layer.to(memory_format=torch.channels_last) if fast else layer, torch.bfloat16, split)
    if fast:
        prepack(layer)
    conv = layer.layer.conv2d  # its bf16 weights, in exact arithmetic: the hi channels read the parts' exact values
    exact = copy.deepcopy(layer.layer).double()
    exact.conv2d = torch.nn.Conv2d(6, conv.out_channels, conv.kernel_size).double()
    exact.conv2d.weight.data.copy_(conv.weight[:, :6].double())
    exact.conv2d.bias.data.copy_(conv.bias.double())
    exact.packs = None

    def scaled(ps):  # what the hi channels stand for: 255·x for a frame, x itself for a split part
        return [p.double() * (1 if j in split else FRAME_SCALE) for j, p in enumerate(ps)]

    with torch.inference_mode():
        want = exact(*scaled(parts)).bfloat16()
        got = layer(*parts)
        rounded = exact(*scaled([p.bfloat16().float() for p in parts])).bfloat16()
    off, off_rounded = (got != want).float().mean().item(), (rounded != want).float().mean().item()
    # measured prepacked: 0 % (conv1a), 0.07 % (conv1b); from inputs rounded to bf16 first: 40 %, 34 %
    assert off < (0.01 if fast else 0.2) and off_rounded > 2 * off, (off, off_rounded)


def test_split_frames_is_built_on_the_layer_s_device():
    """Built from a layer on another device (a CUDA model's), its weights are made there, not on the CPU, and so is
    its staged input: here the meta device stands for it (shapes only)."""
    layer = TDMSNet(nf=8).eval().conv1b.to("meta")
    split = SplitFrames(layer, torch.bfloat16, (0,))
    assert {t.device.type for t in split.parameters()} == {"meta"}
    parts = [torch.empty(1, 3, 12, 16, device="meta") for _ in range(2)]
    with torch.inference_mode():
        assert split(*parts).shape == (1, 8, 12, 16)
