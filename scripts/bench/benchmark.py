"""Measure TDMS-Net's speed on this machine in one run: prints a table, optionally writes JSON and a bar chart
(scripts/bench/measure.py).

Examples:
    python scripts/bench/benchmark.py --json demo_out/benchmark.json --plot demo_out/benchmark.png   # 854×480, 1280×720
    python scripts/bench/benchmark.py --sizes 854x480 --frames 2 --train-steps 0   # a quick look
    python scripts/bench/benchmark.py --device cuda --dtype bf16 --batch-videos 16 --frames 200 --compile

The default run times 4 frames per figure on CPU (100 on CUDA) and 2 training steps: about 6 minutes on
2 CPU cores.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from kernels import size
from measure import run

from tdms.devices import pick_device
from tdms.evaluation.plots import grouped_bars
from tdms.inference.fast import AMP


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=size, nargs="+", default=[(480, 854), (720, 1280)], help="WIDTHxHEIGHT ...")
    p.add_argument("--frames", type=int, default=0, help="timed frames per figure (0: 4 on CPU, 100 on CUDA)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", choices=["auto", *AMP], default="auto",
                   help="network precision (auto: the fastest forward variant measured)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC layout with an explicit --dtype (default on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay CUDA graphs (default: on with CUDA)")
    p.add_argument("--batch-videos", type=int, default=0, help="videos per batch (0: 2 on CPU, 8 on CUDA)")
    p.add_argument("--checkpoint", default="", help="weights to time (default: random init, the same cost)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--train-steps", type=int, default=2, help="timed training steps per variant (0: skip)")
    p.add_argument("--train-crop", type=int, default=192)
    p.add_argument("--train-flow", default="dis", help="flow backend of the training figures")
    p.add_argument("--train-flow-checkpoint", default="",
                   help="weights of a network --train-flow (default: torch's hub cache)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one forward")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--plot", help="also draw the frames/s as bars per size into this PNG")
    return p


def table(r: dict) -> str:
    sizes = r["sizes"]
    cpu = r["cpu"]
    isa = ", ".join(k for k in ("avx512_bf16", "amx_bf16") if cpu[k]) or "no bf16 instructions"
    lines = [f"device {r['device']}, CPU {cpu['model']} ({isa}), torch {r['torch']}, "
             f"mkldnn {'on' if r['mkldnn'] else 'off'}; {r['frames']} timed frames per figure"]

    def row(name, fmt, values):
        lines.append(f"  {name:<40}" + "".join(f"{fmt(v):>14}" for v in values))

    row("", str, [f"{s['width']}×{s['height']}" for s in sizes])
    row("tdms-test, no flags (frames/s)", "{:.3f}".format, [s["default_fps"] for s in sizes])
    row("  its precision, layout", str, [s["default_dtype"] + (" NHWC" if s["default_channels_last"] else " NCHW")
                                         for s in sizes])
    row("  its system time / CPU time", "{:.3f}".format, [s["sys_time_fraction"] for s in sizes])
    row("GMAC per frame", "{:.1f}".format, [s["gmac_per_frame"] for s in sizes])
    for name in sizes[0]["forward_variants"]:
        row(f"forward {name} (frames/s)", "{:.3f}".format, [s["forward_variants"][name] for s in sizes])
    row("config used below", str, [s["dtype"] + (" NHWC" if s["channels_last"] else " NCHW") for s in sizes])
    row("test.py end-to-end (frames/s)", "{:.3f}".format, [s["end_to_end_fps"] for s in sizes])
    row("network forward-only", "{:.3f}".format, [s["forward_fps"] for s in sizes])
    row("naive (fp32 NCHW, JPEG each step)", "{:.3f}".format, [s["naive_fps"] for s in sizes])
    row(f"batched, {r['batched_videos']} videos, end-to-end", "{:.3f}".format, [s["batched_fps"] for s in sizes])
    row(f"batched, {r['batched_videos']} videos, forward", "{:.3f}".format, [s["batched_forward_fps"] for s in sizes])
    row("end-to-end / forward", "{:.2f}".format, [s["end_to_end_over_forward"] for s in sizes])
    row("end-to-end / naive", "{:.2f}".format, [s["end_to_end_over_naive"] for s in sizes])
    row("achieved GFLOP/s", "{:.1f}".format, [s["achieved_gflops"] for s in sizes])
    # the rates below are measured in turns with the forward (kernels.paired_ratio): medians of 7 rounds
    row("matmul peak GFLOP/s (same dtype)", "{:.1f}".format, [s["peak_gflops"] for s in sizes])
    row("forward / that peak", "{:.2f}".format, [s["fraction_of_peak"] for s in sizes])
    row("128-ch 3×3 conv GFLOP/s (same dtype)", "{:.1f}".format, [s["conv_gflops"] for s in sizes])
    row("  forward GFLOP/s in the same turns", "{:.1f}".format, [s["paired_forward_gflops"] for s in sizes])
    row("forward / that conv rate", "{:.2f}".format, [s["fraction_of_conv"] for s in sizes])
    row("fp32 128-ch 3×3 conv GFLOP/s", "{:.1f}".format, [s["fp32_conv_gflops"] for s in sizes])
    row("fp32 NHWC forward / fp32 conv rate", "{:.2f}".format, [s["fp32_fraction_of_conv"] for s in sizes])
    row("fp32 NHWC forward / fp32 matmul peak", "{:.2f}".format, [s["fp32_fraction_of_peak"] for s in sizes])
    row("peak memory (MB)", "{:.0f}".format, [s["peak_memory_mb"] for s in sizes])
    for what, label in (("forward", "fwd"), ("forward_backward", "fwd+bwd")):  # the 3 layers summed
        row(f"output convs {label} plain/columns (ms)", str,
            ["/".join(f"{sum(v[f'{route}_{what}_ms'] for v in s['output_layers'].values()):.1f}"
                      for route in ("plain", "columns")) for s in sizes])
    if "train_steps_per_s_cached" in r:
        lines.append(f"training at crop {r['train_crop']}, batch {r['train_batch']}, {r['train_sample_frames']} "
                     f"frames, {r['train_amp']}{' NHWC' if r['train_channels_last'] else ''}, "
                     f"{r['train_workers']} loader workers, flow {r['train_flow']}: "
                     f"cached {r['train_steps_per_s_cached']:.3f} steps/s "
                     f"({r['train_samples_per_s_cached']:.3f} samples/s), "
                     f"on the fly {r['train_steps_per_s_on_the_fly']:.3f} steps/s "
                     f"(flow {r['train_flow_s_per_step']:.3f} s a step), "
                     f"ratio {r['train_cached_over_on_the_fly']:.2f}, "
                     f"peak memory {r['train_peak_memory_mb']:.0f} MB")
    for s in sizes:
        if "profile" in s:
            lines.append(f"one forward at {s['width']}×{s['height']} in {s['dtype']}, self CPU time per op:")
            lines += [f"  {e['op']:<36}{e['ms']:>9.1f} ms{e['share']:>7.0%}{e['calls']:>6} calls" for e in s["profile"]]
    for t in r["targets"]:
        lines.append(f"target {t['key']} >= {t['goal']}: {t['value']:.2f} {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(r: dict, out_png: Path) -> None:
    """Frames/s of every inference figure, a cluster each, one bar per frame size."""
    sizes = r["sizes"]

    def per_size(value) -> dict:
        return {f"{s['width']}×{s['height']}": value(s) for s in sizes}

    groups = {f"forward\n{v}": per_size(lambda s, v=v: s["forward_variants"][v]) for v in sizes[0]["forward_variants"]}
    for label, key in (("test.py\nend-to-end", "end_to_end_fps"), ("naive\n(fp32, JPEG)", "naive_fps"),
                       (f"{r['batched_videos']} videos\nbatched", "batched_fps")):
        groups[label] = per_size(lambda s, key=key: s[key])
    grouped_bars(groups, out_png, f"TDMS-Net on {r['device']}, torch {r['torch']}", "frames/s")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        cuda = device.type == "cuda"
        graph = cuda if args.cuda_graph is None else args.cuda_graph
        with tempfile.TemporaryDirectory() as tmp:
            r = run(args.sizes, args.frames or (100 if cuda else 4), device, Path(tmp), args.checkpoint, args.dtype,
                    args.channels_last, args.compile, graph, args.batch_videos or (8 if cuda else 2),
                    args.train_crop, args.train_steps, args.train_flow,
                    log=lambda m: print(f"benchmark: {m}", file=sys.stderr, flush=True),
                    train_flow_checkpoint=args.train_flow_checkpoint, profile=args.profile)
        print(table(r))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(r, indent=1))
        if args.plot:
            plot(r, Path(args.plot))
        return 0
    except (ValueError, OSError, RuntimeError) as e:  # OSError: the JSON or PNG path cannot be written
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
