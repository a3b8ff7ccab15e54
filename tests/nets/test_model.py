import pytest
import torch
import torch.nn.functional as F

from tdms.checkpoint import export_weights, training_state
from tdms.config import Config
from tdms.files import save_atomic
from tdms.flow.warp import warp
from tdms.nets.build import load_model
from tdms.nets.column_conv import ColumnConvLayer
from tdms.nets.layers import ConvLayer
from tdms.nets.tdms_net import TDMSNet
from tdms.nets.upsampling import UpsampleConvLayer


def expected_parameters(nf=32):
    """Count from the released model's layer table (conv weights + biases)."""
    def conv(cin, cout, k):
        return cin * cout * k * k + cout
    enc = 2 * conv(6, nf, 7) + 2 * conv(nf, 2 * nf, 3) + conv(4 * nf, 4 * nf, 3)
    blocks = 10 * 2 * conv(4 * nf, 4 * nf, 3)
    res_head = conv(4 * nf, 2 * nf, 3) + conv(4 * nf, nf, 3) + conv(2 * nf, 3, 7)
    mask_head = conv(4 * nf, 2 * nf, 3) + conv(2 * nf, nf, 3) + conv(nf, 3, 7)
    flow_head = conv(4 * nf, 2 * nf, 3) + conv(2 * nf, nf, 3) + conv(nf, 2, 7)
    return enc + blocks + res_head + mask_head + flow_head


def frames(b=1, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, h, w, generator=g) for _ in range(4)]


def test_parameter_count_and_names():
    m = TDMSNet()
    assert sum(p.numel() for p in m.parameters()) == expected_parameters() == 3_467_592
    sd = m.state_dict()
    assert sd["conv1a.conv2d.weight"].shape == (32, 6, 7, 7)
    assert sd["conv3.conv2d.weight"].shape == (128, 128, 3, 3)
    assert sd["ResBlocks.4.conv2.conv2d.weight"].shape == (128, 128, 3, 3)
    assert sd["deconv2.conv2d.weight"].shape == (32, 128, 3, 3)  # 64 upsampled + 64 skip (E2a)
    assert sd["deconv3.conv2d.weight"].shape == (3, 64, 7, 7)  # 32 + 32 skip (E1a)
    assert sd["deconv1_w.weight"].shape == (128, 64, 3, 3)  # ConvTranspose2d: (in, out, k, k)
    assert sd["deconv3_f.conv2d.weight"].shape == (2, 32, 7, 7)
    assert "ResBlocks_f.2.conv1.conv2d.bias" in sd and "ResBlocks_w.2.conv1.conv2d.bias" not in sd
    assert not any("norm_layer" in k for k in sd)


def test_quirks_model_has_dead_norm_buffers():
    sd = TDMSNet(original_quirks=True).state_dict()
    for k in ("conv1a.norm_layer.running_mean", "conv1a.norm_layer.running_var",
              "ResBlocks.0.conv1.norm_layer.num_batches_tracked", "deconv1.norm_layer.running_mean"):
        assert k in sd
    assert "deconv1_w.norm_layer.running_mean" not in sd  # plain ConvTranspose2d


def test_output_is_the_blend_of_its_parts():
    torch.manual_seed(0)
    m = TDMSNet().eval()
    i_prev, i_t, o_prev, p_t = frames()
    with torch.no_grad():
        out = m(i_prev, i_t, o_prev, p_t)
    mask, flow, res = out["mask"], out["flow"], out["residual"]
    assert mask.shape == (1, 3, 16, 24) and flow.shape == (1, 2, 16, 24)
    assert 0 < mask.min() and mask.max() < 1 and res.abs().max() < 1
    expect = mask * warp(o_prev, flow) + (1 - mask) * p_t + res
    assert torch.allclose(out["output"], expect, atol=1e-6)


def test_quirks_use_only_the_last_head_block_and_skip_the_norm():
    torch.manual_seed(0)
    x = frames()
    for quirks, changes in ((True, False), (False, True)):
        m = TDMSNet(original_quirks=quirks).eval()
        with torch.no_grad():
            before = m(*x)["mask"]
            m.ResBlocks_w[0].conv1.conv2d.weight.add_(0.5)
            after = m(*x)["mask"]
        assert (not torch.allclose(before, after)) == changes


def test_dead_norm_is_not_applied():
    torch.manual_seed(0)
    a = TDMSNet(original_quirks=True).eval()
    b = TDMSNet(original_quirks=False).eval()
    # copy weights: chained vs unchained differ only through the mask/flow blocks, so compare residual heads
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "norm_layer" not in k})
    x = frames()
    with torch.no_grad():
        ra, rb = a(*x)["residual"], b(*x)["residual"]
    assert torch.allclose(ra, rb, atol=1e-6)


def test_instance_norm_option_is_applied():
    torch.manual_seed(0)
    m = TDMSNet(norm="instance").eval()
    assert "conv1a.norm_layer.weight" in m.state_dict()
    h = m.conv1a(torch.cat(frames()[:2], 1))
    h = torch.where(h < 0, h / 0.2, h)  # the layer ends in the leaky ReLU (slope 0.2): undo it
    assert h.mean(dim=(2, 3)).abs().max() < 1e-4  # affine starts at identity: per-channel zero mean


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = TDMSNet()
    out = m(*frames(b=2))
    (out["output"].mean() + out["flow"].mean() + out["mask"].mean()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_sizes_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        TDMSNet()(*frames(h=18))


def test_released_format_loads_with_quirks(tmp_path):
    torch.manual_seed(1)
    ref = TDMSNet(original_quirks=True).eval()
    path = tmp_path / "model_pf_epoch_65.pth"
    torch.save({"model": ref.state_dict()}, path)
    m = load_model(path)
    assert m.original_quirks
    x = frames()
    with torch.no_grad():
        assert torch.equal(m(*x)["output"], ref(*x)["output"])


def test_wrong_architecture_lists_keys(tmp_path):
    sd = TDMSNet().state_dict()
    sd.pop("deconv3.conv2d.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    cfg = Config()
    torch.save({"format": "tdms", "model": sd, "config": __import__("dataclasses").asdict(cfg)}, path)
    with pytest.raises(ValueError, match=r"missing 1: deconv3.conv2d.bias[\s\S]*unexpected 1: extra.weight"):
        load_model(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_model(tmp_path / "nothere.pth")


def test_files_that_are_not_checkpoints_say_what_they_hold(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_text("model_pf_epoch_65.pth: download it from the authors' page\n")
    with pytest.raises(ValueError, match=r"ckpt.pth: not a readable PyTorch weights file: it holds text \('model_pf"):
        load_model(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="it holds an empty file"):
        load_model(path)
    for legacy in (False, True):  # a file cut short: torch's reason in one whole sentence, without its advice
        torch.save({"model": TDMSNet().state_dict()}, path, _use_new_zipfile_serialization=not legacy)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(ValueError, match=r"ckpt.pth: not a readable PyTorch weights file \(truncated") as err:
            load_model(path)
        assert "high likelihood" not in str(err.value) and "might be corrupted" not in str(err.value)


def test_weights_with_nan_are_refused_by_the_file(tmp_path):
    state = TDMSNet(original_quirks=True).state_dict()
    state["conv3.conv2d.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"diverged.pth: 1 tensor\(s\) hold NaN or inf values \(conv3.conv2d.weight\)"):
        load_model(path)


def test_export_half_weights_round_trip(tmp_path):
    torch.manual_seed(2)
    m = TDMSNet()
    opt = torch.optim.Adam(m.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_atomic(training_state(m, opt, sched, None, 5, Config(), "abc"), tmp_path / "last.pth")
    export_weights(tmp_path / "last.pth", tmp_path / "w.pth")
    params = sum(p.numel() for p in m.parameters())
    assert (tmp_path / "w.pth").stat().st_size < 0.6 * 4 * params  # fp16: about half of fp32
    loaded = load_model(tmp_path / "w.pth")
    w = dict(loaded.named_parameters())["conv3.conv2d.weight"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, m.conv3.conv2d.weight.detach(), atol=1e-3, rtol=1e-3)


def test_output_layers_have_no_norm_in_any_mode():
    """The original builds deconv3/_w/_f with norm=None: no IN there, dead or applied (a 2-channel IN on the
    flow would erase its scale)."""
    for kw in ({"original_quirks": True}, {"norm": "instance"}):
        sd = TDMSNet(nf=8, **kw).state_dict()
        assert [k for k in sd if k.startswith("deconv3") and "norm_layer" in k] == [], kw
        assert "deconv2.norm_layer." + ("running_mean" if kw.get("original_quirks") else "weight") in sd


def test_build_model_by_arch():
    from tdms.config import ModelConfig
    from tdms.nets.build import build_model
    from tdms.nets.lai_net import LaiNet

    assert type(build_model(ModelConfig(nf=8))) is TDMSNet
    assert type(build_model(ModelConfig(arch="lai", nf=8))) is LaiNet
    with pytest.raises(ValueError, match="unknown model.arch 'unet'; choose from"):
        build_model(ModelConfig(arch="unet"))


def test_flow_prior_pre_aligns_the_previous_frames_and_corrects_the_flow():
    from tdms.config import ModelConfig
    from tdms.nets.build import build_model

    torch.manual_seed(0)
    plain = TDMSNet(nf=8)
    with_prior = build_model(ModelConfig(nf=8, flow_prior="dis-medium"))
    assert with_prior.state_dict().keys() == plain.state_dict().keys()  # the same weights, loadable either way
    with_prior.load_state_dict(plain.state_dict())
    i_prev, i_t, o_prev, p_t = (torch.rand(1, 3, 32, 40) for _ in range(4))
    prior = torch.randn(1, 2, 32, 40) * 3
    m, f, r = with_prior.heads(i_prev, i_t, o_prev, p_t, prior)
    m0, f0, r0 = plain.heads(warp(i_prev, prior), i_t, warp(o_prev, prior), p_t)
    assert torch.allclose(m, m0) and torch.allclose(r, r0) and torch.allclose(f, prior + f0)
    out = with_prior(i_prev, i_t, o_prev, p_t, prior)
    assert torch.allclose(out["warped"], warp(o_prev, prior + f0), atol=1e-6)
    # without `prior` it computes F° itself with DIS: I_t -> I_{t-1} (a real photo: DIS on noise is ill-posed)
    from skimage import data as skdata

    photo = torch.from_numpy(skdata.astronaut()[100:132, 150:194].astype("float32") / 255).permute(2, 0, 1)[None]
    i_prev, shifted = photo[..., 2:42], photo[..., :40]  # content moves 2 px right
    with torch.no_grad():
        m_self, f_self, _ = with_prior.heads(i_prev, shifted, o_prev, p_t)
        dis = with_prior.prior_flow(shifted, i_prev)
        _, f_given, _ = with_prior.heads(i_prev, shifted, o_prev, p_t, dis)
    assert (f_self - f_given).abs().max() < 0.05  # OpenCV's DIS keeps a little state between calls on tiny frames
    assert (dis[:, 0, 8:-8, 8:-8] + 2).abs().mean() < 0.5  # content moved 2 px right: flow to I_{t-1} is -2
    with pytest.raises(ValueError, match="built without one"):
        plain.heads(i_prev, i_t, o_prev, p_t, prior)


def test_occlusion_gate_switches_the_past_off_where_the_test_fails():
    """M_t · (1 - occ_t): where occ_t = 1 the output is P_t plus the residual, elsewhere the ungated network's."""
    from tdms.config import ModelConfig
    from tdms.flow.occlusion import occlusion_mask
    from tdms.nets.build import build_model

    torch.manual_seed(0)
    plain = build_model(ModelConfig(nf=8, flow_prior="dis-medium"))
    gated = build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="forward-backward"))
    assert gated.state_dict().keys() == plain.state_dict().keys()  # no weights of its own
    gated.load_state_dict(plain.state_dict())
    i_prev, i_t, o_prev, p_t = (torch.rand(1, 3, 32, 40) for _ in range(4))
    prior = torch.randn(1, 2, 32, 40)
    occ = torch.zeros(1, 1, 32, 40)
    occ[..., 8:20, 10:30] = 1
    with torch.no_grad():
        m0, f0, r0 = plain.heads(i_prev, i_t, o_prev, p_t, prior)
        out = gated(i_prev, i_t, o_prev, p_t, prior, occ)
    from tdms.flow.occlusion import leaves_frame

    assert torch.equal(out["mask"], m0 * (1 - torch.maximum(occ, leaves_frame(prior)))) and torch.equal(out["flow"], f0)
    inside = out["output"][..., 8:20, 10:30]
    assert torch.allclose(inside, (p_t + out["residual"])[..., 8:20, 10:30], atol=1e-6)
    assert (m0[..., 8:20, 10:30] > 0.1).all()  # the ungated mask would have taken the past there
    # without `occlusion` it runs the test itself on F° and flow(I_{t-1} -> I_t) from its DIS
    from skimage import data as skdata

    photo = torch.from_numpy(skdata.astronaut()[100:132, 150:194].astype("float32") / 255).permute(2, 0, 1)[None]
    i_prev, shifted = photo[..., 2:42], photo[..., :40]
    with torch.no_grad():
        dis = gated.prior_flow(shifted, i_prev)
        expect = occlusion_mask(dis, gated.prior_flow(i_prev, shifted))
        m_self = gated.heads(i_prev, shifted, o_prev, p_t, dis)[0]
        m_given = gated.heads(i_prev, shifted, o_prev, p_t, dis, expect)[0]
    # OpenCV's DIS keeps a little state between calls on tiny frames: a pixel may flip at the edge of an occlusion
    assert (m_self != m_given).float().mean() < 0.02
    with pytest.raises(ValueError, match="without the gate"):
        plain.heads(i_prev, i_t, o_prev, p_t, prior, occ)
    with pytest.raises(ValueError, match="needs a flow prior"):
        build_model(ModelConfig(nf=8, occlusion_gate="forward-backward"))
    with pytest.raises(ValueError, match="unknown model.occlusion_gate"):
        build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="soft"))
    with pytest.raises(ValueError, match="needs model.arch=tdms"):
        build_model(ModelConfig(arch="lai", occlusion_gate="forward-backward"))


def test_occlusion_gate_also_switches_off_where_the_prior_leaves_the_frame():
    """Content entering the view: under a pan the forward-backward test passes (the clamped backward flow undoes the
    forward one) but warp(O_{t-1}) has only the clamped border there; the gate switches the past off in that band."""
    from tdms.config import ModelConfig
    from tdms.flow.occlusion import leaves_frame, occlusion_mask
    from tdms.nets.build import build_model

    prior = torch.zeros(1, 2, 24, 32)
    prior[:, 0] = -3.0  # every pixel of frame t came from 3 px to its left: columns 0-2 from outside
    band = leaves_frame(prior)
    assert band[..., :, :3].eq(1).all() and band[..., :, 3:].eq(0).all()
    assert occlusion_mask(prior, -prior).sum() == 0  # the test alone sees nothing
    torch.manual_seed(0)
    model = build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="forward-backward"))
    frames = [torch.rand(1, 3, 24, 32) for _ in range(4)]
    with torch.no_grad():
        mask = model.heads(*frames, prior, torch.zeros(1, 1, 24, 32))[0]
    assert mask[..., :3].eq(0).all() and (mask[..., 3:] > 0).all()


def test_occlusion_ramp_softens_the_switch():
    """ramp(occ, r): occ itself at r = 0; otherwise its (2r+1)² mean, so the gate falls over 2r+1 pixels across the
    border of an occlusion, a wide occlusion's inside stays 1 and far pixels 0; the model applies it to the gate."""
    from tdms.config import ModelConfig
    from tdms.nets.build import build_model
    from tdms.nets.tdms_net import ramp

    occ = torch.zeros(1, 1, 40, 40)
    occ[..., :, 20:] = 1  # the right half occluded: a vertical border between columns 19 and 20
    assert torch.equal(ramp(occ, 0), occ)
    soft = ramp(occ, 2)[0, 0, 10]
    assert torch.allclose(soft, torch.clamp((torch.arange(40.0) - 17) / 5, 0, 1))  # 0 ... 0.2 0.4 0.6 0.8 1 ... 1
    line = torch.zeros(1, 1, 40, 40)
    line[..., 20, :] = 1  # a one-pixel line of occlusion is dimmed to 1/5, not switched
    assert torch.allclose(ramp(line, 2)[0, 0, 18:23, 10], torch.full((5,), 0.2))
    torch.manual_seed(0)
    model = build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="forward-backward",
                                    occlusion_ramp=2))
    i_prev, i_t, o_prev, p_t = (torch.rand(1, 3, 40, 40) for _ in range(4))
    with torch.no_grad():
        model.occlusion_ramp = 0
        ungated = model.heads(i_prev, i_t, o_prev, p_t, torch.zeros(1, 2, 40, 40), torch.zeros_like(occ))[0]
        model.occlusion_ramp = 2
        gated = model.heads(i_prev, i_t, o_prev, p_t, torch.zeros(1, 2, 40, 40), occ)[0]
    assert torch.allclose(gated, ungated * (1 - ramp(occ, 2)))
    with pytest.raises(ValueError, match="occlusion_ramp must be >= 0"):
        build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="forward-backward", occlusion_ramp=-1))


def test_flow_prior_names_and_architectures_are_checked():
    from tdms.config import ModelConfig
    from tdms.inference.fast import make_step
    from tdms.nets.build import build_model

    with pytest.raises(ValueError, match="unknown model.flow_prior 'raft'.*dis-medium"):
        build_model(ModelConfig(flow_prior="raft"))
    with pytest.raises(ValueError, match="needs model.arch=tdms"):
        build_model(ModelConfig(arch="lai", flow_prior="dis-fast"))
    model = build_model(ModelConfig(nf=8, flow_prior="dis-fast"))
    with pytest.raises(ValueError, match="CUDA graphs"):
        make_step(model, "cuda", cuda_graph=True)


def test_flow_prior_in_bf16_keeps_the_flow_in_fp32():
    from tdms.config import ModelConfig
    from tdms.inference.fast import make_step
    from tdms.nets.build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(nf=8, flow_prior="dis-medium")).eval()
    i_prev = torch.rand(1, 3, 32, 40)
    i_t, o_prev, p_t = torch.roll(i_prev, 3, dims=3), torch.rand(1, 3, 32, 40), torch.rand(1, 3, 32, 40)
    with torch.inference_mode():
        ref = model(i_prev, i_t, o_prev, p_t)["output"]
        out, _ = make_step(model, "cpu", "bf16")(i_prev, i_t, o_prev, p_t)
    assert out.dtype == torch.float32 and (out - ref).abs().mean() < 5e-3


@pytest.mark.parametrize("norm", ["none", "instance"])
def test_upsample_conv_by_phases_is_upsample_then_reflect_conv(norm):
    """The layer runs at the input's resolution; its outputs and gradients are the plain nearest-upsample,
    reflection-pad, 3×3 conv."""
    torch.manual_seed(0)
    layer = UpsampleConvLayer(5, 4, 3, 1, norm).double()
    x = torch.randn(2, 5, 5, 7, dtype=torch.float64, requires_grad=True)  # odd sizes: every border case
    params = [x, *layer.parameters()]

    def reference(x):
        y = layer.conv2d(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect"))
        return layer.norm_layer(y) if norm == "instance" else y

    out, ref = layer(x), reference(x)
    assert out.shape == (2, 4, 10, 14)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="3×3, stride 1"):
        UpsampleConvLayer(5, 4, 5)


def test_upsample_conv_keeps_channels_last_and_bf16():
    torch.manual_seed(0)
    layer = UpsampleConvLayer(8, 4, 3).to(memory_format=torch.channels_last)
    x = torch.randn(1, 8, 6, 10).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)


def test_padding_runs_in_the_activations_dtype_under_cpu_autocast():
    """CPU autocast would pad in fp32 (a cast each way); the layers pad bf16 activations as bf16."""
    layer = ConvLayer(4, 4, 3)
    seen = []
    layer.pad.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(1, 4, 8, 8).bfloat16())
        layer(torch.randn(1, 4, 8, 8))  # an fp32 input (the frames) is padded as fp32, then cast by the conv
    assert seen == [torch.bfloat16, torch.float32]


def test_upsample_conv_trains_under_inductor_in_channels_last():
    """torch.compile (inductor) of the layer's forward and backward in NHWC: its padding once used an op whose
    compiled backward mislaid channels_last strides and failed."""
    torch.manual_seed(0)
    layer = UpsampleConvLayer(8, 4, 3).to(memory_format=torch.channels_last)
    x = torch.rand(1, 8, 6, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    got = torch.compile(layer)(x)
    want = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(9, 13), (4, 4), (7, 12), (8, 5)])
@pytest.mark.parametrize("cout", [2, 3])
def test_column_conv_is_the_reflect_padded_conv(size, cout):
    """The output layers' k×1 conv + shifted sum is the plain reflection pad + k×k conv: values and gradients (of the
    input, the weights and the bias) in fp64, at odd sizes and at the smallest a 7×7 reflection allows."""
    torch.manual_seed(0)
    layer = ColumnConvLayer(5, cout, 7).double()
    x = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    params = [x, *layer.parameters()]
    out = layer(x)
    ref = layer.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"))
    assert out.shape == (2, cout, *size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def column_layer_and_input(channels_last: bool):
    torch.manual_seed(0)
    layer = ColumnConvLayer(8, 3, 7)
    x = torch.rand(2, 8, 12, 16)
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return layer, x.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
def test_column_conv_keeps_dtype_and_memory_format(channels_last):
    """Under bf16 autocast the output is bf16 like the plain conv's, within bf16 rounding of it, and the output and
    the input's gradient keep the input's memory format (a mixed format would slow every op after it)."""
    layer, x = column_layer_and_input(channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        plain = ConvLayer.forward(layer, x)
    assert out.dtype == plain.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out.float(), plain.float(), rtol=0.02, atol=0.02)
    grad = torch.autograd.grad(out.float().sum(), x)[0]
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(grad, torch.autograd.grad(plain.float().sum(), x)[0], rtol=0.03, atol=0.03)


def test_column_conv_trains_under_inductor():
    layer, x = column_layer_and_input(channels_last=True)
    got = torch.compile(layer)(x)
    want = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
