"""tdms-evaluate: warping error (Lai et al.), D_t, LPIPS, tracking IoU and composite (TDMS), PSNR/SSIM.

Examples:
    tdms-evaluate --input I --results O --processed P --out eval/       # one video: folders or video files
    tdms-evaluate --input I --results O --processed P --box 40,30,64,48 --tracker kcf --no-lpips --out eval/
    tdms-evaluate --config configs/eval_builder_test.yaml               # methods x datasets x tasks
    tdms-evaluate --config configs/eval_builder_test.yaml --jobs 2 --set run.out=eval/try lpips.net=squeeze
    tdms-evaluate --data-dir data --results tdms=outputs/tdms naive=outputs/naive --out eval/ --jobs 2

One video: OUT/metrics.json, OUT/warping_error.png and, with --processed, OUT/tradeoff.png. Batch:
OUT/<method>/videos/... (one JSON per video, reused by a rerun), OUT/videos.csv, OUT/tables.md, OUT/metrics.json,
OUT/plots/ (tradeoff_<dataset>[_<task>].png among them) and OUT/videos/. With the processed video, the naive
blend O_t = (1-a) P_t + a warp(O_{t-1}) at a = 0.1 .. 0.9 is scored too, from the cached flows, and each method's
margin is its PSNR(O, P) minus the blend curve's PSNR at its own D_t (none outside the curve's D_t range).
OUT must be new, empty, or a folder tdms-evaluate wrote (it marks them with a hidden .tdms-evaluate file).
Flows are computed on the input frames once and cached (default: OUT/flow_cache for one video,
DATA/cache/flow in batch mode). LPIPS needs torchvision's backbone file ($TORCH_HOME/hub/checkpoints/,
e.g. alexnet-owt-7be5be79.pth) or --lpips-weights; without it LPIPS and the composite are null, with the
reason. Tracking IoU starts from the DAVIS annotation box (DATA/Annotations/480p/<video>/) when there is
one, else from --box, else from several boxes chosen on the original frames (the region moving against the
camera, then corner-rich squares), kept where the tracker is stable on the input; the reference is the same
tracker on the input, and tracking_iou is the median of the kept boxes' mean IoUs (null with a note when none).
"""

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import yaml

from tdms import distributed
from tdms.config import EvalConfig, load_config
from tdms.devices import check_device, set_threads
from tdms.errors import MissingFile, UserError
from tdms.evaluation.batch import DEFAULT_PROTOCOL, PROCESSED, lpips_state, plan, run
from tdms.evaluation.lpips import NETS
from tdms.evaluation.plots import comparison_videos, error_plots, plot_series, task_bars, tradeoff_chart, tradeoff_plots
from tdms.evaluation.report import jsonable_summary, key_tables, markdown, notes, summarise, videos_csv
from tdms.evaluation.tracking import TRACKERS, check_box, parse_box
from tdms.evaluation.tradeoff import blend_curve, curve_text, set_margin
from tdms.evaluation.video import Options, Tracking, evaluate_video
from tdms.files import json_safe, write_bytes_atomic
from tdms.flow import BACKENDS, build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.io import FrameSource
from tdms.frames.outputs import claim_folder, read_marker, write_record
from tdms.interrupts import interrupted_code, stop_on_sigterm

SINGLE_COLUMNS = ("protocol", "n_frames", "warping_error_processed", "warping_error", "relative_reduction", "psnr",
                  "margin", "ssim", "lpips", "tracking_iou", "composite")
MARKER = ".tdms-evaluate"  # marks a folder tdms-evaluate wrote, the only non-empty kind it writes into
RUN_MINIMUMS = {"jobs": 1, "threads": 0, "videos": 0}  # of --jobs, --threads, --videos and run.*


def at_least(minimum: int):
    """argparse type: a whole number >= minimum."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text}")
        return int(text)

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdms-evaluate", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", help="one video: original frames I (frame folder or video file)")
    p.add_argument("--results", nargs="+",
                   help="one video: result frames O; batch: name=root of <task>/<dataset>/<video> (or a root)")
    p.add_argument("--processed", help="one video: processed frames P (for D_t, PSNR, SSIM, LPIPS, composite)")
    p.add_argument("--config", help="batch: a YAML config (configs/eval_*.yaml; defaults in tdms/config.py)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="batch: config overrides, run.jobs=2")
    p.add_argument("--data-dir", help="batch: a root in Lai et al.'s layout")
    p.add_argument("--phase", help="batch: train or test (default test)")
    p.add_argument("--tasks-list", help="batch: '<dataset> <task>' lines (default DATA/lists/PHASE_tasks.txt)")
    p.add_argument("--flow", choices=BACKENDS, help="flow backend (default dis)")
    p.add_argument("--flow-preset", help="DIS preset: ultrafast, fast, medium (default)")
    p.add_argument("--flow-checkpoint", help="flownet2 / raft weights (default: $TORCH_HOME/hub/checkpoints/)")
    p.add_argument("--device", help="device of LPIPS and network flow backends (default cpu)")
    p.add_argument("--cache", help="flow cache folder")
    p.add_argument("--lpips-net", choices=NETS, help="LPIPS backbone (default alex)")
    p.add_argument("--lpips-weights", help="LPIPS backbone file (default torchvision's cache)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (composite becomes null)")
    p.add_argument("--tracker", choices=TRACKERS, help="OpenCV tracker (default csrt)")
    p.add_argument("--no-tracking", action="store_true", help="skip tracking IoU (composite without it)")
    p.add_argument("--box", help="one video: first tracking box x,y,w,h (default: annotations or motion)")
    p.add_argument("--annotations", help="one video: DAVIS annotation folder of palette PNGs %%05d.png")
    p.add_argument("--object-id", type=int, help="one video: annotation id to track (default the largest)")
    p.add_argument("--resize", action="store_true", help="resize frames of another size instead of failing")
    p.add_argument("--jobs", type=at_least(RUN_MINIMUMS["jobs"]), help="batch: parallel processes (default 1)")
    p.add_argument("--videos", type=at_least(RUN_MINIMUMS["videos"]),
                   help="batch: comparison videos for the first N videos (default 3)")
    p.add_argument("--threads", type=at_least(RUN_MINIMUMS["threads"]),
                   help="torch/OpenCV threads (default 0: theirs; 1 helps on a busy machine)")
    p.add_argument("--out", help="folder for the reports: new, empty or written by tdms-evaluate (batch: default "
                                 "run.out of the config)")
    return p


def write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(json_safe(obj, null=True), indent=1) + "\n").encode())


def fmt(value) -> str:
    if value is None:
        return "null"
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def check_out(out: Path, folders) -> None:
    """The reports must not land in (or under) a folder of frames being evaluated."""
    for folder in folders:
        folder = Path(folder).resolve()
        if out.resolve() == folder or folder in out.resolve().parents:
            raise UserError(f"--out {out} is inside {folder}, which is being evaluated; pick another folder")


@contextmanager
def claimed(out: Path):
    """Make out ours to write for the body: a new or empty folder, or one with our marker (a folder of other files
    is refused). A folder made here that still holds only the marker when the body fails (an input refused, an
    interruption) is removed again."""
    new = not out.exists()
    claim_folder(out, MARKER, "tdms-evaluate")
    write_record(out / MARKER, {"written_by": "tdms-evaluate", "note": "it rewrites its reports here on a rerun"})
    try:
        yield
    except BaseException:
        if new and [p.name for p in out.iterdir()] == [MARKER]:
            (out / MARKER).unlink()
            out.rmdir()
        raise


def run_single(args, cfg: EvalConfig, out: Path) -> None:
    (results,) = args.results
    sources = [args.input, results] + ([args.processed] if args.processed else [])
    check_out(out, sources)
    with claimed(out):
        evaluate_single(args, cfg, out, results)


def evaluate_single(args, cfg: EvalConfig, out: Path, results: str) -> None:
    """One video's metrics, margin and pictures into out (claimed), and its table on stdout."""
    backend = build_flow(cfg.flow.backend, cfg.flow.preset, cfg.flow.device, cfg.flow.checkpoint)
    cache = FlowCache(cfg.flow.cache or out / "flow_cache", backend)
    box = parse_box(args.box) if args.box else None
    if box:
        check_box(box, FrameSource(args.input).size, args.input)
    if args.annotations and not Path(args.annotations).is_dir():
        raise MissingFile(f"--annotations {args.annotations}: no such folder")
    model, note = lpips_state(cfg, noted=FileNotFoundError)
    tracking = None if not cfg.tracking.enabled else Tracking(
        cfg.tracking.tracker, box, Path(args.annotations) if args.annotations else None, args.object_id)
    metrics = evaluate_video(cache, args.input, results, args.processed, Options(model, note, tracking, cfg.run.resize))
    metrics.update(input=args.input, results=results, processed=args.processed,
                   protocol=read_marker(Path(results)).get("protocol", DEFAULT_PROTOCOL))
    if not args.processed:
        metrics.update(composite=None, composite_note="needs --processed (D_t and LPIPS are measured against P)",
                       margin=None, margin_note="needs --processed (the naive blend is made from P)")
    else:
        add_margin(metrics, blend_curve(cache, args.input, args.processed, cfg.run.resize, progress=True), out)
    write_json(out / "metrics.json", metrics)
    curves = {"result": metrics["per_frame"]["warping_error"]}
    if args.processed:
        curves["processed"] = metrics["per_frame"]["warping_error_processed"]
    plot_series(curves, out / "warping_error.png", f"warping error ({metrics['flow']})", "warping error", start=1)
    columns = [k for k in SINGLE_COLUMNS if k in metrics]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    print("| " + " | ".join(fmt(metrics[k]) for k in columns) + " |")
    if args.processed:
        print("naive blend curve (a: D_t / PSNR dB): " + ", ".join(curve_text(metrics["blend_curve"])))
    for key in ("relative_reduction_note", "margin_note", "lpips_note", "tracking_note", "composite_note"):
        if metrics.get(key):
            print(f"note: {key[:-5]}: {metrics[key]}")


def add_margin(metrics: dict, curve: dict, out: Path) -> None:
    """Set one video's margin above the blend curve (tradeoff.set_margin) and draw its chart: out/tradeoff.png."""
    set_margin(metrics, curve)
    name = "result" + (f" (margin {metrics['margin']:+.2f} dB)" if metrics["margin"] is not None else "")
    point = (metrics.get("relative_reduction"), metrics.get("psnr"))
    lpips = {name: (point[0], metrics["lpips"])} if metrics.get("lpips") is not None else None
    tradeoff_chart({name: point}, curve, out / "tradeoff.png", f"trade-off ({metrics['flow']})", lpips)


# The flags that set a config key, by argparse name; each becomes an override `key=value`, as --set takes them.
FLAG_KEYS = {
    "data_dir": "data.root", "phase": "data.phase", "tasks_list": "data.tasks_list", "flow": "flow.backend",
    "flow_preset": "flow.preset", "device": "flow.device", "flow_checkpoint": "flow.checkpoint", "cache": "flow.cache",
    "lpips_net": "lpips.net", "lpips_weights": "lpips.weights", "tracker": "tracking.tracker", "out": "run.out",
    "jobs": "run.jobs", "videos": "run.videos", "threads": "run.threads",
}
SWITCHES = {"no_lpips": ("lpips.enabled", False), "no_tracking": ("tracking.enabled", False),
            "resize": ("run.resize", True)}  # store_true flags: (key, the value they set when given)


def override(key: str, value) -> str:
    """`key=value` as --set takes it, the value in YAML that reads back as exactly it: strings (and the mapping
    of --results) double-quoted, so a path such as "2024" or "yes" stays a string."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, default_style='"', sort_keys=False, width=math.inf)
        text = text.rstrip("\n")
    return f"{key}={text}"


def flag_overrides(args, batch: bool) -> list[str]:
    """The command-line flags as config overrides; batch mode's --results name=root (or a root) are `methods`."""
    out = [override(key, getattr(args, name)) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None]
    out += [override(key, value) for name, (key, value) in SWITCHES.items() if getattr(args, name)]
    if batch and args.results:
        methods = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in args.results)
        out.append(override("methods", methods))
    return out


def settings(args, batch: bool) -> EvalConfig:
    """The settings, all through the config loader (tdms.config.load_config), which checks keys and types.

    Batch: the config file (if any), its --set overrides, then the flags (they win); run.* minimums and the
    device are checked here. One video: the defaults and the flags."""
    if not batch:
        return load_config(None, flag_overrides(args, batch), cls=EvalConfig)
    cfg = load_config(args.config, args.set + flag_overrides(args, batch), cls=EvalConfig)
    for key, minimum in RUN_MINIMUMS.items():
        if getattr(cfg.run, key) < minimum:
            raise UserError(f"run.{key} must be >= {minimum}, got {getattr(cfg.run, key)}")
    check_device(cfg.flow.device, "--device" if args.device else "flow.device")
    return cfg


def run_batch(cfg: EvalConfig) -> None:
    out = Path(cfg.run.out)
    check_out(out, [Path(cfg.data.root) / cfg.data.phase, *cfg.methods.values()])
    with claimed(out):
        evaluate_batch(cfg, out)


def evaluate_batch(cfg: EvalConfig, out: Path) -> None:
    """Every job of the config (this rank's share under torchrun), then the reports into out (claimed)."""
    world = distributed.init("cpu")  # under torchrun: each process scores its share of the videos
    try:
        rows, info = run(cfg, world=world)
        scored = int(distributed.sum_floats([info["scored"]], world, "cpu")[0])  # waits for every rank
        distributed.barrier(world)  # and once more, so that no rank tears gloo down while a peer still talks
    finally:
        distributed.close()
    if not world.main:
        print(f"tdms-evaluate [rank {world.rank}/{world.size}]: {info['scored']} job(s) scored", file=sys.stderr)
        return
    if world.distributed:  # every rank's results, from their stored rows (failed jobs are retried here)
        reused, seconds = info["reused"], info["seconds"]
        rows, info = run(cfg)
        info.update(scored=scored + info["scored"], reused=reused, seconds=round(seconds + info["seconds"], 3),
                    world_size=world.size)
    methods = list(cfg.methods)
    summary = summarise(rows, methods, PROCESSED, cfg.tracking.enabled)
    title = f"{', '.join(methods)} on {cfg.data.root} ({cfg.data.phase}, flow {cfg.flow.backend}-{cfg.flow.preset})"
    write_json(out / "metrics.json", {"config": asdict(cfg), "run": info, **jsonable_summary(summary)})
    write_bytes_atomic(out / "videos.csv", videos_csv(rows).encode())
    text = markdown(summary, rows, title)
    write_bytes_atomic(out / "tables.md", text.encode())
    error_plots(rows, PROCESSED, out / "plots" / "warping_error")
    task_bars(summary["tables"]["relative_reduction"], methods, out / "plots" / "bars")
    tradeoff_plots(summary, methods, out / "plots")
    comparison_videos(rows, plan(cfg), methods, PROCESSED, out / "videos", cfg.run.videos)
    print(key_tables(summary))
    skipped = [r for r in rows if r["status"] != "ok"]
    for r in skipped:
        print(f"{r['status']}: {r['method']} {r['task']}/{r['dataset']}/{r['video']}: {r['note']}", file=sys.stderr)
    for note in notes(rows):
        print(f"note: {note}", file=sys.stderr)
    print(f"{info['scored']} video(s) scored, {info['reused']} reused, {len(skipped)} not evaluated, "
          f"{info['seconds']:.1f} s", file=sys.stderr)


def main(argv=None) -> int:
    stop_on_sigterm()
    p = parser()
    args = p.parse_args(argv)
    batch = bool(args.config or args.data_dir)
    if batch and args.input:
        p.error("give --input (one video) or --config/--data-dir (batch), not both")
    if not batch and not (args.input and args.results and args.out):
        p.error("one video needs --input, --results and --out (or use --config/--data-dir for batch mode)")
    if not batch and len(args.results) != 1:
        p.error("one video takes one --results folder")
    if batch and (args.processed or args.box or args.annotations or args.object_id is not None):
        p.error("--processed, --box, --annotations and --object-id are for one video")
    try:
        world = distributed.from_env()
    except UserError as err:
        p.error(str(err))
    if not batch and world.distributed:
        p.error("several processes (torchrun) split batch mode's videos; one video takes one process")
    if not batch and args.device:
        try:
            check_device(args.device, "--device")
        except UserError as err:
            p.error(str(err))
    try:
        cfg = settings(args, batch)
    except UserError as err:
        p.error(str(err))
    try:
        if batch:
            run_batch(cfg)
        else:
            if cfg.run.threads:
                set_threads(cfg.run.threads)
            run_single(args, cfg, Path(args.out))
        if world.main:
            print(f"tdms-evaluate: reports in {cfg.run.out}")
        return 0
    except UserError as err:
        print(f"tdms-evaluate: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the per-video results stored so far are kept
        print("tdms-evaluate: interrupted", file=sys.stderr)
        return interrupted_code(err)


if __name__ == "__main__":
    sys.exit(main())
