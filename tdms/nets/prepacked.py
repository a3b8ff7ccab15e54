"""The prepacked CPU path of the layers (nets/layers.py, column_conv.py, upsampling.py): oneDNN convolutions on
weights reordered once into its blocked layout, with the leaky ReLU or a residual sum fused in, and no more copies of
an activation than one, padded: an input of several parts is padded in the copy that concatenates them (padded),
one part is read as it is (zero padding and the border recomputed from strips: padded_conv) or in the frame its
producer left around it (framed).

A layer takes it after `prepack(net)` (inference/fast.py applies it to its own copy of a network), with grad off,
on channels_last fp32, or bf16 where the CPU computes it natively (AVX512-BF16/AMX); anything else takes the
plain ops. tests/nets/test_prepacked.py holds it to them.
"""

import torch
import torch.nn as nn

from tdms.devices import native_bf16

SLOPE = 0.2  # the network's leaky ReLU


def can_prepack(dtype: torch.dtype) -> bool:
    """Whether this CPU runs oneDNN's prepacked, fused convolutions in `dtype`: torch built with mkldnn and its
    fusion ops, and fp32, or bf16 on a CPU with AVX512-BF16 or AMX (elsewhere oneDNN emulates bf16, or fails)."""
    ops = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not all(
            hasattr(ops, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight",
                                        "_convolution_transpose_pointwise", "_reorder_convolution_transpose_weight")):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and native_bf16(torch.device("cpu")))


def prepack(net: nn.Module) -> nn.Module:
    """Let `net`'s layers take the prepacked CPU path from now on. The packs are made on first use and kept: only
    for a network whose weights no longer change (an inference copy). Returns net."""
    for m in net.modules():
        if hasattr(m, "packs"):
            m.packs = {}
    return net


def fast(layer: nn.Module, parts, weight: torch.Tensor) -> bool:
    """Whether `layer` takes the prepacked path for these input parts."""
    x = parts[0]
    return (layer.packs is not None and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and weight.dtype in (torch.float32, torch.bfloat16) and not getattr(layer, "apply_norm", False)
            and not torch.is_autocast_enabled("cpu")
            and all(p.dtype == weight.dtype and (p.is_contiguous(memory_format=torch.channels_last)
                                                 or frame_of(p, mode=None) is not None) for p in parts))


def framed(buf: torch.Tensor, pad: int, mode: str = "reflect") -> torch.Tensor:
    """The inside of `buf`, x padded by `pad` each side as F.pad pads in `mode` (channels_last), as a view of it that
    remembers its frame: a conv that reads x so padded reads buf itself (padded_conv, ResidualChain), with no padded
    copy. To everything else the view is x. (A layer's output given this way must not be written to in place.)"""
    x = buf[:, :, pad:buf.shape[2] - pad, pad:buf.shape[3] - pad]
    x.tdms_frame = (buf, pad, mode)
    return x


def frame_of(x: torch.Tensor, pad: int | None = None, mode: str | None = "reflect"):
    """The padded buffer `x` is the inside of (framed), if it has one of `pad` pixels in `mode` (None: any)."""
    frame = getattr(x, "tdms_frame", None)
    if frame is None or pad not in (None, frame[1]) or mode not in (None, frame[2]):
        return None
    return frame[0]


def frame_rows(x: torch.Tensor, rows: int, cols: int, mode: str):
    """What a conv of x padded by `rows` and `cols` in `mode` reads of x's frame (framed), without a copy: the
    buffer itself when its frame is that wide, or its middle rows when the frame is `cols` wide and has rows to
    spare (a row range of a channels_last buffer is contiguous for one image). None when x has no such frame."""
    frame = getattr(x, "tdms_frame", None)
    if frame is None or frame[1] != cols or frame[2] != mode or rows > cols:
        return None
    buf, extra = frame[0], cols - rows
    if extra and buf.shape[0] != 1:
        return None
    return buf[:, :, extra:buf.shape[2] - extra] if extra else buf


def wider_frame(x: torch.Tensor, pad, stride, mode: str):
    """(x's frame buffer, e) when x is framed in `mode` by f = pad + e·stride pixels on both axes, e >= 1 (an
    unpadded conv of the buffer then gives the output padded by e: output j' reads the buffer from j'·stride, the
    inside from j'·stride - f, the padded conv's output j' - e); None otherwise."""
    frame = getattr(x, "tdms_frame", None)
    if frame is None or frame[2] != mode:
        return None
    extra = {divmod(frame[1] - p, s) for p, s in zip(pad, stride, strict=True)}
    if len(extra) != 1:
        return None
    (e, rest), = extra
    return (frame[0], e) if e >= 1 and rest == 0 else None


def frame_output(out: torch.Tensor, frame: int, mode: str = "reflect") -> torch.Tensor:
    """A conv's output that came out `frame` pixels larger each side (its frame read zeros or padding): the frame
    overwritten with the padding of the inside in `mode`, given as the inside's view (framed). frame 0: out."""
    return framed(fill_border(out, frame, frame, mode), frame, mode) if frame else out


def derived(packs: dict, name: str, dtype: torch.dtype, make):
    """make(), made once per weight dtype and kept in `packs` (weights combined for the fast path)."""
    if (name, dtype) not in packs:
        packs[name, dtype] = make()
    return packs[name, dtype]


def packed(packs: dict, name: str, weight: torch.Tensor, size, padding=(0, 0), stride=(1, 1), output_padding=None):
    """oneDNN's reordered copy of `weight` (a conv's, or with output_padding a transposed conv's) for inputs of
    `size`, made once and kept in `packs` under `name` (a new input size makes a new one)."""
    key = (name, tuple(size), weight.dtype)
    if key not in packs:
        ops, dilation = torch.ops.mkldnn, [1, 1]
        if output_padding is None:
            packs[key] = ops._reorder_convolution_weight(weight, list(padding), list(stride), dilation, 1, list(size))
        else:
            packs[key] = ops._reorder_convolution_transpose_weight(weight, list(padding), list(output_padding),
                                                                   list(stride), dilation, 1, list(size))
    return packs[key]


def source(q: int, n: int, pad: int, mode: str) -> int:
    """The index in a length-n axis that index q of the axis padded by `pad` each side copies, as F.pad does."""
    i = q - pad
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    return -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i


def edges(n: int, k: int, stride: int, pad: int) -> list[tuple[int, int]]:
    """The ranges of output indices of a k-tap, `stride` conv of a length-n axis padded by `pad` that read the
    padding: output i reads padded indices i·stride .. i·stride + k - 1."""
    if pad == 0:
        return []
    out_n = (n + 2 * pad - k) // stride + 1
    top = min(out_n, -(-pad // stride))
    bottom = max(top, (n - k + pad) // stride + 1)
    return [r for r in ((0, top), (bottom, out_n)) if r[1] > r[0]]


def padded(parts, rows: int, cols: int, mode: str = "reflect") -> torch.Tensor:
    """The channel concatenation of `parts` padded by `rows` above and below and `cols` left and right as F.pad
    computes it (mode reflect, replicate or zeros): one copy of the parts into a new channels_last tensor, the cat's
    own copy when there are several parts. Not kept from call to call: three such buffers (133 MB each at 1920×1080
    in bf16) held for the whole run sat between the activations of the first frame in the heap, and with freed
    memory kept mapped (devices.keep_freed_memory) a temporary is served from memory already mapped anyway."""
    n, _, h, w = parts[0].shape
    shape = (n, sum(p.shape[1] for p in parts), h + 2 * rows, w + 2 * cols)
    buf = torch.empty(shape, dtype=parts[0].dtype, memory_format=torch.channels_last)
    c = 0
    for p in parts:
        buf[:, :, rows:rows + h, cols:cols + w].narrow(1, c, p.shape[1]).copy_(p)
        c += p.shape[1]
    return fill_border(buf, rows, cols, mode)


def fill_border(buf: torch.Tensor, rows: int, cols: int, mode: str = "reflect") -> torch.Tensor:
    """Overwrite, in place, the `rows` top and bottom rows and `cols` left and right columns of `buf` with the
    padding (reflect, replicate or zeros) of its interior, as F.pad makes it; returns buf. The rows first, then
    the columns over whole rows, which also fills the corners right."""
    h, w = buf.shape[-2] - 2 * rows, buf.shape[-1] - 2 * cols
    if mode == "reflect" and (h <= rows or w <= cols) or min(h, w) < 1:
        raise ValueError(f"cannot {mode}-pad a {h}×{w} activation by {rows} rows and {cols} columns: the frames are "
                         "too small for the network")
    for i in range(rows):  # padded row rows-1-i copies interior row i+1 (reflect) or 0 (replicate)
        if mode == "zeros":
            buf[:, :, i].zero_()
            buf[:, :, rows + h + i].zero_()
        else:
            top, bottom = (rows + 1 + i, rows + h - 2 - i) if mode == "reflect" else (rows, rows + h - 1)
            buf[:, :, rows - 1 - i] = buf[:, :, top]
            buf[:, :, rows + h + i] = buf[:, :, bottom]
    for i in range(cols):
        if mode == "zeros":
            buf[..., i].zero_()
            buf[..., cols + w + i].zero_()
        else:
            left, right = (cols + 1 + i, cols + w - 2 - i) if mode == "reflect" else (cols, cols + w - 1)
            buf[..., cols - 1 - i] = buf[..., left]
            buf[..., cols + w + i] = buf[..., right]
    return buf


def conv_call(x, weight, bias, pad, stride, act: bool, add=None, into_add: bool = False) -> torch.Tensor:
    """oneDNN's zero-padded conv(x) + bias on a prepacked weight, then the leaky ReLU (act) or + add, in one call.
    With `into_add` the sum is accumulated into `add` itself (channels_last; oneDNN's sum post-op, ~5 % faster than
    the binary add at the residual blocks' size) and add is returned."""
    ops, pad, stride = torch.ops.mkldnn, list(pad), list(stride)
    if into_add:
        return ops._convolution_pointwise_.binary(add, x, weight, bias, pad, stride, [1, 1], 1, "add", 1.0, None, [],
                                                  None)
    if add is not None:
        return ops._convolution_pointwise.binary(x, add.contiguous(memory_format=torch.channels_last), weight, bias,
                                                 pad, stride, [1, 1], 1, "add", 1.0, None, [], None)
    return ops._convolution_pointwise(x, weight, bias, pad, stride, [1, 1], 1, "leaky_relu" if act else "none",
                                      [SLOPE] if act else [], "")


def padded_conv(packs: dict, parts, weight, bias, pad, stride=(1, 1), mode: str = "reflect", act: bool = False,
                add=None, name: str = "w", frame: int = 0) -> torch.Tensor:
    """conv2d(F.pad(x, (pad[1],) * 2 + (pad[0],) * 2, mode), weight, bias, stride), then the leaky ReLU (act) or
    + add (oneDNN post-ops), x the channel concatenation of `parts` (channels_last).

    Several parts, or a stride: the parts are copied once into a padded buffer (the concatenation's copy, which
    pads at no extra cost) and oneDNN runs the conv unpadded on it; a strided conv must, as oneDNN (3.x, bf16)
    computes a strided conv of a strip a few pixels wide wrongly. One part, stride 1: no copy of x is made; oneDNN
    runs the conv zero-padded and the output rows and columns that read the padding are recomputed from thin
    strips of the padded input and written over (mode "zeros": the zero-padded conv alone).

    With `frame` (no `add`) the output comes `frame` pixels larger each side, that frame the reflection of the
    inside, given as the inside's view (framed) for a next conv to read: the parts are then copied, padded by
    `stride` more input pixels for each pixel of the frame.

    One part given in a frame wider than `pad` by e·stride pixels (in `mode`, no `add`): the conv runs unpadded on
    the frame's buffer, and its output, e pixels larger each side, comes framed by e (that border overwritten as
    `mode` pads the inside), whatever `frame` asks."""
    (ph, pw), (sh, sw), (kh, kw) = pad, stride, weight.shape[-2:]
    wide = wider_frame(parts[0], pad, stride, mode) if len(parts) == 1 and add is None else None
    if wide is not None:  # the buffer, and the frame left over around the output, padded as `mode` pads
        given, (out_frame, out_mode) = wide[0], (wide[1], mode)
    else:
        given = frame_rows(parts[0], ph, pw, mode) if len(parts) == 1 and not frame else None
        out_frame, out_mode = frame, "reflect"
    if given is not None or len(parts) > 1 or stride != (1, 1) or frame:
        x = given if given is not None else padded(parts, ph + sh * frame, pw + sw * frame, mode)
        out = conv_call(x, packed(packs, name + " padded", weight, x.shape, (0, 0), stride), bias, (0, 0), stride,
                        act, add)
        return frame_output(out, out_frame, out_mode)
    x = parts[0].contiguous(memory_format=torch.channels_last)  # (a framed view of another pad: copied)
    n, _, h, w = x.shape
    out = conv_call(x, packed(packs, name, weight, x.shape, pad, stride), bias, pad, stride, act, add)
    if mode == "zeros":
        return out
    key = ("edges", name, h, w)
    if key not in packs:  # (axis, output range, padded indices the strip takes on that axis and on the other)
        def index(lo, hi, size, p):
            return torch.tensor([source(q, size, p, mode) for q in range(lo, hi)])
        rows, cols = index(0, h + 2 * ph, h, ph), index(0, w + 2 * pw, w, pw)
        packs[key] = [(2, a, b, index(a * sh, (b - 1) * sh + kh, h, ph), cols) for a, b in edges(h, kh, sh, ph)] + \
            [(3, a, b, index(a * sw, (b - 1) * sw + kw, w, pw), rows) for a, b in edges(w, kw, sw, pw)]
    for axis, a, b, along, across in packs[key]:  # rows first; the columns then rewrite the corners, also right
        strip = x.index_select(axis, along).index_select(5 - axis, across)
        part = add.narrow(axis, a, b - a) if add is not None else None
        w_, s_, name_ = weight, stride, name
        if axis == 3:  # a column strip runs transposed, as a row: oneDNN is ~20× slower on a strip 3 pixels wide
            strip, w_, s_, name_ = strip.transpose(2, 3), weight.transpose(2, 3), stride[::-1], name + " T"
            part = part.transpose(2, 3) if part is not None else None
        strip = strip.contiguous(memory_format=torch.channels_last)
        y = conv_call(strip, packed(packs, name_, w_, strip.shape, (0, 0), s_), bias, (0, 0), s_, act, part)
        out.narrow(axis, a, b - a).copy_(y.transpose(2, 3) if axis == 3 else y)
    return out
