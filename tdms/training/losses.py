"""Training losses as small pure functions, and the VGG16 feature extractor of the perceptual term.

The terms, with F* = flow(I_t -> I_{t-1}) and the visibility V (tdms/flow/occlusion.py), and the weights of the
original TDMS-Net code: temporal L1(O_t·V, warp(O_{t-1}, F*)·V) 100; perceptual sum_l L1(VGG16_l(O_t),
VGG16_l(P_t)) at relu4_3 10; fidelity L1(O_t, P_t) 1; flow L1(F_t, F*) 0.5; flow cycle L1(flow(I_{t-1} -> I_t),
flow(O_{t-1} -> O_t)) 1 (off by default here: loss.flow_cycle); mask L1(M_t, V) 1. Lai et al.'s long-term term
is the temporal one towards frame 0. loss.norm=l2 makes the temporal and fidelity terms mean squares, and
loss.temporal_mask=occlusion counts the pixels that pass the forward-backward test instead of weighing by V: both
then have the form of the evaluation's warping error and PSNR. Two terms of our own (off by default) measure the
evaluation's two axes instead: log_fidelity (-PSNR/10) and relative_temporal (E(O)/E(P) on the clip, 1 - D_t).

All images (B,3,H,W) in [0,1]; flows (B,2,H,W) pixels; visibility (B,1,H,W) in [0,1].
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdms.errors import MissingFile
from tdms.flow.warp import warp
from tdms.weights import load_part, read_weights

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet weights, as its cache names them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def temporal_loss(output, target_warped, visibility, norm: str = "l1"):
    """Short-term (or long-term) consistency: L1(O_t·V, warp(O_ref, F*)·V); l2: the mean square instead, the
    form of the warping error (Lai et al.)."""
    return NORMS[norm](output * visibility, target_warped * visibility)


def fidelity_loss(output, processed, norm: str = "l1"):
    """L1(O_t, P_t); l2: the mean square, whose log PSNR reports."""
    return NORMS[norm](output, processed)


NORMS = {"l1": F.l1_loss, "l2": F.mse_loss}


def log_fidelity_loss(output, processed, eps: float):
    """log10(MSE(O_t, P_t) + eps) per clip, averaged over the batch: -PSNR/10, the scale the evaluation reports
    fidelity in (PSNR is averaged over frames, so a dB is worth the same on every frame). eps caps the PSNR this
    term asks for at -10·log10(eps) dB and keeps its gradient finite where O_t = P_t."""
    mse = (output - processed).pow(2).flatten(1).mean(1)
    return torch.log10(mse + eps).mean()


def relative_temporal_loss(output, warped_prev, processed, warped_processed, visibility, eps: float = 1e-6):
    """The squared warping error of O_t relative to that of the processed frames, per clip, over visible pixels:
    sum V (O_t - warp(O_{t-1}, F*))^2 / sum V (P_t - warp(P_{t-1}, F*))^2, averaged over the batch. 1 - its mean is
    the relative reduction D_t the evaluation reports (TDMS Table 1), so this and log_fidelity_loss weigh the two
    axes of the evaluation's trade-off as it measures them. The denominator is a constant (no gradient)."""
    num = (visibility * (output - warped_prev).pow(2)).flatten(1).sum(1)
    den = (visibility * (processed - warped_processed).pow(2)).flatten(1).sum(1)
    return (num / (den.detach() + eps * visibility.flatten(1).sum(1) + 1e-12)).mean()


def flow_loss(pred_flow, target_flow):
    return F.l1_loss(pred_flow, target_flow)


def mask_loss(mask, target, norm: str = "l1", occluded=None):
    """The 3-channel mask is supervised by the 1-channel target κ·V (broadcast).

    l1 (the paper) is minimised by the median of the target given the inputs: where most pixels are visible
    that is a constant. l2 is minimised by its mean, so occlusions pull the mask down where they are likely.
    occluded (B,1,H,W) bool, optional: class balance, the occluded pixels and the others weigh half each (a
    batch with only one kind is a plain mean), so rare occlusions are not outvoted by the visible majority.
    """
    target = target.expand_as(mask)
    err = (mask - target).pow(2) if norm == "l2" else (mask - target).abs()
    if occluded is None:
        return err.mean()
    occ = occluded.expand_as(err)
    frac = occ.float().mean()
    weight = torch.where(occ, 0.5 / frac.clamp(min=1e-12), 0.5 / (1 - frac).clamp(min=1e-12))
    return (weight * err).sum() / weight.sum()


def perceptual_loss(vgg: "VGGFeatures", output, processed):
    return sum(F.l1_loss(a, b) for a, b in zip(vgg(output), vgg(processed), strict=True))


def flow_cycle_loss(flow, i_prev, i_t, o_prev, o_t):
    """Dual-flow consistency: L1(flow(I_{t-1} -> I_t), flow(O_{t-1} -> O_t)).

    `flow` must be a differentiable backend (flow.differentiable = True): gradients reach O_t through the frozen
    flow network. The flow of the originals is a fixed target and O_{t-1} is detached, as in the original code,
    which however ran the whole term under no_grad (so it trained nothing).
    """
    with torch.no_grad():
        target = flow(i_prev, i_t)
    return F.l1_loss(flow(o_prev.detach(), o_t), target)


def warp_target(o_ref, flow_star):
    """warp(O_ref, F*) with O_ref detached: the previous output is a fixed target (Lai et al.)."""
    return warp(o_ref.detach(), flow_star)


def vgg16_weights_path(path: str = "") -> Path:
    """The VGG16 file to use: `path` if given, else torchvision's cache; a clear error if absent."""
    if path:
        p = Path(path)
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not p.is_file():
        raise MissingFile(
            f"VGG16 weights not found at {p}. The perceptual loss needs torchvision's ImageNet VGG16 "
            f"({VGG16_FILE}): copy it there (or set loss.vgg_weights=FILE), or set loss.perceptual=0."
        )
    return p


class VGGFeatures(nn.Module):
    """Frozen VGG16 features up to relu4_3, ImageNet-normalised input. Never trained, never checkpointed.

    Loads the `features.*` tensors it uses from a torchvision VGG16 state dict (strictly: all must be there,
    with the right shapes); the classifier's tensors in the file are not needed and are ignored.
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16().features[:23].eval()  # conv1_1 ... relu4_3
        state = read_weights(weights, "torchvision's ImageNet VGG16 weights")
        load_part(self.features, state, weights, "torchvision's ImageNet VGG16 weights (features.*)",
                  lambda key: f"features.{key}")
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)  # always eval

    def forward(self, x) -> list[torch.Tensor]:
        return [self.features((x - self.mean) / self.std)]
