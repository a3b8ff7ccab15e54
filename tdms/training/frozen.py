"""The frozen networks a training step uses beside the model, built once per run and checked against it.

The flow backend (cfg.flow) computes the cached F* = flow(I_t -> I_{t-1}); with loss.long_term > 0 it also gives
F*_{t->0} on the crops, and with loss.flow_cycle > 0 a twin of it lets gradients reach O_t. VGG16 up to relu4_3
serves the perceptual term (loss.perceptual > 0). None of them enters the optimizer or the checkpoints.
"""

import copy

import torch

from tdms.config import Config
from tdms.devices import pick_device
from tdms.errors import UserError
from tdms.flow import build_flow
from tdms.inference.fast import AMP
from tdms.training import losses as L
from tdms.training.step import Aux


def build_flow_backend(cfg: Config, device: torch.device):
    """cfg.flow's backend; flow.device 'auto' runs it where the model trains."""
    where = device if cfg.flow.device == "auto" else pick_device(cfg.flow.device)
    return build_flow(cfg.flow.backend, preset=cfg.flow.preset, device=where, checkpoint=cfg.flow.checkpoint)


def differentiable(backend):
    """A twin of a network backend (same frozen weights, no copy) through which gradients reach the images."""
    if not hasattr(backend, "differentiable"):
        raise UserError(f"loss.flow_cycle needs a flow network gradients can pass through (flow.backend flownet2, "
                        f"raft or raft-small); the {backend.name} backend is not (OpenCV DIS has no gradients). "
                        f"Set loss.flow_cycle=0 or choose such a backend.")
    twin = copy.copy(backend)
    twin.differentiable = True
    return twin


def check_flow_input(flow, crop: int, device: torch.device):
    """Run `flow` once on a crop-sized pair: a crop the network cannot take fails now, not after the cache."""
    x = torch.zeros(1, 3, crop, crop, device=device)
    try:
        with torch.no_grad():
            flow(x, x)
    except ValueError as e:
        raise UserError(f"data.crop={crop} is too small for the flow terms computed on the crops: {e}") from None


def build_aux(cfg: Config, device: torch.device, scaler) -> tuple[Aux, object]:
    """The step's Aux (VGG16, the flow backend's uses on the crops, precision) and the flow backend itself.

    Refuses what the model and the flow cannot do together: a flow-cycle term through DIS, a crop the flow network
    cannot take, a model.flow_prior other than the training flow."""
    w = cfg.loss
    vgg = L.VGGFeatures(L.vgg16_weights_path(w.vgg_weights)).to(device) if w.perceptual > 0 else None
    backend = build_flow_backend(cfg, device)
    aux = Aux(vgg, backend if w.long_term > 0 else None, differentiable(backend) if w.flow_cycle > 0 else None,
              AMP[cfg.train.amp], scaler, cfg.train.channels_last)
    if aux.flow or aux.cycle_flow:
        check_flow_input(backend, cfg.data.crop, device)
    if cfg.model.flow_prior not in ("none", backend.name):
        raise UserError(f"model.flow_prior={cfg.model.flow_prior} must be the training flow ({backend.name}): "
                        "the cached F* is the prior during training, so inference must compute the same flow")
    if cfg.model.arch == "lai" and (w.flow > 0 or w.mask > 0):
        print(f"note: model.arch={cfg.model.arch} has no flow/mask heads; loss.flow and loss.mask do not apply")
    return aux, backend
