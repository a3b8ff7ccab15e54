"""The ×2 upsampling layers, computed at the input's resolution as phase convolutions.

`UpsampleConvLayer` (nearest ×2 upsampling + a 3×3 ConvLayer: the residual head) and `TransposedConv` (3×3,
stride 2: the mask and flow heads). Each output phase (a, b), the pixels (2i + a, 2j + b), is a small conv of the
input with the 3×3 taps that land on it; the phases are then interleaved into the ×2 image (interleave).
"""

import torch
import torch.nn as nn

from tdms.nets.layers import ConvLayer, cat, leaky, memory_format, own_dtype
from tdms.nets.prepacked import derived, fast, fill_border, framed, padded_conv

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
