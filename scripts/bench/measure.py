"""Measured speed of TDMS-Net on this machine, all in one run (scripts/bench/benchmark.py prints a table, writes JSON).

Per frame size (default 854×480 and 1280×720), `frames` timed frames each (default 4 on CPU, 100 on CUDA):
  forward_variants      network alone on device tensors, recurrence included: fp32 NCHW, fp32 channels_last,
                        bf16 (and fp16 on CUDA) channels_last; dtype "auto" runs the rest in the fastest of them
  end_to_end_fps        test.py's path: JPEG decode (thread), pad, network, crop, PNG encode (thread)
  forward_fps           the network alone in that config (these two: the best of two interleaved runs)
  naive_fps             the original test script's way (naive_frames_on_disk): fp32, NCHW, batch 1, frames read
                        from and written to JPEG on disk every step
  batched_fps           dataset mode, `batch_videos` videos a batch, end to end; batched_forward_fps: network only
  gmac_per_frame, achieved_gflops, peak_gflops (matmul in the config's dtype), fraction_of_peak; the fp32_* keys
  hold the fp32 channels_last forward against the fp32 matmul peak (the CPU roofline)
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

import copy
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from skimage import data as skdata
from torch.utils.data import DataLoader

from tdms.config import Config
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.frames.io import open_pair, prefetch, write_frame
from tdms.frames.outputs import process_video
from tdms.inference.across_videos import Target, Video, batched_frames, write_outputs
from tdms.inference.fast import AMP, make_step
from tdms.inference.recurrence import pad_to, step_frames
from tdms.nets.layers import ColumnConvLayer, ConvLayer, UpsampleConvLayer
from tdms.nets.tdms_net import TDMSNet
from tdms.training.checks import check_amp
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.step import Aux, clip_losses, optimizer_step

TARGETS = {  # issue 5: (key, goal, devices it applies to)
    "end_to_end_over_forward": (0.9, ("cpu", "cuda")),
    "end_to_end_over_naive": (2.0, ("cpu",)),
    "fp32_fraction_of_peak": (0.6, ("cpu",)),
    "forward_fps": (300.0, ("cuda",)),
    "batched_forward_fps": (1000.0, ("cuda",)),
    "train_cached_over_on_the_fly": (3.0, ("cpu", "cuda")),
}


def conv_macs(model: nn.Module, h: int, w: int) -> int:
    """Multiply-accumulates of one forward at (h, w), from the conv layers' output shapes (on the meta device)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, UpsampleConvLayer):  # 4 phases × 2×2 taps on the input padded by 1 (its conv2d idles)
            c = mod.conv2d
            total += (inp[0].shape[2] + 1) * (inp[0].shape[3] + 1) * 4 * c.out_channels * c.in_channels * 4
        elif isinstance(mod, nn.ConvTranspose2d):  # every input pixel meets every kernel tap
            total += inp[0].numel() // inp[0].shape[0] * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] \
                * mod.kernel_size[1]

    meta = copy.deepcopy(model).to("meta")
    for m in meta.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, UpsampleConvLayer)):
            m.register_forward_hook(hook)
    x = torch.zeros(1, 3, h, w, device="meta")
    # a flow prior (DIS) is not a convolution and cannot run on meta tensors: a given zero prior skips it
    prior = {"prior": torch.zeros(1, 2, h, w, device="meta")} if getattr(model, "flow_prior", False) else {}
    with torch.inference_mode():
        meta(x, x, x, x, **prior)
    return total


def peak_matmul_gflops(device: torch.device, dtype=torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of a large square matmul: the machine's practical roofline for conv layers."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def make_clip(input_dir: Path, processed_dir: Path, frames: int, h: int, w: int, seed: int = 0):
    """A real photograph panning 4 px a frame at (h, w), and a flickering 'processed' copy: JPEG frames (as in
    Lai et al.'s data)."""
    rng = np.random.default_rng(seed)
    photo = cv2.resize(skdata.coffee(), (w + 4 * frames, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    for t in range(frames):
        f = photo[:, 4 * t:4 * t + w]
        write_frame(input_dir / f"{t:05d}.jpg", f, quality=95)
        write_frame(processed_dir / f"{t:05d}.jpg", np.clip(f * rng.uniform(0.9, 1.1), 0, 1), quality=95)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


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


def route_ms(fn, x: torch.Tensor, device: torch.device, amp: str, reps: int) -> tuple[torch.Tensor, float, float]:
    """fn(x)'s output, and ms forward and forward+backward (the best of `reps`, after a warm-up) under `amp`."""
    dt = AMP[amp]

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dt or torch.float32, enabled=dt is not None):
            return fn(x)

    def both():
        with torch.autocast(device.type, dt or torch.float32, enabled=dt is not None):
            y = fn(x.detach().requires_grad_())
        y.float().sum().backward()

    times = []
    for run in (forward, both):
        run()  # kernel choice
        times.append(1e3 * min(timed(run, device) for _ in range(reps)))
    return forward().float(), times[0], times[1]


def output_layer_routes(model, device: torch.device, h: int, w: int, amp: str, channels_last: bool,
                        reps: int = 3) -> dict:
    """The model's narrow k×k output layers (ColumnConvLayer) on h×w inputs, in `amp` and the memory format, by the
    plain conv and by columns: ms forward and forward+backward and the largest difference of the two outputs. It
    says whether the column route pays on the device (forward takes it on ColumnConvLayer.devices only, CPU).
    Layers are copied: the model's own parameters get no gradients."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, ColumnConvLayer):
            continue
        layer = copy.deepcopy(layer).float().to(device, memory_format=fmt)
        x = torch.rand(1, layer.conv2d.in_channels, h, w, device=device).contiguous(memory_format=fmt)
        x = x.to(AMP[amp]) if AMP[amp] else x
        plain, *plain_ms = route_ms(lambda x, layer=layer: ConvLayer.forward(layer, x), x, device, amp, reps)
        cols, *cols_ms = route_ms(layer.by_columns, x, device, amp, reps)
        out[name] = {"plain_forward_ms": plain_ms[0], "plain_forward_backward_ms": plain_ms[1],
                     "columns_forward_ms": cols_ms[0], "columns_forward_backward_ms": cols_ms[1],
                     "max_abs_diff": (plain - cols).abs().max().item()}
    return out


def forward_variants(device: torch.device) -> list[tuple[str, bool]]:
    variants = [("fp32", False), ("fp32", True), ("bf16", True)]
    return variants + [("fp16", True)] if device.type == "cuda" else variants


def measure_size(model, device: torch.device, h: int, w: int, frames: int, batch_videos: int, workdir: Path,
                 dtype: str, channels_last, compile: bool, cuda_graph: bool, peak, log) -> dict:
    """All inference figures at one frame size; `peak(dtype)` gives the matmul GFLOP/s of a dtype."""
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
    # the ratio of these two is a target: each is the best of two runs, interleaved, against the machine's noise
    e2e, fwd = [], []
    for k in range(2):
        e2e.append(end_to_end_fps(step, device, clips[0], workdir / f"{w}x{h}" / f"out{k}"))
        fwd.append(forward_fps(step, device, h, w, frames))
    r["end_to_end_fps"], r["forward_fps"] = max(e2e), max(fwd)
    naive_s = timed(lambda: naive_frames_on_disk(model, device, clips[0], workdir / f"{w}x{h}" / "naive"), device)
    r["naive_fps"] = frames / naive_s
    r["batched_videos"] = batch_videos
    r["batched_fps"] = batched_fps(step, device, clips, workdir / f"{w}x{h}" / "batched")
    r["batched_forward_fps"] = forward_fps(step, device, h, w, frames, batch_videos)
    r["end_to_end_over_forward"] = r["end_to_end_fps"] / r["forward_fps"]
    r["end_to_end_over_naive"] = r["end_to_end_fps"] / r["naive_fps"]
    r["peak_gflops"] = peak(dtype)
    r["achieved_gflops"] = 2 * gmac * r["forward_fps"]
    r["fraction_of_peak"] = r["achieved_gflops"] / r["peak_gflops"]
    r["fp32_forward_fps"] = r["forward_variants"]["fp32 channels_last"]
    r["fp32_achieved_gflops"] = 2 * gmac * r["fp32_forward_fps"]
    r["fp32_peak_gflops"] = peak("fp32")
    r["fp32_fraction_of_peak"] = r["fp32_achieved_gflops"] / r["fp32_peak_gflops"]
    r["peak_memory_mb"] = peak_memory_mb(device)
    return r


class PlaceholderFlows:
    """Stands in for the flow cache when F* is computed in the training step: zero flows of the frames' size."""

    def __init__(self, cache: FlowCache):
        self.cache = cache

    def pair(self, video, t: int, gap: int = 1):
        z = torch.zeros(2, *self.cache.source(video).size)
        return z, z, None


def flows_on_crops(backend, ins: torch.Tensor) -> torch.Tensor:
    """F*_t = flow(I_t -> I_{t-1}) for a batch of clips (B,S,3,h,w) -> (B,S-1,2,h,w), one backend call."""
    b, s = ins.shape[:2]
    f = backend(ins[:, 1:].flatten(0, 1), ins[:, :-1].flatten(0, 1))
    return f.reshape(b, s - 1, *f.shape[1:])


def train_rate(model, cfg: Config, ds: ClipDataset, device: torch.device, steps: int, aux: Aux,
               backend=None) -> tuple[float, float]:
    """(training steps/s, seconds of flow a step) through the trainer's loader, precision and optimizer step;
    with `backend`, F* is computed every step (timed apart) instead of read from the cache."""
    opt = torch.optim.Adam(model.parameters(), cfg.optim.lr)
    w = cfg.data.workers
    loader = DataLoader(ds, cfg.train.batch, sampler=range((steps + 1) * cfg.train.batch), num_workers=w,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if w else None)
    start, flow_s = None, 0.0
    for k, batch in enumerate(loader):
        if k == 1:  # step 0 is a warm-up
            sync(device)
            start, flow_s = time.perf_counter(), 0.0
        batch = {key: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for key, v in batch.items()}
        if backend is not None:
            sync(device)
            t = time.perf_counter()
            batch["flow"] = flows_on_crops(backend, batch["input"])
            sync(device)
            flow_s += time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        clip_losses(model, batch, cfg, aux)
        optimizer_step(model, opt, aux.scaler, 0.0)
    sync(device)
    return steps / (time.perf_counter() - start), flow_s / steps


def make_lai_set(root: Path, videos: int, frames: int, h: int, w: int) -> Path:
    """A small Lai et al. layout: root/train/{input,processed/flicker}/bench/v<k>, root/lists/."""
    for k in range(videos):
        make_clip(root / "train" / "input" / "bench" / f"v{k}",
                  root / "train" / "processed" / "flicker" / "bench" / f"v{k}", frames, h, w, seed=k)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / "bench_train.txt").write_text("".join(f"v{k}\n" for k in range(videos)))
    (root / "lists" / "train_tasks.txt").write_text("bench flicker\n")
    return root


def measure_training(device: torch.device, workdir: Path, crop: int, steps: int, flow: str,
                     size: tuple[int, int], log, flow_checkpoint: str = "", amp: str = "fp32",
                     channels_last: bool = False) -> dict:
    """Training steps/s with flows from the cache against flows computed on the fly by the same backend, both in
    the trainer's way: its DataLoader (data.workers), `amp` autocast and memory format. The flow itself runs in
    fp32, as the trainer runs its flow networks."""
    cfg = Config()
    cfg.data.crop = crop
    cfg.loss.perceptual = 0.0  # VGG16 weights are not shipped (docs/weights.md); the same for both variants
    root = make_lai_set(workdir / "lai", videos=2, frames=cfg.data.sample_frames + 1, h=size[0], w=size[1])
    clips = find_clips(root, "train", root / "lists" / "train_tasks.txt")
    backend = build_flow(flow, device=device, checkpoint=flow_checkpoint)
    cache = FlowCache(root / "cache", backend)
    log(f"training: flow cache ({backend.name})")
    for video in sorted({c.input_dir for c in clips}):
        cache.prepare(video, progress=False)

    def dataset(flows):
        d = cfg.data
        return ClipDataset(clips, flows, d.sample_frames, crop, d.scale_min, d.scale_max, d.augment, cfg.train.seed)

    check_amp(amp, device)
    torch.manual_seed(0)
    model = TDMSNet(cfg.model.nf).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    aux = Aux(amp=AMP[amp], scaler=scaler, channels_last=channels_last)
    reset_peak_memory(device)
    log(f"training: {steps} steps at crop {crop}, {amp}, flows cached")
    cached, _ = train_rate(model, cfg, dataset(cache), device, steps, aux)
    log(f"training: {steps} steps at crop {crop}, {amp}, flows on the fly")
    fly, flow_s = train_rate(model, cfg, dataset(PlaceholderFlows(cache)), device, steps, aux, backend)
    b = cfg.train.batch
    return {"train_crop": crop, "train_batch": b, "train_sample_frames": cfg.data.sample_frames,
            "train_flow": backend.name, "train_amp": amp, "train_channels_last": channels_last,
            "train_workers": cfg.data.workers, "train_steps_per_s_cached": cached,
            "train_steps_per_s_on_the_fly": fly, "train_samples_per_s_cached": cached * b,
            "train_samples_per_s_on_the_fly": fly * b, "train_cached_over_on_the_fly": cached / fly,
            "train_flow_s_per_step": flow_s, "train_peak_memory_mb": peak_memory_mb(device)}


def check_targets(r: dict, device: torch.device) -> list[dict]:
    """Issue 5's goals that apply to this device, against the figures (the first size for per-size ones)."""
    out = []
    for key, (goal, devices) in TARGETS.items():
        if device.type in devices and key in r:
            out.append({"key": key, "value": r[key], "goal": goal, "met": r[key] >= goal})
    return out


def run(sizes: list[tuple[int, int]], frames: int, device: torch.device, workdir: Path, checkpoint: str = "",
        dtype: str = "auto", channels_last=None, compile: bool = False, cuda_graph: bool = False,
        batch_videos: int = 2, train_crop: int = 192, train_steps: int = 2, train_flow: str = "dis",
        peak_seconds: float = 2.0, log=print, train_flow_checkpoint: str = "") -> dict:
    """Every figure, in one run. sizes: (H, W) pairs. dtype: auto (the fastest forward variant) or one of
    runner.AMP, with channels_last True/False (None: on). Training runs on frames of the first size;
    train_steps 0 skips it. The top level holds the first size's figures (the keys of the first version) and the
    device-wide ones; "sizes" holds every size's."""
    from tdms.nets.build import load_model

    model = load_model(checkpoint, device) if checkpoint else TDMSNet().to(device).eval()
    peaks: dict[str, float] = {}

    def peak(name: str) -> float:
        if name not in peaks:
            log(f"matmul peak ({name})")
            peaks[name] = peak_matmul_gflops(device, AMP[name] or torch.float32, seconds=peak_seconds)
        return peaks[name]

    cl = True if channels_last is None else channels_last
    per_size = [measure_size(model, device, h, w, frames, batch_videos, workdir, dtype, cl, compile, cuda_graph,
                             peak, log) for h, w in sizes]
    r = {**per_size[0], "device": device_name(device), "torch": torch.__version__,
         "mkldnn": torch.backends.mkldnn.is_available(), "threads": torch.get_num_threads(), "sizes": per_size}
    if train_steps > 0:
        r.update(measure_training(device, workdir, train_crop, train_steps, train_flow, sizes[0], log,
                                  train_flow_checkpoint, r["dtype"], r["channels_last"]))
    r["targets"] = check_targets(r, device)
    return r
