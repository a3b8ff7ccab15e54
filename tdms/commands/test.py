"""tdms-test: make flickering processed frames temporally consistent.

Examples:
    tdms-test --input I --processed P --output O                  # shipped checkpoint, frame folders or videos
    tdms-test --input in.mp4 --processed p.mp4 --output o.mp4 --device cuda --dtype bf16
    tdms-test --method naive --input I --processed P --output O   # baselines: naive, bonneel, identity
    tdms-test --method bonneel --lambda 1.0 --input I --processed P --output O
    tdms-test --data-dir data --phase test --output outputs/tdms  # Lai et al.'s layout, datasets × tasks
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from tdms.api import checkpoint_path
from tdms.bonneel import bonneel_frames
from tdms.checkpoint import load_model
from tdms.dataset import read_list, read_tasks
from tdms.flow import build_flow
from tdms.infer import (
    AMP,
    METHODS,
    identity_frames,
    is_complete,
    naive_frames,
    open_pair,
    prefetch,
    prepare_output,
    process_video,
    resized,
    tdms_frames,
)
from tdms.train import pick_device


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
    p.add_argument("--dtype", choices=list(AMP), default="fp32", help="fp16/bf16 autocast (CUDA only)")
    p.add_argument("--flow", default="dis", help="flow backend of the naive and bonneel methods")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="bonneel: temporal weight λ (0 = P)")
    p.add_argument("--jpeg-quality", type=int, help="write JPEG frames at this quality instead of PNG")
    p.add_argument("--resize-processed", action="store_true", help="resize P to I's size instead of failing")
    p.add_argument("--redo", action="store_true", help="recompute outputs that are already complete")
    return p


def make_method(args, device):
    """A function (pairs iterator) -> output frames generator, and a description."""
    if args.method == "tdms":
        path = checkpoint_path(args.checkpoint)
        model = load_model(path, device, verbose=True)
        return (lambda pairs: tdms_frames(model, pairs, device, args.dtype)), f"tdms ({path})"
    if args.method == "naive":
        flow = build_flow(args.flow)
        return (lambda pairs: naive_frames(flow, pairs)), f"naive blend ({flow.name})"
    if args.method == "bonneel":
        flow = build_flow(args.flow)
        return (lambda pairs: bonneel_frames(flow, pairs, args.lam, device)), \
            f"Bonneel et al. 2015 (λ={args.lam}, {flow.name})"
    return identity_frames, "identity"


def run_one(method, input_path, processed_path, out: Path, args, desc="") -> dict | None:
    src_i, src_p = open_pair(input_path, processed_path, args.resize_processed)
    if is_complete(out, len(src_i)) and not args.redo:
        return None
    prepare_output(out, [src_i.path, src_p.path], args.redo)
    pairs = prefetch(zip(src_i, resized(src_p, src_i.size), strict=True))
    ext, quality = (".jpg", args.jpeg_quality) if args.jpeg_quality else (".png", None)
    meta = {"method": args.method, "input": str(src_i.path), "processed": str(src_p.path)}
    return process_video(method(pairs), out, len(src_i), src_p.fps, meta, ext, quality, desc)


def dataset_jobs(args) -> list[tuple[Path, Path, Path, str]]:
    root = Path(args.data_dir)
    tasks = Path(args.tasks_list) if args.tasks_list else root / "lists" / "test_tasks.txt"
    jobs = []
    for dataset, task in read_tasks(tasks):
        for video in read_list(root / "lists" / f"{dataset}_{args.phase}.txt"):
            jobs.append((root / args.phase / "input" / dataset / video,
                         root / args.phase / "processed" / task / dataset / video,
                         Path(args.output) / task / dataset / video, f"{task}/{dataset}/{video}"))
    return jobs


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.data_dir and not (args.input and args.processed):
        parser().error("give --input and --processed, or --data-dir for dataset mode")
    try:
        device = pick_device(args.device)
        method, what = make_method(args, device)
        if args.data_dir:
            jobs = dataset_jobs(args)
        else:
            jobs = [(Path(args.input), Path(args.processed), Path(args.output), Path(args.output).name)]
        print(f"tdms-test: {what} on {device}, {len(jobs)} video(s) -> {args.output}")
        start, frames, skipped = time.time(), 0, 0
        for k, (i, p, o, name) in enumerate(jobs, 1):
            meta = run_one(method, i, p, o, args, desc=f"[{k}/{len(jobs)}] {name}")
            if meta is None:
                skipped += 1
                continue
            frames += meta["frames"]
            print(f"[{k}/{len(jobs)}] {name}: {meta['frames']} frames in {meta['seconds']:.1f} s")
        seconds = time.time() - start
        print(f"done: {frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)"
              + (f", {skipped} already complete (--redo to recompute)" if skipped else "") + f" -> {args.output}")
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"tdms-test: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
