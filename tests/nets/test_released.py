"""The authors' released TDMS-Net (`model_pf_epoch_65.pth`): its state dict is built here
from the released model's layer table alone
(names, shapes, the dead IN buffers), loaded strictly by tdms.nets.build.load_model (quirks on by itself), and the
network's forward is checked against an independent one written below with torch.nn.functional only."""

import pytest
import torch
import torch.nn.functional as F

from tdms.nets.build import load_model

NF = 32
BLOCKS = {"ResBlocks": 5, "ResBlocks_w": 2, "ResBlocks_f": 3}


def released_state(seed=0) -> dict:
    """{'name': tensor} as the authors' file holds it, random weights (std 1/sqrt(fan-in)) and random IN buffers."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cin, cout, k, norm=True):
        sd[f"{name}.conv2d.weight"] = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        sd[f"{name}.conv2d.bias"] = 0.1 * torch.randn(cout, generator=g)
        if norm:  # InstanceNorm2d(track_running_stats=True), never applied: values that would show if it were
            sd[f"{name}.norm_layer.running_mean"] = torch.randn(cout, generator=g)
            sd[f"{name}.norm_layer.running_var"] = 0.5 + torch.rand(cout, generator=g)
            sd[f"{name}.norm_layer.num_batches_tracked"] = torch.tensor(1000)

    def transposed(name, cin, cout):  # ConvTranspose2d weight is (in, out, k, k)
        sd[f"{name}.weight"] = torch.randn(cin, cout, 3, 3, generator=g) / (cin * 9 / 4) ** 0.5
        sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    conv("conv1a", 6, NF, 7)
    conv("conv1b", 6, NF, 7)
    conv("conv2a", NF, 2 * NF, 3)
    conv("conv2b", NF, 2 * NF, 3)
    conv("conv3", 4 * NF, 4 * NF, 3)
    for prefix, n in BLOCKS.items():
        for b in range(n):
            conv(f"{prefix}.{b}.conv1", 4 * NF, 4 * NF, 3)
            conv(f"{prefix}.{b}.conv2", 4 * NF, 4 * NF, 3)
    conv("deconv1", 4 * NF, 2 * NF, 3)
    conv("deconv2", 4 * NF, NF, 3)
    conv("deconv3", 2 * NF, 3, 7, norm=False)  # built with norm=None in the original
    for head, out in (("w", 3), ("f", 2)):
        transposed(f"deconv1_{head}", 4 * NF, 2 * NF)
        transposed(f"deconv2_{head}", 2 * NF, NF)
        conv(f"deconv3_{head}", NF, out, 7, norm=False)
    return sd


def by_hand(sd, i_prev, i_t, o_prev, p_t, chained_heads=False) -> dict:
    """The released forward from its description: reflection pad + conv, lrelu 0.2, nearest ×2, transposed convs."""
    def conv(x, name, stride=1):
        w = sd[f"{name}.conv2d.weight"]
        return F.conv2d(F.pad(x, [w.shape[-1] // 2] * 4, mode="reflect"), w, sd[f"{name}.conv2d.bias"], stride)

    def lrelu(x):
        return F.leaky_relu(x, 0.2)

    def block(x, name):
        return x + conv(lrelu(conv(x, f"{name}.conv1")), f"{name}.conv2")

    def up(x, name):
        return conv(F.interpolate(x, scale_factor=2, mode="nearest"), name)

    def tconv(x, name):
        return F.conv_transpose2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=2, padding=1, output_padding=1)

    def head_blocks(x, prefix):
        if not chained_heads:  # the quirk: every block sees E3, only the last one's output is kept
            return block(x, f"{prefix}.{BLOCKS[prefix] - 1}")
        for b in range(BLOCKS[prefix]):
            x = block(x, f"{prefix}.{b}")
        return x

    e1a = lrelu(conv(torch.cat((i_prev, i_t), 1), "conv1a"))
    e1b = lrelu(conv(torch.cat((o_prev, p_t), 1), "conv1b"))
    e2a, e2b = lrelu(conv(e1a, "conv2a", 2)), lrelu(conv(e1b, "conv2b", 2))
    e3 = lrelu(conv(torch.cat((e2a, e2b), 1), "conv3", 2))
    r = e3
    for b in range(BLOCKS["ResBlocks"]):
        r = block(r, f"ResBlocks.{b}")
    r = lrelu(up(r, "deconv1"))
    r = lrelu(up(torch.cat((r, e2a), 1), "deconv2"))
    residual = torch.tanh(conv(torch.cat((r, e1a), 1), "deconv3"))
    m = lrelu(tconv(lrelu(tconv(head_blocks(e3, "ResBlocks_w"), "deconv1_w")), "deconv2_w"))
    mask = torch.sigmoid(conv(m, "deconv3_w"))
    f = lrelu(tconv(lrelu(tconv(head_blocks(e3, "ResBlocks_f"), "deconv1_f")), "deconv2_f"))
    flow = conv(f, "deconv3_f") * 20
    # Resample2d: sample O_{t-1} at p + flow(p), bilinear, border clamp, pixel centres at integer coordinates
    h, w = flow.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    grid = torch.stack((2 * (xs + flow[:, 0]) / (w - 1) - 1, 2 * (ys + flow[:, 1]) / (h - 1) - 1), -1)
    warped = F.grid_sample(o_prev, grid, mode="bilinear", padding_mode="border", align_corners=True)
    output = mask * warped + (1 - mask) * p_t + residual
    return {"output": output, "mask": mask, "flow": flow, "residual": residual}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    sd = released_state()
    path = tmp_path_factory.mktemp("released") / "model_pf_epoch_65.pth"
    torch.save({"model": sd}, path)
    return path, sd


def frames(seed=1, h=24, w=32):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 3, h, w, generator=g) for _ in range(4)]


def test_loads_strictly_with_quirks_turned_on(released, capsys):
    path, sd = released
    model = load_model(path, verbose=True)
    assert model.original_quirks and not model.training
    assert "released format; original_quirks on" in capsys.readouterr().out
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert sum(v.numel() for k, v in sd.items() if "norm_layer" not in k) == 3_467_592


def test_forward_equals_the_independent_one(released):
    torch.set_num_threads(1)
    path, sd = released
    x = frames()
    with torch.no_grad():
        got = load_model(path)(*x)
        want = by_hand(sd, *x)
        chained = by_hand(sd, *x, chained_heads=True)
    assert want["flow"].abs().amax() > 1 and 0.05 < want["mask"].mean() < 0.95  # a forward with some life
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5), k
    assert not torch.allclose(got["mask"], chained["mask"], atol=1e-3)  # the quirk is what makes them equal


def test_a_missing_buffer_or_renamed_layer_is_named(released, tmp_path):
    sd = dict(released[1])
    sd.pop("ResBlocks_f.2.conv1.norm_layer.running_var")
    sd["deconv3_w.norm_layer.running_mean"] = torch.zeros(3)  # the output layers have no norm
    path = tmp_path / "model_pf_epoch_65.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"missing 1: ResBlocks_f.2.conv1.norm_layer.running_var[\s\S]*"
                                         r"unexpected 1: deconv3_w.norm_layer.running_mean"):
        load_model(path)
