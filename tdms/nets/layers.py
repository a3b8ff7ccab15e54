"""The layers of TDMS-Net and Lai et al.'s TransformNet, and their fast CPU paths.

`ConvLayer` is reflection padding (k//2) + Conv2d, as in the original code. Three of them run differently but
compute the same function (tests/nets/test_model.py checks values and gradients in fp64 against the plain ops):
`ColumnConvLayer` runs the narrow 7x7 output layers as one k x 1 conv and a shifted sum, `UpsampleConvLayer`
runs nearest x2 upsampling + 3x3 conv as four 2x2 phase convolutions at the input's resolution, and every pad
runs in the activations' own dtype under autocast.
"""

from contextlib import nullcontext

import torch
import torch.nn as nn

NORMS = ("none", "instance")


def own_dtype(x: torch.Tensor):
    """A context in which ops on x run in x's dtype. CPU autocast runs padding in fp32: a cast of the activations
    each way, forward and backward, for a copy exact in any dtype (bf16 CPU training is ~1.2× faster without)."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


class ConvLayer(nn.Module):
    """Reflection padding (k//2) + Conv2d (+ InstanceNorm).

    `norm` is "none" or "instance". With `dead_norm` the InstanceNorm (with running buffers) is built but
    never applied: the released model's layers look like that (its `norm in ["BN" or "IN"]` test is False).
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm: str = "none", dead_norm: bool = False):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)
        self.apply_norm = norm == "instance" and not dead_norm
        if dead_norm:
            self.norm_layer = nn.InstanceNorm2d(cout, track_running_stats=True)
        elif norm == "instance":
            self.norm_layer = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x):
        with own_dtype(x):
            x = self.pad(x)
        x = self.conv2d(x)
        return self.norm_layer(x) if self.apply_norm else x


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

    def forward(self, x):
        k = self.conv2d.kernel_size[0]
        too_small = min(x.shape[-2:]) <= k // 2  # cannot be reflected: the plain layer's error says so
        if x.device.type not in self.devices or self.conv2d.stride != (1, 1) or too_small:
            return super().forward(x)
        return self.by_columns(x)

    def by_columns(self, x):
        k = self.conv2d.kernel_size[0]
        weight = self.conv2d.weight
        cols = weight.permute(3, 0, 1, 2).reshape(k * weight.shape[0], -1, k, 1)  # channel d·C + c: column d's share
        with own_dtype(x):
            x = nn.functional.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
        out = ShiftSum.apply(nn.functional.conv2d(x, cols), self.conv2d.bias, k)
        return self.norm_layer(out) if self.apply_norm else out


# Nearest ×2 upsampling repeats each source pixel twice along an axis, so output row 2i + a of a 3-tap filter reads
# source rows i - 1, i (a = 0) or i, i + 1 (a = 1), the taps landing on one source row summed: (phase a, 2, 3).
PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class UpsampleConvLayer(ConvLayer):
    """Nearest-neighbour ×2 upsampling, then a 3×3 ConvLayer (avoids transposed-conv checkerboards).

    Computed at the input's resolution, never building the 4×-sized upsampled tensor: each output phase (a, b) is a
    2×2 conv of the input with the 3×3 taps summed as the upsampling repeats them (PHASE_TAPS), 16 MACs a source
    pixel instead of 36. The reflection padding of the upsampled image is the replicate padding of the input
    (u[-1] = u[1] = x[0]). Same weights and the same function, up to rounding.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm: str = "none", dead_norm: bool = False):
        if (k, stride) != (3, 1):
            raise ValueError(f"UpsampleConvLayer is 3×3, stride 1; got kernel {k}, stride {stride}")
        super().__init__(cin, cout, k, stride, norm, dead_norm)
        # a buffer, not made per call: a host-to-device copy inside a forward would break CUDA graph capture;
        # not persistent, so the state dict keeps the released names only
        self.register_buffer("taps", torch.tensor(PHASE_TAPS), persistent=False)

    def forward(self, x):
        n, _, h, w = x.shape
        weight, bias = self.conv2d.weight, self.conv2d.bias
        with own_dtype(x):  # the weights combined in fp32, the padding in x's dtype
            taps = self.taps.to(weight.dtype)
            phased = torch.einsum("ayk,oikl,bxl->aboiyx", taps, weight, taps).flatten(0, 2)  # (4·cout, cin, 2, 2)
            # replicate padding by 1, as edge copies: inductor's replication_pad2d_backward mislays channels_last
            x = torch.cat((x[:, :, :1], x, x[:, :, -1:]), 2)
            x = torch.cat((x[..., :1], x, x[..., -1:]), 3)
        y = nn.functional.conv2d(x, phased, bias.repeat(4))  # (B, 4·cout, h+1, w+1), phase-major
        cout = weight.shape[0]
        out = torch.empty((n, cout, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=memory_format(y))
        for p, (a, b) in enumerate(PHASES):  # phase (a, b) at source pixel (i, j) is y at (i + a, j + b)
            out[:, :, a::2, b::2] = y[:, p * cout:(p + 1) * cout, a:a + h, b:b + w]
        return self.norm_layer(out) if self.apply_norm else out


class ResidualBlock(nn.Module):
    """x + conv(lrelu(conv(x))), 3×3, constant width."""

    def __init__(self, ch: int, norm: str, dead_norm: bool):
        super().__init__()
        self.conv1 = ConvLayer(ch, ch, 3, 1, norm, dead_norm)
        self.conv2 = ConvLayer(ch, ch, 3, 1, norm, dead_norm)
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))




