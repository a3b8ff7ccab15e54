"""The Python API: load a model, make a flickering processed clip temporally consistent, score a result.

A clip is a numpy array (T,H,W,3) uint8 or float in [0,1], a torch tensor (T,3,H,W), a frame folder or a
video file, or any iterable of frames ((H,W,3) arrays or (3,H,W) tensors). Results come back in the kind
of the processed clip; frames stream one at a time, so a long video never has to sit in memory.
"""

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, count, islice
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
from tqdm import tqdm

from tdms.errors import MissingFile, UserError
from tdms.evaluation.lpips import lpips_distance
from tdms.evaluation.metrics import psnr, ssim, warping_error_pair
from tdms.evaluation.video import add_derived
from tdms.flow import build_flow
from tdms.flow.occlusion import occlusion_mask
from tdms.frames.io import VIDEO_EXTS, FrameSource, check_paired, frames_to_tensor
from tdms.frames.outputs import prepare_output, process_video
from tdms.inference.bonneel import bonneel_frames
from tdms.inference.fast import AMP
from tdms.inference.recurrence import METHODS, identity_frames, naive_frames, tdms_frames
from tdms.nets import build

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = "tdms_offline"
CHECKPOINT_EXTS = (".pth", ".pt", ".tar", ".ckpt")
NEED_TWO = "temporal consistency needs T >= 2 frames (frame 0 comes back as it is: O_0 = P_0)"
END = object()  # an exhausted iterator's marker


def checkpoint_path(path_or_name=None) -> Path:
    """None -> the shipped checkpoint; a bare name ("tdms_offline") -> checkpoints/<name>.pth; else a path."""
    path = Path(SHIPPED if path_or_name is None else path_or_name)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        path = CHECKPOINTS / f"{path}.pth"
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        found = sorted(p.name for p in CHECKPOINTS.glob("*") if p.suffix in CHECKPOINT_EXTS)
        held = ", ".join(found) if found else "no checkpoint files"
        raise MissingFile(f"checkpoint not found: {path} ({CHECKPOINTS} holds {held})")
    return path


def load_model(path_or_name=None, device="cpu") -> torch.nn.Module:
    """TDMS-Net in eval mode from one of our checkpoints or the authors' released .pth (recognised by its keys)."""
    return build.load_model(checkpoint_path(path_or_name), device)


@dataclass
class Clip:
    """One input clip: its raw frames, and what a result frame is converted to so it looks like them."""

    name: str  # "processed", or "processed <path>" for files
    frames: Iterable  # raw frames: numpy (H,W,3), torch (3,H,W), or float32 numpy read from a file
    scale: str  # "uint8" (values 0-255) or "float" (values in [0,1])
    dtype: object  # numpy or torch dtype of the raw frames
    device: torch.device | None = None  # torch frames: their device; None for numpy
    n: int | None = None  # frame count, when known before reading
    path: Path | None = None
    fps: float = 30.0
    stack: object = list  # list of result frames -> what stabilize returns


def check_layout(x, where: str, clip: bool) -> None:
    """ValueError unless x is a clip (T,H,W,3) (tensor: (T,3,H,W)) or one such frame; names x's apparent layout."""
    tensor = torch.is_tensor(x)
    if not tensor and not isinstance(x, np.ndarray):
        raise UserError(f"{where}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    t = "T," if clip else ""
    last, first = f"({t}H,W,3)", f"({t}3,H,W)"
    want, other, kind, fix = (first, last, "channel-last", "x.movedim(-1, -3)") if tensor else (
        last, first, "channel-first", "np.moveaxis(x, -3, -1)")
    shape = tuple(x.shape)
    if len(shape) != (4 if clip else 3):
        hint = ""
        if clip and len(shape) == 3:
            one_frame = (shape[0] if tensor else shape[-1]) == 3
            hint = ("; one frame? a clip needs T >= 2 frames" if one_frame else
                    "; a grayscale clip (T,H,W)? make its frames RGB first, e.g. "
                    + ("x[:, None].expand(-1, 3, -1, -1)" if tensor else "np.repeat(x[..., None], 3, axis=-1)"))
        raise UserError(f"{where}: expected {want}, got shape {shape}{hint}")
    channels, across = (shape[-3], shape[-1]) if tensor else (shape[-1], shape[-3])
    if channels != 3:
        if across == 3:
            raise UserError(f"{where}: shape {shape} looks {kind} {other}; pass {want} ({fix})")
        raise UserError(f"{where}: expected {want} RGB, got shape {shape} (make grayscale or RGBA frames RGB first)")


def scale_of(x, where: str) -> str:
    """'uint8' or 'float' from an array's or tensor's dtype; ValueError for any other dtype."""
    if torch.is_tensor(x):
        uint8, floating = x.dtype == torch.uint8, x.is_floating_point()
    else:
        uint8, floating = x.dtype == np.uint8, np.issubdtype(x.dtype, np.floating)
    if not (uint8 or floating):
        raise UserError(f"{where}: dtype {x.dtype} is not taken; pass uint8 (0-255) or float in [0, 1]")
    return "uint8" if uint8 else "float"


def check_values(x, where: str, scale: str) -> None:
    """Float frames must lie in [0, 1] (a float clip of 0-255 values is the usual mistake)."""
    if scale != "float":
        return
    lo, hi = float(x.min()), float(x.max())
    if not 0.0 <= lo <= hi <= 1.0:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            hint = "it holds NaN or inf"
        else:
            hint = "0-255 values? divide by 255" if hi > 2 else "clip it to [0, 1]"
        raise UserError(f"{where}: float values must lie in [0, 1], found min {lo:.4g}, max {hi:.4g} ({hint})")


def clip_of(x, role: str) -> Clip:
    """A Clip of x, checked as far as it can be without reading frames beyond the first."""
    if isinstance(x, (str, os.PathLike)):
        src = FrameSource(x)
        return Clip(f"{role} {src.path}", src, "float", np.float32, n=len(src), path=src.path, fps=src.fps,
                    stack=np.stack)
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        check_layout(x, role, clip=True)
        if len(x) < 2:
            raise UserError(f"{role}: T = {len(x)}; {NEED_TWO}")
        scale = scale_of(x, role)
        check_values(x, role, scale)
        tensor = torch.is_tensor(x)
        return Clip(role, x, scale, x.dtype, x.device if tensor else None, n=len(x),
                    stack=torch.stack if tensor else np.stack)
    if not isinstance(x, Iterable):
        raise UserError(f"{role}: expected an array, tensor, path or iterable of frames, got {type(x).__name__}")
    frames = iter(x)
    first = next(frames, END)
    if first is END:
        raise UserError(f"{role}: no frames; {NEED_TWO}")
    check_layout(first, f"{role} frame 0", clip=False)
    return Clip(role, chain([first], frames), scale_of(first, f"{role} frame 0"), first.dtype,
                first.device if torch.is_tensor(first) else None, n=len(x) if hasattr(x, "__len__") else None)


def as_float(frame, clip: Clip, t: int) -> np.ndarray:
    """Raw frame t of clip -> float32 (H,W,3) in [0,1], checked."""
    where = f"{clip.name} frame {t}"
    check_layout(frame, where, clip=False)
    scale = scale_of(frame, where)
    if scale != clip.scale:
        raise UserError(f"{where}: {scale} but frame 0 is {clip.scale}")
    check_values(frame, where, scale)
    if torch.is_tensor(frame):
        frame = frame.detach().to("cpu", torch.uint8 if scale == "uint8" else torch.float32).permute(1, 2, 0).numpy()
    return frame.astype(np.float32) / 255 if scale == "uint8" else frame.astype(np.float32, copy=False)


def convert(o: np.ndarray, like: Clip):
    """A float result frame (H,W,3), clipped to [0,1], as a frame of like's kind (dtype, layout, device)."""
    o = np.clip(o, 0.0, 1.0)
    if like.scale == "uint8":
        o = np.rint(o * 255).astype(np.uint8)
    if like.device is None:
        return o.astype(like.dtype, copy=False)
    return torch.from_numpy(o).permute(2, 0, 1).to(like.device, like.dtype).contiguous()


def frame_tuples(clips: list[Clip]) -> Iterator[tuple]:
    """One float frame of every clip per time step, checking sizes and counts as it goes."""
    iters = [iter(c.frames) for c in clips]
    for t in count():
        raw = [next(it, END) for it in iters]
        ended = [c.name for c, r in zip(clips, raw, strict=True) if r is END]
        if len(ended) == len(clips):
            return
        if ended:
            going = [c.name for c, r in zip(clips, raw, strict=True) if r is not END]
            raise UserError(f"frame counts differ: {', '.join(ended)} ended after {t} frames, "
                             f"{', '.join(going)} did not")
        frames = tuple(as_float(r, c, t) for r, c in zip(raw, clips, strict=True))
        if len({f.shape for f in frames}) > 1:
            sizes = ", ".join(f"{c.name} {f.shape[0]}x{f.shape[1]}" for c, f in zip(clips, frames, strict=True))
            raise UserError(f"frame {t}: sizes differ (HxW): {sizes}")
        yield frames


def start(clips: list[Clip], need_two: str) -> Iterator[tuple]:
    """frame_tuples(clips) after every check that can run before the work: dtypes, counts, the numbers of frame
    folders (io.check_paired), T >= 2."""
    scales = {c.scale for c in clips if c.path is None}  # files are read as float, whatever their bit depth
    if len(scales) > 1:
        kinds = ", ".join(f"{c.name} {c.scale}" for c in clips if c.path is None)
        raise UserError(f"dtypes differ: {kinds}; pass all as uint8 (0-255) or all as float in [0, 1]")
    counts = {c.n for c in clips if c.n is not None}
    if len(counts) > 1:
        raise UserError("frame counts differ: " + ", ".join(f"{c.name} {c.n}" for c in clips if c.n is not None))
    check_paired(*(c.frames for c in clips if isinstance(c.frames, FrameSource)))
    tuples = frame_tuples(clips)
    head = list(islice(tuples, 2))
    if len(head) < 2:
        raise UserError(f"{clips[0].name}: {len(head)} frame(s); {need_two}")
    return chain(head, tuples)


def method_frames(method: str, model, device, amp: str, flow, lam: float):
    """A function: iterator of (I_t, P_t) float frames -> iterator of O_t float32 (H,W,3), unclipped."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if method != "tdms":
        if model is not None:
            raise UserError(f"model= is for method='tdms', not {method!r}")
        if method == "identity":
            return identity_frames
        backend = build_flow(flow) if isinstance(flow, str) else flow
        if method == "naive":
            return lambda pairs: naive_frames(backend, pairs)
        return lambda pairs: bonneel_frames(backend, pairs, lam, device or "cpu")
    if amp not in AMP:
        raise UserError(f"unknown amp {amp!r}; choose from {list(AMP)}")
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, device or "cpu")
    on = next(model.parameters()).device
    if device is not None and torch.device(device).type != on.type:
        raise UserError(f"the model is on {on} but device={device!r}; move it (model.to(device)) or drop device=")
    return lambda pairs: tdms_frames(model, pairs, on, amp)


def check_target(output, clips: list[Clip], overwrite: bool) -> Path:
    """Refuse an output that exists (unless overwrite), is an input, or is a folder tdms did not write."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists (overwrite=True replaces an output of tdms)")
    if out.is_file() and out.suffix.lower() not in VIDEO_EXTS:
        raise UserError(f"{out}: exists and is not a frame folder or a video ({', '.join(VIDEO_EXTS)})")
    prepare_output(out, [c.path for c in clips if c.path is not None], redo=True)
    return out


def stabilize_iter(original, processed, model=None, method: str = "tdms", device=None, amp: str = "fp32",
                   flow="dis", lam: float = 1.0) -> Iterator:
    """An iterator of the consistent frames O_t, one at a time, each of the processed frames' kind, in [0,1].

    Inputs are checked and the model loaded at the call, so bad input fails before the loop. Arguments as
    `stabilize`; original and processed may also be generators (e.g. your operator run lazily on each frame).
    """
    clips = [clip_of(original, "original"), clip_of(processed, "processed")]
    tuples = start(clips, NEED_TWO)
    run = method_frames(method, model, device, amp, flow, lam)
    return (convert(o, clips[1]) for o in run(tuples))


def stabilize(original, processed, model=None, method: str = "tdms", device=None, output=None,
              overwrite: bool = False, amp: str = "fp32", flow="dis", lam: float = 1.0):
    """Make `processed` temporally consistent given the `original` frames it was computed from.

    original, processed: clips of equal length and size (numpy (T,H,W,3) uint8 or float in [0,1], torch
    (T,3,H,W), frame folders, video files, or iterables of frames). model: a loaded TDMS-Net, a checkpoint
    path or name, or None for the shipped one. method: tdms, naive, bonneel (flow backend `flow`, weight
    `lam`) or identity. device: where the model runs (None: the model's device, CPU when loading).
    amp: fp32, bf16 (CUDA, or a CPU with bf16 support) or fp16 (CUDA). Returns the frames, clipped to [0,1],
    in processed's kind (numpy/torch of its dtype and device; paths give a float32 numpy array; other iterables
    a list), or with `output` (a folder of PNG frames or a .mp4/.avi path) writes them there and returns the path.
    """
    clips = [clip_of(original, "original"), clip_of(processed, "processed")]
    out = None if output is None else check_target(output, clips, overwrite)
    tuples = start(clips, NEED_TWO)
    run = method_frames(method, model, device, amp, flow, lam)
    n = next((c.n for c in clips if c.n is not None), None)
    results = run(tuples)
    if out is None:
        frames = tqdm(results, total=n, desc=f"stabilize ({method})", unit="frame", leave=False)
        return clips[1].stack([convert(o, clips[1]) for o in frames])
    meta = {"method": method, "input": str(clips[0].path or "array"), "processed": str(clips[1].path or "array")}
    process_video(results, out, n, clips[1].fps, meta, desc=out.name)
    return out


def flow_pair(backend, i_prev: np.ndarray, i_t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """fw = flow(I_{t-1} -> I_t) (2,H,W) and occlusion (1,H,W), 1 = occluded in t-1, as the evaluation's cache."""
    a, b = frames_to_tensor(i_prev), frames_to_tensor(i_t)
    flows = backend(torch.cat([a, b]), torch.cat([b, a])).float().cpu()  # (2,2,H,W): fw, bw
    return flows[0], occlusion_mask(flows[:1], flows[1:])[0]


def scores(output, original, processed=None, flow="dis", lpips=None) -> dict:
    """DESIGN §8 metrics of a result clip, in one pass; flows and occlusion come from `original` only.

    Returns warping_error (Lai et al.: mean over pairs); with `processed` also warping_error_processed,
    relative_reduction (D_t), psnr and ssim of output vs processed (means over frames 1..T-1); with `lpips`
    (a model from tdms.evaluation.lpips.load_lpips) also lpips and composite (the form without tracking). `flow` is a
    backend name or a callable flow(a, b) -> (B,2,H,W). Clips as for `stabilize`.
    """
    if lpips is not None and processed is None:
        raise UserError("lpips compares the output with the processed clip: pass processed= too")
    clips = [clip_of(original, "original"), clip_of(output, "output")]
    clips += [] if processed is None else [clip_of(processed, "processed")]
    backend = build_flow(flow) if isinstance(flow, str) else flow
    names = ["warping_error"] + ([] if processed is None else ["warping_error_processed", "psnr", "ssim"])
    per_pair = {k: [] for k in names + ([] if lpips is None else ["lpips"])}
    tuples = start(clips, "the warping error compares consecutive frames, so it needs T >= 2")
    n = next((c.n for c in clips if c.n is not None), None)
    prev = None
    for now in tqdm(tuples, total=n, desc="scores", unit="frame", leave=False):
        if prev is not None:
            fw, occ = flow_pair(backend, prev[0], now[0])
            per_pair["warping_error"].append(warping_error_pair(now[1], prev[1], fw, occ))
            if processed is not None:
                per_pair["warping_error_processed"].append(warping_error_pair(now[2], prev[2], fw, occ))
                per_pair["psnr"].append(psnr(now[1], now[2]))
                per_pair["ssim"].append(ssim(now[1], now[2]))
            if "lpips" in per_pair:
                per_pair["lpips"].append(lpips_distance(lpips, now[1], now[2]))
        prev = now
    row = {k: fmean(v) for k, v in per_pair.items()}
    if processed is not None:
        add_derived(row, row["warping_error_processed"], use_iou=False)
    return row


def warping_error(output, original, flow="dis") -> float:
    """Lai et al.'s warping error of `output`: the mean over consecutive pairs of the occlusion-masked squared
    difference between O_{t-1} and O_t warped back, with flow and occlusion from `original` (DESIGN §8)."""
    return scores(output, original, flow=flow)["warping_error"]
