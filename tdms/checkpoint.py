"""Checkpoints: training state that resumes exactly, and weight-only exports.

Formats recognised by `tdms.nets.build.load_model`:
- ours (training or export): {'format': 'tdms', 'model': state_dict, 'config': {...}, ...}
- the authors' release (`model_pf_epoch_65.pth`): {'model': state_dict} with dead IN buffers -> quirks on.
- Lai et al.'s release (TransformNet + ConvLSTM): {'model': state_dict} with `convlstm.Gates.*` -> arch lai.
Our checkpoints carry `model.arch` in their config, so either network is rebuilt from the file alone.
Files are written with tdms.files.save_atomic (a temp file, then a rename).
"""

from pathlib import Path

from tdms.config import to_dict
from tdms.files import save_atomic
from tdms.weights import FORMAT, read_checkpoint


def export_weights(train_ckpt: str | Path, out: str | Path, half: bool = True):
    """A small weights-only file from a training checkpoint (fp16 halves its size; loads back to fp32)."""
    ckpt = read_checkpoint(train_ckpt)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    save_atomic({"format": FORMAT, "model": state, "config": ckpt["config"], "step": ckpt.get("step"),
                 "git": ckpt.get("git"), "best": best_of(ckpt)}, out)


def training_state(model, optimizer, scheduler, scaler, step: int, cfg, git: str, best: dict | None = None) -> dict:
    """Everything a run needs to resume exactly: the unwrapped model's weights, the optimizer, the LR schedule,
    the fp16 GradScaler (None without one), the step, the resolved config, the code's git SHA and the best
    validation so far ({"step", "margin", "relative_reduction", "psnr"}, None without validation;
    training/validation.py).

    Files written by older versions hold 'best' as NaN (read as None) and 'rng' (never restored): they still load
    and resume."""
    return {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "step": step, "config": to_dict(cfg), "git": git, "best": best}


def best_of(ckpt: dict) -> dict | None:
    """The checkpoint's best validation summary, None when it has none (no validation, or an older file's NaN)."""
    best = ckpt.get("best")
    return best if isinstance(best, dict) else None
