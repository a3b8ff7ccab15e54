"""torchvision RAFT backend: weights from a file or torchvision's cache (never downloaded), [-1,1] input,
padding to multiples of 8 and the crop back, update count, autograd on request, errors."""

import copy

import pytest
import torch
import torch.nn as nn
from torchvision.models.optical_flow import raft_large, raft_small

from tdms.flow import build_flow
from tdms.flow.raft import RAFTFlow, default_checkpoint, pad8


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """(path, state dict): random raft_small weights saved as torchvision's files are, a bare state dict."""
    torch.manual_seed(0)
    state = raft_small().state_dict()
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def small(small_file):
    return RAFTFlow("small", small_file[0], num_flow_updates=2)


def test_loads_strictly_and_runs(small_file, small):
    loaded = small.model.state_dict()
    assert loaded.keys() == small_file[1].keys()
    assert all(torch.equal(loaded[k], v) for k, v in small_file[1].items())
    assert small.name == "raft-small-2it" and not small.model.training
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 130, 150, generator=g), torch.rand(2, 3, 130, 150, generator=g)
    out = small(a, b)  # runs padded to 136×152
    assert out.shape == (2, 2, 130, 150) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.requires_grad
    assert build_flow("raft-small", checkpoint=str(small_file[0])).name == "raft-small"


def test_pad8_replicates_evenly():
    x = torch.arange(60 * 76, dtype=torch.float32).view(1, 1, 60, 76)
    padded, (top, left) = pad8(x)
    assert padded.shape == (1, 1, 64, 80) and (top, left) == (2, 2)
    assert torch.equal(padded[:, :, 2:62, 2:78], x)
    assert torch.equal(padded[0, 0, 0, 2:78], x[0, 0, 0]) and torch.equal(padded[0, 0, 63, 2:78], x[0, 0, -1])
    assert padded[0, 0, 0, 0] == x[0, 0, 0, 0] and padded[0, 0, -1, -1] == x[0, 0, -1, -1]


class EchoModel(nn.Module):
    """Stands in for RAFT: checks the padded size, returns [garbage, the first image's R and G channels]."""

    def forward(self, img1, img2, num_flow_updates):
        assert img1.shape[2] % 8 == 0 and img1.shape[3] % 8 == 0
        self.updates = num_flow_updates
        return [torch.full_like(img1[:, :2], 99.0), img1[:, :2]]


def test_input_range_padding_and_crop():
    flow = RAFTFlow("small", model=EchoModel(), num_flow_updates=2)
    a = torch.rand(1, 3, 133, 141)  # padded to 136×144: 1 row on top, 1 column on the left
    out = flow(a, torch.rand(1, 3, 133, 141))
    assert flow.model.updates == 2
    assert out.shape == (1, 2, 133, 141)
    assert torch.allclose(out, 2 * a[:, :2] - 1)  # the last estimate, [0,1] -> [-1,1], cropped where it was padded


def test_differentiable_mode_reaches_the_images(small):
    flow = copy.copy(small)
    flow.differentiable = True
    a = torch.rand(1, 3, 128, 128, requires_grad=True)
    flow(a, torch.rand(1, 3, 128, 128)).square().mean().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in flow.model.parameters())
    with torch.no_grad():  # the caller's no_grad wins
        assert not flow(a, a).requires_grad


def test_missing_weights_name_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert default_checkpoint("small") == tmp_path / "th" / "hub" / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth"
    assert default_checkpoint("large").name == "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    with pytest.raises(FileNotFoundError, match=r"raft_small_C_T_V2-01064c6d\.pth in .*th.hub.checkpoints"):
        RAFTFlow("small")
    with pytest.raises(FileNotFoundError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        build_flow("raft")
    with pytest.raises(ValueError, match="unknown RAFT size"):
        RAFTFlow("medium")


def test_wrong_files(tmp_path, small):
    large = tmp_path / "large.pth"
    torch.save(raft_large().state_dict(), large)
    with pytest.raises(ValueError, match="raft_large weights, not raft_small.*'raft'"):
        RAFTFlow("small", large)
    princeton = tmp_path / "raft-things.pth"
    torch.save({"module.fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, princeton)
    with pytest.raises(ValueError, match="raft-things.pth: holds .*DataParallel.*princeton-vl RAFT.*expected torch"):
        RAFTFlow("large", princeton)
    with pytest.raises(ValueError, match="at least 128"):
        small(torch.rand(1, 3, 120, 200), torch.rand(1, 3, 120, 200))
