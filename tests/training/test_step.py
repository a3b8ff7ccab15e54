"""One clip's losses (tdms/training/step.py): each term against an independent computation, gradients through the
frozen flow network, the mask settings, a non-finite loss."""

import numpy as np
import pytest
import torch

from tdms.flow.cache import FlowCache
from tdms.flow.warp import warp
from tdms.nets.tdms_net import TDMSNet
from tdms.training.dataset import ClipDataset, find_clips
from tdms.training.frozen import differentiable
from tdms.training.step import Aux, NonFiniteLoss, clip_losses
from tests.training.common import ConvFlow, ShiftFlow, config, one_batch


@pytest.mark.slow  # 30 optimizer steps
def test_losses_fall_on_a_tiny_problem(lai_root, tmp_path):
    torch.manual_seed(0)
    cfg = config(lai_root, tmp_path)
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, augment=False)
    batch = {k: (torch.stack([ds[i][k] for i in range(2)]) if k != "name" else "x") for k in ds[0]}
    model = TDMSNet(nf=8)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    totals = []
    for _ in range(30):
        opt.zero_grad()
        total, terms = clip_losses(model, batch, cfg)
        opt.step()
        totals.append(total)
    assert set(terms) == {"temporal", "fidelity", "flow", "mask"}
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:5])


def test_non_finite_loss_stops(lai_root, tmp_path):
    cfg = config(lai_root, tmp_path)
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, augment=False)
    s = ds[0]
    batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}
    batch["processed"][0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss at frame 1"):
        clip_losses(TDMSNet(nf=8), batch, cfg)


@pytest.mark.slow  # ShiftFlow's search on every pair, twice
def test_long_term_term_is_lai_et_al_s(lai_root, tmp_path):
    """L1(O_t·V, warp(P_0, F*_{t->0})·V) for t >= 2, recomputed here by a plain loop over the same model."""
    torch.manual_seed(0)
    batch = one_batch(lai_root, tmp_path, frames=4)
    cfg = config(lai_root, tmp_path, **{"loss.long_term": 100.0})
    model = TDMSNet(nf=8)
    _, terms = clip_losses(model, batch, cfg, Aux(flow=ShiftFlow()))
    i, p = batch["input"], batch["processed"]
    expect, o_prev = 0.0, p[:, 0]
    with torch.no_grad():
        for t in (1, 2, 3):
            o_t = model(i[:, t - 1], i[:, t], o_prev, p[:, t])["output"]
            if t >= 2:
                f0 = ShiftFlow()(i[:, t], i[:, 0])
                assert f0.abs().max() >= 2  # the pans move 1-2 px a frame: frame 0 is >= 2 px away
                v = torch.exp(-50.0 * (i[:, t] - warp(i[:, 0], f0)).sum(1, keepdim=True) ** 2)
                expect += (o_t * v - warp(p[:, 0], f0) * v).abs().mean().item() / 3
            o_prev = o_t
    assert terms["long_term"] == pytest.approx(expect, rel=1e-5)
    assert terms["long_term"] > 0


def test_flow_cycle_trains_the_model_through_the_frozen_flow_net(lai_root, tmp_path):
    torch.manual_seed(0)
    batch = one_batch(lai_root, tmp_path, frames=2)
    zero = {f"loss.{k}": 0.0 for k in ("temporal", "fidelity", "flow", "mask")}
    cfg = config(lai_root, tmp_path, **zero, **{"loss.flow_cycle": 1.0})
    model, flow = TDMSNet(nf=8), ConvFlow()
    _, terms = clip_losses(model, batch, cfg, Aux(cycle_flow=differentiable(flow)))
    assert set(terms) == {"flow_cycle"} and not flow.differentiable  # the twin shares the net, not the flag
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []  # O_t depends on all three heads
    assert flow.net.weight.grad is None
    i, p = batch["input"], batch["processed"]
    with torch.no_grad():
        o_1 = model(i[:, 0], i[:, 1], p[:, 0], p[:, 1])["output"]
        expect = (flow.net(torch.cat((i[:, 0], i[:, 1]), 1)) - flow.net(torch.cat((p[:, 0], o_1), 1))).abs().mean()
    assert terms["flow_cycle"] == pytest.approx(expect.item(), rel=1e-5)
    from tdms.training.losses import flow_cycle_loss

    o_1.requires_grad_(True)  # the original's no_grad flow: the term has no gradient at all
    assert not flow_cycle_loss(flow, i[:, 0], i[:, 1], p[:, 0], o_1).requires_grad


def test_mask_target_own_flow_uses_the_nets_flow(lai_root, tmp_path):
    from tdms.flow.occlusion import visibility_mask
    from tdms.nets.tdms_net import TDMSNet
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_target": "own_flow"})
    torch.manual_seed(0)
    model = TDMSNet(nf=8)
    i_prev, i_t, p_t = (torch.rand(1, 3, 16, 16) for _ in range(3))
    f_star = torch.full((1, 2, 16, 16), 2.0)
    out = model(i_prev, i_t, p_t, p_t)
    frames = {"i_prev": i_prev, "i_t": i_t, "o_prev": p_t, "o_first": p_t, "p_t": p_t, "f_star": f_star,
              "vis": torch.ones(1, 1, 16, 16)}
    own = step_losses(out, frames, cfg.loss, None)["mask"]
    v = visibility_mask(i_t, warp(i_prev, out["flow"].detach()), 50.0)
    assert torch.allclose(own, (out["mask"] - v).abs().mean())
    cfg.loss.mask_target = "flow_star"
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], (out["mask"] - 1).abs().mean())
    cfg.loss.mask_target = "occlusion"  # 1 - the sample's occlusion of frame t, not V
    visible = (torch.rand(1, 1, 16, 16) < 0.7).float()
    got = step_losses(out, frames | {"visible": visible}, cfg.loss, None)["mask"]
    assert torch.allclose(got, (out["mask"] - visible).abs().mean())
    with pytest.raises(ValueError, match="needs each sample's occlusion"):
        step_losses(out, frames, cfg.loss, None)
    cfg.loss.mask_target = "nope"
    batch = {"input": torch.rand(1, 3, 3, 16, 16), "processed": torch.rand(1, 3, 3, 16, 16),
             "flow": torch.zeros(1, 2, 2, 16, 16), "name": "x"}
    with pytest.raises(ValueError, match="mask_target"):
        clip_losses(model, batch, cfg)


def small_step():
    """A small TDMSNet's outputs on random frames, the step_losses frames with a random V, and a 3-frame batch."""
    torch.manual_seed(0)
    model = TDMSNet(nf=8)
    x = [torch.rand(1, 3, 16, 16) for _ in range(3)]
    out = model(x[0], x[1], x[2], x[2])
    vis = torch.rand(1, 1, 16, 16)
    frames = {"i_prev": x[0], "i_t": x[1], "o_prev": x[2], "o_first": x[2], "p_t": x[2],
              "f_star": torch.zeros(1, 2, 16, 16), "vis": vis}
    batch = {"input": torch.rand(1, 3, 3, 16, 16), "processed": torch.rand(1, 3, 3, 16, 16),
             "flow": torch.zeros(1, 2, 2, 16, 16), "name": "x"}
    return model, out, vis, frames, batch


def test_mask_scale_scales_the_target_and_is_checked(lai_root, tmp_path):
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_scale": 0.65})
    model, out, vis, frames, batch = small_step()
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], (out["mask"] - 0.65 * vis).abs().mean())
    cfg.loss.mask_norm = "l2"
    assert torch.allclose(step_losses(out, frames, cfg.loss, None)["mask"], ((out["mask"] - 0.65 * vis) ** 2).mean())
    cfg.loss.mask_scale = 1.5
    with pytest.raises(ValueError, match="mask_scale"):
        clip_losses(model, batch, cfg)
    cfg.loss.mask_scale, cfg.loss.mask_norm = 0.65, "l3"
    with pytest.raises(ValueError, match="mask_norm must be l1 or l2"):
        clip_losses(model, batch, cfg)


def test_mask_balance_in_training_marks_the_low_visibility_pixels(lai_root, tmp_path):
    from tdms.training.losses import mask_loss
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.mask_balance": 0.5, "loss.mask_scale": 0.6})
    model, out, vis, frames, batch = small_step()
    got = step_losses(out, frames, cfg.loss, None)["mask"]
    assert torch.allclose(got, mask_loss(out["mask"], 0.6 * vis, "l1", vis < 0.5))
    assert not torch.allclose(got, mask_loss(out["mask"], 0.6 * vis, "l1"))
    cfg.loss.mask_balance = 1.0
    with pytest.raises(ValueError, match="mask_balance must be in"):
        clip_losses(model, batch, cfg)



def test_occlusion_gate_reads_the_sample_s_occlusion(lai_root, tmp_path):
    """With model.occlusion_gate the training step gates the mask by the sample's occlusion (not a flow of its own):
    a clip whose every pixel is marked occluded trains a mask that is 0 everywhere; without the occlusion, an error."""
    from tdms.config import ModelConfig
    from tdms.nets.build import build_model
    from tdms.training.dataset import needs_occlusion

    cfg = config(lai_root, tmp_path, **{"model.flow_prior": "dis-medium", "model.occlusion_gate": "forward-backward"})
    assert needs_occlusion(cfg) and not needs_occlusion(config(lai_root, tmp_path))
    model = build_model(ModelConfig(nf=8, flow_prior="dis-medium", occlusion_gate="forward-backward"))
    batch = one_batch(lai_root, tmp_path)
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append((kwargs["occlusion"], out["mask"])),
                                with_kwargs=True)
    occ = torch.ones_like(batch["input"][:, 1:, :1])
    total, _ = clip_losses(model, batch | {"occlusion": occ}, cfg)
    assert np.isfinite(total) and len(seen) == 2
    assert all(torch.equal(o, occ[:, 0]) and m.abs().max() == 0 for o, m in seen)
    with pytest.raises(ValueError, match="model.occlusion_gate needs each sample's occlusion"):
        clip_losses(model, batch, cfg)


def test_l2_terms_over_the_occlusion_test_s_pixels(lai_root, tmp_path):
    """loss.norm=l2: temporal and fidelity as mean squares; loss.temporal_mask=occlusion: the temporal term counts the
    pixels the sample's forward-backward test passes (the warping error's own), not V. Settings are checked."""
    from tdms.training.step import step_losses

    cfg = config(lai_root, tmp_path, **{"loss.norm": "l2", "loss.temporal_mask": "occlusion"})
    model, out, vis, frames, batch = small_step()
    visible = (torch.rand(1, 1, 16, 16) < 0.7).float()
    terms = step_losses(out, frames | {"visible": visible}, cfg.loss, None)
    o, w = out["output"], frames["o_prev"]  # f_star = 0: the warp is the identity
    assert torch.allclose(terms["temporal"], ((o * visible - w * visible) ** 2).mean())
    assert torch.allclose(terms["fidelity"], ((o - frames["p_t"]) ** 2).mean())
    assert not torch.allclose(terms["temporal"], ((o * vis - w * vis) ** 2).mean())
    with pytest.raises(ValueError, match="loss.temporal_mask=occlusion needs each sample's occlusion"):
        step_losses(out, frames, cfg.loss, None)
    cfg.loss.norm = "l1"
    l1 = step_losses(out, frames | {"visible": visible}, cfg.loss, None)
    assert torch.allclose(l1["temporal"], (o * visible - w * visible).abs().mean())
    for key, bad, msg in (("norm", "huber", "loss.norm must be l1 or l2"),
                          ("temporal_mask", "v", "loss.temporal_mask must be visibility or occlusion")):
        cfg2 = config(lai_root, tmp_path, **{f"loss.{key}": bad})
        with pytest.raises(ValueError, match=msg):
            clip_losses(model, batch, cfg2)
