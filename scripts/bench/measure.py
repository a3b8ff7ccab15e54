"""Measured speed of TDMS-Net on this machine, all in one run (scripts/bench/benchmark.py prints a table, writes JSON).

Per frame size (default 854×480 and 1280×720), `frames` timed frames each (default 4 on CPU, 100 on CUDA):
  forward_variants      network alone on device tensors, recurrence included: fp32 NCHW, fp32 channels_last,
                        bf16 (and fp16 on CUDA) channels_last; dtype "auto" runs the rest in the fastest of them
  end_to_end_fps        test.py's path: JPEG decode (thread), pad, network, crop, PNG encode (thread)
  forward_fps           the network alone in that config (these two: the best of 5 runs in turns;
                        end_to_end_over_forward is the median of the 5 runs' ratios)
  naive_fps             the original test script's way (naive_frames_on_disk): fp32, NCHW, batch 1, frames read
                        from and written to JPEG on disk every step
  batched_fps           dataset mode, `batch_videos` videos a batch, end to end; batched_forward_fps: network only
  gmac_per_frame, achieved_gflops (from forward_fps)
  conv_gflops, paired_forward_gflops, fraction_of_conv, peak_gflops, fraction_of_peak (and fp32_*: the fp32
                        channels_last forward): the forward against one 128-channel 3×3 conv at the residual blocks'
                        size and against a 2048² matmul in the same dtype (the CPU roofline), each timed in turns with
                        it (kernels.paired_ratio: the median of 7 rounds' ratios)
  peak_memory_mb        CPU: the process's peak RSS so far; CUDA: max_memory_allocated during this size
  output_layers         per narrow output layer: ms forward and forward+backward by the plain conv and by
                        columns (ColumnConvLayer's CPU route), and the largest difference of their outputs
Training, once, at crop 192 on a small generated Lai et al. layout (tdms.training.step.clip_losses, batch 2, 5 frames),
in the first size's config (train_amp, train_channels_last) through the trainer's DataLoader (train_workers):
  train_steps_per_s_cached (flows from the flow cache) and train_steps_per_s_on_the_fly (F* computed by the same
  backend on the crops every step, in fp32), train_flow_s_per_step (that flow's share of a step; the ratio is
  1 + it × the cached steps/s), train_samples_per_s_*, train_peak_memory_mb.
Rates count the frames the network produced (frame 0 is a copy, O_0 = P_0, and is not counted).
"""

import resource
import statistics
from pathlib import Path

import cv2
import numpy as np
import torch
from kernels import (
    conv_macs,
    device_name,
    make_clip,
    output_layer_routes,
    paired_ratio,
    peak_memory_mb,
    reference_conv,
    reference_matmul,
    reset_peak_memory,
    timed,
)

from tdms.devices import cpu_info, keep_freed_memory
from tdms.frames.io import open_pair, prefetch
from tdms.frames.outputs import process_video
from tdms.inference.across_videos import Target, Video, batched_frames, write_outputs
from tdms.inference.fast import make_step
from tdms.inference.methods import make_method
from tdms.inference.recurrence import pad_to, step_frames
from tdms.nets.tdms_net import TDMSNet

PAIRED_ROUNDS = 5  # end to end and forward-only in turns: the rounds of their ratio

GOALS = {  # the project's speed goals: (key, goal, devices it applies to)
    "end_to_end_over_forward": (0.9, ("cpu", "cuda")),
    "end_to_end_over_naive": (2.0, ("cpu",)),
    "fp32_fraction_of_peak": (0.6, ("cpu",)),
    "forward_fps": (300.0, ("cuda",)),
    "batched_forward_fps": (1000.0, ("cuda",)),
    "train_cached_over_on_the_fly": (3.0, ("cpu", "cuda")),
}


def forward_fps(step, device: torch.device, h: int, w: int, frames: int, batch: int = 1) -> float:
    """Frames/s of the network alone on tensors already on the device, O_{t-1} fed back."""
    i_prev, i_t, p_t, o = (pad_to(torch.rand(batch, 3, h, w, device=device))[0] for _ in range(4))

    def run(n):
        nonlocal o
        for _ in range(n):
            o, _ = step(i_prev, i_t, o, p_t)

    with torch.inference_mode():
        run(3 if device.type == "cuda" else 1)  # warm-up: oneDNN/cuDNN kernel choice, compile, graph capture
        return batch * frames / timed(lambda: run(frames), device)


def end_to_end_fps(step, device: torch.device, clip: Path, out: Path) -> float:
    """Frames/s of test.py's path on one clip (threads overlap the decoding and encoding with the network)."""
    src_i, src_p = open_pair(clip / "input", clip / "processed")
    n = len(src_i)
    pairs = prefetch(zip(src_i, src_p, strict=True))
    return (n - 1) / timed(lambda: process_video(step_frames(step, pairs, device), out, n, 30.0, {}), device)


def batched_fps(step, device: torch.device, clips: list[Path], out: Path) -> float:
    """Frames/s of dataset mode with all `clips` in one batch, end to end (tdms.batched)."""
    videos, targets = [], []
    for k, clip in enumerate(clips):
        src_i, src_p = open_pair(clip / "input", clip / "processed")
        videos.append(Video(clip.name, src_i.size, prefetch(zip(src_i, src_p, strict=True))))
        targets.append(Target(out / f"v{k}", len(src_i), {}))

    def run():
        for _ in write_outputs(batched_frames(step, videos, len(videos), device), targets):
            pass

    return sum(t.frames - 1 for t in targets) / timed(run, device)


def read_jpeg(path: Path) -> torch.Tensor:
    return torch.from_numpy(cv2.imread(str(path))[..., ::-1].astype(np.float32).transpose(2, 0, 1) / 255)[None]


def naive_frames_on_disk(model, device: torch.device, clip: Path, out: Path) -> int:
    """The original test script's loop: per frame, read I_{t-1}, I_t, P_t and the previous output O_{t-1} from
    JPEG files, convert them (fp32, NCHW, batch 1, autograd off), pad, run the network, crop, and write O_t as a
    JPEG that the next frame reads back. Nothing overlaps and nothing is kept in memory between frames."""
    out.mkdir(parents=True)
    ins, ps = sorted((clip / "input").glob("*.jpg")), sorted((clip / "processed").glob("*.jpg"))
    cv2.imwrite(str(out / "00000.jpg"), cv2.imread(str(ps[0])))  # O_0 = P_0
    with torch.no_grad():
        for t in range(1, len(ins)):
            x = [read_jpeg(p).to(device) for p in (ins[t - 1], ins[t], out / f"{t - 1:05d}.jpg", ps[t])]
            (i_prev, size), (i_t, _), (o_prev, _), (p_t, _) = (pad_to(v) for v in x)
            o_t = model(i_prev, i_t, o_prev, p_t)["output"][..., : size[0], : size[1]]
            img = (o_t.clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            cv2.imwrite(str(out / f"{t:05d}.jpg"), img[..., ::-1])
    return len(ins) - 1


def default_run(model, device: torch.device, clip: Path, out: Path) -> dict:
    """tdms-test as a user runs it, without flags (inference.methods defaults: --dtype auto, channels_last, memory
    kept mapped): frames/s end to end, and the share of its CPU time spent in the kernel."""
    method = make_method("tdms", device, model=model, keep_memory=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    fps = end_to_end_fps(method.step, device, clip, out)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"default_dtype": method.made_by["dtype"], "default_channels_last": method.made_by["channels_last"],
            "default_fps": fps, "sys_time_fraction": system / max(user + system, 1e-9)}


def paired_figures(step, device: torch.device, h: int, w: int, gmac: float, amp: str, channels_last: bool,
                   key: str) -> dict:
    """`step`'s forward (in `amp`) against the 128-channel conv and against the matmul, each measured in turns with
    it (kernels.paired_ratio): {key}conv_gflops, {key}paired_forward_gflops, {key}fraction_of_conv,
    {key}peak_gflops, {key}fraction_of_peak."""
    x = [pad_to(torch.rand(1, 3, h, w, device=device))[0] for _ in range(4)]
    hp, wp = x[0].shape[-2:]
    forward = (lambda: step(*x)), 2 * gmac * 1e9
    conv = paired_ratio(*forward, reference_conv(device, hp, wp, amp, channels_last), device)
    peak = paired_ratio(*forward, reference_matmul(device, amp), device)
    return {f"{key}conv_gflops": conv["reference_gflops"], f"{key}paired_forward_gflops": conv["forward_gflops"],
            f"{key}fraction_of_conv": conv["ratio"], f"{key}peak_gflops": peak["reference_gflops"],
            f"{key}fraction_of_peak": peak["ratio"]}


def profile_table(step, device: torch.device, h: int, w: int, rows: int = 12) -> list[dict]:
    """Self CPU time per op of one forward (after a warm-up), most first: where a frame's time goes."""
    from torch.profiler import ProfilerActivity, profile

    x = [pad_to(torch.rand(1, 3, h, w, device=device))[0] for _ in range(4)]
    with torch.inference_mode():
        step(*x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(*x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:rows]]


def forward_variants(device: torch.device) -> list[tuple[str, bool]]:
    variants = [("fp32", False), ("fp32", True), ("bf16", True)]
    return variants + [("fp16", True)] if device.type == "cuda" else variants


def measure_size(model, device: torch.device, h: int, w: int, frames: int, batch_videos: int, workdir: Path,
                 dtype: str, channels_last, compile: bool, cuda_graph: bool, log, profile: bool = False) -> dict:
    """All inference figures at one frame size."""
    reset_peak_memory(device)
    hp, wp = pad_to(torch.zeros(1, 1, h, w))[0].shape[-2:]
    gmac = conv_macs(model, hp, wp) / 1e9
    r = {"height": h, "width": w, "frames": frames, "gmac_per_frame": gmac, "forward_variants": {}}
    for amp, cl in forward_variants(device):
        log(f"{w}×{h}: forward {amp} {'channels_last' if cl else 'NCHW'}")
        step = make_step(model, device, amp, cl, cuda_graph=cuda_graph)
        r["forward_variants"][f"{amp} {'channels_last' if cl else 'nchw'}"] = forward_fps(step, device, h, w, frames)
    if dtype == "auto":
        best = max(r["forward_variants"], key=r["forward_variants"].get)
        dtype, channels_last = best.split()[0], best.endswith("channels_last")
    r.update(dtype=dtype, channels_last=bool(channels_last), compile=compile, cuda_graph=cuda_graph)
    step = make_step(model, device, dtype, bool(channels_last), compile, cuda_graph)
    log(f"{w}×{h}: output layers, plain and by columns")
    r["output_layers"] = output_layer_routes(model, device, hp, wp, dtype, bool(channels_last))
    clips = []
    for k in range(batch_videos):
        clips.append(workdir / f"{w}x{h}" / f"clip{k}")
        make_clip(clips[-1] / "input", clips[-1] / "processed", frames + 1, h, w, seed=k)
    log(f"{w}×{h}: end to end, forward, naive, {batch_videos} videos a batch")
    # the ratio of these two is a target: measured in turns against the machine's noise (its speed moves 2-3× within
    # seconds), the median of the rounds' ratios; each figure alone is its best round
    e2e, fwd = [], []
    for k in range(PAIRED_ROUNDS):
        e2e.append(end_to_end_fps(step, device, clips[0], workdir / f"{w}x{h}" / f"out{k}"))
        fwd.append(forward_fps(step, device, h, w, frames))
    r["end_to_end_fps"], r["forward_fps"] = max(e2e), max(fwd)
    naive_s = timed(lambda: naive_frames_on_disk(model, device, clips[0], workdir / f"{w}x{h}" / "naive"), device)
    r["naive_fps"] = frames / naive_s
    r["batched_videos"] = batch_videos
    r["batched_fps"] = batched_fps(step, device, clips, workdir / f"{w}x{h}" / "batched")
    r["batched_forward_fps"] = forward_fps(step, device, h, w, frames, batch_videos)
    r["end_to_end_over_forward"] = statistics.median(a / b for a, b in zip(e2e, fwd, strict=True))
    r["end_to_end_over_naive"] = r["end_to_end_fps"] / r["naive_fps"]
    r["achieved_gflops"] = 2 * gmac * r["forward_fps"]
    r["fp32_forward_fps"] = r["forward_variants"]["fp32 channels_last"]
    r["fp32_achieved_gflops"] = 2 * gmac * r["fp32_forward_fps"]
    log(f"{w}×{h}: the default path (tdms-test without flags)")
    r.update(default_run(model, device, clips[0], workdir / f"{w}x{h}" / "default"))
    # the config's own step, and an fp32 channels_last one
    fp32_step = make_step(model, device, "fp32", True, cuda_graph=cuda_graph)
    for key, run, amp, cl in (("", step, dtype, bool(channels_last)), ("fp32_", fp32_step, "fp32", True)):
        log(f"{w}×{h}: {amp} forward against the 128-channel conv and the matmul, in turns")
        r.update(paired_figures(run, device, h, w, gmac, amp, cl, key))
    if profile:
        log(f"{w}×{h}: profile of one forward")
        r["profile"] = profile_table(step, device, h, w)
    r["peak_memory_mb"] = peak_memory_mb(device)
    return r


def check_targets(r: dict, device: torch.device) -> list[dict]:
    """The speed goals that apply to this device, against the figures (the first size for per-size ones)."""
    out = []
    for key, (goal, devices) in GOALS.items():
        if device.type in devices and key in r:
            out.append({"key": key, "value": r[key], "goal": goal, "met": r[key] >= goal})
    return out


def run(sizes: list[tuple[int, int]], frames: int, device: torch.device, workdir: Path, checkpoint: str = "",
        dtype: str = "auto", channels_last=None, compile: bool = False, cuda_graph: bool = False,
        batch_videos: int = 2, train_crop: int = 192, train_steps: int = 2, train_flow: str = "dis",
        log=print, train_flow_checkpoint: str = "", profile: bool = False) -> dict:
    """Every figure, in one run. sizes: (H, W) pairs. dtype: auto (the fastest forward variant) or one of
    runner.AMP, with channels_last True/False (None: on). Training runs on frames of the first size;
    train_steps 0 skips it. The top level holds the first size's figures (the keys of the first version) and the
    device-wide ones; "sizes" holds every size's."""
    from tdms.nets.build import load_model

    if device.type == "cpu":  # as tdms-test does before its first frame (tdms.devices says why), so that every
        keep_freed_memory()  # forward here runs as tdms-test runs it, not only the default_run figures
    model = load_model(checkpoint, device) if checkpoint else TDMSNet().to(device).eval()
    cl = True if channels_last is None else channels_last
    per_size = [measure_size(model, device, h, w, frames, batch_videos, workdir, dtype, cl, compile, cuda_graph,
                             log, profile) for h, w in sizes]
    r = {**per_size[0], "device": device_name(device), "cpu": cpu_info(), "torch": torch.__version__,
         "mkldnn": torch.backends.mkldnn.is_available(), "threads": torch.get_num_threads(), "sizes": per_size}
    if train_steps > 0:
        from training_rate import measure_training

        r.update(measure_training(device, workdir, train_crop, train_steps, train_flow, sizes[0], log,
                                  train_flow_checkpoint, r["dtype"], r["channels_last"]))
    r["targets"] = check_targets(r, device)
    return r
