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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tdms import distributed
from tdms import losses as L
from tdms.checkpoint import atomic_save, build_model, load_state, read_checkpoint, training_state
from tdms.config import Config, save_config
from tdms.dataset import ClipDataset, check_processed, find_clips
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.flow.occlusion import visibility_mask
from tdms.runner import AMP
from tdms.train_checks import batches, check_resume_config, check_settings, show_terms, write_run_record
from tdms.warp import warp

LAST = "last.pth"


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Aux:
    """What a training step needs besides the model and the batch: frozen networks and precision settings."""

    vgg: L.VGGFeatures | None = None  # perceptual term
    flow: object = None  # flow backend, no autograd: F*_{t->0} of the long-term term, on the crops
    cycle_flow: object = None  # the same network with autograd on: the flow-cycle term
    amp: torch.dtype | None = None  # autocast dtype of the forward passes; None = fp32
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    channels_last: bool = False
    no_sync: object = None  # DDP's no_sync: gradients are all-reduced once, on a clip's last frame

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.amp) if self.amp else nullcontext()

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def git_sha(where: Path = Path(__file__).parent) -> str:
    """The commit of the code that runs, "-dirty" when it has uncommitted changes (run.json records it)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, cwd=where, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no GPU")
    return torch.device(name)


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
        raise ValueError(f"loss.flow_cycle needs a flow network gradients can pass through (flow.backend flownet2, "
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
        raise ValueError(f"data.crop={crop} is too small for the flow terms computed on the crops: {e}") from None


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
            raise ValueError(f"{video}: {e}") from None
    distributed.barrier(world)
    return ds, cache


def step_losses(out: dict, f: dict, w, aux: Aux, long=None) -> dict:
    """Unweighted loss terms of one recurrence step, only those with a non-zero weight that apply to the model.

    f: i_prev, i_t, o_prev, o_first, p_t (B,3,H,W), f_star (B,2,H,W), vis (B,1,H,W); long: (F*_{t->0}, V_0).
    The flow and mask terms need TDMS-Net's heads and are skipped for models without them (Lai et al.'s).
    """
    o_t = out["output"]
    terms = {}
    if w.temporal > 0:
        terms["temporal"] = L.temporal_loss(o_t, L.warp_target(f["o_prev"], f["f_star"]), f["vis"])
    if w.fidelity > 0:
        terms["fidelity"] = L.fidelity_loss(o_t, f["p_t"])
    if w.flow > 0 and "flow" in out:
        terms["flow"] = L.flow_loss(out["flow"], f["f_star"])
    if w.mask > 0 and "mask" in out:
        target = f["vis"]
        if w.mask_target == "own_flow":  # where the net's own (detached) flow really aligns the frames
            target = visibility_mask(f["i_t"], warp(f["i_prev"], out["flow"].detach()), w.alpha, w.squared_norm)
        occluded = target < w.mask_balance if w.mask_balance > 0 else None
        terms["mask"] = L.mask_loss(out["mask"], w.mask_scale * target, w.mask_norm, occluded)
    if w.perceptual > 0:
        terms["perceptual"] = L.perceptual_loss(aux.vgg, o_t, f["p_t"]).float()
    if long is not None:
        terms["long_term"] = L.temporal_loss(o_t, L.warp_target(f["o_first"], long[0]), long[1])
    if w.flow_cycle > 0:
        terms["flow_cycle"] = L.flow_cycle_loss(aux.cycle_flow, f["i_prev"], f["i_t"], f["o_prev"], o_t)
    return terms


def clip_losses(model, batch: dict, cfg: Config, aux: Aux | None = None) -> tuple[float, dict]:
    """Run the recurrence over one batch of clips (O_0 = P_0, O_{t-1} detached) and sum the weighted losses.

    Each step's loss is backpropagated at once (memory stays flat); returns the total and each term's mean.
    A recurrent model (Lai et al.'s) gets its state carried across frames, detached between them as in Lai et al.
    """
    aux = aux or Aux()
    w = cfg.loss
    if w.mask_target not in ("flow_star", "own_flow"):
        raise ValueError(f"loss.mask_target must be flow_star or own_flow, got {w.mask_target!r}")
    if not 0 < w.mask_scale <= 1:
        raise ValueError(f"loss.mask_scale must be in (0, 1], got {w.mask_scale}")
    if w.mask_norm not in ("l1", "l2"):
        raise ValueError(f"loss.mask_norm must be l1 or l2, got {w.mask_norm!r}")
    if not 0 <= w.mask_balance < 1:
        raise ValueError(f"loss.mask_balance must be in [0, 1) (a visibility threshold; 0 = off), got {w.mask_balance}")
    ins, ps, flows = batch["input"], batch["processed"], batch["flow"]
    steps = ins.shape[1] - 1
    o_prev = o_first = ps[:, 0]
    state = None
    recurrent = getattr(model, "recurrent", False)
    means: dict[str, float] = {}
    total = 0.0
    for t in range(1, steps + 1):
        i_prev, i_t, p_t, f_star = ins[:, t - 1], ins[:, t], ps[:, t], flows[:, t - 1]
        vis = visibility_mask(i_t, warp(i_prev, f_star), w.alpha, w.squared_norm)
        long = None
        if w.long_term > 0 and t > 1:
            f0 = aux.flow(i_t, ins[:, 0])
            long = (f0, visibility_mask(i_t, warp(ins[:, 0], f0), w.alpha, w.squared_norm))
        # under DDP, the gradients of the clip's frames add up locally and are all-reduced once, on the last
        with aux.no_sync() if aux.no_sync is not None and t < steps else nullcontext():
            with aux.autocast(ins.device):
                extra = {"state": state} if recurrent else {}
                if cfg.model.flow_prior != "none":  # the prior is the flow the cache already holds
                    extra["prior"] = f_star
                out = model(*(aux.fmt(x) for x in (i_prev, i_t, o_prev.detach(), p_t)), **extra)
                state = out.pop("state", None)
                out = {k: v.float() for k, v in out.items()}  # losses in fp32 (a no-op without amp)
                frames = {"i_prev": i_prev, "i_t": i_t, "o_prev": o_prev, "o_first": o_first, "p_t": p_t,
                          "f_star": f_star, "vis": vis}
                terms = step_losses(out, frames, w, aux, long)
            weighted = {name: getattr(w, name) * value for name, value in terms.items()}
            loss = sum(weighted.values())
            for name, value in terms.items():
                means[name] = means.get(name, 0.0) + value.item() / steps
            if not torch.isfinite(loss):
                shown = show_terms(terms, weighted, w)
                raise NonFiniteLoss(f"non-finite loss at frame {t} of {batch['name']}: {shown}")
            scaled = loss / steps
            (aux.scaler.scale(scaled) if aux.scaler else scaled).backward()
        total += loss.item() / steps
        o_prev = out["output"]
        if state is not None:  # truncated backpropagation through time: one frame
            state = tuple(s.detach() for s in state)
    return total, means


def optimizer_step(model, opt, scaler, grad_clip: float):
    if scaler:
        if grad_clip > 0:
            scaler.unscale_(opt)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)  # skipped when fp16 gradients overflowed
        scaler.update()
        return
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def due(step: int, every: int) -> bool:
    """Whether a periodic action (log, images, checkpoint) falls on `step`; every = 0 turns it off."""
    return every > 0 and step % every == 0


def check_amp(amp: str, device: torch.device):
    if amp not in AMP:
        raise ValueError(f"train.amp must be one of {list(AMP)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device (its GradScaler is CUDA's); use bf16 on CPU")


def train(cfg: Config, resume: bool = False, init_weights: str = "") -> Path:
    """Train the network of cfg.model as `cfg` says; checkpoints go to cfg.train.out/last.pth. Returns that path."""
    out = Path(cfg.train.out)
    last = out / LAST
    if last.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it or pick another out")
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    check_settings(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    device = pick_device(cfg.train.device)
    world = distributed.from_env()
    if cfg.train.batch % world.size:
        raise ValueError(f"train.batch={cfg.train.batch} is the global batch: it must divide evenly over the "
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
        load_state(model, ckpt["model"], str(last))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
    elif init_weights:
        load_state(model, read_checkpoint(init_weights)["model"], init_weights)
    w = cfg.loss
    vgg = L.VGGFeatures(L.vgg16_weights_path(w.vgg_weights)).to(device) if w.perceptual > 0 else None
    backend = build_flow_backend(cfg, device)
    aux = Aux(vgg, backend if w.long_term > 0 else None, differentiable(backend) if w.flow_cycle > 0 else None,
              AMP[cfg.train.amp], scaler, cfg.train.channels_last)
    if aux.flow or aux.cycle_flow:
        check_flow_input(backend, cfg.data.crop, device)
    if cfg.model.flow_prior not in ("none", backend.name):
        raise ValueError(f"model.flow_prior={cfg.model.flow_prior} must be the training flow ({backend.name}): "
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
