"""tdms-test: make flickering processed frames temporally consistent.

Examples:
    tdms-test --input I --processed P --output O                  # shipped checkpoint, frame folders or videos
    tdms-test --input in.mp4 --processed p.mp4 --output o.mp4 --device cuda --dtype bf16
    tdms-test --method naive --input I --processed P --output O   # baselines: naive, bonneel, identity
    tdms-test --method bonneel --lambda 1.0 --input I --processed P --output O
    tdms-test --data-dir data --phase test --output outputs/tdms  # Lai et al.'s layout, datasets × tasks
    tdms-test --data-dir data --output outputs/tdms --batch-videos 8 --device cuda --dtype bf16 --channels-last
    torchrun --nproc-per-node 8 $(which tdms-test) --data-dir data --output outputs/tdms   # videos split over GPUs
"""

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from tdms import distributed
from tdms.api import checkpoint_path
from tdms.config import pick_device
from tdms.errors import UserError
from tdms.flow import build_flow
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
from tdms.inference.bonneel import bonneel_frames
from tdms.inference.fast import AMP, make_step
from tdms.inference.recurrence import METHODS, identity_frames, naive_frames, step_frames
from tdms.nets.build import load_model


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdms-test", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", help="original frames: a frame folder or a video file")
    p.add_argument("--processed", help="per-frame processed frames (folder or video)")
    p.add_argument("--output", required=True, help="output folder or video file (dataset mode: a root folder)")
    p.add_argument("--data-dir", help="dataset mode: a root in Lai et al.'s layout")
    p.add_argument("--phase", default="test")
    p.add_argument("--tasks-list", help="dataset mode: '<dataset> <task>' lines (default DATA/lists/test_tasks.txt)")
    p.add_argument("--method", choices=METHODS, default="tdms")
    p.add_argument("--checkpoint", default="tdms_offline",
                   help="a name in checkpoints/ (default tdms_offline, the shipped one), a tdms checkpoint file, "
                        "or the authors' model_pf_epoch_65.pth")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", choices=list(AMP), default="fp32",
                   help="bf16/fp16 network heads, O kept in fp32 (fp16: CUDA only; bf16 on CPU pays off with "
                        "AVX512-BF16/AMX)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convs on CPU and GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow first frame)")
    p.add_argument("--cuda-graph", action="store_true", help="replay a captured CUDA graph per frame size (CUDA)")
    p.add_argument("--batch-videos", type=int, default=1,
                   help="dataset mode: run this many videos of one frame size in one batch")
    p.add_argument("--flow", default="dis", help="flow backend of the naive and bonneel methods")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="bonneel: temporal weight λ (0 = P)")
    p.add_argument("--jpeg-quality", type=int, help="write JPEG frames at this quality (1-100) instead of PNG")
    p.add_argument("--resize-processed", action="store_true", help="resize P to I's size instead of failing")
    p.add_argument("--redo", action="store_true", help="recompute outputs that are already complete")
    return p


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def make_method(args, device):
    """A function (pairs iterator) -> output frames generator, a description, TDMS-Net's step (or None), and
    what makes the outputs (method, weights digest, options; kept in each output's marker)."""
    if args.method == "tdms":
        path = checkpoint_path(args.checkpoint)
        model = load_model(path, device, verbose=True)
        step = make_step(model, device, args.dtype, args.channels_last, args.compile, args.cuda_graph)
        made_by = {"method": "tdms", "checkpoint": str(path), "checkpoint_sha256": file_digest(path)}
        return (lambda pairs: step_frames(step, pairs, device)), f"tdms ({path})", step, made_by
    if args.method == "naive":
        flow = build_flow(args.flow)
        return (lambda pairs: naive_frames(flow, pairs)), f"naive blend ({flow.name})", None, \
            {"method": "naive", "flow": flow.name}
    if args.method == "bonneel":
        flow = build_flow(args.flow)
        return (lambda pairs: bonneel_frames(flow, pairs, args.lam, device)), \
            f"Bonneel et al. 2015 (λ={args.lam}, {flow.name})", None, \
            {"method": "bonneel", "flow": flow.name, "lambda": args.lam}
    return identity_frames, "identity", None, {"method": "identity"}


def run_one(method, input_path, processed_path, out: Path, args, made_by: dict, desc="") -> dict | None:
    src_i, src_p = open_pair(input_path, processed_path, args.resize_processed)
    meta = {**made_by, **input_identity(src_i, src_p)}
    if is_complete(out, len(src_i), meta) and not args.redo:
        return None
    prepare_output(out, [src_i.path, src_p.path], args.redo)
    if not args.data_dir:
        print(f"  {len(src_i)} frames of {src_i.size[1]}×{src_i.size[0]} from {src_i.path} and {src_p.path}")
    pairs = prefetch(zip(src_i, resized(src_p, src_i.size), strict=True))
    return process_video(method(pairs), out, len(src_i), src_p.fps, meta, *frame_format(args), desc)


def frame_format(args) -> tuple[str, int | None]:
    return (".jpg", args.jpeg_quality) if args.jpeg_quality is not None else (".png", None)


def output_format(args) -> str:
    """What the outputs are written as, kept in the marker: "video", ".png" or ".jpg q90"."""
    if is_video(Path(args.output)) and not args.data_dir:
        return "video"
    ext, quality = frame_format(args)
    return ext if quality is None else f"{ext} q{quality}"


def run_batched(step, jobs, args, device, made_by: dict):
    """Dataset mode, several videos a batch: yields (name, meta) as videos complete, or (name, None) if skipped."""
    videos, targets = [], []
    for i, p, o, name in jobs:
        src_i, src_p = open_pair(i, p, args.resize_processed)
        meta = {**made_by, **input_identity(src_i, src_p)}
        if is_complete(o, len(src_i), meta) and not args.redo:
            yield name, None
            continue
        prepare_output(o, [src_i.path, src_p.path], args.redo)
        # each video decodes in its own thread, started when the video joins a batch
        videos.append(Video(name, src_i.size, prefetch(zip(src_i, resized(src_p, src_i.size), strict=True))))
        targets.append(Target(o, len(src_i), {**meta, "batch_videos": args.batch_videos}))
    for g, group in enumerate(groups := group_by_size(videos), 1):
        h, w = videos[group[0]].size
        results = batched_frames(step, [videos[k] for k in group], args.batch_videos, device)
        desc = f"size {g}/{len(groups)} ({w}×{h}, {len(group)} videos)"
        for j, meta in write_outputs(results, [targets[k] for k in group], *frame_format(args), desc=desc):
            yield videos[group[j]].name, meta


def dataset_jobs(args) -> list[tuple[Path, Path, Path, str]]:
    tasks = tasks_file(args.data_dir, "test", args.tasks_list or "")
    return [(e.input, e.processed, e.under(args.output), e.name) for e in entries(args.data_dir, args.phase, tasks)]


def check_args(args) -> None:
    """Usage errors, found before anything loads (argparse's exit 2)."""
    if not args.data_dir and not (args.input and args.processed):
        parser().error("give --input and --processed, or --data-dir for dataset mode")
    if args.batch_videos < 1:
        parser().error(f"--batch-videos must be >= 1, got {args.batch_videos}")
    if args.batch_videos > 1 and not (args.data_dir and args.method == "tdms"):
        parser().error("--batch-videos is for dataset mode (--data-dir) with --method tdms")
    if not (args.lam >= 0 and math.isfinite(args.lam)):
        parser().error(f"--lambda must be a finite number >= 0 (0 = P), got {args.lam}")
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        parser().error(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    if args.jpeg_quality is not None and is_video(Path(args.output)) and not args.data_dir:
        parser().error(f"--jpeg-quality is for frame folders; {args.output} is a video")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            parser().error(f"--device: unknown device {args.device!r}; use auto, cpu, cuda or cuda:N")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    out = Path(args.output)
    done, finished = None, 0
    try:
        if args.data_dir and out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder (dataset mode writes a folder tree there)")
        if not args.data_dir:  # before loading the model
            check_output(out, [args.input, args.processed])
            check_replaceable(out)
        world = distributed.from_env()  # under torchrun, dataset mode splits the videos over the processes
        if world.distributed and not args.data_dir:
            raise UserError("several processes (torchrun) split dataset mode's videos; one video takes one process")
        device = pick_device(args.device)
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", world.local_rank)
        method, what, step, made_by = make_method(args, device)
        made_by["format"] = output_format(args)
        if args.data_dir:
            jobs = distributed.shard(dataset_jobs(args), world)
        else:
            jobs = [(Path(args.input), Path(args.processed), Path(args.output), Path(args.output).name)]
        rank = f" [rank {world.rank}/{world.size}]" if world.distributed else ""
        print(f"tdms-test{rank}: {what} on {device}, {len(jobs)} video(s) -> {args.output}")
        if args.batch_videos > 1:
            done = run_batched(step, jobs, args, device, made_by)
        else:
            done = ((name, run_one(method, i, p, o, args, made_by, desc=f"[{k}/{len(jobs)}] {name}"))
                    for k, (i, p, o, name) in enumerate(jobs, 1))
        start, frames, skipped = time.time(), 0, 0
        for k, (name, meta) in enumerate(done, 1):
            if meta is None:
                skipped += 1
                continue
            frames += meta["frames"]
            finished += 1
            print(f"[{k}/{len(jobs)}] {name}: {meta['frames']} frames in {meta['seconds']:.1f} s")
        seconds = time.time() - start
        print(f"done: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)"
              + (f", {skipped} already complete (--redo to recompute)" if skipped else "") + f" -> {args.output}")
        return 0
    except UserError as e:
        print(f"tdms-test: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if done is not None:
            done.close()  # a suspended batch writer removes its partial folders
        if args.data_dir:
            print(f"tdms-test: interrupted: {finished} video(s) written to {out}; the video(s) in progress were not "
                  f"(their partial outputs removed)", file=sys.stderr)
        else:
            print(f"tdms-test: interrupted: nothing was written to {out} (the partial output is removed)",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
