"""Build the network a config names, and load one from a checkpoint file (ours or a released one).

Formats recognised by `load_model`:
- ours (training or export): {'format': 'tdms', 'model': state_dict, 'config': {...}, ...};
- the TDMS-Net authors' release (`model_pf_epoch_65.pth`): {'model': state_dict} with never-applied
  InstanceNorm buffers -> model.original_quirks on;
- Lai et al.'s release (TransformNet + ConvLSTM): {'model': state_dict} with `convlstm.Gates.*` -> arch lai.
Our checkpoints carry `model.arch` in their config, so either network is rebuilt from the file alone.
"""

from pathlib import Path

import torch

from tdms.config import ARCHS, ModelConfig, config_from_dict
from tdms.errors import UserError
from tdms.nets.lai_net import LaiNet
from tdms.nets.tdms_net import TDMSNet
from tdms.weights import FORMAT, check_finite, load_strict, read_checkpoint


def prior_backend(name: str):
    """The flow backend of `model.flow_prior` (None for "none"): DIS only, so that it needs no weights."""
    if name == "none":
        return None
    from tdms.flow.dis import PRESETS, DISFlow

    preset = name.removeprefix("dis-")
    if not name.startswith("dis-") or preset not in PRESETS:
        choices = ["none"] + [f"dis-{p}" for p in PRESETS]
        raise UserError(f"unknown model.flow_prior {name!r}; choose from {choices}")
    return DISFlow(preset)


def build_model(mcfg: ModelConfig) -> torch.nn.Module:
    """The network `mcfg.arch` names, untrained."""
    prior = prior_backend(mcfg.flow_prior)
    if mcfg.arch == "tdms":
        return TDMSNet(mcfg.nf, mcfg.norm, mcfg.original_quirks, prior_flow=prior, residual_gate=mcfg.residual_gate,
                       occlusion_gate=mcfg.occlusion_gate, occlusion_ramp=mcfg.occlusion_ramp)
    for key in ("residual_gate", "occlusion_gate"):
        if getattr(mcfg, key) != "none":
            raise UserError(f"model.{key} needs model.arch=tdms, got {mcfg.arch!r}")
    if prior is not None:
        raise UserError(f"model.flow_prior={mcfg.flow_prior} needs model.arch=tdms, got {mcfg.arch!r}")
    if mcfg.arch == "lai":
        return LaiNet(mcfg.nf, mcfg.norm, mcfg.original_quirks)
    raise UserError(f"unknown model.arch {mcfg.arch!r}; choose from {list(ARCHS)}")


# Lai et al.'s release was saved by PyTorch 0.4.0, whose InstanceNorm had no num_batches_tracked buffer. The
# buffers are never used (the released forward does not apply its norms), so a released file may lack them.
UNUSED_BUFFERS = ("norm_layer.num_batches_tracked",)


def is_released_format(ckpt: dict) -> bool:
    """The authors' file (TDMS-Net's or Lai et al.'s): no config, and the never-applied IN buffers are present."""
    return ckpt.get("format") != FORMAT and "conv1a.norm_layer.running_mean" in ckpt["model"]


def model_config_of(ckpt: dict) -> ModelConfig:
    if ckpt.get("format") == FORMAT:
        return config_from_dict(ckpt["config"]).model
    if is_released_format(ckpt):
        arch = "lai" if "convlstm.Gates.weight" in ckpt["model"] else "tdms"
        nf = ckpt["model"]["conv1a.conv2d.weight"].shape[0]
        return ModelConfig(arch=arch, nf=nf, norm="none", original_quirks=True)
    raise UserError("not a tdms checkpoint and not a released TDMS-Net or Lai et al. file")


def load_model(path: str | Path, device="cpu", verbose: bool = False) -> torch.nn.Module:
    """Build the network a checkpoint describes and load its weights (strict). Returns it in eval mode."""
    ckpt = read_checkpoint(path)
    try:
        mcfg = model_config_of(ckpt)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    if verbose and mcfg.original_quirks:
        who = "Lai et al.'s" if mcfg.arch == "lai" else "the authors'"
        print(f"{path}: {who} released format; original_quirks on (its weights were trained with them)")
    check_finite(ckpt["model"], path)
    model = build_model(mcfg)
    load_strict(model, ckpt["model"], path, optional=UNUSED_BUFFERS if is_released_format(ckpt) else ())
    return model.to(device).eval()
