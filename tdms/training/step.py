"""One clip's losses: the recurrence over a batch of training clips and the loss terms of each step.

The terms (TDMS-Net, ACM MM 2020, and Lai et al., ECCV 2018), with F* = flow(I_t -> I_{t-1}) from a frozen flow
network and the visibility V = exp(-alpha (sum_c (I_t - warp(I_{t-1}, F*)))^2):
temporal L1(O_t V, warp(O_{t-1}, F*) V), perceptual (VGG16 relu4_3), fidelity L1(O_t, P_t), flow L1(F_t, F*),
mask L1(M_t, V), flow cycle, and Lai et al.'s long-term term (warp towards frame 0); and our log_fidelity
(-PSNR/10) and relative_temporal (E(O)/E(P)), the evaluation's two axes (training/losses.py).
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tdms.config import Config
from tdms.errors import UserError
from tdms.flow.occlusion import visibility_mask
from tdms.flow.warp import warp
from tdms.training import losses as L
from tdms.training.checks import check_mask_settings, show_terms


class NonFiniteLoss(UserError):
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


def step_losses(out: dict, f: dict, w, aux: Aux, long=None) -> dict:
    """Unweighted loss terms of one recurrence step, only those with a non-zero weight that apply to the model.

    f: i_prev, i_t, o_prev, o_first, p_prev, p_t (B,3,H,W), f_star (B,2,H,W), vis (B,1,H,W), and where the
    samples carry it (training.dataset.needs_occlusion) visible (B,1,H,W), 1 - the occlusion of frame t;
    long: (F*_{t->0}, V_0).
    The flow and mask terms need TDMS-Net's heads and are skipped for models without them (Lai et al.'s).
    """
    o_t = out["output"]
    terms = {}
    if w.temporal > 0:
        if w.temporal_mask == "occlusion" and "visible" not in f:
            raise no_occlusion("loss.temporal_mask=occlusion")
        pixels = f["visible"] if w.temporal_mask == "occlusion" else f["vis"]
        terms["temporal"] = L.temporal_loss(o_t, L.warp_target(f["o_prev"], f["f_star"]), pixels, w.norm)
    if w.fidelity > 0:
        terms["fidelity"] = L.fidelity_loss(o_t, f["p_t"], w.norm)
    if w.log_fidelity > 0:
        terms["log_fidelity"] = L.log_fidelity_loss(o_t, f["p_t"], w.log_fidelity_eps)
    if w.relative_temporal > 0:
        warped_p = L.warp_target(f["p_prev"], f["f_star"])
        ratio = L.relative_temporal_loss(o_t, L.warp_target(f["o_prev"], f["f_star"]), f["p_t"], warped_p, f["vis"])
        target = w.relative_temporal_target
        terms["relative_temporal"] = (ratio - target).clamp(min=0) if target > 0 else ratio
    if w.flow > 0 and "flow" in out:
        terms["flow"] = L.flow_loss(out["flow"], f["f_star"])
    if w.mask > 0 and "mask" in out:
        target = f["vis"]
        if w.mask_target == "occlusion":  # 1 - the forward-backward occlusion: the pixels the warping error counts
            if "visible" not in f:
                raise no_occlusion("loss.mask_target=occlusion")
            target = f["visible"]
        elif w.mask_target == "own_flow":  # where the net's own (detached) flow really aligns the frames
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


def no_occlusion(setting: str) -> UserError:
    return UserError(f"{setting} needs each sample's occlusion (ClipDataset(..., occlusion=True), as tdms-train "
                     "builds it); this batch has none")


def clip_losses(model, batch: dict, cfg: Config, aux: Aux | None = None) -> tuple[float, dict]:
    """Run the recurrence over one batch of clips (O_0 = P_0, O_{t-1} detached) and sum the weighted losses.

    Each step's loss is backpropagated at once (memory stays flat); returns the total and each term's mean.
    A recurrent model (Lai et al.'s) gets its state carried across frames, detached between them as in Lai et al.
    """
    aux = aux or Aux()
    w = cfg.loss
    check_mask_settings(w)
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
                if cfg.model.occlusion_gate != "none":  # and its occlusion the one the sample carries
                    if "occlusion" not in batch:
                        raise no_occlusion("model.occlusion_gate")
                    extra["occlusion"] = batch["occlusion"][:, t - 1]
                out = model(*(aux.fmt(x) for x in (i_prev, i_t, o_prev.detach(), p_t)), **extra)
                state = out.pop("state", None)
                out = {k: v.float() for k, v in out.items()}  # losses in fp32 (a no-op without amp)
                frames = {"i_prev": i_prev, "i_t": i_t, "o_prev": o_prev, "o_first": o_first, "p_t": p_t,
                          "p_prev": ps[:, t - 1], "f_star": f_star, "vis": vis}
                if "occlusion" in batch:
                    frames["visible"] = 1 - batch["occlusion"][:, t - 1]
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
