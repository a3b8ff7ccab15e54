"""Batch evaluation: methods x datasets x tasks over Lai et al.'s layout, parallel and resumable.

Every video is scored once per method into OUT/<method>/videos/<task>/<dataset>/<video>.json as soon as
it finishes; a rerun with the same settings skips those. The processed videos are scored as the method
"processed" (warping error and the naive blend's trade-off curve), which gives every method's D_t and margin;
the rows `run` returns carry the protocol each result's marker names (tdms-test --protocol). Flows and tracking
references are computed once per input video in this process before the parallel work starts.
"""

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tdms import distributed, interrupts
from tdms.config import EvalConfig
from tdms.devices import set_threads
from tdms.errors import UserError
from tdms.evaluation.lpips import load_lpips
from tdms.evaluation.tradeoff import CURVE_VERSION, blend_curve
from tdms.evaluation.video import Options, Tracking, evaluate_video, prepare_input
from tdms.files import from_json_safe, json_safe, stamp_files, write_bytes_atomic
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.layout import entries, tasks_file
from tdms.frames.outputs import read_marker

PROCESSED = "processed"  # the method name of the processed videos themselves
DEFAULT_PROTOCOL = "tdms"  # a result whose marker names no protocol was made by tdms-test's own loop


@dataclass
class Job:
    method: str
    dataset: str
    task: str
    video: str
    input: Path
    processed: Path
    results: Path
    annotations: Path
    out: Path  # the per-video JSON

    @property
    def key(self) -> dict:
        return {"method": self.method, "dataset": self.dataset, "task": self.task, "video": self.video}


def plan(cfg: EvalConfig) -> list[Job]:
    """The processed jobs, then every method's, for each "<dataset> <task>" line x the dataset's videos."""
    if not cfg.methods:
        raise UserError("no methods to evaluate: give methods in the config or --results name=path")
    if PROCESSED in cfg.methods:
        raise UserError(f"method name {PROCESSED!r} is reserved for the processed videos")
    root, out = Path(cfg.data.root), Path(cfg.run.out)
    tasks = tasks_file(root, cfg.data.phase, cfg.data.tasks_list)
    annotations = Path(cfg.data.annotations) if cfg.data.annotations else root / "Annotations" / "480p"
    methods = {PROCESSED: None, **{k: Path(v) for k, v in cfg.methods.items()}}
    videos = entries(root, cfg.data.phase, tasks)
    return [Job(method, e.dataset, e.task, e.video, e.input, e.processed, e.under(results) if results else e.processed,
                annotations / e.video, out / method / "videos" / e.task / e.dataset / f"{e.video}.json")
            for method, results in methods.items() for e in videos]


def settings(cfg: EvalConfig, method: str) -> dict:
    """Everything a per-video result depends on besides its frames: a finished result is reused only if equal.
    The processed videos get only the warping error and the blend curve, so LPIPS and tracking settings do not
    touch them."""
    out = {"flow": asdict(cfg.flow) | {"device": None}, "resize": cfg.run.resize}
    if method == PROCESSED:
        out.update(blend_curve=CURVE_VERSION)
    else:
        out.update(lpips=asdict(cfg.lpips), tracking=asdict(cfg.tracking))
    return out


def stamp(job: Job) -> str:
    """A fingerprint of the job's frames (names, sizes, modification times of input, processed and results):
    a stored result is reused only while it matches, so re-running a method rescores its videos."""
    h = hashlib.sha1()
    for path in dict.fromkeys((job.input, job.processed, job.results)):
        h.update(f"{path}|".encode())
        stamp_files(h, sorted(os.scandir(path), key=lambda e: e.name) if path.is_dir() else [path])
    return h.hexdigest()


def finished(job: Job, cfg: EvalConfig) -> dict | None:
    """The stored result of a job if it is complete, was made with the same settings and its frames are unchanged."""
    try:
        row = json.loads(job.out.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if row.get("status") != "ok" or row.get("settings") != settings(cfg, job.method):
        return None
    try:
        return row if row.get("stamp") == stamp(job) else None
    except OSError:  # a folder went away since
        return None


def open_cache(cfg: EvalConfig) -> FlowCache:
    root = Path(cfg.flow.cache) if cfg.flow.cache else Path(cfg.data.root) / "cache" / "flow"
    return FlowCache(root, build_flow(cfg.flow.backend, cfg.flow.preset, cfg.flow.device, cfg.flow.checkpoint))


def lpips_state(cfg: EvalConfig, noted=UserError) -> tuple[object, str]:
    """(model, "") or (None, why not): LPIPS off, or a `noted` error loading it (batch mode: any bad or missing
    backbone file is a note on every video; one video passes MissingFile, so a bad file stays an error)."""
    if not cfg.lpips.enabled:
        return None, "skipped (--no-lpips)"
    try:
        return load_lpips(cfg.lpips.net, cfg.lpips.weights or None, cfg.flow.device), ""
    except noted as err:
        return None, str(err)


def tracking_spec(cfg: EvalConfig, job: Job) -> Tracking | None:
    return Tracking(cfg.tracking.tracker, annotations=job.annotations) if cfg.tracking.enabled else None


def prepare(jobs: list[Job], cfg: EvalConfig, cache: FlowCache, progress: bool = True) -> None:
    """Flows, then the tracking reference, of each input video (once); errors are left to the jobs."""
    videos = {job.input: job for job in jobs if job.input.exists()}
    for video, job in tqdm(videos.items(), desc="flows", disable=not progress):
        try:
            prepare_input(cache, video, tracking_spec(cfg, job))
        except UserError:
            pass  # the video's jobs hit the same error and record it


_STATE: dict = {}  # per process: cfg, cache, lpips model and note


def init_worker(cfg: EvalConfig, threads: int = 0) -> None:
    if threads:
        set_threads(threads)
    model, note = lpips_state(cfg)
    _STATE.update(cfg=cfg, cache=open_cache(cfg), lpips=model, lpips_note=note)


def score(job: Job) -> dict:
    """Evaluate one job in this process and store its JSON; status ok, missing or error (with a note)."""
    cfg, start = _STATE["cfg"], time.time()
    row = {**job.key, "settings": settings(cfg, job.method)}
    missing = [str(p) for p in dict.fromkeys((job.input, job.processed, job.results)) if not p.exists()]
    if missing:
        row.update(status="missing", note="not found: " + ", ".join(missing))
    else:
        is_processed = job.method == PROCESSED
        options = Options(lpips=_STATE["lpips"], lpips_note=_STATE["lpips_note"], resize=cfg.run.resize,
                          tracking=None if is_processed else tracking_spec(cfg, job), processed_error=False)
        try:
            row["stamp"] = stamp(job)  # before reading: a folder rewritten meanwhile is rescored next time
            metrics = evaluate_video(_STATE["cache"], job.input, job.results, None if is_processed else job.processed,
                                     options, progress=False)
            row.update(status="ok", **metrics)
            if is_processed:  # the curve's file beside the flows is reused by any run folder
                row["blend_curve"] = blend_curve(_STATE["cache"], job.input, job.processed, cfg.run.resize)
        except UserError as err:
            row.update(status="error", note=str(err))
    row["seconds"] = round(time.time() - start, 3)
    write_bytes_atomic(job.out, (json.dumps(json_safe(row)) + "\n").encode())
    return row


def share(todo: list[int], jobs: list[Job], world: distributed.World) -> list[int]:
    """This rank's jobs: whole input videos (all their methods) go to one rank, so each flow is computed once."""
    by_video: dict[Path, list[int]] = {}
    for k in todo:
        by_video.setdefault(jobs[k].input, []).append(k)
    return sorted(k for group in distributed.shard(list(by_video.values()), world) for k in group)


def run(cfg: EvalConfig, progress: bool = True, world: distributed.World = distributed.ONE
        ) -> tuple[list[dict], dict]:
    """Score every job not finished yet; returns (all rows in job order, timing/count info).

    With several processes (torchrun) each scores its share of the videos and returns only those rows; a
    second call on one process then collects them all from the stored results (tdms-evaluate does this)."""
    start, jobs = time.time(), plan(cfg)
    done = {k: row for k, job in enumerate(jobs) if (row := finished(job, cfg)) is not None}
    todo = share([k for k in range(len(jobs)) if k not in done], jobs, world)
    info = {"jobs": len(jobs), "reused": len(done), "scored": len(todo)}  # reused: over all ranks
    if world.distributed:
        done = {}  # this rank's rows only
    if todo:
        if cfg.run.threads:
            set_threads(cfg.run.threads)
        cache = open_cache(cfg)
        prepare([jobs[k] for k in todo], cfg, cache, progress)
        info["prepare_seconds"] = round(time.time() - start, 3)
        bar = tqdm(total=len(todo), desc="evaluate", disable=not progress)
        if cfg.run.jobs <= 1:
            init_worker(cfg)
            for k in todo:
                interrupts.check()
                done[k] = score(jobs[k])
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")  # no fork after torch/OpenCV started their threads
            with ProcessPoolExecutor(cfg.run.jobs, context, init_worker, (cfg, cfg.run.threads or 1)) as pool:
                futures = {pool.submit(score, jobs[k]): k for k in todo}
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update(1)
        bar.close()
    info["seconds"] = round(time.time() - start, 3)
    rows = [from_json_safe(done[k]) for k in sorted(done)]
    for k, row in zip(sorted(done), rows, strict=True):  # read now, so a reused row shows it too
        if row["method"] != PROCESSED and row["status"] == "ok":
            row["protocol"] = read_marker(jobs[k].results).get("protocol", DEFAULT_PROTOCOL)
    return rows, info
