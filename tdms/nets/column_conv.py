"""A k×k conv to few channels (the networks' 7×7 output layers: 2–3 channels) as a k×1 conv and a 1×k sum.

oneDNN computes output channels in blocks of 16, so a 7×7 conv to 3 channels costs what one to 16 does. A k×1 conv
gives every tap column's share of each output instead (k·C channels), and the shares are summed shifted by their
column (ShiftSum; on the prepacked CPU path a 1×k conv of 0/1 weights, pick_shares).
"""

import itertools

import torch
import torch.nn as nn

from tdms.nets.layers import ConvLayer, cat, leaky, memory_format, own_dtype
from tdms.nets.prepacked import conv_call, derived, fast, frame_of, packed, padded_conv


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
        if fast(self, parts, weight):  # the shift and sum as a 1×k conv of the shares, their columns reflected
            # one conv a part, each adding the one before (a fused sum): no concatenated copy of the full-resolution
            # parts (the residual head's cat(r, e1a): 64 channels at 854×480, 52 MB written and read again).
            # Every part in a reflected frame of k//2: the k×1 convs run unpadded on the frames, and the shares they
            # give for the reflected columns are the reflection of the shares (a k×1 conv reads one column), so the
            # 1×k sum runs unpadded on them too
            bufs = [frame_of(p, k // 2) for p in parts]
            in_frames = all(b is not None for b in bufs)
            z = None
            for i, (part, buf) in enumerate(zip(parts, bufs, strict=True)):
                share = self.column_share(i, parts, cols)
                if in_frames:
                    z = conv_call(buf, packed(self.packs, f"cols {i} framed", share, buf.shape), None, (0, 0), (1, 1),
                                  False, z)
                else:
                    z = padded_conv(self.packs, (part,), share, None, (k // 2, 0), add=z, name=f"cols {i}")
            pick = derived(self.packs, "pick", weight.dtype, lambda: pick_shares(weight.shape[0], k, weight.dtype))
            if in_frames:
                out = conv_call(z, packed(self.packs, "pick framed", pick, z.shape), self.conv2d.bias, (0, 0),
                                (1, 1), False)
            else:
                out = padded_conv(self.packs, (z,), pick, self.conv2d.bias, (0, k // 2), name="pick")
            return leaky(out, self.act)  # (no norm on this path)
        else:
            x = cat(parts)
            with own_dtype(x):
                x = nn.functional.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
            z = nn.functional.conv2d(x, cols)
        out = ShiftSum.apply(z, self.conv2d.bias, k)
        return leaky(self.norm_layer(out) if self.apply_norm else out, self.act)
