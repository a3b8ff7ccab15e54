"""Training steps/s of TDMS-Net on this machine: flows from the flow cache against flows computed on the fly by the
same backend, both in the trainer's way (its DataLoader, autocast, memory format). Part of scripts/bench/benchmark.py.
"""

import time
from pathlib import Path

import torch
from kernels import make_clip, peak_memory_mb, reset_peak_memory, sync
from torch.utils.data import DataLoader

from tdms.config import Config
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.inference.fast import AMP
from tdms.nets.tdms_net import TDMSNet
from tdms.training.checks import check_amp
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.step import Aux, clip_losses, optimizer_step


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
