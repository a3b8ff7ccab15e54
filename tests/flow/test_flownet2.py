"""FlowNet2 in pure PyTorch: correlation and channel norm from their definitions, NVIDIA's checkpoint format
(random weights, real names and shapes), input preparation and per-axis flow rescaling, errors, CUDA = CPU."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.models.optical_flow import raft_small

from tdms.flow import build_flow
from tdms.flow.correlation import channel_norm, correlation
from tdms.flow.flownet2 import FILE_NAME, FlowNet2Flow, size64
from tdms.flow.flownet2_net import FlowNet2


def naive_correlation(f1, f2, max_disp, stride):
    """NVIDIA's Correlation with kernel 1, stride1 1, pad = max_disp, written from its definition."""
    b, c, h, w = f1.shape
    r = max_disp // stride
    d = 2 * r + 1
    out = np.zeros((b, d * d, h, w), np.float64)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for j in range(-r, r + 1):
                    for i in range(-r, r + 1):
                        y2, x2 = y + j * stride, x + i * stride
                        if 0 <= y2 < h and 0 <= x2 < w:  # zero padding outside
                            out[n, (j + r) * d + (i + r), y, x] = f1[n, :, y, x] @ f2[n, :, y2, x2] / c
    return out


@pytest.mark.parametrize("shape, max_disp, stride", [((2, 5, 7, 9), 4, 2), ((1, 3, 6, 5), 20, 2), ((1, 4, 5, 6), 2, 1)])
def test_correlation_matches_naive_loop(shape, max_disp, stride):
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    got = correlation(f1, f2, max_disp, stride)
    d = 2 * (max_disp // stride) + 1
    assert got.shape == (shape[0], d * d, *shape[2:])
    np.testing.assert_allclose(got.numpy(), naive_correlation(f1.numpy(), f2.numpy(), max_disp, stride), atol=1e-12)


def test_correlation_defaults_are_flownet2s():
    # 441 = 21×21 displacements; f2 = f1 shifted by (dx, dy) = (+4, -2) peaks at channel (j+10)*21 + (i+10).
    f1 = torch.randn(1, 16, 12, 14)
    f2 = torch.zeros_like(f1)
    f2[:, :, :-2, 4:] = f1[:, :, 2:, :-4]  # f2(y - 2, x + 4) = f1(y, x)
    out = correlation(f1, f2)
    assert out.shape == (1, 441, 12, 14)
    assert int(out[0, :, 6, 6].argmax()) == (-1 + 10) * 21 + (2 + 10)


def test_channel_norm_is_l2_with_finite_gradient_at_zero():
    x = torch.tensor([[[[3.0, 0.0]], [[4.0, 0.0]]]], requires_grad=True)  # (1,2,1,2): norms 5 and 0
    out = channel_norm(x)
    assert out.shape == (1, 1, 1, 2) and out.flatten().tolist() == [5.0, 0.0]
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, :, 0, 0].tolist() == pytest.approx([0.6, 0.8])


def test_architecture_matches_nvidia_flownet2():
    state = FlowNet2().state_dict()
    # flownet2-pytorch's models.py: 'Parameter count = 162,518,834'
    assert sum(v.numel() for v in state.values()) == 162_518_834
    expected = {
        "flownetc.conv1.0.weight": (64, 3, 7, 7),
        "flownetc.conv_redir.0.weight": (32, 256, 1, 1),
        "flownetc.conv3_1.0.weight": (256, 473, 3, 3),  # 32 redirected + 441 correlation channels
        "flownetc.predict_flow2.weight": (2, 194, 3, 3),
        "flownetc.upsampled_flow6_to_5.bias": (2,),
        "flownets_1.conv1.0.weight": (64, 12, 7, 7),
        "flownets_2.deconv4.0.weight": (1026, 256, 4, 4),
        "flownets_d.conv0.0.weight": (64, 6, 3, 3),
        "flownets_d.inter_conv2.0.weight": (64, 194, 3, 3),
        "flownets_d.predict_flow5.weight": (2, 512, 3, 3),
        "flownetfusion.conv0.0.weight": (64, 11, 3, 3),
        "flownetfusion.deconv0.0.weight": (162, 16, 4, 4),
        "flownetfusion.predict_flow0.weight": (2, 16, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "flownets_1.upsampled_flow6_to_5.bias" not in state  # FlowNetS's flow upsamplers have no bias
    assert not any("running_mean" in k for k in state)  # batch norm off in the released model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, state dict): NVIDIA's format, torch.save({'epoch', 'state_dict', 'best_EPE'}), random weights.

    Written in torch's legacy (pre-1.6, non-zip) serialisation with pickle protocol 2, as the 2017 file is.
    """
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flownet2") / FILE_NAME
    state = FlowNet2().state_dict()
    torch.save({"epoch": 0, "state_dict": state, "best_EPE": 1e10}, path, _use_new_zipfile_serialization=False,
               pickle_protocol=2)
    return path, state


@pytest.fixture(scope="module")
def flownet2(checkpoint):
    return FlowNet2Flow(checkpoint[0])


def test_loads_strictly_and_runs(checkpoint, flownet2):
    saved = checkpoint[1]
    loaded = flownet2.net.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert flownet2.name == "flownet2-up64" and not flownet2.net.training
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 70, 100, generator=g), torch.rand(1, 3, 70, 100, generator=g)
    out = flownet2(a, b)  # 70×100 runs at 128×128
    assert out.shape == (1, 2, 70, 100) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.requires_grad


class ConstantFlow(nn.Module):
    """Stands in for the network: records its inputs, answers flow (3, -2) at the input's size."""

    def forward(self, x1, x2):
        self.inputs = (x1, x2)
        return torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(x1.shape[0], 2, *x1.shape[2:])


def test_input_normalisation_and_per_axis_rescale():
    flow = FlowNet2Flow(net=ConstantFlow())
    a, b = torch.full((2, 3, 80, 150), 0.6), torch.full((2, 3, 80, 150), 0.4)
    out = flow(a, b)
    x1, x2 = flow.net.inputs
    assert (size64(80), size64(150)) == (128, 192) and x1.shape == (2, 3, 128, 192)  # rounded up, never down
    # the pair's channel mean (0.5) subtracted, in rgb_max units: 0.6 -> 0.1, not 0.1 * 255
    assert torch.allclose(x1, torch.full_like(x1, 0.1)) and torch.allclose(x2, torch.full_like(x2, -0.1))
    assert out.shape == (2, 2, 80, 150)
    assert torch.allclose(out[:, 0], torch.full((2, 80, 150), 3.0 * 150 / 192))
    assert torch.allclose(out[:, 1], torch.full((2, 80, 150), -2.0 * 80 / 128))


def test_davis_frames_run_at_lais_size():
    """Lai et al.'s compute_flow_occlusion.py runs FlowNet2 at each side rounded UP to a multiple of 64: DAVIS's
    854×480 at 896×512 (the nearest multiples would be 832×512), and scales the flow back per axis."""
    flow = FlowNet2Flow(net=ConstantFlow())
    out = flow(torch.rand(1, 3, 480, 854), torch.rand(1, 3, 480, 854))
    assert flow.net.inputs[0].shape == (1, 3, 512, 896)
    assert out.shape == (1, 2, 480, 854)
    assert torch.allclose(out[:, 0], torch.full((1, 480, 854), 3.0 * 854 / 896))
    assert torch.allclose(out[:, 1], torch.full((1, 480, 854), -2.0 * 480 / 512))
    assert [size64(n) for n in (64, 65, 127, 128, 129)] == [64, 128, 128, 128, 192]


def test_differentiable_mode_reaches_the_images(flownet2):
    flow = copy.copy(flownet2)
    flow.differentiable = True
    a = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = flow(a, torch.rand(1, 3, 64, 64))
    out.square().mean().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in flow.net.parameters())  # frozen


def test_errors(tmp_path, flownet2, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=f"torch.hub.checkpoints.{FILE_NAME}.*Download"):
        FlowNet2Flow()
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        build_flow("flownet2", checkpoint=str(tmp_path / "elsewhere.pth"))
    for legacy in (False, True):
        truncated = tmp_path / "truncated.pth.tar"
        content = {"state_dict": {"flownetc.conv1.0.weight": torch.zeros(64, 3, 7, 7)}}
        torch.save(content, truncated, _use_new_zipfile_serialization=not legacy)
        truncated.write_bytes(truncated.read_bytes()[:3000])
        with pytest.raises(ValueError, match="truncated.pth.tar: not a readable PyTorch weights file .truncated"):
            FlowNet2Flow(truncated)
    with pytest.raises(ValueError, match="smaller|at least 64"):
        flownet2(torch.rand(1, 3, 48, 96), torch.rand(1, 3, 48, 96))


@pytest.mark.parametrize("content, says", [
    ({"epoch": 0, "state_dict": {"conv_redir.0.weight": torch.zeros(32, 256, 1, 1)}}, "FlowNet2-C"),
    ("raft", "torchvision RAFT"),
    ({"state_dict": {k: torch.zeros(1) for k in ("flownetc.conv1.0.weight", "flownetfusion.conv0.0.weight")}},
     "wrong shape 2"),
    ({"model": {"conv1a.conv2d.weight": torch.zeros(1)}, "step": 3}, "not a state dict"),
    (nn.Linear(2, 2), "pickled Python objects"),
])
def test_wrong_files_say_what_they_are(tmp_path, content, says):
    path = tmp_path / "weights.pth"
    torch.save(raft_small().state_dict() if content == "raft" else content, path)
    with pytest.raises(ValueError, match=says) as err:
        FlowNet2Flow(path)
    assert str(path) in str(err.value) and "NVIDIA FlowNet2" in str(err.value)
    if content == "raft":
        assert "flownetc.conv1.0.weight" in str(err.value)  # what was expected


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(checkpoint, flownet2):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = FlowNet2Flow(checkpoint[0], device="cuda")
    a, b = torch.rand(1, 3, 128, 192), torch.rand(1, 3, 128, 192)
    want = flownet2(a, b)
    got = gpu(a.cuda(), b.cuda())
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), want, atol=1e-3 * want.abs().max().item() + 1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = gpu(a.cuda(), b.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
