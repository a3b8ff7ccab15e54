"""The Python API: load a model, make a flickering processed clip temporally consistent, score a result.

A clip is a numpy array (T,H,W,3) uint8 or float in [0,1], a torch tensor (T,3,H,W), a frame folder or a
video file, or any iterable of frames ((H,W,3) arrays or (3,H,W) tensors). Results come back in the kind
of the processed clip; frames stream one at a time, so a long video never has to sit in memory.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from tdms.errors import MissingFile, UserError
from tdms.evaluation.video import evaluate_clips
from tdms.flow import build_flow
from tdms.frames.arrays import NEED_TWO, Clip, clip_of, convert, start
from tdms.frames.cuts import ShotStarts
from tdms.frames.io import VIDEO_EXTS, FrameSource, cuts
from tdms.frames.outputs import prepare_output, process_video
from tdms.frames.video import Encoding
from tdms.inference.methods import make_method
from tdms.inference.recurrence import restart_at_cuts
from tdms.nets import build

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = "tdms_offline"
CHECKPOINT_EXTS = (".pth", ".pt", ".tar", ".ckpt")


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


def method_frames(method: str, model, device, amp: str, flow, lam: float):
    """A function: iterator of (I_t, P_t) float frames -> iterator of O_t float32 (H,W,3), unclipped.

    model (tdms): a loaded network, a checkpoint path or name, or None for the shipped checkpoint."""
    checkpoint = None
    if method == "tdms" and not isinstance(model, torch.nn.Module):
        checkpoint, model = checkpoint_path(model), None
    return make_method(method, device, model, checkpoint, amp, flow=flow, lam=lam).frames


def shot_starts(clips: list[Clip], cut_reset: bool) -> ShotStarts:
    """Where the recurrence restarts: the jumps of an original frame folder's numbers, and (cut_reset) the scene
    cuts found in the original frames (frames.cuts)."""
    src = clips[0].frames
    return ShotStarts(cuts(src) if isinstance(src, FrameSource) else (), detect=cut_reset)


def video_encoding(clips: list[Clip]) -> Encoding:
    """A video output keeps the original video's time stamps and the audio of the processed video, else of the
    original."""
    videos = [c.frames for c in clips if isinstance(c.frames, FrameSource) and c.frames.is_video]
    heard = next((v for v in videos[::-1] if v.video.audio), None)
    timed = next((v for v in videos if v.video.monotonic), None)
    return Encoding(audio_from=heard.path if heard else None, timing=timed.video.timing if timed else None)


def check_target(output, clips: list[Clip], overwrite: bool) -> Path:
    """Refuse an output that exists (unless overwrite), is an input, or is a folder tdms did not write."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists (overwrite=True replaces an output of tdms)")
    if out.is_file() and out.suffix.lower() not in VIDEO_EXTS:
        raise UserError(f"{out}: exists and is not a frame folder or a video ({', '.join(VIDEO_EXTS)})")
    prepare_output(out, [c.path for c in clips if c.path is not None], redo=True)
    return out


def stabilize_iter(original, processed, model=None, method: str = "tdms", device=None, amp: str = "auto",
                   flow="dis", lam: float = 1.0, cut_reset: bool = True) -> Iterator:
    """An iterator of the consistent frames O_t, one at a time, each of the processed frames' kind, in [0,1].

    Inputs are checked and the model loaded at the call, so bad input fails before the loop. Arguments as
    `stabilize`; original and processed may also be generators (e.g. your operator run lazily on each frame).
    """
    clips = [clip_of(original, "original"), clip_of(processed, "processed")]
    tuples = start(clips, NEED_TWO)
    run = method_frames(method, model, device, amp, flow, lam)
    return (convert(o, clips[1]) for o in restart_at_cuts(run, tuples, shot_starts(clips, cut_reset)))


def stabilize(original, processed, model=None, method: str = "tdms", device=None, output=None,
              overwrite: bool = False, amp: str = "auto", flow="dis", lam: float = 1.0, cut_reset: bool = True):
    """Make `processed` temporally consistent given the `original` frames it was computed from.

    original, processed: clips of equal length and size (numpy (T,H,W,3) uint8 or float in [0,1], torch
    (T,3,H,W), frame folders, video files, or iterables of frames). model: a loaded TDMS-Net, a checkpoint
    path or name, or None for the shipped one. method: tdms, naive, bonneel (flow backend `flow`, weight
    `lam`), ffmpeg-deflicker or identity. cut_reset: restart the recurrence (O_t = P_t) at the scene cuts found
    in the original frames (tdms.frames.cuts), as tdms-test does. device: where the model runs (None: the
    model's device, CPU when loading).
    amp: auto (bf16 where the device computes it natively: CUDA, CPUs with AVX512-BF16 or AMX; else fp32), fp32,
    bf16 or fp16 (CUDA); O_{t-1} and the blend stay in fp32. Returns the frames, clipped to [0,1],
    in processed's kind (numpy/torch of its dtype and device; paths give a float32 numpy array; other iterables
    a list), or with `output` (a folder of PNG frames or a .mp4/.mov/.mkv/.avi path: H.264 at CRF 18, with the
    original video's time stamps and the processed video's audio, else the original's) writes them there and
    returns the path.
    """
    clips = [clip_of(original, "original"), clip_of(processed, "processed")]
    out = None if output is None else check_target(output, clips, overwrite)
    tuples = start(clips, NEED_TWO)
    run = method_frames(method, model, device, amp, flow, lam)
    n = next((c.n for c in clips if c.n is not None), None)
    starts = shot_starts(clips, cut_reset)
    results = restart_at_cuts(run, tuples, starts)
    if out is None:
        frames = tqdm(results, total=n, desc=f"stabilize ({method})", unit="frame", leave=False)
        return clips[1].stack([convert(o, clips[1]) for o in frames])
    meta = {"method": method, "input": str(clips[0].path or "array"), "processed": str(clips[1].path or "array"),
            "cut_reset": cut_reset, "cuts": starts.cuts}
    process_video(results, out, n, clips[1].fps, meta, desc=out.name, encoding=video_encoding(clips))
    return out


def scores(output, original, processed=None, flow="dis", lpips=None) -> dict:
    """The metrics of a result clip that tdms-evaluate computes, in one pass (evaluation.video.evaluate_clips);
    flows and occlusion come from `original` only.

    Returns warping_error (Lai et al.: mean over pairs); with `processed` also psnr and ssim of output vs
    processed (means over frames 1..T-1), warping_error_processed and relative_reduction (D_t); with `lpips`
    (a model from tdms.evaluation.lpips.load_lpips) also lpips, and composite (the form without tracking).
    `flow` is a backend name or a callable flow(a, b) -> (B,2,H,W). Clips as for `stabilize`.
    """
    if lpips is not None and processed is None:
        raise UserError("lpips compares the output with the processed clip: pass processed= too")
    clips = [clip_of(original, "original"), clip_of(output, "output")]
    clips += [] if processed is None else [clip_of(processed, "processed")]
    backend = build_flow(flow) if isinstance(flow, str) else flow
    tuples = start(clips, "the warping error compares consecutive frames, so it needs T >= 2")
    n = next((c.n for c in clips if c.n is not None), None)
    return evaluate_clips(tuples, backend, processed is not None, lpips, n)


def warping_error(output, original, flow="dis") -> float:
    """Lai et al.'s warping error of `output`: the mean over consecutive pairs of the occlusion-masked squared
    difference between O_{t-1} and O_t warped back, with flow and occlusion from `original`."""
    return scores(output, original, flow=flow)["warping_error"]
