"""What tdms-train checks before and around its loop, and what it records: the run folder, the data root, settings
refused by key, the precision against the device, a resumed run's config against its checkpoint's, a DataLoader worker's
error as one line, a non-finite loss's terms, the code's git SHA and run.json."""

import json
import math
import subprocess
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tdms import distributed
from tdms.config import Config, config_from_dict, to_dict
from tdms.errors import MissingFile, OutputExists, UserError
from tdms.files import write_bytes_atomic
from tdms.inference.fast import AMP

# what --resume may change: the run's length, where it and its data lie, and settings that touch no number of the run
RESUMABLE = ("train.steps", "train.out", "train.log_every", "train.image_every", "train.ckpt_every", "train.threads",
             "data.workers", "data.root", "data.flow_cache")


def show_terms(terms: dict, weighted: dict, w) -> str:
    """'name weight×term = product' for each term, the non-finite ones marked (a finite term can overflow)."""
    parts = []
    for name, value in terms.items():
        product = weighted[name].item()
        mark = "" if math.isfinite(product) else " (non-finite)"
        parts.append(f"{name} {getattr(w, name):g}×{value.item():.4g} = {product:.4g}{mark}")
    if all(math.isfinite(weighted[name].item()) for name in terms):
        parts.append("their sum overflows")
    return ", ".join(parts)


def check_run_folder(last: Path, resume: bool):
    """A new run never writes over an old one's checkpoint `last`; --resume needs one."""
    if last.exists() and not resume:
        raise OutputExists(f"{last.parent} already holds a run ({last}); pass --resume to continue it or pick "
                           "another out")
    if resume and not last.exists():
        raise MissingFile(f"--resume: no checkpoint at {last}")


def check_settings(cfg: Config):
    """Values the loop, the sampler, the optimizer or the losses cannot take, refused by key before any work: every
    float setting finite (inf and NaN are never a setting), then each in its range."""
    for key, value in flatten(to_dict(cfg)).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value}")
    t, d, o, w = cfg.train, cfg.data, cfg.optim, cfg.loss
    rules = [
        ("train.steps", t.steps, t.steps >= 1, ">= 1"),
        ("train.batch", t.batch, t.batch >= 1, ">= 1"),
        ("data.workers", d.workers, d.workers >= 0, ">= 0 (0 = load in the training process)"),
        ("data.sample_frames", d.sample_frames, d.sample_frames >= 2, ">= 2 (a clip's frames follow a first one)"),
        ("data.crop", d.crop, d.crop >= 4 and d.crop % 4 == 0, "a positive multiple of 4 (the networks' input size)"),
        ("data.scale_min", d.scale_min, d.scale_min > 0, "> 0"),
        ("data.scale_max", d.scale_max, d.scale_max >= d.scale_min, f">= data.scale_min={d.scale_min}"),
        ("optim.lr", o.lr, o.lr > 0, "> 0"),
        ("optim.lr_step", o.lr_step, o.lr_step >= 1, ">= 1 (steps between two lr_gamma factors)"),
        ("optim.lr_gamma", o.lr_gamma, 0 < o.lr_gamma <= 1, "in (0, 1] (the lr's factor every optim.lr_step steps)"),
        ("optim.lr_min", o.lr_min, 0 <= o.lr_min <= o.lr, f"in [0, optim.lr={o.lr}] (the lr's floor)"),
        ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0, ">= 0 (0 = off)"),
        ("loss.alpha", w.alpha, w.alpha >= 0, ">= 0 (the visibility mask's sharpness)"),
    ] + [(f"optim.{name}", getattr(o, name), 0 <= getattr(o, name) < 1, "in [0, 1) (Adam's decay rate)")
         for name in ("beta1", "beta2")
    ] + [(f"loss.{name}", getattr(w, name), getattr(w, name) >= 0, ">= 0 (0 = off)")
         for name in ("temporal", "long_term", "perceptual", "fidelity", "log_fidelity", "relative_temporal", "flow",
                      "flow_cycle", "mask")
    ] + [(f"train.{name}", getattr(t, name), getattr(t, name) >= 0, ">= 0 (0 = off)")
         for name in ("log_every", "image_every", "ckpt_every", "val_every")] + [
        ("loss.log_fidelity_eps", w.log_fidelity_eps, w.log_fidelity_eps > 0, "> 0 (log10 of 0 is -inf)"),
        ("loss.relative_temporal_target", w.relative_temporal_target, 0 <= w.relative_temporal_target < 1,
         "in [0, 1) (E(O)/E(P) to reach; 0 = off)"),
        ("train.val_frames", t.val_frames, t.val_frames == 0 or t.val_frames >= 2,
         ">= 2 (a validation clip's frames; 0 = all)"),
        ("train.val_dtype", t.val_dtype, t.val_dtype in ("auto", "fp32", "bf16", "fp16"),
         "auto, fp32, bf16 or fp16 (as tdms-test --dtype)"),
    ]
    for key, value, ok, want in rules:
        if not ok:
            raise UserError(f"{key} must be {want}, got {value}")
    check_mask_settings(w)


def check_mask_settings(w):
    """The mask and temporal terms' settings of cfg.loss, refused by key."""
    if w.mask_target not in ("flow_star", "own_flow", "occlusion"):
        raise UserError(f"loss.mask_target must be flow_star, own_flow or occlusion, got {w.mask_target!r}")
    if not 0 < w.mask_scale <= 1:
        raise UserError(f"loss.mask_scale must be in (0, 1], got {w.mask_scale}")
    if w.mask_norm not in ("l1", "l2"):
        raise UserError(f"loss.mask_norm must be l1 or l2, got {w.mask_norm!r}")
    if w.norm not in ("l1", "l2"):
        raise UserError(f"loss.norm must be l1 or l2, got {w.norm!r}")
    if w.temporal_mask not in ("visibility", "occlusion"):
        raise UserError(f"loss.temporal_mask must be visibility or occlusion, got {w.temporal_mask!r}")
    if not 0 <= w.mask_balance < 1:
        raise UserError(f"loss.mask_balance must be in [0, 1) (a visibility threshold; 0 = off), got {w.mask_balance}")


def check_data_root(root: str):
    """data.root is a folder: a missing one is named, with the two ways to get one."""
    if not Path(root).is_dir():
        raise MissingFile(f"data.root={root}: no such folder; set data.root to training data in Lai et al.'s layout "
                          f"(root/train/..., root/lists/), or make some with `tdms-build-data --out {root}`")


def check_amp(amp: str, device: torch.device):
    """train.amp is one of AMP's precisions, and fp16 (whose GradScaler is CUDA's) runs on a CUDA device."""
    if amp not in AMP:
        raise UserError(f"train.amp must be one of {list(AMP)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device (its GradScaler is CUDA's); use bf16 on CPU")


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(cfg: Config, stored: dict, step: int, source: Path):
    """A resumed run continues exactly: its config may differ from the checkpoint's (at `step`) only in RESUMABLE
    keys, and train.steps never goes below the step the run has reached (a checkpoint is not rewound)."""
    if cfg.train.steps < step:
        raise UserError(f"--resume: train.steps={cfg.train.steps} but the run in {source.parent} is already at step "
                        f"{step}; give train.steps >= {step} (the run and its config stay as they are)")
    try:  # through the loader: a key added since the checkpoint takes its default
        old = flatten(to_dict(config_from_dict(stored)))
    except ValueError as e:
        raise UserError(f"--resume: {source} holds a config this version cannot read: {e}") from None
    new = flatten(to_dict(cfg))
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if k not in RESUMABLE and new[k] != old[k]]
    if changed:
        raise UserError(f"--resume: the config differs from the run's ({source}): {', '.join(changed)}; a resumed "
                         f"run continues exactly, so only {', '.join(RESUMABLE)} may change (start a new run, "
                         f"with --init-weights {source} to keep the weights)")


def worker_error(e: Exception) -> Exception:
    """A DataLoader worker's exception comes back as "Caught X in DataLoader worker process N. Original Traceback
    ... X: message": the worker's exception again, its message one line. Other exceptions are returned as they are."""
    lines = str(e).strip().splitlines()
    if len(lines) < 2 or "in DataLoader worker process" not in lines[0]:
        return e
    name, message = lines[0].split()[1], lines[-1]
    head, sep, tail = message.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == name:  # "ValueError: ..." or "tdms.x.Error: ..."
        message = tail
    try:
        return type(e)(message)
    except Exception:  # an exception class that does not take one message
        return RuntimeError(message)


def batches(loader: DataLoader):
    """The loader's batches; an error in a worker is raised as in the training process (one line)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise worker_error(e) from None
        yield batch


def git_sha(where: Path = Path(__file__).parent) -> str:
    """The commit of the code that runs, "-dirty" when it has uncommitted changes (run.json records it)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, cwd=where, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_record(out: Path, sha: str, device: torch.device, step: int, world: distributed.World):
    """run.json: the code, device and world size that started the run; each resume is appended, not written over."""
    now = {"git": sha, "device": str(device), "world_size": world.size}
    path = out / "run.json"
    if step == 0 or not path.is_file():
        record = {**now, "resumed_at": step, "resumes": []}
    else:
        record = json.loads(path.read_text())
        record.setdefault("resumes", []).append({**now, "step": step})
    write_bytes_atomic(path, json.dumps(record).encode())
