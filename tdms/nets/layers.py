"""The layers of TDMS-Net and Lai et al.'s TransformNet, and their fast CPU paths.

`ConvLayer` is reflection padding (k//2) + Conv2d, as in the original code. Three of them run differently but
compute the same function (tests/nets/test_model.py checks values and gradients in fp64 against the plain ops):
`ColumnConvLayer` runs the narrow 7x7 output layers as one k x 1 conv and a shifted sum, `UpsampleConvLayer`
runs nearest x2 upsampling + 3x3 conv as four 2x2 phase convolutions at the input's resolution, and every pad
runs in the activations' own dtype under autocast. A layer takes its input as the channel parts of a
concatenation (the network's skips) and may end in the network's leaky ReLU (`act`).

Inference on CPU (`prepack`, which inference/fast.py applies to its own copy of a network): each layer runs as
oneDNN convolutions on weights reordered once, with the leaky ReLU or the residual sum fused in, and at most one copy
of its input, padded (nets/prepacked.py: padded_conv); a residual chain passes its blocks their inputs already
padded (ResidualChain), and a layer with `frame` gives the next one its output so (prepacked.framed).
"""

import itertools
from contextlib import nullcontext

import torch
import torch.nn as nn

from tdms.nets.prepacked import (
    SLOPE,
    conv_call,
    derived,
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


class ShiftSum(torch.autograd.Function):
    """out[:, c, y, x] = bias[c] + Σ_d z[:, d·C + c, y, x + d - p] for d < k, p = k//2, C = z's channels / k, the
    columns past the edges reflected (so with z a k×1 conv's per-column shares, out is the k×k conv of a
    reflection-padded input).

    Summed in NCHW (z's channel groups are then whole planes; in NHWC each shifted group is a strided gather, ~20×
    slower), accumulated in fp32 (or z's wider dtype) and rounded once to z's dtype, as a convolution rounds its
    sums. The output and the gradient of z keep z's memory format. The backward writes the output's gradient into
    each channel group, shifted back, then folds the reflected columns onto their sources.
    """

    @staticmethod
    def forward(ctx, z, bias, k: int):
        n, c, h, w = z.shape
        p, cout = k // 2, c // k
        ctx.k, ctx.fmt, ctx.bias_dtype = k, memory_format(z), bias.dtype
        padded = z.new_empty((n, c, h, w + 2 * p))  # NCHW, reflected by p columns: one copy of z
        padded[..., p:p + w] = z
        padded[..., :p] = padded[..., p + 1:2 * p + 1].flip(-1)
        padded[..., p + w:] = padded[..., w - 1:w + p - 1].flip(-1)
        acc = torch.promote_types(z.dtype, torch.float32)
        out = padded[:, :cout, :, :w].to(acc) + bias.to(acc).view(1, -1, 1, 1)
        for d in range(1, k):
            out += padded[:, d * cout:(d + 1) * cout, :, d:d + w]
        return out.to(z.dtype).contiguous(memory_format=ctx.fmt)

    @staticmethod
    def backward(ctx, grad):
        k, p = ctx.k, ctx.k // 2
        n, cout, h, w = grad.shape
        grad = grad.contiguous()
        grad_z = grad_bias = None
        if ctx.needs_input_grad[0]:
            padded = grad.new_zeros((n, k * cout, h, w + 2 * p))
            for d in range(k):
                padded[:, d * cout:(d + 1) * cout, :, d:d + w] = grad
            grad_z = padded[..., p:p + w].clone()  # padded column j < p is source column p - j, and on the right
            grad_z[..., 1:p + 1] += padded[..., :p].flip(-1)  # column p + w + i is source w - 2 - i
            grad_z[..., w - 1 - p:w - 1] += padded[..., p + w:].flip(-1)
            grad_z = grad_z.contiguous(memory_format=ctx.fmt)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.to(torch.promote_types(grad.dtype, torch.float32)).sum((0, 2, 3)).to(ctx.bias_dtype)
        return grad_z, grad_bias, None


def pick_shares(cout: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """(cout, k·cout, 1, k): the 1×k conv that computes ShiftSum, out[c] = Σ_d z[d·cout + c] shifted by d - k//2
    (weights 1 and 0; accumulated in fp32 and rounded once, as a conv's sums are)."""
    w = torch.zeros(cout, k * cout, 1, k, dtype=dtype)
    for d in range(k):
        w[torch.arange(cout), d * cout + torch.arange(cout), 0, d] = 1
    return w


class ColumnConvLayer(ConvLayer):
    """A ConvLayer with few outputs (the three k×k output layers: 2–3 channels), run on CPU as one k×1 conv.

    oneDNN computes output channels in blocks of 16, so a 7×7 conv to 3 channels costs what one to 16 does (it runs
    at ~1/5 of the machine's conv speed). Here a k×1 conv gives, for every tap column d, that column's share of each
    output (k·C channels: two blocks for C = 3, one for C = 2), and ShiftSum adds the shares shifted by d. Only the
    rows are reflection-padded on the input; the columns are reflected on the k·C-channel shares. Same weights and
    the same function, up to rounding. On other devices it is the plain layer: on CUDA the route is unmeasured
    (scripts/bench/measure.py `output_layer_routes` times both, and scripts/bench/gpu_check.sh runs it).
    """

    devices = ("cpu",)  # where forward takes the column route

    def forward(self, *parts, add=None):
        k = self.conv2d.kernel_size[0]
        too_small = min(parts[0].shape[-2:]) <= k // 2  # cannot be reflected: the plain layer's error says so
        if parts[0].device.type not in self.devices or self.conv2d.stride != (1, 1) or too_small:
            return super().forward(*parts, add=add)
        out = self.by_columns(*parts)
        return out if add is None else out + add

    def column_share(self, i: int, parts, cols: torch.Tensor) -> torch.Tensor:
        """The k×1 weights of part i's share of `cols` (made once)."""
        bounds = [0, *itertools.accumulate(p.shape[1] for p in parts)]
        return derived(self.packs, f"cols {i}", cols.dtype, lambda: cols[:, bounds[i]:bounds[i + 1]].contiguous())

    def by_columns(self, *parts):
        k = self.conv2d.kernel_size[0]
        weight = self.conv2d.weight
        cols = weight.permute(3, 0, 1, 2).reshape(k * weight.shape[0], -1, k, 1)  # channel d·C + c: column d's share
        bufs = [frame_of(p, k // 2) for p in parts]
        if fast(self, parts, weight) and all(b is not None for b in bufs):  # every part in a reflected frame of k//2
            # the k×1 convs run unpadded on the frames: the shares come for the reflected columns too, which are the
            # reflection of the shares (a k×1 conv reads one column), so the 1×k sum runs unpadded on them
            z = None
            for i, buf in enumerate(bufs):
                share = self.column_share(i, parts, cols)
                z = conv_call(buf, packed(self.packs, f"cols {i} framed", share, buf.shape), None, (0, 0), (1, 1),
                              False, z)
            pick = derived(self.packs, "pick", weight.dtype, lambda: pick_shares(weight.shape[0], k, weight.dtype))
            out = conv_call(z, packed(self.packs, "pick framed", pick, z.shape), self.conv2d.bias, (0, 0), (1, 1),
                            False)
            return leaky(out, self.act)
        if fast(self, parts, weight):  # the shift and sum as a 1×k conv of the shares, their columns reflected
            # one conv a part, each adding the one before (a fused sum): no concatenated copy of the full-resolution
            # parts (the residual head's cat(r, e1a): 64 channels at 854×480, 52 MB written and read again)
            z = None
            for i, part in enumerate(parts):
                share = self.column_share(i, parts, cols)
                z = padded_conv(self.packs, (part,), share, None, (k // 2, 0), add=z, name=f"cols {i}")
            pick = derived(self.packs, "pick", weight.dtype, lambda: pick_shares(weight.shape[0], k, weight.dtype))
            out = padded_conv(self.packs, (z,), pick, self.conv2d.bias, (0, k // 2), name="pick")
            return leaky(out, self.act)  # (no norm on this path)
        else:
            x = cat(parts)
            with own_dtype(x):
                x = nn.functional.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
            z = nn.functional.conv2d(x, cols)
        out = ShiftSum.apply(z, self.conv2d.bias, k)
        return leaky(self.norm_layer(out) if self.apply_norm else out, self.act)


# Nearest ×2 upsampling repeats each source pixel twice along an axis, so output row 2i + a of a 3-tap filter reads
# source rows i - 1, i (a = 0) or i, i + 1 (a = 1), the taps landing on one source row summed: (phase a, 2, 3).
PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def interleave(y: torch.Tensor, cout: int, h: int, w: int, offsets, frame: int = 0, mode: str = "zeros"):
    """The (B, cout, 2h, 2w) image whose phase p = (a, b) (pixels (2i + a, 2j + b)) is y's channels
    p·cout .. (p+1)·cout - 1 at pixels (i + offsets[p][0], j + offsets[p][1]). With `frame` (y channels_last), it is
    written inside a buffer `frame` pixels larger each side, padded in `mode`, and given as its framed view."""
    out, buf = phase_output(y, cout, h, w, frame)
    interleave_into(out, y, cout, h, w, offsets)
    return framed(fill_border(buf, frame, frame, mode), frame, mode) if buf is not None else out


def interleave_rows(ys, cout: int, h: int, w: int, offsets, frame: int = 0, mode: str = "zeros"):
    """interleave from two tensors, one a row phase: the phase (a, b) is ys[a]'s channels b·cout .. (b+1)·cout - 1
    at pixels (i + offsets[a][0], j + offsets[a][1]) (ys channels_last)."""
    out, buf = phase_output(ys[0], cout, h, w, frame)
    on, _, oh, ow = out.stride()
    for a, (y, (dy, dx)) in enumerate(zip(ys, offsets, strict=True)):  # in NHWC memory y's (i, j, b, c) is out's
        sn, _, sh, sw = y.stride()  # (i, a, j, b, c): one strided copy a row phase
        shape = (y.shape[0], h, w, 2, cout)
        src = y.as_strided(shape, (sn, sh, sw, cout, 1), y.storage_offset() + dy * sh + dx * sw)
        out.as_strided(shape, (on, 2 * oh, 2 * ow, ow, 1), out.storage_offset() + a * oh).copy_(src)
    return framed(fill_border(buf, frame, frame, mode), frame, mode) if buf is not None else out


def phase_output(y: torch.Tensor, cout: int, h: int, w: int, frame: int):
    """The (B, cout, 2h, 2w) tensor the phases of y are written into, in y's memory format, and the buffer
    `frame` pixels larger each side it is the inside of (y channels_last and frame > 0; else None)."""
    if frame and memory_format(y) == torch.channels_last:
        buf = torch.empty((y.shape[0], cout, 2 * h + 2 * frame, 2 * w + 2 * frame), dtype=y.dtype, device=y.device,
                          memory_format=torch.channels_last)
        return buf[:, :, frame:frame + 2 * h, frame:frame + 2 * w], buf
    out = torch.empty((y.shape[0], cout, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=memory_format(y))
    return out, None


def interleave_into(out: torch.Tensor, y: torch.Tensor, cout: int, h: int, w: int, offsets) -> torch.Tensor:
    """interleave, written into `out` (B, cout, 2h, 2w); returns out."""
    (oy, ox), ky, kx = offsets[0], offsets[2][0] - offsets[0][0], offsets[1][1] - offsets[0][1]
    linear = all(off == (oy + a * ky, ox + b * kx) for (a, b), off in zip(PHASES, offsets, strict=True))
    strided = memory_format(y) == torch.channels_last and out.stride(1) == 1 and not torch.compiler.is_compiling()
    if linear and strided:
        # offsets (oy + a·ky, ox + b·kx): in NHWC memory y's phase (a, b) at (i, j) starts at
        # i·sh + j·sw + a·(ky·sh + 2·cout) + b·(kx·sw + cout), and out is (n, i, a, j, b, c) (dynamo does not
        # trace these strided views). With kx = 0 a pixel's two column phases are 2·cout channels in a row of y:
        # one copy moves all four phases (1.6× faster than four); else one copy a column phase, whose rows of
        # w·cout run as one loop each (1.4–1.6× faster than one copy of cout-channel pieces, 1.2× than four)
        sn, _, sh, sw = y.stride()
        on, _, oh, ow = out.stride()
        start = y.storage_offset() + oy * sh + ox * sw
        if kx == 0:
            shape = (y.shape[0], h, 2, w, 2, cout)
            src = y.as_strided(shape, (sn, sh, ky * sh + 2 * cout, sw, cout, 1), start)
            out.as_strided(shape, (on, 2 * oh, oh, 2 * ow, ow, 1)).copy_(src)
            return out
        shape = (y.shape[0], h, 2, w, cout)
        for b in range(2):
            src = y.as_strided(shape, (sn, sh, ky * sh + 2 * cout, sw, 1), start + b * (kx * sw + cout))
            out.as_strided(shape, (on, 2 * oh, oh, 2 * ow, 1), out.storage_offset() + b * ow).copy_(src)
        return out
    for p, ((a, b), (dy, dx)) in enumerate(zip(PHASES, offsets, strict=True)):
        out[:, :, a::2, b::2] = y[:, p * cout:(p + 1) * cout, dy:dy + h, dx:dx + w]
    return out


class UpsampleConvLayer(ConvLayer):
    """Nearest-neighbour ×2 upsampling, then a 3×3 ConvLayer (avoids transposed-conv checkerboards).

    Computed at the input's resolution, never building the 4×-sized upsampled tensor: each output phase (a, b) is a
    2×2 conv of the input with the 3×3 taps summed as the upsampling repeats them (PHASE_TAPS), 16 MACs a source
    pixel instead of 36. The reflection padding of the upsampled image is the replicate padding of the input
    (u[-1] = u[1] = x[0]). Same weights and the same function, up to rounding.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm: str = "none", dead_norm: bool = False,
                 act: bool = False):
        if (k, stride) != (3, 1):
            raise ValueError(f"UpsampleConvLayer is 3×3, stride 1; got kernel {k}, stride {stride}")
        super().__init__(cin, cout, k, stride, norm, dead_norm, act)
        # a buffer, not made per call: a host-to-device copy inside a forward would break CUDA graph capture;
        # not persistent, so the state dict keeps the released names only
        self.register_buffer("taps", torch.tensor(PHASE_TAPS), persistent=False)

    def phased(self):
        """(4·cout, cin, 2, 2): the 3×3 taps summed per phase, combined in the weights' dtype."""
        weight = self.conv2d.weight
        with own_dtype(weight):
            taps = self.taps.to(weight.dtype)
            return torch.einsum("ayk,oikl,bxl->aboiyx", taps, weight, taps).flatten(0, 2)

    def forward(self, *parts, add=None):
        n, _, h, w = parts[0].shape
        weight, bias = self.conv2d.weight, self.conv2d.bias
        fused = fast(self, parts, weight)
        if fused:  # the phases and the leaky ReLU in one call on the replicate-padded input
            phased, bias4 = derived(self.packs, "phased", weight.dtype, lambda: (self.phased(), bias.repeat(4)))
            y = padded_conv(self.packs, parts, phased, bias4, (1, 1), mode="replicate", act=self.act)
        else:
            x = cat(parts)
            with own_dtype(x):  # replicate padding by 1, as edge copies: inductor's replication_pad2d_backward
                x = torch.cat((x[:, :, :1], x, x[:, :, -1:]), 2)  # mislays channels_last
                x = torch.cat((x[..., :1], x, x[..., -1:]), 3)
            y = nn.functional.conv2d(x, self.phased(), bias.repeat(4))  # (B, 4·cout, h+1, w+1), phase-major
        # phase (a, b) at source pixel (i, j): y at (i + a, j + b); on the fused path in a reflected frame (`frame`)
        out = interleave(y, weight.shape[0], h, w, PHASES, self.frame if fused and add is None else 0, "reflect")
        if not fused:
            out = leaky(self.norm_layer(out) if self.apply_norm else out, self.act)
        return out if add is None else out + add


# A 3-tap transposed conv of stride 2, padding 1 puts tap 1 on output 2i (from source i) and taps 2 and 0 on output
# 2i + 1 (from sources i and i + 1; past the end, zero): (phase, 2 sources, 3 taps).
TRANSPOSED_TAPS = ((0.0, 1.0, 0.0), (0.0, 0.0, 0.0)), ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0))


class TransposedConv(nn.ConvTranspose2d):
    """3×3 transposed conv, stride 2 (×2 the size) (+ the leaky ReLU with `act`): the mask and flow heads' upsampling.

    Prepacked on CPU it runs at the input's resolution, as UpsampleConvLayer does, one conv per output row phase
    giving its two column phases (row_phases; TRANSPOSED_TAPS: the taps are picked, not summed, so exact in any
    dtype): oneDNN's transposed conv ran at ~1/4 of its conv rate on AMX.
    """

    packs = None
    # on the prepacked path, its output comes in a frame this wide, padded in frame_mode (ConvLayer.frame; TDMSNet
    # sets them as the next layer pads)
    frame, frame_mode = 0, "zeros"

    def __init__(self, cin: int, cout: int, act: bool = False):
        super().__init__(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.act = act

    def forward(self, x):
        if not fast(self, (x,), self.weight):
            return leaky(super().forward(x), self.act)
        rows = derived(self.packs, "phased", self.weight.dtype, self.row_phases)
        # (zero padding 1 shifts y by one, on the axes padded)
        ys = [padded_conv(self.packs, (x,), phased, bias2, (a, 1), mode="zeros", act=self.act, name=f"row {a}")
              for a, (phased, bias2) in enumerate(rows)]
        return interleave_rows(ys, self.out_channels, *x.shape[-2:], [(0, 1), (1, 1)], self.frame, self.frame_mode)

    def row_phases(self):
        """Per output row phase a, its conv: (2·cout, cin, 1 + a, 2) weights of the phases (a, 0) and (a, 1), and
        their biases. Row phase 0 reads one source row (TRANSPOSED_TAPS): a 1×2 conv; row phase 1 a 2×2 one, so 12
        taps a source pixel instead of the 16 of one 2×2 conv for all four phases (~20 % less time on AMX)."""
        taps = torch.tensor(TRANSPOSED_TAPS, dtype=self.weight.dtype)
        full = torch.einsum("ayk,iokl,bxl->aboiyx", taps, self.weight, taps)  # (a, b, cout, cin, 2, 2)
        bias2 = self.bias.repeat(2)
        return (full[0, :, :, :, :1].flatten(0, 1).contiguous(), bias2), (full[1].flatten(0, 1).contiguous(), bias2)


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
