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

from tdms.config import to_dict
from tdms.weights import FORMAT, read_checkpoint


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
