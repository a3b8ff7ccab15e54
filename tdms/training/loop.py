"""The training loop: one function, counted in steps (STYLE §4).

Trains TDMS-Net or Lai et al.'s network (model.arch) with the losses of DESIGN §5 that apply to it.
GPU options: train.amp (bf16/fp16 autocast of the networks' forward; fp16 with a GradScaler kept in the
checkpoints), train.channels_last and train.compile. Frozen networks (flow, VGG) never enter the optimizer or
the checkpoints.

Several processes: `torchrun --nproc-per-node N $(which tdms-train) --config ...` runs DistributedDataParallel
(tdms/distributed.py). train.batch is the global batch, split evenly over the ranks, and global step s trains on
samples s·batch ... (s+1)·batch - 1 whatever the world size (the sample of index k is a function of the seed and
k), so a run resumes exactly with another number of processes. Rank 0 alone logs and writes checkpoints.
"""

import copy
import math
import subprocess
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tdms import distributed
from tdms.checkpoint import atomic_save, training_state
from tdms.config import Config, pick_device, save_config
from tdms.errors import MissingFile, OutputExists, UserError
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.inference.fast import AMP
from tdms.nets.build import build_model
from tdms.training import losses as L
from tdms.training.checks import batches, check_resume_config, check_settings, write_run_record
from tdms.training.dataset import ClipDataset, check_processed, find_clips
from tdms.training.step import Aux, NonFiniteLoss, clip_losses, optimizer_step
from tdms.weights import load_strict, read_checkpoint

LAST = "last.pth"






def git_sha(where: Path = Path(__file__).parent) -> str:
    """The commit of the code that runs, "-dirty" when it has uncommitted changes (run.json records it)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, cwd=where, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"




def lr_factor(cfg: Config):
    o = cfg.optim
    return lambda step: max(o.lr_gamma ** (step // o.lr_step), o.lr_min / o.lr)


def build_flow_backend(cfg: Config, device: torch.device):
    """cfg.flow's backend; flow.device 'auto' runs it where the model trains."""
    where = device if cfg.flow.device == "auto" else pick_device(cfg.flow.device)
    return build_flow(cfg.flow.backend, preset=cfg.flow.preset, device=where, checkpoint=cfg.flow.checkpoint)


def differentiable(backend):
    """A twin of a network backend (same frozen weights, no copy) through which gradients reach the images."""
    if not hasattr(backend, "differentiable"):
        raise UserError(f"loss.flow_cycle needs a flow network gradients can pass through (flow.backend flownet2, "
                         f"raft or raft-small); the {backend.name} backend is not (OpenCV DIS has no gradients). "
                         f"Set loss.flow_cycle=0 or choose such a backend.")
    twin = copy.copy(backend)
    twin.differentiable = True
    return twin


def check_flow_input(flow, crop: int, device: torch.device):
    """Run `flow` once on a crop-sized pair: a crop the network cannot take fails now, not after the cache."""
    x = torch.zeros(1, 3, crop, crop, device=device)
    try:
        with torch.no_grad():
            flow(x, x)
    except ValueError as e:
        raise UserError(f"data.crop={crop} is too small for the flow terms computed on the crops: {e}") from None


def build_data(cfg: Config, backend=None, world: distributed.World = distributed.ONE
               ) -> tuple[ClipDataset, FlowCache]:
    """The clips of cfg.data with their flows cached (computed once per backend; slow for networks on CPU).

    With several processes each fills the cache for its share of the videos (entries are written atomically),
    then all wait for the others."""
    root = Path(cfg.data.root)
    clips = find_clips(root, cfg.data.phase, root / cfg.data.tasks_list)
    backend = backend or build_flow(cfg.flow.backend, preset=cfg.flow.preset)
    cache = FlowCache(Path(cfg.data.flow_cache or root / "cache" / "flow"), backend)
    d = cfg.data
    for clip in clips:  # every processed frame, before the flows are computed: a bad one fails now, by name
        check_processed(clip, cache.source(clip.input_dir).size)
    ds = ClipDataset(clips, cache, d.sample_frames, d.crop, d.scale_min, d.scale_max, d.augment, cfg.train.seed,
                     frame_gap=d.frame_gap)
    videos = distributed.shard(sorted({c.input_dir for c in clips}), world)
    for video in tqdm(videos, desc="flow cache", unit="video", disable=not world.main):
        try:
            cache.prepare(video, progress=False, gaps=ds.gaps())
        except ValueError as e:
            raise UserError(f"{video}: {e}") from None
    distributed.barrier(world)
    return ds, cache








def due(step: int, every: int) -> bool:
    """Whether a periodic action (log, images, checkpoint) falls on `step`; every = 0 turns it off."""
    return every > 0 and step % every == 0


def check_amp(amp: str, device: torch.device):
    if amp not in AMP:
        raise UserError(f"train.amp must be one of {list(AMP)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device (its GradScaler is CUDA's); use bf16 on CPU")


def train(cfg: Config, resume: bool = False, init_weights: str = "") -> Path:
    """Train the network of cfg.model as `cfg` says; checkpoints go to cfg.train.out/last.pth. Returns that path."""
    out = Path(cfg.train.out)
    last = out / LAST
    if last.exists() and not resume:
        raise OutputExists(f"{out} already holds a run ({last}); pass --resume to continue it or pick another out")
    if resume and not last.exists():
        raise MissingFile(f"--resume: no checkpoint at {last}")
    check_settings(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    device = pick_device(cfg.train.device)
    world = distributed.from_env()
    if cfg.train.batch % world.size:
        raise UserError(f"train.batch={cfg.train.batch} is the global batch: it must divide evenly over the "
                         f"{world.size} processes")
    distributed.init(device.type)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    check_amp(cfg.train.amp, device)
    ckpt = None
    if resume:
        ckpt = read_checkpoint(last)
        check_resume_config(cfg, ckpt["config"], last)

    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    step = 0
    if ckpt:
        load_strict(model, ckpt["model"], last)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
    elif init_weights:
        load_strict(model, read_checkpoint(init_weights)["model"], init_weights)
    w = cfg.loss
    vgg = L.VGGFeatures(L.vgg16_weights_path(w.vgg_weights)).to(device) if w.perceptual > 0 else None
    backend = build_flow_backend(cfg, device)
    aux = Aux(vgg, backend if w.long_term > 0 else None, differentiable(backend) if w.flow_cycle > 0 else None,
              AMP[cfg.train.amp], scaler, cfg.train.channels_last)
    if aux.flow or aux.cycle_flow:
        check_flow_input(backend, cfg.data.crop, device)
    if cfg.model.flow_prior not in ("none", backend.name):
        raise UserError(f"model.flow_prior={cfg.model.flow_prior} must be the training flow ({backend.name}): "
                         "the cached F* is the prior during training, so inference must compute the same flow")
    if cfg.model.arch == "lai" and (w.flow > 0 or w.mask > 0):
        print(f"note: model.arch={cfg.model.arch} has no flow/mask heads; loss.flow and loss.mask do not apply")

    ds, _ = build_data(cfg, backend, world)
    sha = git_sha()
    if world.main:  # only now that the data and the checkpoint passed their checks
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_run_record(out, sha, device, step, world)
    # the samples of the remaining global steps; each rank takes every world.size-th, so a global batch holds
    # the same samples for any number of processes
    remaining = Samples(ds, step * cfg.train.batch, cfg.train.steps * cfg.train.batch)
    sampler = DistributedSampler(remaining, world.size, world.rank, shuffle=False) if world.distributed else None
    loader = DataLoader(remaining, cfg.train.batch // world.size, sampler=sampler, num_workers=cfg.data.workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.data.workers > 0)
    forward = model  # checkpoints keep `model`'s names
    if world.distributed:
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        aux.no_sync = forward.no_sync
    if cfg.train.compile:
        forward = torch.compile(forward)
    tb = SummaryWriter(out / "tb") if world.main else None
    running: dict[str, float] = {}
    n_run, t_log = 0, time.time()
    model.train()

    def save():
        if world.main:
            atomic_save(training_state(model, opt, sched, scaler, step, math.nan, cfg, sha), last)

    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", disable=not world.main)
    for batch in batches(loader):
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        try:
            total, terms = clip_losses(forward, batch, cfg, aux)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"step {step + 1}: {e}") from None
        optimizer_step(model, opt, scaler, cfg.optim.grad_clip)
        sched.step()
        step += 1
        bar.update(1)
        for k, v in {"total": total, **terms}.items():
            running[k] = running.get(k, 0.0) + v
        n_run += 1
        if due(step, cfg.train.log_every) or step == cfg.train.steps:
            names = sorted(running)  # means over the global batch: every rank's sums, added
            sums = distributed.sum_floats([running[k] for k in names], world, device)
            means = {k: v / (n_run * world.size) for k, v in zip(names, sums, strict=True)}
            rate = n_run / (time.time() - t_log)
            if world.main:
                for k, v in means.items():
                    tb.add_scalar(f"loss/{k}", v, step)
                tb.add_scalar("lr", sched.get_last_lr()[0], step)
                bar.write(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                          + f" lr {sched.get_last_lr()[0]:.2e} {rate:.2f} step/s")
            running, n_run, t_log = {}, 0, time.time()
        if due(step, cfg.train.image_every) and world.main:
            log_images(tb, model, batch, step)
        if due(step, cfg.train.ckpt_every) or step == cfg.train.steps:
            save()
    bar.close()
    if tb:
        tb.close()
    distributed.barrier(world)  # the last checkpoint is on disk before any rank returns
    return last


class Samples(Dataset):
    """Samples first ... end - 1 of a ClipDataset (sample k is a function of the seed and k), as 0 ... n - 1."""

    def __init__(self, ds: ClipDataset, first: int, end: int):
        self.ds, self.first, self.n = ds, first, max(0, end - first)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        return self.ds[self.first + k]


@torch.no_grad()
def log_images(tb: SummaryWriter, model, batch: dict, step: int):
    """Frame 1 of the first clip: I_t | P_t | O_t (| mask, for TDMS-Net)."""
    model.eval()
    i = batch["input"][:1]
    p = batch["processed"][:1]
    out = model(i[:, 0], i[:, 1], p[:, 0], p[:, 1])
    parts = [i[0, 1], p[0, 1], out["output"][0].clamp(0, 1)] + ([out["mask"][0]] if "mask" in out else [])
    tb.add_image("I | P | O | M", torch.cat([x.float() for x in parts], dim=2), step)
    model.train()
