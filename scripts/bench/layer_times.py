"""Where a frame's time goes, layer by layer: TDMS-Net's top-level layers timed in the inference step tdms-test runs.

    python scripts/bench/layer_times.py [--checkpoint checkpoints/tdms_offline.pth] [--dtype bf16] [--size 854x480]

Each top-level layer of the step's network copy (inference/fast.Step: prepacked on CPU where the ISA allows) gets a
wall-clock timer around its forward (hooks); after two warm-up forwards, `--runs` forwards are timed and each layer's
mean is printed with its GMAC (kernels.conv_macs_by_layer, the benchmark's count) and the rate that gives. "rest" is
the forward minus the layers: the flow prior, the pre-alignment warps, casts and the fp32 composition.
"""

import argparse
import time
from collections import defaultdict

import torch
from kernels import conv_macs_by_layer, size

from tdms.config import ModelConfig
from tdms.inference.fast import AMP, Step
from tdms.inference.recurrence import pad_to
from tdms.nets.build import build_model, load_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="", help="default: random init of the default network (the same cost)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="CPU precisions")
    p.add_argument("--size", type=size, default=(480, 854), help="WIDTHxHEIGHT")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = (load_model(args.checkpoint) if args.checkpoint else build_model(ModelConfig())).eval()
    xs = [pad_to(torch.rand(1, 3, *args.size))[0] for _ in range(4)]
    step = Step(model, AMP[args.dtype], True, "cpu")
    spent, started = defaultdict(float), {}
    for name, layer in step.net.named_children():
        layer.register_forward_pre_hook(lambda m, i, n=name: started.__setitem__(n, time.perf_counter()))
        layer.register_forward_hook(lambda m, i, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter()
                                                                               - started[n]))
    with torch.inference_mode():
        for _ in range(2):
            step(*xs)
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(args.runs):
            step(*xs)
        total = (time.perf_counter() - t0) / args.runs
    macs = conv_macs_by_layer(model, *xs[0].shape[-2:])
    h, w = args.size
    print(f"{args.dtype} channels_last forward at {w}x{h}, {torch.get_num_threads()} threads: {total * 1e3:.0f} ms "
          f"(mean of {args.runs})")
    for name in sorted(spent, key=spent.get, reverse=True):
        ms = spent[name] / args.runs * 1e3
        rate = f"{2 * macs[name] / (ms / 1e3) / 1e9:6.0f} GFLOP/s" if macs.get(name) else ""
        print(f"  {name:12s} {ms:7.1f} ms  {macs.get(name, 0) / 1e9:6.2f} GMAC  {rate}")
    layers = sum(spent.values()) / args.runs * 1e3
    print(f"  {'rest':12s} {total * 1e3 - layers:7.1f} ms")


if __name__ == "__main__":
    main()
