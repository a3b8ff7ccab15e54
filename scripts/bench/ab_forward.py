"""This checkout's TDMS-Net forward against another git revision's, alternated in one process.

    python scripts/bench/ab_forward.py --rev 764da8e [--dtype bf16] [--size 854x480] [--rounds 25]

This machine's speed can move 2-3× within seconds (other tenants), so two versions timed one after the other
compare two machines. Here both run in one process, one forward each in turn, `--rounds` times, and the medians,
20th percentiles and minima are printed with the ratio of the medians. The other revision's `tdms` package is
taken from git (git archive) into a temporary folder and imported as `tdms_rev` (its imports of tdms renamed);
both run the default network (random weights, the same cost as a checkpoint's) through inference.fast.Step, with
the same weights, freed memory kept mapped as tdms-test does. Prints the largest difference of their outputs too.
"""

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from kernels import size

REPO = Path(__file__).resolve().parents[2]


def extract(rev: str, into: Path) -> str:
    """The tdms package at `rev` as the importable package tdms_rev under `into`; returns its name."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, "tdms"], capture_output=True, check=False)
    if tar.returncode:
        raise SystemExit(f"ab_forward: git archive {rev}: {tar.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar.stdout, check=True)
    (into / "tdms").rename(into / "tdms_rev")
    for f in (into / "tdms_rev").rglob("*.py"):
        text = f.read_text()
        f.write_text(re.sub(r"(?m)^(\s*)(from|import) tdms\b", r"\1\2 tdms_rev", text))
    sys.path.insert(0, str(into))  # (main takes it out again)
    return "tdms_rev"


def steps(packages, dtype: str):
    """A Step per package over the same default network's weights."""
    out, weights = {}, None
    for name in packages:
        tdms_net = importlib.import_module(f"{name}.nets.tdms_net")
        fast = importlib.import_module(f"{name}.inference.fast")
        torch.manual_seed(0)
        net = tdms_net.TDMSNet().eval()
        if weights is None:
            weights = net.state_dict()
        net.load_state_dict(weights)
        out[name] = fast.Step(net, fast.AMP[dtype], True, "cpu")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", required=True, help="the git revision to hold this checkout against")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--size", type=size, default=(480, 856), help="WIDTHxHEIGHT, multiples of 4")
    p.add_argument("--rounds", type=int, default=25)
    args = p.parse_args(argv)
    from tdms.devices import keep_freed_memory

    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return compare(args, steps(["tdms", extract(args.rev, Path(tmp))], args.dtype))
        finally:  # the other package goes with its folder: another call imports its own revision afresh
            if tmp in sys.path:
                sys.path.remove(tmp)
            for name in [m for m in sys.modules if m == "tdms_rev" or m.startswith("tdms_rev.")]:
                del sys.modules[name]


def compare(args, runs: dict) -> int:
    """Forwards in turns, `args.rounds` times; prints the figures."""
    xs = [torch.rand(1, 3, *args.size, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    times = {name: [] for name in runs}
    with torch.inference_mode():
        outs = {name: step(*xs)[0] for name, step in runs.items()}  # (also the warm-up: packs, kernels)
        for _ in range(args.rounds):
            for name, step in runs.items():
                start = time.perf_counter()
                step(*xs)
                times[name].append(1e3 * (time.perf_counter() - start))
    h, w = args.size
    print(f"{args.dtype} forward at {w}x{h}, {torch.get_num_threads()} threads, {args.rounds} rounds alternated; "
          f"largest output difference {(outs['tdms'] - outs['tdms_rev']).abs().max().item():.2e}")
    base = statistics.median(times["tdms_rev"])
    for name, label in (("tdms", "this checkout"), ("tdms_rev", args.rev)):
        t = sorted(times[name])
        print(f"  {label:<16} median {statistics.median(t):8.1f} ms  p20 {t[len(t) // 5]:8.1f}  min {t[0]:8.1f}  "
              f"median / {args.rev}'s {statistics.median(t) / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
