"""LPIPS through the lpips package with backbone files the tests write (random weights, torchvision's format)."""

from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torchvision
from skimage import data

from tdms.evaluation.lpips import backbone_path, load_lpips, lpips_distance

IMG = data.astronaut().astype(np.float32)[60:124, 150:246] / 255  # (64,96) real photo


def write_backbone(hub_dir: Path, net: str = "alex", seed: int = 0) -> dict:
    """torchvision's ImageNet file for `net` with random weights, features only (all LPIPS reads), in
    hub_dir/checkpoints/ under torchvision's own file name. Returns the state dict."""
    torch.manual_seed(seed)
    make = {"alex": torchvision.models.alexnet, "squeeze": torchvision.models.squeezenet1_1}[net]
    state = {k: v for k, v in make(weights=None).state_dict().items() if k.startswith("features.")}
    path = backbone_path(net)
    assert path.parent == hub_dir / "checkpoints"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder (TORCH_HOME) and no way to reach the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "torch" / "hub"


def formula(state: dict, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS (v0.1, alex) written out: scale, AlexNet ReLU1-5 features, unit-normalise over channels,
    squared difference, the package's linear weights, spatial mean, sum over the five layers."""
    features = torchvision.models.alexnet(weights=None).features.eval()
    features.load_state_dict({k[len("features.") :]: v for k, v in state.items()})
    lin_file = Path(lpips_package.__file__).parent / "weights" / "v0.1" / "alex.pth"  # shipped in the package
    lin = torch.load(lin_file, map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        x = (torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1 - shift) / scale
        out = []
        for i, layer in enumerate(features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):  # the ReLU after each of the five convolutions
                out.append(x.clone())
        return out

    total = 0.0
    with torch.no_grad():
        for k, (fa, fb) in enumerate(zip(taps(a), taps(b), strict=True)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lin[f"lin{k}.model.1.weight"]  # (1,C,1,1)
            total += float(((na - nb) ** 2 * w).sum(1).mean())
    return total


def noisy(img, sigma, seed=0):
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1).astype(np.float32)


@pytest.mark.slow
def test_alex_matches_the_formula_and_grows_with_noise(hub):
    state = write_backbone(hub, "alex")
    model = load_lpips("alex")
    assert lpips_distance(model, IMG, IMG) == 0.0
    d = [lpips_distance(model, IMG, noisy(IMG, s)) for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2]
    for other in (noisy(IMG, 0.1), IMG[::-1].copy()):
        assert lpips_distance(model, IMG, other) == pytest.approx(formula(state, IMG, other), rel=1e-4)


def test_backbone_really_comes_from_the_file(hub, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(write_backbone(hub, "alex", seed=1), other)
    write_backbone(hub, "alex", seed=0)  # the cache file: other random weights
    a, b = IMG, noisy(IMG, 0.1)
    d0 = lpips_distance(load_lpips("alex"), a, b)
    d1 = lpips_distance(load_lpips("alex", weights=other), a, b)
    assert d0 != pytest.approx(d1, rel=1e-3)


def test_squeeze_backbone(hub):
    write_backbone(hub, "squeeze")
    model = load_lpips("squeeze")
    assert len(model.lins) == 7  # Lai et al.'s LPIPS variant: 7 SqueezeNet layers
    assert lpips_distance(model, IMG, IMG) == 0.0
    assert lpips_distance(model, IMG, noisy(IMG, 0.1)) > 0


def test_missing_backbone_names_file_and_folder(hub):
    with pytest.raises(FileNotFoundError) as err:
        load_lpips("alex")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(hub / "checkpoints") in msg and "--lpips-weights" in msg
    assert backbone_path("vgg").name == "vgg16-397923af.pth"
    assert backbone_path("squeeze").name == "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_lpips("alex", weights=hub / "nowhere.pth")


def test_bad_backbone_files(hub, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch weights file"):
        load_lpips("alex", weights=junk)
    squeeze = tmp_path / "squeeze.pth"
    torch.save({k: v for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()}, squeeze)
    with pytest.raises(ValueError, match="squeeze.pth: "):
        load_lpips("alex", weights=squeeze)  # another network's file
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        backbone_path("resnet")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_value(hub):
    write_backbone(hub, "alex")
    other = noisy(IMG, 0.1)
    cpu = lpips_distance(load_lpips("alex"), IMG, other)
    assert lpips_distance(load_lpips("alex", device="cuda"), IMG, other) == pytest.approx(cpu, rel=1e-3)
