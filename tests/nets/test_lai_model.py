"""Lai et al.'s TransformNet + ConvLSTM: names and shapes of their code, the LSTM cell from its equations, the
state carried across frames (model, inference, training), gradients, their release format, configs/lai.yaml."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tdms.config import load_config
from tdms.inference.recurrence import tdms_frames
from tdms.nets.build import load_model
from tdms.nets.lai_net import LaiNet
from tdms.training.loop import train
from tdms.weights import read_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(b=2, h=16, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, h, w, generator=g) for _ in range(4)]


def test_names_shapes_and_count():
    nf = 32

    def conv(cin, cout, k):
        return cin * cout * k * k + cout
    expect = (2 * conv(6, nf, 7) + 2 * conv(nf, 2 * nf, 3) + 11 * conv(4 * nf, 4 * nf, 3) + conv(8 * nf, 16 * nf, 3)
              + conv(4 * nf, 2 * nf, 3) + conv(4 * nf, nf, 3) + conv(2 * nf, 3, 7))
    m = LaiNet()
    assert sum(p.numel() for p in m.parameters()) == expect
    sd = m.state_dict()
    assert sd["convlstm.Gates.weight"].shape == (16 * nf, 8 * nf, 3, 3)  # [x, h] -> 4 gates
    assert sd["ResBlocks.4.conv2.conv2d.weight"].shape == (4 * nf, 4 * nf, 3, 3) and "ResBlocks.5.conv1" not in sd
    assert sd["deconv2.conv2d.weight"].shape == (nf, 4 * nf, 3, 3)  # 2nf upsampled + 2nf skip
    assert sd["deconv3.conv2d.weight"].shape == (3, 2 * nf, 7, 7)
    quirks = LaiNet(original_quirks=True).state_dict()
    assert "conv1a.norm_layer.running_mean" in quirks and "deconv2.norm_layer.running_var" in quirks
    assert not any(k.startswith(("deconv3.norm", "convlstm.norm")) for k in quirks)


def test_lstm_cell_from_its_equations():
    torch.manual_seed(0)
    m = LaiNet(nf=2).convlstm  # 8 channels
    x, h, c = (torch.randn(1, 8, 3, 4) for _ in range(3))
    gates = F.conv2d(torch.cat((x, h), 1), m.Gates.weight, m.Gates.bias, padding=1)
    i, f, o, g = (gates[:, 8 * k:8 * (k + 1)] for k in range(4))
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    got = m(x, (h, c))
    assert torch.allclose(got[0], h_new, atol=1e-6) and torch.allclose(got[1], c_new, atol=1e-6)
    zero = torch.zeros(1, 8, 3, 4)
    assert all(torch.equal(a, b) for a, b in zip(m(x), m(x, (zero, zero)), strict=True))


def test_output_is_p_plus_tanh_and_the_state_is_carried():
    torch.manual_seed(0)
    m = LaiNet(nf=8).eval()
    x = frames()
    with torch.no_grad():
        first = m(*x)
        again = m(*x, first["state"])
    assert first["state"][0].shape == first["state"][1].shape == (2, 32, 4, 5)
    assert torch.allclose(first["output"], x[3] + first["residual"]) and first["residual"].abs().max() < 1
    assert not torch.allclose(again["output"], first["output"], atol=1e-4)  # same frames, another state
    with pytest.raises(ValueError, match="divisible by 4"):
        m(*frames(h=18))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = LaiNet(nf=8)
    x = frames()
    state = tuple(s.detach() for s in m(*x)["state"])  # a non-zero h: the Gates' hidden half gets a gradient
    m(*x, state)["output"].mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_lai_release_format_loads_as_lai_with_quirks(tmp_path):
    torch.manual_seed(2)
    ref = LaiNet(original_quirks=True).eval()
    path = tmp_path / "lai_release.pth"
    torch.save({"model": ref.state_dict()}, path)
    m = load_model(path)
    assert type(m) is LaiNet and all(torch.equal(v, ref.state_dict()[k]) for k, v in m.state_dict().items())


def test_lai_release_saved_by_pytorch_0_4_loads(tmp_path):
    """Lai et al.'s README asks for PyTorch 0.4.0, whose files have no norm_layer.num_batches_tracked buffers: that
    absence alone is accepted (the buffers are never used); the file is in the legacy (pre-zip) serialisation."""
    torch.manual_seed(3)
    ref = LaiNet(original_quirks=True).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(ref.state_dict()) - len(state) == 17
    path = tmp_path / "lai_release_0.4.pth"
    torch.save({"model": state}, path, _use_new_zipfile_serialization=False)
    m = load_model(path)
    assert type(m) is LaiNet and all(torch.equal(m.state_dict()[k], v) for k, v in state.items())
    x = frames()
    assert torch.equal(m(*x)["output"], ref(*x)["output"])
    del state["conv1a.norm_layer.running_var"]  # any other missing tensor is still refused
    torch.save({"model": state}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"missing 1: conv1a.norm_layer.running_var"):
        load_model(path)


def test_inference_carries_the_state_and_pads():
    """tdms.infer runs any checkpoint's network: a recurrent one gets its state back at every frame."""
    torch.manual_seed(0)
    m = LaiNet(nf=8).eval()
    g = np.random.default_rng(0)
    pairs = [(g.random((18, 22, 3), np.float32), g.random((18, 22, 3), np.float32)) for _ in range(3)]
    out = list(tdms_frames(m, pairs))
    assert len(out) == 3 and out[1].shape == (18, 22, 3) and np.array_equal(out[0], pairs[0][1])
    pad = [[torch.from_numpy(np.pad(f, ((0, 2), (0, 2), (0, 0)), mode="reflect")).permute(2, 0, 1)[None]
            for f in pair] for pair in pairs]
    with torch.no_grad():
        s1 = m(pad[0][0], pad[1][0], pad[0][1], pad[1][1])
        o2 = m(pad[1][0], pad[2][0], s1["output"], pad[2][1], s1["state"])["output"]
        o2_fresh = m(pad[1][0], pad[2][0], s1["output"], pad[2][1])["output"]
    assert np.allclose(out[2], o2[0, :, :18, :22].permute(1, 2, 0).numpy(), atol=1e-6)
    assert not np.allclose(out[2], o2_fresh[0, :, :18, :22].permute(1, 2, 0).numpy(), atol=1e-4)


def test_configs_lai_trains_two_steps(lai_root, tmp_path, capsys):
    over = {"data.root": str(lai_root), "data.tasks_list": "lists/train_tasks.txt", "flow.backend": "dis",
            "loss.perceptual": 0, "data.crop": 16, "data.sample_frames": 4, "data.workers": 0, "model.nf": 8,
            "train.batch": 2, "train.steps": 2, "train.out": str(tmp_path / "run"), "train.device": "cpu",
            "train.log_every": 1}
    cfg = load_config(Path(__file__).parents[2] / "configs" / "lai.yaml", [f"{k}={v}" for k, v in over.items()])
    last = train(cfg)
    ckpt = read_checkpoint(last)
    assert ckpt["step"] == 2 and ckpt["config"]["model"]["arch"] == "lai"
    assert type(load_model(last)) is LaiNet and "convlstm.Gates.weight" in ckpt["model"]
    logged = capsys.readouterr().out.splitlines()[-1]
    assert "temporal" in logged and "long_term" in logged and " flow " not in logged and "mask" not in logged
