"""tdms-test: make flickering processed frames temporally consistent.

Examples:
    tdms-test --input I --processed P --output O                  # shipped checkpoint, frame folders or videos
    tdms-test --input in.mp4 --processed p.mp4 --output o.mp4 --device cuda --dtype bf16
    tdms-test --method naive --input I --processed P --output O   # baselines: naive, bonneel, identity
    tdms-test --method bonneel --lambda 1.0 --input I --processed P --output O
    tdms-test --data-dir data --phase test --output outputs/tdms  # Lai et al.'s layout, datasets × tasks
    tdms-test --data-dir data --output outputs/tdms --batch-videos 8 --device cuda --dtype bf16 --channels-last
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
from pathlib import Path

import torch

from tdms import distributed
from tdms.api import checkpoint_path
from tdms.config import InferenceConfig, load_config, pick_device
from tdms.errors import UserError
from tdms.frames.io import is_video, open_pair, prefetch, resized
from tdms.frames.layout import entries, tasks_file
from tdms.frames.outputs import (
    check_output,
    check_replaceable,
    input_identity,
    is_complete,
    prepare_output,
    process_video,
)
from tdms.inference.across_videos import Target, Video, batched_frames, group_by_size, write_outputs
from tdms.inference.fast import AMP
from tdms.inference.methods import METHODS, Method, make_method


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
    p.add_argument("--dtype", choices=list(AMP),
                   help="fp32 (default); bf16/fp16 network heads, O kept in fp32 (fp16: CUDA only; bf16 on CPU pays "
                        "off with AVX512-BF16/AMX)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="NHWC memory layout (faster convs on CPU and GPU)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (slow first frame)")
    p.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay a captured CUDA graph per frame size (CUDA)")
    p.add_argument("--batch-videos", type=int,
                   help="dataset mode: run this many videos of one frame size in one batch (default 1)")
    p.add_argument("--flow", help="flow backend of the naive and bonneel methods (default dis)")
    p.add_argument("--lambda", dest="lam", type=float, help="bonneel: temporal weight λ (0 = P; default 1)")
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
    if cfg.dtype not in AMP:
        p.error(f"--dtype: unknown dtype {cfg.dtype!r}; choose from {list(AMP)}")
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


def method_of(cfg: InferenceConfig, device: torch.device) -> Method:
    """The method with its options; its record (kept in each marker) also names the output format."""
    checkpoint = checkpoint_path(cfg.checkpoint) if cfg.method == "tdms" else None
    method = make_method(cfg.method, device, checkpoint=checkpoint, amp=cfg.dtype, channels_last=cfg.channels_last,
                         compile=cfg.compile, cuda_graph=cfg.cuda_graph, flow=cfg.flow, lam=cfg.lam, verbose=True)
    method.made_by["format"] = output_format(cfg)
    return method


def run_one(method: Method, input_path, processed_path, out: Path, cfg: InferenceConfig, desc="") -> dict | None:
    """Write one video's output; its record (meta), or None when a complete one is there (and no redo)."""
    src_i, src_p = open_pair(input_path, processed_path, cfg.resize_processed)
    meta = {**method.made_by, **input_identity(src_i, src_p)}
    if is_complete(out, len(src_i), meta) and not cfg.redo:
        return None
    prepare_output(out, [src_i.path, src_p.path], cfg.redo)
    if not cfg.data_dir:
        print(f"  {len(src_i)} frames of {src_i.size[1]}×{src_i.size[0]} from {src_i.path} and {src_p.path}")
    pairs = prefetch(zip(src_i, resized(src_p, src_i.size), strict=True))
    return process_video(method.frames(pairs), out, len(src_i), src_p.fps, meta, *frame_format(cfg), desc)


def run_each(method: Method, jobs, cfg: InferenceConfig):
    """One video at a time: yields (name, meta) as videos complete, or (name, None) if skipped."""
    for k, (i, p, o, name) in enumerate(jobs, 1):
        yield name, run_one(method, i, p, o, cfg, desc=f"[{k}/{len(jobs)}] {name}")


def run_batched(method: Method, jobs, cfg: InferenceConfig, device):
    """Dataset mode, several videos a batch: yields (name, meta) as videos complete, or (name, None) if skipped."""
    videos, targets = [], []
    for i, p, o, name in jobs:
        src_i, src_p = open_pair(i, p, cfg.resize_processed)
        meta = {**method.made_by, **input_identity(src_i, src_p)}
        if is_complete(o, len(src_i), meta) and not cfg.redo:
            yield name, None
            continue
        prepare_output(o, [src_i.path, src_p.path], cfg.redo)
        # each video decodes in its own thread, started when the video joins a batch
        videos.append(Video(name, src_i.size, prefetch(zip(src_i, resized(src_p, src_i.size), strict=True))))
        targets.append(Target(o, len(src_i), {**meta, "batch_videos": cfg.batch_videos}))
    for g, group in enumerate(groups := group_by_size(videos), 1):
        h, w = videos[group[0]].size
        results = batched_frames(method.step, [videos[k] for k in group], cfg.batch_videos, device)
        desc = f"size {g}/{len(groups)} ({w}×{h}, {len(group)} videos)"
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
    cfg = settings(argv)
    done, written = None, []
    try:
        check_destination(cfg)
        world, device = placement(cfg)
        method = method_of(cfg, device)
        jobs = video_jobs(cfg, world)
        rank = f" [rank {world.rank}/{world.size}]" if world.distributed else ""
        print(f"tdms-test{rank}: {method.description} on {device}, {len(jobs)} video(s) -> {cfg.output}")
        done = run_batched(method, jobs, cfg, device) if cfg.batch_videos > 1 else run_each(method, jobs, cfg)
        report(done, len(jobs), cfg.output, written)
        return 0
    except UserError as e:
        print(f"tdms-test: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if done is not None:
            done.close()  # a suspended batch writer removes its partial folders
        if cfg.data_dir:
            print(f"tdms-test: interrupted: {len(written)} video(s) written to {Path(cfg.output)}; the video(s) in "
                  f"progress were not (their partial outputs removed)", file=sys.stderr)
        else:
            print(f"tdms-test: interrupted: nothing was written to {Path(cfg.output)} (the partial output is removed)",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
