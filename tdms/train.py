"""The training loop: one function, counted in steps (STYLE §4)."""

import json
import math
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tdms import losses as L
from tdms.checkpoint import atomic_save, load_state, read_checkpoint, training_state
from tdms.config import Config, save_config
from tdms.dataset import ClipDataset, find_clips
from tdms.flow import build_flow
from tdms.flow.cache import FlowCache
from tdms.flow.occlusion import visibility_mask
from tdms.model import TDMSNet
from tdms.warp import warp

LAST = "last.pth"


class NonFiniteLoss(RuntimeError):
    pass


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
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


def build_data(cfg: Config) -> tuple[ClipDataset, FlowCache]:
    root = Path(cfg.data.root)
    clips = find_clips(root, cfg.data.phase, root / cfg.data.tasks_list)
    backend = build_flow(cfg.flow.backend, preset=cfg.flow.preset)
    cache = FlowCache(Path(cfg.data.flow_cache or root / "cache" / "flow"), backend)
    for video in tqdm(sorted({c.input_dir for c in clips}), desc="flow cache", unit="video"):
        cache.prepare(video, progress=False)
    ds = ClipDataset(clips, cache, cfg.data.sample_frames, cfg.data.crop, cfg.data.scale_min,
                     cfg.data.scale_max, cfg.data.augment, cfg.train.seed)
    return ds, cache


def step_losses(out: dict, o_prev, o_first, p_t, f_star, vis, w, vgg=None, long=None) -> dict:
    """Unweighted loss terms of one recurrence step, only those with a non-zero weight."""
    o_t = out["output"]
    terms = {}
    if w.temporal > 0:
        terms["temporal"] = L.temporal_loss(o_t, L.warp_target(o_prev, f_star), vis)
    if w.fidelity > 0:
        terms["fidelity"] = L.fidelity_loss(o_t, p_t)
    if w.flow > 0:
        terms["flow"] = L.flow_loss(out["flow"], f_star)
    if w.mask > 0:
        terms["mask"] = L.mask_loss(out["mask"], vis)
    if w.perceptual > 0:
        terms["perceptual"] = L.perceptual_loss(vgg, o_t, p_t)
    if long is not None:  # (F*_{t->0}, its visibility)
        terms["long_term"] = L.temporal_loss(o_t, L.warp_target(o_first, long[0]), long[1])
    return terms


def clip_losses(model, batch: dict, cfg: Config, vgg=None, long_flow=None) -> tuple[float, dict]:
    """Run the recurrence over one batch of clips (O_0 = P_0, O_{t-1} detached) and sum the weighted losses.

    Each step's loss is backpropagated at once (memory stays flat); returns the total and each term's mean.
    """
    w = cfg.loss
    ins, ps, flows = batch["input"], batch["processed"], batch["flow"]
    steps = ins.shape[1] - 1
    o_prev = o_first = ps[:, 0]
    means: dict[str, float] = {}
    total = 0.0
    for t in range(1, steps + 1):
        i_prev, i_t, p_t, f_star = ins[:, t - 1], ins[:, t], ps[:, t], flows[:, t - 1]
        out = model(i_prev, i_t, o_prev.detach(), p_t)
        vis = visibility_mask(i_t, warp(i_prev, f_star), w.alpha, w.squared_norm)
        long = None
        if w.long_term > 0 and t > 1:
            f0 = long_flow(i_t, ins[:, 0])
            long = (f0, visibility_mask(i_t, warp(ins[:, 0], f0), w.alpha, w.squared_norm))
        terms = step_losses(out, o_prev, o_first, p_t, f_star, vis, w, vgg, long)
        loss = sum(getattr(w, name) * value for name, value in terms.items())
        for name, value in terms.items():
            means[name] = means.get(name, 0.0) + value.item() / steps
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss at frame {t} of {batch['name']}: {means}")
        (loss / steps).backward()
        total += loss.item() / steps
        o_prev = out["output"]
    return total, means


def train(cfg: Config, resume: bool = False, init_weights: str = "") -> Path:
    """Train TDMS-Net as `cfg` says; checkpoints go to cfg.train.out/last.pth. Returns that path."""
    out = Path(cfg.train.out)
    last = out / LAST
    if last.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it or pick another out")
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)

    model = TDMSNet(cfg.model.nf, cfg.model.norm, cfg.model.original_quirks).to(device)
    opt = torch.optim.Adam(model.parameters(), cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    step = 0
    if resume:
        ckpt = read_checkpoint(last)
        load_state(model, ckpt["model"], str(last))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
    elif init_weights:
        load_state(model, read_checkpoint(init_weights)["model"], init_weights)
    vgg = L.VGGFeatures(L.vgg16_weights_path(cfg.loss.vgg_weights)).to(device) if cfg.loss.perceptual > 0 else None
    long_flow = build_flow(cfg.flow.backend, preset=cfg.flow.preset) if cfg.loss.long_term > 0 else None

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    sha = git_sha()
    (out / "run.json").write_text(json.dumps({"git": sha, "device": str(device), "resumed_at": step}))
    ds, _ = build_data(cfg)
    sampler = range(step * cfg.train.batch, cfg.train.steps * cfg.train.batch)
    loader = DataLoader(ds, cfg.train.batch, sampler=sampler, num_workers=cfg.data.workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.data.workers > 0)
    tb = SummaryWriter(out / "tb")
    running: dict[str, float] = {}
    n_run, t_log = 0, time.time()
    model.train()

    def save():
        atomic_save(training_state(model, opt, sched, None, step, math.nan, cfg, sha), last)

    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step")
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        total, terms = clip_losses(model, batch, cfg, vgg, long_flow)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        for k, v in {"total": total, **terms}.items():
            running[k] = running.get(k, 0.0) + v
        n_run += 1
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            means = {k: v / n_run for k, v in running.items()}
            rate = n_run / (time.time() - t_log)
            for k, v in means.items():
                tb.add_scalar(f"loss/{k}", v, step)
            tb.add_scalar("lr", sched.get_last_lr()[0], step)
            bar.write(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                      + f" lr {sched.get_last_lr()[0]:.2e} {rate:.2f} step/s")
            running, n_run, t_log = {}, 0, time.time()
        if step % cfg.train.image_every == 0:
            log_images(tb, model, batch, step)
        if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
            save()
    bar.close()
    tb.close()
    return last


@torch.no_grad()
def log_images(tb: SummaryWriter, model, batch: dict, step: int):
    """Frame 1 of the first clip: I_t | P_t | O_t | mask."""
    model.eval()
    i = batch["input"][:1]
    p = batch["processed"][:1]
    out = model(i[:, 0], i[:, 1], p[:, 0], p[:, 1])
    row = torch.cat([i[0, 1], p[0, 1], out["output"][0].clamp(0, 1), out["mask"][0]], dim=2)
    tb.add_image("I | P | O | M", row, step)
    model.train()
