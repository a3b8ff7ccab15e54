"""Time the flow backends on one frame pair (default 854×480) on this machine: DIS, FlowNet2 (pure PyTorch) and
RAFT, each in a fresh process that also reports its peak memory. Network weights are random (same cost).

    python scripts/bench/benchmark_flow.py --json demo_out/benchmark_flow.json
    python scripts/bench/benchmark_flow.py --threads 1 --pairs 2 --backends dis flownet2 raft-small raft --grad
"""

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

BACKENDS = ("dis", "flownet2", "raft-small", "raft")


def frame_pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real photo at (height, width) and the same photo moved 3 px right, 1 px down: (1,3,H,W) each in [0,1]."""
    img = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    moved = cv2.warpAffine(img, np.float32([[1, 0, 3], [0, 1, 1]]), (width, height), borderMode=cv2.BORDER_REFLECT)
    return tuple(torch.from_numpy(x.transpose(2, 0, 1).copy())[None] for x in (img, moved))


def build(backend: str):
    """The backend with random weights where it has any."""
    if backend == "dis":
        from tdms.flow.dis import DISFlow

        return DISFlow("medium")
    if backend == "flownet2":
        from tdms.flow.flownet2 import FlowNet2Flow
        from tdms.flow.flownet2_net import FlowNet2

        return FlowNet2Flow(net=FlowNet2())
    from tdms.flow.raft import MODELS, RAFTFlow

    size = "small" if backend == "raft-small" else "large"
    return RAFTFlow(size, model=MODELS[size][0]())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(backend: str, height: int, width: int, pairs: int, threads: int, grad: bool) -> dict:
    """Runs in a child process: seconds per pair (after one warm-up pair) and peak memory."""
    if threads:
        torch.set_num_threads(threads)
    a, b = frame_pair(height, width)
    flow = build(backend)
    loaded = peak_rss_mb()
    if grad:
        flow.differentiable = True
        a.requires_grad_(True)
    times = []
    for _ in range(pairs + 1):
        start = time.perf_counter()
        out = flow(a, b)
        if grad:
            out.abs().mean().backward()
        times.append(time.perf_counter() - start)
    return {"backend": backend + (" +backward" if grad else ""), "name": flow.name, "seconds": times[1:],
            "median_s": float(np.median(times[1:])), "peak_rss_mb": peak_rss_mb(), "rss_after_build_mb": loaded,
            "threads": torch.get_num_threads(), "flow_abs_mean_px": float(out.detach().abs().mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--pairs", type=int, default=3, help="timed pairs per backend, after one warm-up pair")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["dis", "flownet2", "raft-small"])
    p.add_argument("--grad", action="store_true", help="also time forward+backward of the network backends")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    jobs = [(b, False) for b in args.backends] + [(b, True) for b in args.backends if args.grad and b != "dis"]
    ctx = mp.get_context("spawn")  # a fresh process per backend, so each peak memory is its own
    rows = []
    for backend, grad in jobs:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(measure, (backend, args.height, args.width, args.pairs, args.threads, grad)))
        r = rows[-1]
        print(f"{r['backend']:<22} {r['median_s']:8.3f} s/pair   peak {r['peak_rss_mb']:7.0f} MB "
              f"(after build {r['rss_after_build_mb']:.0f} MB)   {r['threads']} threads", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        result = {"height": args.height, "width": args.width, "torch": torch.__version__, "rows": rows}
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
