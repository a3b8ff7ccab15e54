"""Measure TDMS-Net's speed on this machine and print a table (and JSON).

    python scripts/benchmark.py --json demo_out/benchmark.json                 # 854×480, CPU or the GPU
    python scripts/benchmark.py --height 720 --width 1280 --frames 4 --device cpu
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tdms.benchmark import run
from tdms.train import pick_device


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--frames", type=int, default=8, help="frames timed in each measurement")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default="", help="weights to time (default: random init, same cost)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.height, args.width, args.frames, pick_device(args.device), Path(tmp), args.checkpoint)
    print(f"device {r['device']}, torch {r['torch']}, {r['width']}×{r['height']}, {r['gmac_per_frame']:.1f} GMAC/frame")
    rows = [("test.py end-to-end", f"{r['end_to_end_fps']:.3f} frames/s"),
            ("network forward-only", f"{r['forward_fps']:.3f} frames/s"),
            ("end-to-end / forward", f"{r['end_to_end_over_forward']:.2f}"),
            ("achieved", f"{r['achieved_gflops']:.1f} GFLOP/s"),
            ("fp32 matmul peak", f"{r['peak_gflops']:.1f} GFLOP/s"),
            ("fraction of peak", f"{r['fraction_of_peak']:.2f}")]
    for name, value in rows:
        print(f"  {name:<24}{value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
