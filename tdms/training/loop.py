"""The training loop: one function, counted in steps (forward, loss, backward, step, log, checkpoint).

Trains TDMS-Net or Lai et al.'s network (model.arch) with the loss terms of tdms/training/step.py that apply to it.
GPU options: train.amp (bf16/fp16 autocast of the networks' forward; fp16 with a GradScaler kept in the
checkpoints), train.channels_last and train.compile. Frozen networks (flow, VGG; tdms/training/frozen.py) never
enter the optimizer or the checkpoints.

Several processes: `torchrun --nproc-per-node N $(which tdms-train) --config ...` runs DistributedDataParallel
(tdms/distributed.py). train.batch is the global batch, split evenly over the ranks, and global step s trains on
samples s·batch ... (s+1)·batch - 1 whatever the world size (the sample of index k is a function of the seed and
k), so a run resumes exactly with another number of processes. Rank 0 alone logs and writes checkpoints.
"""

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tdms import distributed, interrupts
from tdms.checkpoint import best_of, training_state
from tdms.config import Config, save_config
from tdms.devices import pick_device
from tdms.errors import UserError
from tdms.files import save_atomic
from tdms.nets.build import build_model
from tdms.training.checks import (
    batches,
    check_amp,
    check_data_root,
    check_resume_config,
    check_run_folder,
    check_settings,
    git_sha,
    write_run_record,
)
from tdms.training.dataset import build_data, make_loader
from tdms.training.frozen import build_aux
from tdms.training.step import NonFiniteLoss, clip_losses, optimizer_step
from tdms.training.validation import Validator
from tdms.weights import load_strict, read_checkpoint

LAST = "last.pth"


def train(cfg: Config, resume: bool = False, init_weights: str = "") -> Path:
    """Train the network of cfg.model as `cfg` says; checkpoints go to cfg.train.out/last.pth. Returns that path."""
    out = Path(cfg.train.out)
    last = out / LAST
    check_run_folder(last, resume)
    check_settings(cfg)
    check_data_root(cfg.data.root)
    device, world = start(cfg)
    ckpt = None
    if resume:
        ckpt = read_checkpoint(last)
        check_resume_config(cfg, ckpt["config"], ckpt["step"], last)
    model, opt, sched, scaler, step = build_state(cfg, device, ckpt, last, init_weights)
    aux, backend = build_aux(cfg, device, scaler)
    ds = build_data(cfg, backend, world)
    sha = git_sha()
    if world.main:  # only now that the data and the checkpoint passed their checks
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_run_record(out, sha, device, step, world)
    tb = SummaryWriter(out / "tb") if world.main else None
    validator = None
    if cfg.train.val_every and world.main:  # the validation data is checked before any training step
        validator = Validator(cfg, out, tb, best_of(ckpt) if ckpt else None, step)
    loader = make_loader(ds, step, cfg, world, device)
    forward = wrap(model, cfg, world, device, aux)
    log = LossLog(world, device, tb)
    model.train()

    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", disable=not world.main)
    try:
        for batch in batches(loader):
            interrupts.check()  # a SIGTERM whose first raise was dropped stops the run here
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
            log.add(total, terms)
            end = step == cfg.train.steps
            if due(step, cfg.train.log_every) or end:
                log.write(step, sched.get_last_lr()[0], bar)
            if due(step, cfg.train.image_every) and world.main:
                log_images(tb, model, batch, step)
            best = validator.best if validator else None
            if validator and (due(step, cfg.train.val_every) or end):
                validator(model, step, partial(training_state, model, opt, sched, scaler, step, cfg, sha), bar)
                best = validator.best
            if (due(step, cfg.train.ckpt_every) or end) and world.main:
                save_atomic(training_state(model, opt, sched, scaler, step, cfg, sha, best), last)
    finally:  # on an error or a signal too: the bar ends its line, the event file is flushed
        bar.close()
        if tb:
            tb.close()
    distributed.barrier(world)  # the last checkpoint is on disk before any rank returns
    return last


def start(cfg: Config) -> tuple[torch.device, distributed.World]:
    """CPU threads, the seed, the device and the world of processes (joined when torchrun started several)."""
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
    return device, world


def lr_factor(cfg: Config):
    """LambdaLR's factor at a step: lr_gamma^(step // lr_step), never below lr_min / lr. The original code's
    schedule (the defaults): Adam at 1e-4, halved every 20 "epochs" of 1000 iterations, floor 1e-5."""
    o = cfg.optim
    return lambda step: max(o.lr_gamma ** (step // o.lr_step), o.lr_min / o.lr)


def build_state(cfg: Config, device: torch.device, ckpt: dict | None, last: Path, init_weights: str):
    """The model, its Adam optimizer, LR schedule and fp16 GradScaler (None otherwise), and the step they are at:
    as `ckpt` (a resumed run's checkpoint, read from `last`) left them, or fresh at step 0, from init_weights'
    weights when given. Loading is strict."""
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    if not ckpt:
        if init_weights:
            load_strict(model, read_checkpoint(init_weights)["model"], init_weights)
        return model, opt, sched, scaler, 0
    load_strict(model, ckpt["model"], last)
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if scaler and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return model, opt, sched, scaler, ckpt["step"]


def wrap(model, cfg: Config, world: distributed.World, device: torch.device, aux):
    """What the loop runs: `model` in DistributedDataParallel with several processes (its no_sync goes to `aux`),
    compiled with train.compile. Checkpoints keep `model`'s own names."""
    forward = model
    if world.distributed:
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        aux.no_sync = forward.no_sync
    if cfg.train.compile:
        forward = torch.compile(forward)
    return forward


def due(step: int, every: int) -> bool:
    """Whether a periodic action (log, images, checkpoint) falls on `step`; every = 0 turns it off."""
    return every > 0 and step % every == 0


@dataclass
class LossLog:
    """Running sums of the loss terms since the last log line, written as means over the global batch: one line
    on rank 0's progress bar and TensorBoard scalars."""

    world: distributed.World
    device: torch.device
    tb: SummaryWriter | None
    sums: dict[str, float] = field(default_factory=dict)
    n: int = 0
    since: float = field(default_factory=time.time)

    def add(self, total: float, terms: dict[str, float]):
        for k, v in {"total": total, **terms}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def write(self, step: int, lr: float, bar: tqdm):
        names = sorted(self.sums)  # every rank's sums, added
        sums = distributed.sum_floats([self.sums[k] for k in names], self.world, self.device)
        means = {k: v / (self.n * self.world.size) for k, v in zip(names, sums, strict=True)}
        rate = self.n / (time.time() - self.since)
        if self.world.main:
            for k, v in means.items():
                self.tb.add_scalar(f"loss/{k}", v, step)
            self.tb.add_scalar("lr", lr, step)
            bar.write(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                      + f" lr {lr:.2e} {rate:.2f} step/s")
        self.sums, self.n, self.since = {}, 0, time.time()


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
