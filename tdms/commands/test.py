"""tdms-test: make flickering processed frames temporally consistent.

Examples:
    tdms-test --input I --processed P --output O                  # shipped checkpoint, frame folders or videos
    tdms-test --input in.mp4 --processed p.mp4 --output o.mp4 --device cuda   # bf16 where native (--dtype auto)
    tdms-test --input I --processed P --output O --checkpoint model_pf_epoch_65.pth --protocol original
    tdms-test --method naive --input I --processed P --output O   # baselines: naive, bonneel, identity
    tdms-test --method bonneel --lambda 1.0 --input I --processed P --output O
    tdms-test --method ffmpeg-deflicker --deflicker-size 5 --input in.mp4 --processed p.mp4 --output o.mp4
    tdms-test --input in.mp4 --processed p.mp4 --output o.mp4 --crf 23 --no-audio --no-cut-reset
    tdms-test --data-dir data --phase test --output outputs/tdms  # Lai et al.'s layout, datasets × tasks
    tdms-test --data-dir data --output outputs/tdms --batch-videos 8 --device cuda
    tdms-test --config run.yaml method=naive output=outputs/naive  # settings from YAML, key=value over them
    torchrun --nproc-per-node 8 $(which tdms-test) --data-dir data --output outputs/tdms   # videos split over GPUs

Settings: the defaults (tdms/config.py InferenceConfig), then the --config file, then its key=value overrides,
then the flags given (they win). A key is its flag's name with underscores (batch_videos); --lambda is lam, and
jpeg_quality 0 means PNG.
"""

import argparse
import dataclasses
import math
import sys
import time
from itertools import islice
from pathlib import Path

import torch

from tdms import distributed
from tdms.api import checkpoint_path
from tdms.config import InferenceConfig, load_config
from tdms.devices import pick_device
from tdms.errors import UserError
from tdms.frames.arrays import NEED_TWO
from tdms.frames.cuts import ShotStarts
from tdms.frames.io import (
    cuts,
    frame_number,
    is_video,
    open_pair,
    prefetch,
    read_frame,
    resized,
    size_text,
)
from tdms.frames.layout import entries, tasks_file
from tdms.frames.outputs import (
    check_output,
    check_replaceable,
    check_writable,
    input_identity,
    is_complete,
    partial_path,
    prepare_output,
    process_video,
    resume_point,
)
from tdms.frames.video import check_crf
from tdms.frames.writers import video_encoding
from tdms.inference.across_videos import Target, Video, batched_frames, group_by_size, write_outputs
from tdms.inference.deflicker import MAX_SIZE, check_size
from tdms.inference.fast import AMP
from tdms.inference.methods import METHODS, Method, make_method
from tdms.inference.original import PROTOCOLS
from tdms.inference.recurrence import restarted
from tdms.interrupts import interrupted_code, stop_on_sigterm
from tdms.nets.build import load_model


def parser() -> argparse.ArgumentParser:
    """The flags; each defaults to None (not given), so that the config file's value stands."""
    p = argparse.ArgumentParser(prog="tdms-test", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="a YAML file of settings (the keys of tdms/config.py InferenceConfig)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings over the file, e.g. method=naive")
    p.add_argument("--input", help="original frames: a frame folder or a video file")
    p.add_argument("--processed", help="per-frame processed frames (folder or video)")
    p.add_argument("--output", help="output folder or video file (dataset mode: a root folder); required")
    p.add_argument("--data-dir", help="dataset mode: a root in Lai et al.'s layout")
    p.add_argument("--phase", help="dataset mode: train or test (default test)")
    p.add_argument("--tasks-list", help="dataset mode: '<dataset> <task>' lines (default DATA/lists/test_tasks.txt)")
    p.add_argument("--method", choices=METHODS, help="default tdms")
    p.add_argument("--checkpoint",
                   help="a name in checkpoints/ (default tdms_offline, the shipped one), a tdms checkpoint file, "
                        "or the authors' model_pf_epoch_65.pth")
    p.add_argument("--device", help="auto (default) | cpu | cuda")
    p.add_argument("--dtype", choices=["auto", *AMP],
                   help="auto (default): bf16 where the device computes it natively (CUDA; CPUs with AVX512-BF16 or "
                        "AMX), else fp32; bf16/fp16 run the network heads, O is kept in fp32 (fp16: CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default on: faster convs on CPU and GPU)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="tdms (default) or original: the original test scripts' loop (resize to multiples of 4, "
                        "O_{t-1} fed back as the JPEG they wrote), to regenerate published outputs")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (slow first frame)")
    p.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay a captured CUDA graph per frame size (CUDA)")
    p.add_argument("--batch-videos", type=int,
                   help="dataset mode: run this many videos of one frame size in one batch (default 1)")
    p.add_argument("--flow", help="flow backend of the naive and bonneel methods (default dis)")
    p.add_argument("--lambda", dest="lam", type=float, help="bonneel: temporal weight λ (0 = P; default 1)")
    p.add_argument("--deflicker-size", type=int, help=f"ffmpeg-deflicker: its window, 2..{MAX_SIZE} frames (default 5)")
    p.add_argument("--cut-reset", action=argparse.BooleanOptionalAction, default=None,
                   help="restart the recurrence (O_t = P_t) at the scene cuts found in the input (default on)")
    p.add_argument("--crf", type=int, help="video output: H.264 constant rate factor, 0 best .. 51 worst (default 18)")
    p.add_argument("--lossless", action="store_true", default=None,
                   help="video output: lossless RGB H.264 (libx264rgb); exact frames, but browsers do not play it")
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None,
                   help="video output: copy the audio of --processed, else of --input (default on)")
    p.add_argument("--jpeg-quality", type=int, help="write JPEG frames at this quality (1-100) instead of PNG")
    p.add_argument("--resize-processed", action="store_true", default=None,
                   help="resize P to I's size instead of failing")
    p.add_argument("--redo", action="store_true", default=None, help="recompute outputs that are already complete")
    return p


def settings(argv=None) -> InferenceConfig:
    """The defaults, the --config file, its key=value overrides, then the flags given. Usage errors exit 2."""
    p = parser()
    args = p.parse_intermixed_args(argv)  # overrides before or after the flags
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        p.error(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    try:
        cfg = load_config(args.config, args.overrides, cls=InferenceConfig)
    except UserError as e:
        p.error(str(e))
    for f in dataclasses.fields(cfg):
        if (value := getattr(args, f.name)) is not None:
            setattr(cfg, f.name, value)
    check_settings(p, cfg)
    return cfg


def check_settings(p: argparse.ArgumentParser, cfg: InferenceConfig) -> None:
    """Usage errors, found before anything loads (argparse's exit 2); named by flag, the key's spelling too."""
    if not cfg.output:
        p.error("give --output (or output in the --config file)")
    if not cfg.data_dir and not (cfg.input and cfg.processed):
        p.error("give --input and --processed, or --data-dir for dataset mode")
    if cfg.method not in METHODS:
        p.error(f"--method: unknown method {cfg.method!r}; choose from {list(METHODS)}")
    if cfg.dtype != "auto" and cfg.dtype not in AMP:
        p.error(f"--dtype: unknown dtype {cfg.dtype!r}; choose from {['auto', *AMP]}")
    if cfg.protocol not in PROTOCOLS:
        p.error(f"--protocol: unknown protocol {cfg.protocol!r}; choose from {list(PROTOCOLS)}")
    if cfg.protocol == "original" and (cfg.method != "tdms" or cfg.batch_videos > 1 or cfg.compile or cfg.cuda_graph):
        p.error("--protocol original is the original scripts' loop of a network, one video and one frame at a "
                "time in fp32: it takes --method tdms, without --batch-videos, --compile or --cuda-graph")
    if cfg.batch_videos < 1:
        p.error(f"--batch-videos must be >= 1, got {cfg.batch_videos}")
    if cfg.batch_videos > 1 and not (cfg.data_dir and cfg.method == "tdms"):
        p.error("--batch-videos is for dataset mode (--data-dir) with --method tdms")
    if not (cfg.lam >= 0 and math.isfinite(cfg.lam)):
        p.error(f"--lambda (lam) must be a finite number >= 0 (0 = P), got {cfg.lam}")
    if not 0 <= cfg.jpeg_quality <= 100:
        p.error(f"--jpeg-quality (jpeg_quality) must be in 1..100 (0: PNG), got {cfg.jpeg_quality}")
    if cfg.jpeg_quality and is_video(Path(cfg.output)) and not cfg.data_dir:
        p.error(f"--jpeg-quality is for frame folders; {cfg.output} is a video")
    for check, value in ((check_crf, cfg.crf), (check_size, cfg.deflicker_size)):
        try:
            check(value)
        except UserError as e:
            p.error(str(e))
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except RuntimeError:
            p.error(f"--device: unknown device {cfg.device!r}; use auto, cpu, cuda or cuda:N")


def frame_format(cfg: InferenceConfig) -> tuple[str, int | None]:
    return (".jpg", cfg.jpeg_quality) if cfg.jpeg_quality else (".png", None)


def output_format(cfg: InferenceConfig) -> str:
    """What the outputs are written as, kept in the marker: "video", ".png" or ".jpg q90"."""
    if is_video(Path(cfg.output)) and not cfg.data_dir:
        return "video"
    ext, quality = frame_format(cfg)
    return ext if quality is None else f"{ext} q{quality}"


# which settings each method reads (the others are said to be unused when given)
USED_BY = {"checkpoint": ("tdms",), "dtype": ("tdms",), "channels_last": ("tdms",), "compile": ("tdms",),
           "cuda_graph": ("tdms",), "flow": ("naive", "bonneel"), "lam": ("bonneel",),
           "deflicker_size": ("ffmpeg-deflicker",)}
VIDEO_FLAGS = {"crf": "--crf", "lossless": "--lossless", "audio": "--no-audio"}  # read for a video output only


def unused_video_settings(cfg: InferenceConfig) -> list[str]:
    default, video = InferenceConfig(), is_video(Path(cfg.output)) and not cfg.data_dir
    return [flag for key, flag in VIDEO_FLAGS.items() if not video and getattr(cfg, key) != getattr(default, key)]


def unused_settings(cfg: InferenceConfig) -> list[str]:
    """The flags set away from their defaults that cfg.method does not read, by flag name."""
    default = InferenceConfig()
    return [("--lambda" if key == "lam" else f"--{key.replace('_', '-')}") for key, methods in USED_BY.items()
            if cfg.method not in methods and getattr(cfg, key) != getattr(default, key)]


def method_of(cfg: InferenceConfig, device: torch.device) -> tuple[Method, bool]:
    """The method with its options (its record, kept in each marker, also names the output format), and whether a
    killed run's frames may be resumed: the recurrence then restarts from the last O written, which only a
    lossless format keeps, and which a network with recurrent state (Lai et al.'s) or the original protocol (O fed
    back as JPEG) would not continue exactly."""
    checkpoint = checkpoint_path(cfg.checkpoint) if cfg.method == "tdms" else None
    model = load_model(checkpoint, device, verbose=True) if checkpoint else None
    method = make_method(cfg.method, device, model=model, checkpoint=checkpoint, amp=cfg.dtype,
                         channels_last=cfg.channels_last, compile=cfg.compile, cuda_graph=cfg.cuda_graph,
                         flow=cfg.flow, lam=cfg.lam, verbose=True, protocol=cfg.protocol, keep_memory=True,
                         deflicker_size=cfg.deflicker_size)
    method.made_by |= {"format": output_format(cfg), "cut_reset": cfg.cut_reset}
    if output_format(cfg) == "video":
        method.made_by["encoding"] = ("h264 lossless rgb" if cfg.lossless else f"h264 crf {cfg.crf}") + (
            "" if cfg.audio else ", no audio")
    resumable = (output_format(cfg) == ".png" and cfg.protocol == "tdms" and not getattr(model, "recurrent", False)
                 and cfg.method != "ffmpeg-deflicker")  # its window looks ahead: O_{t-1} does not continue it
    return method, resumable


def opened(input_path, processed_path, cfg: InferenceConfig):
    """I and P opened and checked (open_pair); one frame is refused as by the API (T >= 2)."""
    src_i, src_p = open_pair(input_path, processed_path, cfg.resize_processed)
    if len(src_i) < 2:
        raise UserError(f"{src_i.path}: 1 frame; {NEED_TWO}")
    return src_i, src_p


def run_one(method: Method, resumable: bool, input_path, processed_path, out: Path, cfg: InferenceConfig,
            desc="") -> dict | None:
    """Write one video's output; its record (meta), or None when a complete one is there (and no redo). Output
    frames take the input's numbers; a jump in them, and a scene cut in the input, restart the recurrence; a killed
    run of the same maker is resumed."""
    src_i, src_p = opened(input_path, processed_path, cfg)
    n, meta = len(src_i), {**method.made_by, **input_identity(src_i, src_p)}
    if is_complete(out, n, meta) and not cfg.redo:
        return None
    prepare_output(out, [src_i.path, src_p.path], cfg.redo)
    numbers = [frame_number(f) for f in src_i.paths] if src_i.paths else list(range(n))
    ext, quality = frame_format(cfg)
    names = [f"{k:05d}{ext}" for k in numbers]
    if not cfg.data_dir:
        print(f"  {n} frames of {size_text(src_i.size)} from {src_i.path} and {src_p.path}")
    encoding, notes = video_encoding(out, src_i, src_p, cfg.crf, cfg.lossless, cfg.audio)
    for line in notes:
        print(f"  {line}")
    starts = ShotStarts(cuts(src_i), detect=cfg.cut_reset)
    for t in starts.jumps:
        print(f"  {out.name}: frames {names[t - 1]} to {names[t]}: the frame numbers jump, processed as a cut "
              f"(the recurrence restarts there: O = P)")
    meta["cuts"] = starts.cuts  # filled as the frames go by, complete when the output is
    k = resume_point(out, meta, names) if resumable and not is_video(out) else 0
    o_last = read_frame(partial_path(out) / names[k - 1]) if k else None
    if k:
        print(f"  {out.name}: resuming an interrupted run after {names[k - 1]} ({k} of {n} frames kept)")
    pairs = prefetch(islice(zip(src_i, resized(src_p, src_i.size), strict=True), k - 1 if k else 0, None))
    frames = restarted(method.frames, pairs, starts, k, o_last)
    meta = process_video(frames, out, n, src_p.fps, meta, ext, quality, desc, numbers, k, encoding)
    if starts.found or cfg.cut_reset:
        print(f"  {out.name}: {starts.summary([f'frame {t}' for t in range(n)] if is_video(out) else names)}")
    return meta


def run_each(method: Method, resumable: bool, jobs, cfg: InferenceConfig):
    """One video at a time: yields (name, meta) as videos complete, or (name, None) if skipped."""
    for k, (i, p, o, name) in enumerate(jobs, 1):
        yield name, run_one(method, resumable, i, p, o, cfg, desc=f"[{k}/{len(jobs)}] {name}")


def run_batched(method: Method, jobs, cfg: InferenceConfig, device):
    """Dataset mode, several videos a batch: yields (name, meta) as videos complete, or (name, None) if skipped."""
    videos, targets = [], []
    for i, p, o, name in jobs:
        src_i, src_p = opened(i, p, cfg)
        meta = {**method.made_by, **input_identity(src_i, src_p)}
        if is_complete(o, len(src_i), meta) and not cfg.redo:
            yield name, None
            continue
        prepare_output(o, [src_i.path, src_p.path], cfg.redo)
        starts = ShotStarts(cuts(src_i), detect=cfg.cut_reset)
        # each video decodes in its own thread, started when the video joins a batch
        videos.append(Video(name, src_i.size, prefetch(zip(src_i, resized(src_p, src_i.size), strict=True)), starts))
        numbers = [frame_number(f) for f in src_i.paths] if src_i.paths else None
        targets.append(Target(o, len(src_i), {**meta, "batch_videos": cfg.batch_videos, "cuts": starts.cuts},
                              numbers))
    for g, group in enumerate(groups := group_by_size(videos), 1):
        results = batched_frames(method.step, [videos[k] for k in group], cfg.batch_videos, device)
        desc = f"size {g}/{len(groups)} ({size_text(videos[group[0]].size)}, {len(group)} videos)"
        for j, meta in write_outputs(results, [targets[k] for k in group], *frame_format(cfg), desc=desc):
            yield videos[group[j]].name, meta


def check_destination(cfg: InferenceConfig) -> None:
    """Refuse an output that could never be written, before the model loads."""
    out = Path(cfg.output)
    if cfg.data_dir and out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (dataset mode writes a folder tree there)")
    if not cfg.data_dir:
        check_output(out, [cfg.input, cfg.processed])
        check_replaceable(out)
    check_writable(out, beside=not cfg.data_dir)


def placement(cfg: InferenceConfig) -> tuple[distributed.World, torch.device]:
    """This process's share of the work (torchrun splits dataset mode's videos) and its device."""
    world = distributed.from_env()
    if world.distributed and not cfg.data_dir:
        raise UserError("several processes (torchrun) split dataset mode's videos; one video takes one process")
    device = pick_device(cfg.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    return world, device


def video_jobs(cfg: InferenceConfig, world) -> list[tuple[Path, Path, Path, str]]:
    """(input, processed, output, name) of each video this process writes."""
    if not cfg.data_dir:
        return [(Path(cfg.input), Path(cfg.processed), Path(cfg.output), Path(cfg.output).name)]
    tasks = tasks_file(cfg.data_dir, "test", cfg.tasks_list)
    jobs = [(e.input, e.processed, e.under(cfg.output), e.name) for e in entries(cfg.data_dir, cfg.phase, tasks)]
    return distributed.shard(jobs, world)


def report(done, n: int, output: str, written: list[str]) -> None:
    """Print a line per video as `done` yields them (their names go to `written`), then the totals."""
    start, frames, skipped = time.time(), 0, 0
    for k, (name, meta) in enumerate(done, 1):
        if meta is None:
            skipped += 1
            continue
        frames += meta["frames"]
        written.append(name)
        print(f"[{k}/{n}] {name}: {meta['frames']} frames in {meta['seconds']:.1f} s")
    seconds = time.time() - start
    print(f"done: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)"
          + (f", {skipped} already complete (--redo to recompute)" if skipped else "") + f" -> {output}")


def main(argv=None) -> int:
    stop_on_sigterm()
    cfg = settings(argv)
    done, written = None, []
    try:
        check_destination(cfg)
        world, device = placement(cfg)
        for flag in unused_settings(cfg):
            print(f"tdms-test: note: {flag} is unused by --method {cfg.method}", file=sys.stderr)
        for flag in unused_video_settings(cfg):
            print(f"tdms-test: note: {flag} is for a video output; {cfg.output} is not one", file=sys.stderr)
        method, resumable = method_of(cfg, device)
        jobs = video_jobs(cfg, world)
        rank = f" [rank {world.rank}/{world.size}]" if world.distributed else ""
        print(f"tdms-test{rank}: {method.description} on {device}, {len(jobs)} video(s) -> {cfg.output}")
        if cfg.batch_videos > 1:
            done = run_batched(method, jobs, cfg, device)
        else:
            done = run_each(method, resumable, jobs, cfg)
        report(done, len(jobs), cfg.output, written)
        return 0
    except UserError as e:
        print(f"tdms-test: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if done is not None:
            done.close()  # a suspended batch writer removes its partial folders
        if cfg.data_dir:
            print(f"tdms-test: interrupted: {len(written)} video(s) written to {Path(cfg.output)}; the video(s) in "
                  f"progress were not (their partial outputs removed)", file=sys.stderr)
        else:
            print(f"tdms-test: interrupted: nothing was written to {Path(cfg.output)} (the partial output is removed)",
                  file=sys.stderr)
        return interrupted_code(err)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
