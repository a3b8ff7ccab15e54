"""The layers of TDMS-Net and Lai et al.'s TransformNet, and their fast CPU paths.

`ConvLayer` is reflection padding (k//2) + Conv2d, as in the original code; `ResidualBlock` and `ResidualChain`
are built of it. Two other layers compute the same function as a plain ConvLayer differently (nets/column_conv.py:
the narrow 7×7 output layers; nets/upsampling.py: nearest ×2 upsampling + 3×3 conv, and the heads' transposed
convs, at the input's resolution), and every pad runs in the activations' own dtype under autocast (tests/nets/
test_model.py checks values and gradients in fp64 against the plain ops). A layer takes its input as the channel
parts of a concatenation (the network's skips) and may end in the network's leaky ReLU (`act`).

Inference on CPU (`prepack`, which inference/fast.py applies to its own copy of a network): each layer runs as
oneDNN convolutions on weights reordered once, with the leaky ReLU or the residual sum fused in, and at most one copy
of its input, padded (nets/prepacked.py: padded_conv); a residual chain passes its blocks their inputs already
padded (ResidualChain), and a layer with `frame` gives the next one its output so (prepacked.framed).
"""

from contextlib import nullcontext

import torch
import torch.nn as nn

from tdms.nets.prepacked import (
    SLOPE,
    conv_call,
    fast,
    fill_border,
    frame_of,
    framed,
    packed,
    padded,
    padded_conv,
)

NORMS = ("none", "instance")


def own_dtype(x: torch.Tensor):
    """A context in which ops on x run in x's dtype. CPU autocast runs padding in fp32: a cast of the activations
    each way, forward and backward, for a copy exact in any dtype (bf16 CPU training is ~1.2× faster without)."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def cat(parts) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def leaky(x: torch.Tensor, act: bool) -> torch.Tensor:
    return nn.functional.leaky_relu(x, SLOPE, inplace=True) if act else x


class ConvLayer(nn.Module):
    """Reflection padding (k//2) + Conv2d (+ InstanceNorm) (+ the leaky ReLU with `act`).

    `norm` is "none" or "instance". With `dead_norm` the InstanceNorm (with running buffers) is built but
    never applied: the released model's layers look like that (its `norm in ["BN" or "IN"]` test is False).
    forward(*parts, add=None): the input is the channel concatenation of `parts`; `add` is added to the output.
    """

    packs = None  # prepack() makes it a dict: the fast CPU path's weights
    # On the prepacked path the output comes out this many pixels larger each side, the extra frame the reflection
    # of the inside, given as the inside's view (prepacked.framed): the next conv, if it pads by reflection as much,
    # reads it with no padded copy. The input is then copied, padded: the network sets it where it is copied anyway
    # (TDMSNet: conv1a, conv1b, conv3: several parts or a stride).
    frame = 0

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm: str = "none", dead_norm: bool = False,
                 act: bool = False):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)
        self.act = act
        self.apply_norm = norm == "instance" and not dead_norm
        if dead_norm:
            self.norm_layer = nn.InstanceNorm2d(cout, track_running_stats=True)
        elif norm == "instance":
            self.norm_layer = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, *parts, add=None):
        conv = self.conv2d
        if fast(self, parts, conv.weight):
            p = conv.kernel_size[0] // 2
            fuse_add = add is not None and not self.act and add.dtype == conv.weight.dtype
            y = padded_conv(self.packs, parts, conv.weight, conv.bias, (p, p), conv.stride, "reflect", self.act,
                            add if fuse_add else None, frame=self.frame if add is None else 0)
            return y if add is None or fuse_add else y + add
        x = cat(parts)
        with own_dtype(x):
            x = self.pad(x)
        x = conv(x)
        x = leaky(self.norm_layer(x) if self.apply_norm else x, self.act)
        return x if add is None else x + add


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor (one that is not also plain-contiguous), else contiguous_format."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


class ResidualBlock(nn.Module):
    """x + conv(lrelu(conv(x))), 3×3, constant width."""

    def __init__(self, ch: int, norm: str, dead_norm: bool):
        super().__init__()
        self.conv1 = ConvLayer(ch, ch, 3, 1, norm, dead_norm, act=True)
        self.conv2 = ConvLayer(ch, ch, 3, 1, norm, dead_norm)

    def forward(self, x):
        return self.conv2(self.conv1(x), add=x)

    def framed(self, a: torch.Tensor, own: bool = False) -> torch.Tensor:
        """The prepacked path in a frame (ResidualChain): `a` is x reflection-padded by 1 (channels_last); returns
        the block's output reflection-padded by 1. Each conv runs zero-padded on the padded tensor: its output is
        one pixel larger each side than x, the inside is the conv of the reflection-padded x, and its one-pixel
        frame (which read zeros) is written over with the reflection of the inside (prepacked.fill_border).
        With `own` (nothing else reads `a`) the output is accumulated into a's memory."""
        c1, c2 = self.conv1.conv2d, self.conv2.conv2d
        y = conv_call(a, packed(self.conv1.packs, "framed", c1.weight, a.shape, (1, 1)), c1.bias, (1, 1), (1, 1),
                      True)
        y = fill_border(y, 1, 1)
        out = conv_call(y, packed(self.conv2.packs, "framed", c2.weight, y.shape, (1, 1)), c2.bias, (1, 1), (1, 1),
                        False, a, into_add=own)
        return fill_border(out, 1, 1)


class ResidualChain(nn.Sequential):
    """Residual blocks one after another (an nn.Sequential: the state dict's names are the same).

    Prepacked on CPU the chain runs in a frame: x is reflection-padded once, and each block passes the next one its
    output already padded (ResidualBlock.framed), instead of each conv recomputing its border rows and columns from
    strips of its input (4 small convs a layer: a tenth of the blocks' time at 854×480 in bf16). The frame costs a
    conv 2.6 % more pixels at 854×480 (122·216 against 120·214). The output is given in its frame too
    (prepacked.framed), padded in `frame_mode`, for the next layer to read as it pads (TDMSNet sets it)."""

    frame_mode = "reflect"

    def forward(self, x):
        first = self[0].conv1 if len(self) else None
        if first is None or not fast(first, (x,), first.conv2d.weight) or min(x.shape[-2:]) < 2:
            return super().forward(x)
        a = frame_of(x, 1)  # x given in its frame (prepacked.framed), or padded here
        own = a is None  # a frame given may be read by others too (TDMSNet's three chains read E3's)
        a = padded((x,), 1, 1) if a is None else a
        for block in self:
            a, own = block.framed(a, own), True  # each block's output is the chain's own
        if self.frame_mode != "reflect":
            fill_border(a, 1, 1, self.frame_mode)
        return framed(a, 1, self.frame_mode)
