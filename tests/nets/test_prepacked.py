"""The prepacked CPU path of the layers (nets/prepacked.py) computes what the plain ops compute: fp32 to
float rounding, bf16 within bf16 rounding; it is taken only where it applies, and falls back cleanly elsewhere."""

import pytest
import torch
import torch.nn.functional as F

from tdms.devices import native_bf16
from tdms.inference.fast import Step
from tdms.nets import layers, prepacked, upsampling
from tdms.nets.column_conv import ColumnConvLayer
from tdms.nets.layers import ConvLayer, ResidualBlock, ResidualChain
from tdms.nets.prepacked import can_prepack, frame_of, prepack
from tdms.nets.tdms_net import TDMSNet
from tdms.nets.upsampling import TransposedConv, UpsampleConvLayer

CL = torch.channels_last
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not can_prepack(torch.bfloat16), reason="no native bf16 on this CPU"))]
pytestmark = pytest.mark.skipif(not can_prepack(torch.float32), reason="torch without oneDNN's fusion ops")

LAYERS = {  # name: (layer, channels of each input part, input size)
    "3x3": (lambda: ConvLayer(16, 24, 3, act=True), (16,), (13, 21)),
    "3x3 stride 2": (lambda: ConvLayer(16, 24, 3, 2, act=True), (8, 8), (13, 22)),
    "7x7, two parts": (lambda: ConvLayer(6, 16, 7, act=True), (3, 3), (12, 19)),
    "columns": (lambda: ColumnConvLayer(16, 3, 7), (8, 8), (11, 17)),
    "upsample": (lambda: UpsampleConvLayer(32, 8, 3, act=True), (16, 16), (7, 9)),
    "transposed": (lambda: TransposedConv(16, 8, act=True), (16,), (7, 10)),
    "residual block": (lambda: ResidualBlock(16, "none", False), (16,), (9, 14)),
    "residual chain": (lambda: ResidualChain(*[ResidualBlock(16, "none", False) for _ in range(3)]), (16,), (9, 14)),
}


def inputs(channels, size, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, *size, generator=g).to(dtype).contiguous(memory_format=CL) for c in channels]


def reference(layer, parts) -> torch.Tensor:
    """The plain ops in fp64, NCHW (the layers' tests hold these to the textbook ops)."""
    plain = layer.double().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return plain(*(p.double().contiguous() for p in parts))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_prepacked_layer_is_the_plain_layer(name, dtype):
    make, channels, size = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    if name.startswith("residual"):  # a block adds x: keep its output in the same range as x
        for p in layer.parameters():
            p.data.mul_(0.3)
    parts = inputs(channels, size, dtype)
    want = reference(layer, parts).float()
    fast = prepack(layer.float().to(dtype, memory_format=CL))
    with torch.inference_mode():
        got = fast(*parts)
        again = fast(*parts)  # the kept weights and buffers give the same again
    assert any(m.packs for m in fast.modules() if hasattr(m, "packs")), "the prepacked path was not taken"
    # channels_last, or (a residual chain) the inside of its padded frame (prepacked.framed)
    laid_out = got.is_contiguous(memory_format=CL) or frame_of(got, mode=None) is not None
    assert got.dtype == dtype and got.shape == want.shape and laid_out
    assert torch.equal(got, again)
    # fp32: float rounding; bf16: inputs, weights and output rounded to 8 bits (2^-8 relative each)
    tol = 1e-5 if dtype == torch.float32 else 0.03
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_frame_size_makes_new_packs(dtype):
    """Weights are packed per input size: a second size is computed right, and the first again."""
    torch.manual_seed(0)
    layer = UpsampleConvLayer(16, 8, 3, act=True)
    fast = prepack(UpsampleConvLayer(16, 8, 3, act=True).to(dtype, memory_format=CL))
    fast.load_state_dict(layer.to(dtype).state_dict())
    for size in ((6, 8), (9, 5), (6, 8)):
        (x,) = inputs((16,), size, dtype)
        want = reference(layer, [x]).float()
        with torch.inference_mode():
            got = fast(x)
        tol = 1e-5 if dtype == torch.float32 else 0.03
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_falls_back_to_the_plain_ops_where_the_path_does_not_apply():
    torch.manual_seed(0)
    layer = prepack(ConvLayer(8, 8, 3, act=True).to(memory_format=CL))
    x = torch.randn(1, 8, 6, 7).contiguous(memory_format=CL)
    want = F.leaky_relu(layer.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect")), 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert layer(x).dtype == torch.bfloat16  # autocast's precision, as the plain layer gives
    out = layer(x.requires_grad_())  # training: grad on
    out.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(layer(x.detach().contiguous()), want.detach())  # NCHW input
    assert layer.packs == {}, "none of these may take the prepacked path"
    with torch.no_grad():  # double: oneDNN has no fp64 convolutions
        layer.double()(x.detach().double())
    assert not can_prepack(torch.float64) and not can_prepack(torch.float16)
    assert can_prepack(torch.bfloat16) == native_bf16(torch.device("cpu"))


@pytest.mark.parametrize("batch", [1, 2])  # two videos at once (dataset mode): frames' row views are then copied
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_inference_step_prepacks_its_copy_and_keeps_the_output(dtype, batch):
    """fast.Step prepacks its own copy of TDMS-Net (the caller's model keeps its plain layers); O_t matches the
    plain forward: fp32 to 1e-5, bf16 within the inference tolerance (a mean absolute difference ≤ 5e-3)."""
    if dtype is not None and not can_prepack(dtype):
        pytest.skip("no native bf16 on this CPU")
    torch.manual_seed(0)
    model = TDMSNet().eval()
    g = torch.Generator().manual_seed(2)
    frames = [torch.rand(batch, 3, 20, 28, generator=g) for _ in range(4)]
    step = Step(model, dtype, True, "cpu")
    with torch.inference_mode():
        want = model(*frames)["output"]
        got = step(*frames)[0]
    assert all(getattr(m, "packs", None) is None for m in model.modules())
    assert all(m.packs for m in step.net.modules() if hasattr(m, "packs"))
    assert got.dtype == torch.float32
    if dtype is None:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert (got - want).abs().mean() < 5e-3


def test_packs_hold_weights_only():
    """A strided layer's padded copy of its input is a temporary, not kept in its packs for the run (three such
    buffers at 1920×1080 were 0.4 GB held between the first frame's activations)."""
    torch.manual_seed(0)
    layer = prepack(ConvLayer(16, 24, 3, 2, act=True).to(memory_format=CL))
    parts = inputs((8, 8), (40, 60), torch.float32)
    with torch.inference_mode():
        layer(*parts)
    assert layer.packs, "the prepacked path was not taken"
    held = [v for v in layer.packs.values() if isinstance(v, torch.Tensor) and v.numel() >= 16 * 40 * 60]
    assert not held, [tuple(v.shape) for v in held]


@pytest.mark.parametrize("dtype", DTYPES)
def test_framed_output_is_read_in_place_of_a_padded_copy(dtype, monkeypatch):
    """A layer with `frame` gives its output as the inside of its reflection padding (prepacked.framed): the frame
    is what F.pad makes of the output, and the next convs (stride 2, a residual chain) read it with the results
    they give on the plain output."""
    torch.manual_seed(0)
    first = ConvLayer(16, 16, 3, 2, act=True)  # several parts and a stride: its input is copied anyway
    first.frame = 1
    second = ConvLayer(16, 8, 3, 2, act=True)
    chain = ResidualChain(*[ResidualBlock(16, "none", False) for _ in range(2)])
    for p in chain.parameters():
        p.data.mul_(0.3)
    first, second, chain = (prepack(m.to(dtype, memory_format=CL)) for m in (first, second, chain))
    parts = inputs((8, 8), (26, 34), dtype)
    with torch.inference_mode():
        out = first(*parts)
        buf = frame_of(out, 1)
        assert buf is not None and out.shape == (1, 16, 13, 17)
        torch.testing.assert_close(buf, F.pad(out.contiguous(), (1, 1, 1, 1), mode="reflect"), rtol=0, atol=0)
        plain = out.contiguous(memory_format=CL)
        assert frame_of(plain) is None
        want = second(plain), chain(plain)
        with monkeypatch.context() as m:  # given the frame, neither makes a padded copy
            m.setattr(prepacked, "padded", lambda *a, **k: pytest.fail("a padded copy was made"))
            m.setattr(layers, "padded", lambda *a, **k: pytest.fail("a padded copy was made"))
            got = second(out), chain(out)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros"])
def test_padded_is_the_concatenation_padded_as_f_pad_pads(mode):
    parts = inputs((3, 5), (6, 9), torch.float32)
    want = F.pad(torch.cat(parts, 1), (2, 2, 3, 3), mode="constant" if mode == "zeros" else mode)
    got = prepacked.padded(parts, 3, 2, mode)
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_too_small_to_pad_is_a_clear_error():
    """As F.pad refuses a reflection as wide as the image, so does the prepacked path, naming the sizes."""
    with pytest.raises(ValueError, match="cannot reflect-pad a 2×5 activation by 3 rows"):
        prepacked.padded(inputs((4,), (2, 5), torch.float32), 3, 0)


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
@pytest.mark.parametrize("offsets", [upsampling.PHASES, [(1, 1)] * 4, [(0, 1), (0, 2), (1, 1), (1, 2)],
                                     [(0, 0), (1, 0), (0, 1), (1, 1)]])  # the last not of the form (a·ky, b·kx)
def test_interleave_puts_each_phase_at_its_offset(offsets, fmt):
    y = torch.randn(2, 4 * 5, 8, 11).contiguous(memory_format=fmt)
    want = torch.empty(2, 5, 12, 16)
    for p, ((a, b), (dy, dx)) in enumerate(zip(upsampling.PHASES, offsets, strict=True)):
        want[:, :, a::2, b::2] = y[:, p * 5:(p + 1) * 5, dy:dy + 6, dx:dx + 8]
    torch.testing.assert_close(upsampling.interleave(y, 5, 6, 8, offsets), want, rtol=0, atol=0)


def test_frame_rows_reads_the_frame_in_place():
    """A conv padded by (rows, cols) reads a framed input's buffer, or its middle rows (a view: no copy), when the
    frame is `cols` wide and in its mode; otherwise there is nothing to read in place."""
    buf = torch.randn(1, 4, 9, 12).contiguous(memory_format=CL)
    x = prepacked.framed(buf, 2, "zeros")
    assert prepacked.frame_rows(x, 2, 2, "zeros") is buf
    rows = prepacked.frame_rows(x, 1, 2, "zeros")
    assert rows.shape == (1, 4, 7, 12) and rows.is_contiguous(memory_format=CL)
    assert rows.data_ptr() == buf[:, :, 1:].data_ptr()
    assert prepacked.frame_rows(x, 1, 2, "reflect") is None and prepacked.frame_rows(x, 1, 1, "zeros") is None
    two = prepacked.framed(torch.randn(2, 4, 9, 12).contiguous(memory_format=CL), 2, "zeros")
    assert prepacked.frame_rows(two, 1, 2, "zeros") is None  # two images: the rows' view is not contiguous


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_conv_reads_a_framed_input_as_the_plain_one(dtype):
    """The mask and flow heads' two transposed convs: the first gives its output in a zero frame, the second's row
    phases read it (1×2 conv on its middle rows, 2×2 on the whole frame) and give what they give on a plain input."""
    torch.manual_seed(0)
    first, second = TransposedConv(16, 8, act=True), TransposedConv(8, 4, act=True)
    first.frame = 1
    first, second = (prepack(m.to(dtype, memory_format=CL)) for m in (first, second))
    (x,) = inputs((16,), (7, 10), dtype)
    with torch.inference_mode():
        mid = first(x)
        assert prepacked.frame_of(mid, 1, "zeros") is not None
        got, want = second(mid), second(mid.contiguous(memory_format=CL))
    torch.testing.assert_close(got, want)  # (oneDNN's sums may run in another order on the frame: rounding)
    plain = reference(second, [reference(first, [x])]).float()
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16: rounded to 8 bits at the inputs, weights and the middle
    torch.testing.assert_close(got.float(), plain, rtol=tol, atol=tol * plain.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_chain_leaves_the_frame_it_was_given_as_it_was(dtype):
    """The blocks accumulate their sums into the chain's own buffers, never into a frame it was given: TDMSNet's
    three chains all read E3's."""
    torch.manual_seed(0)
    first = ConvLayer(16, 16, 3, act=True)
    first.frame = 1
    chains = [ResidualChain(*[ResidualBlock(16, "none", False) for _ in range(2)]) for _ in range(2)]
    for c in chains:
        for p in c.parameters():
            p.data.mul_(0.3)
    first, *chains = (prepack(m.to(dtype, memory_format=CL)) for m in (first, *chains))
    (x,) = inputs((16,), (9, 14), dtype)
    with torch.inference_mode():
        e = first(x)
        before = frame_of(e, 1).clone()
        got = [c(e) for c in chains]
        assert torch.equal(frame_of(e, 1), before)
        want = [c(e.contiguous(memory_format=CL)) for c in chains]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def frame_is_padding(x: torch.Tensor, pad: int, mode: str):
    buf = frame_of(x, pad, mode)
    assert buf is not None, f"no {mode} frame of {pad}"
    torch.testing.assert_close(buf, F.pad(x.contiguous(), (pad,) * 4, mode="constant" if mode == "zeros" else mode),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_output_layers_read_frames_of_three(dtype):
    """TDMS-Net's wiring around its 7×7 output layers, small: a 7×7 layer framed by 3 is read by a stride-2 conv
    (its frame 2 wider than that conv pads: the output comes framed by 1) and by a column layer; an upsample-conv
    and a transposed conv framed by 3 in reflection feed column layers. Every frame is what F.pad makes, and every
    layer gives on the framed inputs what it gives on plain copies of them."""
    torch.manual_seed(0)
    first, down = ConvLayer(6, 8, 7, act=True), ConvLayer(8, 16, 3, 2, act=True)
    up, trans = UpsampleConvLayer(16, 8, 3, act=True), TransposedConv(16, 8, act=True)
    two, one = ColumnConvLayer(16, 3, 7), ColumnConvLayer(8, 3, 7)
    first.frame = up.frame = trans.frame = 3
    trans.frame_mode = "reflect"
    layers_ = [prepack(m.to(dtype, memory_format=CL)) for m in (first, down, up, trans, two, one)]
    first, down, up, trans, two, one = layers_
    parts = inputs((3, 3), (16, 22), dtype)

    def plain(x):
        return x.contiguous(memory_format=CL)

    with torch.inference_mode():
        e = first(*parts)
        frame_is_padding(e, 3, "reflect")
        e2 = down(e)
        frame_is_padding(e2, 1, "reflect")
        torch.testing.assert_close(e2, down(plain(e)))
        r, m = up(e2), trans(e2)
        frame_is_padding(r, 3, "reflect")
        frame_is_padding(m, 3, "reflect")
        torch.testing.assert_close(r, up(plain(e2)))
        torch.testing.assert_close(m, trans(plain(e2)))
        torch.testing.assert_close(two(r, e), two(plain(r), plain(e)))
        torch.testing.assert_close(one(m), one(plain(m)))
