"""Checkpoints: training state that resumes exactly, weight-only exports, and the authors' released format.

Formats recognised by `load_model`:
- ours (training or export): {'format': 'tdms', 'model': state_dict, 'config': {...}, ...}
- the authors' release (`model_pf_epoch_65.pth`): {'model': state_dict} with dead IN buffers -> quirks on.
- Lai et al.'s release (TransformNet + ConvLSTM): {'model': state_dict} with `convlstm.Gates.*` -> arch lai.
Our checkpoints carry `model.arch` in their config, so either network is rebuilt from the file alone.
"""

import os
import tempfile
from pathlib import Path

import torch

from tdms.config import ARCHS, ModelConfig, config_from_dict, to_dict
from tdms.io import load_problem
from tdms.lai_model import LaiNet
from tdms.model import TDMSNet

FORMAT = "tdms"


def atomic_save(obj, path: str | Path):
    """torch.save to a temp file in the same folder, then rename: a kill never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the checkpoint from the rest of a shared group
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle from another library, not a torch file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({load_problem(e)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, found {keys}")
    return ckpt


def prior_backend(name: str):
    """The flow backend of `model.flow_prior` (None for "none"): DIS only, so that it needs no weights."""
    if name == "none":
        return None
    from tdms.flow.dis import PRESETS, DISFlow

    preset = name.removeprefix("dis-")
    if not name.startswith("dis-") or preset not in PRESETS:
        choices = ["none"] + [f"dis-{p}" for p in PRESETS]
        raise ValueError(f"unknown model.flow_prior {name!r}; choose from {choices}")
    return DISFlow(preset)


def build_model(mcfg: ModelConfig) -> torch.nn.Module:
    """The network `mcfg.arch` names, untrained."""
    prior = prior_backend(mcfg.flow_prior)
    if mcfg.arch == "tdms":
        return TDMSNet(mcfg.nf, mcfg.norm, mcfg.original_quirks, prior_flow=prior)
    if prior is not None:
        raise ValueError(f"model.flow_prior={mcfg.flow_prior} needs model.arch=tdms, got {mcfg.arch!r}")
    if mcfg.arch == "lai":
        return LaiNet(mcfg.nf, mcfg.norm, mcfg.original_quirks)
    raise ValueError(f"unknown model.arch {mcfg.arch!r}; choose from {list(ARCHS)}")


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
    raise ValueError("not a tdms checkpoint and not a released TDMS-Net or Lai et al. file")


def load_state(model: torch.nn.Module, state: dict, source: str):
    """Strict load with a readable list of what is missing, unexpected, or of the wrong shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
        lines = [f"{source}: weights do not fit {type(model).__name__}"]
        if missing:
            lines.append(f"  missing {len(missing)}: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)}: {show(unexpected)}")
        if shapes:
            lines.append(f"  wrong shape {len(shapes)}: {show(shapes)}")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_model(path: str | Path, device="cpu", verbose: bool = False) -> torch.nn.Module:
    """Build the network a checkpoint describes and load its weights (strict). Returns it in eval mode."""
    ckpt = read_checkpoint(path)
    try:
        mcfg = model_config_of(ckpt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if verbose and mcfg.original_quirks:
        who = "Lai et al.'s" if mcfg.arch == "lai" else "the authors'"
        print(f"{path}: {who} released format; original_quirks on (its weights were trained with them)")
    model = build_model(mcfg)
    load_state(model, ckpt["model"], str(path))
    return model.to(device).eval()


def export_weights(train_ckpt: str | Path, out: str | Path, half: bool = True):
    """A small weights-only file from a training checkpoint (fp16 halves its size; loads back to fp32)."""
    ckpt = read_checkpoint(train_ckpt)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    atomic_save({"format": FORMAT, "model": state, "config": ckpt["config"], "step": ckpt.get("step"),
                 "git": ckpt.get("git")}, out)


def training_state(model, optimizer, scheduler, scaler, step: int, best: float, cfg, git: str) -> dict:
    """Everything a run needs to resume exactly."""
    return {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "step": step, "best": best, "config": to_dict(cfg), "git": git,
            "rng": {"torch": torch.get_rng_state(), "python": None}}
