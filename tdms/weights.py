"""The one reader of weight files: ours, the authors' and Lai et al.'s releases, FlowNet2, RAFT, VGG16 and the
LPIPS backbones. Files are read with `torch.load(weights_only=True)` (tensors and plain containers, never
arbitrary pickled objects) and loaded strictly; every error names the file, says what it seems to hold and what
was expected, and where a missing file goes.

Our checkpoints are {'format': 'tdms', 'model': state_dict, 'config': {...}, ...}; the authors' release
(`model_pf_epoch_65.pth`) and Lai et al.'s are {'model': state_dict}.
"""

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from tdms.errors import MissingFile, UserError

FORMAT = "tdms"  # the 'format' of our checkpoints

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


def load_problem(e: Exception) -> str:
    """What torch.load(weights_only=True) found wrong with a file, in one line, without torch's advice to retry
    with weights_only=False (unsafe, and no help for a file that is not a checkpoint)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # the reason follows torch's paragraph of advice
        reason = next((line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines()
                       if line.strip()), "")
        return f"not a plain weights file: {reason}" if reason else "not a plain weights file"
    first = text.splitlines()[0] if text else ""
    sentence = first.split(". ", 1)[0].rstrip(".")  # torch appends advice after its first sentence
    return f"{type(e).__name__}: {sentence}"


def read_weights(path, what: str, hint: str = ""):
    """torch.load a weights file safely (tensors and plain containers only) on the CPU; errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a weights file; expected {what}")
    if not path.is_file():
        raise MissingFile(f"{what} not found: {path} does not exist. {hint}".strip())
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # a zip archive (torch >= 1.6) or a pickle (older torch)
        kind = "an empty file" if not head else (
            f"text ({head.decode('utf-8').splitlines()[0][:40]!r}...)" if is_text(head) else "another format")
        raise UserError(f"{path}: not a readable PyTorch weights file: it holds {kind}; expected {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # random bytes fail as bad pickle opcodes: not a torch file at all
            raise UserError(f"{path}: not a readable PyTorch weights file (truncated, or not written by "
                            f"torch.save?): {load_problem(e)}; expected {what}") from None
        raise UserError(
            f"{path}: holds pickled Python objects beyond tensors and plain containers (a whole pickled model, or "
            f"another library's training state?), which tdms does not unpickle; expected {what}. ({load_problem(e)})"
        ) from None
    except Exception as e:  # truncated zip, legacy file cut short, random bytes: torch raises many kinds
        raise UserError(f"{path}: not a readable PyTorch weights file (truncated, or not written by torch.save?): "
                        f"{load_problem(e)}; expected {what}") from None


def is_text(data: bytes) -> bool:
    try:
        return data.decode("utf-8").isprintable() or "\n" in data.decode("utf-8")
    except UnicodeDecodeError:
        return False


def check_finite(state: dict, source) -> None:
    """Weights with NaN or inf would give NaN frames: refuse them, naming the file and the first such tensor."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{source}: {len(bad)} tensor(s) hold NaN or inf values ({', '.join(bad[:3])}); "
                        f"the weights are broken (a diverged training run?)")


def read_checkpoint(path) -> dict:
    """A tdms checkpoint or a released TDMS-Net / Lai et al. file: a dict with a 'model' state dict."""
    path = Path(path)
    ckpt = read_weights(path, "a PyTorch checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: expected a dict with a 'model' state dict, found {keys}")
    return ckpt


def n_params(state: dict) -> int:
    return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))


def describe(state: dict, guess: bool = True) -> str:
    """'keys like a, b, c (N tensors, M M parameters; looks like X)' for error messages."""
    keys = list(state)
    guess = looks_like(keys) if guess else ""
    return (f"keys like {', '.join(keys[:3]) or '(none)'} ({len(keys)} tensors, {n_params(state) / 1e6:.1f} M "
            f"parameters{'; looks like ' + guess if guess else ''})")


def differences(state: dict, model: nn.Module, optional=()) -> list[str]:
    """What keeps `state` from loading strictly into `model`, one line per kind; [] when it fits. Keys ending in
    one of `optional` may be absent from the file."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(tuple(optional))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__}"
              f" vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)]

    def show(items):
        return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    return [f"{label} {len(items)}: {show(items)}" for label, items in
            (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]


def load_strict(model: nn.Module, state, source, what: str = "", optional=()) -> None:
    """Load `state` into `model` strictly (values cast to the model's dtypes) or raise a UserError that says what
    the file holds, what was expected and every difference. `optional`: key endings the file may lack."""
    what = what or type(model).__name__
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = f"a dict with keys {list(state)[:5]}" if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{source}: holds {kind}, not a state dict; expected {what}")
    diff = differences(state, model, optional)
    if diff:
        raise UserError(f"{source}: holds {describe(state)}; expected {what}: "
                        f"{describe(model.state_dict(), guess=False)}\n  " + "\n  ".join(diff))
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=not optional)


def load_part(module: nn.Module, state, source, what: str, key_in_file=lambda key: key) -> None:
    """Load `module` strictly from the tensors of a larger state dict that it needs (file key
    `key_in_file(module key)`), as VGG16's features without its classifier; the file's other tensors are ignored."""
    if not isinstance(state, dict):
        raise UserError(f"{source}: holds {type(state).__name__}, not a state dict; expected {what}")
    wanted = {key: key_in_file(key) for key in module.state_dict()}
    load_strict(module, {key: state[src] for key, src in wanted.items() if src in state}, source, what)
