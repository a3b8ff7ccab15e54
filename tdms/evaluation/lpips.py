"""LPIPS (Zhang et al. 2018) through the `lpips` package, with no network access ever.

The package ships its linear layers (lpips/weights/v0.1/<net>.pth); the backbone is torchvision's
ImageNet network, read here from torchvision's weight cache ($TORCH_HOME/hub/checkpoints/<file>) or from
a given path. The package's own loader would download a missing backbone, so the backbone is built
untrained and then filled from the file, which must exist first.
"""

import warnings
from pathlib import Path

import numpy as np
import torch

from tdms.errors import MissingFile, UserError
from tdms.weights import load_part, read_weights

NETS = ("alex", "squeeze", "vgg")


def backbone_url(net: str) -> str:
    """torchvision's download address of the ImageNet weights the lpips package uses for `net`."""
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
    }
    if net not in weights:
        raise UserError(f"unknown LPIPS backbone {net!r}; choose from {list(NETS)}")
    return weights[net].url


def backbone_path(net: str, weights=None) -> Path:
    """The backbone file to read: `weights` if given, else torchvision's cache file for `net`."""
    if weights:
        return Path(weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_url(net).rsplit("/", 1)[-1]


def missing_note(net: str, path: Path, given: bool) -> str:
    """Why LPIPS is unavailable, naming the exact file and where it goes."""
    if given:
        return f"LPIPS ({net}) backbone weights not found: {path} (--lpips-weights)"
    return (
        f"LPIPS ({net}) needs torchvision's ImageNet backbone file {path.name}, not found in {path.parent}: "
        f"put {path.name} ({backbone_url(net)}) in {path.parent} (set TORCH_HOME to move that folder) "
        "or pass --lpips-weights PATH"
    )


def load_lpips(net: str = "alex", weights=None, device="cpu"):
    """The lpips.LPIPS model (eval, no grad) with the backbone read from `backbone_path(net, weights)`.

    FileNotFoundError (with `missing_note`) when the file is absent; ValueError naming the file when it
    is not a torchvision state dict of that backbone.
    """
    path = backbone_path(net, weights)
    if not path.is_file():
        raise MissingFile(missing_note(net, path, bool(weights)))
    state = read_weights(path, f"torchvision's ImageNet {net} weights (the LPIPS backbone)")
    import lpips

    with warnings.catch_warnings():  # the package still passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # untrained backbone, shipped lin layers
    load_backbone(model.net, state, path)
    return model.eval().requires_grad_(False).to(device)


def load_backbone(trunk: torch.nn.Module, state, path: Path) -> None:
    """Fill the package's sliced trunk (slice<k>.<i>.<param>) from torchvision keys (features.<i>.<param>)."""
    load_part(trunk, state, path, "torchvision ImageNet weights of this LPIPS backbone",
              lambda key: "features." + key.split(".", 1)[1])


def to_lpips_input(img, device) -> torch.Tensor:
    """(H,W,3) RGB in [0,1] -> (1,3,H,W) in [-1,1], the range lpips expects."""
    t = torch.as_tensor(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    return (t * 2.0 - 1.0).to(device)


def lpips_distance(model, a, b) -> float:
    """LPIPS between two (H,W,3) frames in [0,1]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return float(model(to_lpips_input(a, device), to_lpips_input(b, device)).item())
