"""Shared by the network flow backends (FlowNet2, RAFT): weight files read with errors that say what a wrong
file looks like, and the input check."""

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from tdms.io import load_problem

# Key prefixes (first match wins) of state dicts people are likely to hand us by mistake.
SIGNATURES = (
    ("flownetfusion.", "NVIDIA FlowNet2"),
    ("flownets_2.", "NVIDIA FlowNet2-CSS (no SD branch, no fusion)"),
    ("flownets_1.", "NVIDIA FlowNet2-CS (no second S, no SD branch, no fusion)"),
    ("conv_redir.", "NVIDIA FlowNet2-C (the correlation network alone)"),
    ("inter_conv5.", "NVIDIA FlowNet2-SD (the small-displacement network alone)"),
    ("predict_flow6.", "NVIDIA FlowNet2-S (one FlowNetS alone)"),
    ("flownetc.", "an NVIDIA FlowNet2-family model"),
    ("feature_encoder.", "torchvision RAFT"),
    ("fnet.", "princeton-vl RAFT (its own parameter names, not torchvision's)"),
    ("conv1a.", "a TDMS-Net model"),
    ("features.", "a torchvision classification network (VGG/AlexNet)"),
)


def looks_like(keys) -> str:
    """A short guess at what produced a state dict with these keys, or ''."""
    keys = list(keys)
    if keys and all(k.startswith("module.") for k in keys):
        inner = looks_like(k[len("module."):] for k in keys)
        return "saved through a DataParallel wrapper ('module.' before every key)" + (f" of {inner}" if inner else "")
    for prefix, label in SIGNATURES:
        if any(k.startswith(prefix) for k in keys):
            return label
    return ""


def read_weights(path: Path, what: str, hint: str) -> dict:
    """torch.load a weights file safely (tensors and plain containers only); errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} does not exist. {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: holds pickled Python objects beyond tensors and plain containers (a whole pickled model, or "
            f"another library's training state?), which tdms does not unpickle; expected {what}. ({load_problem(e)})"
        ) from None
    except Exception as e:  # truncated zip, legacy file cut short, random bytes: torch raises many kinds
        raise ValueError(
            f"{path}: cannot be read as a PyTorch weights file (truncated or not written by torch.save?); "
            f"expected {what}. ({load_problem(e)})"
        ) from None
    return obj


def n_params(state: dict) -> int:
    return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))


def describe(state: dict, guess: bool = True) -> str:
    """'keys like a, b, c (N tensors, M M parameters; looks like X)' for error messages."""
    keys = list(state)
    guess = looks_like(keys) if guess else ""
    return (f"keys like {', '.join(keys[:3]) or '(none)'} ({len(keys)} tensors, {n_params(state) / 1e6:.1f} M "
            f"parameters{'; looks like ' + guess if guess else ''})")


def mismatch(state: dict, model: nn.Module) -> str:
    """'' when `state` loads strictly into `model`, else the first differences in words."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in want.items()
              if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)]
    parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
             f"{len(shapes)} of other shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
    return ", ".join(p for p in parts if p)


def load_strict(model: nn.Module, state: dict, path: Path, what: str) -> None:
    """Load `state` into `model` strictly or raise ValueError saying what the file holds and what was expected."""
    diff = mismatch(state, model)
    if diff:
        raise ValueError(f"{path} has {describe(state)}; expected {what}: {describe(model.state_dict(), guess=False)}. "
                         f"Differences: {diff}.")
    model.load_state_dict(state, strict=True)


def check_pair(img_a: torch.Tensor, img_b: torch.Tensor, min_side: int, who: str) -> None:
    """ValueError unless img_a and img_b are (B,3,H,W) of one shape with both sides >= min_side."""
    if img_a.shape != img_b.shape or img_a.dim() != 4 or img_a.shape[1] != 3:
        raise ValueError(f"{who} wants two (B,3,H,W) images of one shape, got {tuple(img_a.shape)} "
                         f"and {tuple(img_b.shape)}")
    if min(img_a.shape[2:]) < min_side:
        raise ValueError(f"{who} needs frames of at least {min_side}×{min_side} px, got "
                         f"{img_a.shape[3]}×{img_a.shape[2]} (W×H)")
