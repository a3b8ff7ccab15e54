import numpy as np
import pytest
import torch

from tdms.checkpoint import read_checkpoint
from tdms.config import load_config
from tdms.dataset import ClipDataset, find_clips
from tdms.flow.cache import FlowCache
from tdms.train import NonFiniteLoss, clip_losses, train
from tdms.warp import warp


class ShiftFlow:
    """Exact flow for the fixture's pans: the integer horizontal shift that best maps a onto b."""

    name = "shift"

    def __call__(self, a, b):
        out = []
        for x, y in zip(a, b, strict=True):
            errs = {s: (warp(y[None], torch.full((1, 2, *x.shape[1:]), 0.0).index_fill_(1, torch.tensor([0]), s))
                        - x[None])[..., 4:-4].abs().mean().item() for s in range(-4, 5)}
            s = min(errs, key=errs.get)
            f = torch.zeros(2, *x.shape[1:])
            f[0] = s
            out.append(f)
        return torch.stack(out)


def config(root, tmp_path, **over):
    items = {"data.root": str(root), "data.crop": 16, "data.sample_frames": 3, "data.workers": 0,
             "data.scale_min": 0.8, "data.scale_max": 1.2, "train.batch": 2, "train.out": str(tmp_path / "run"),
             "train.log_every": 1, "train.ckpt_every": 2, "train.image_every": 2, "train.device": "cpu",
             "loss.perceptual": 0.0, "model.nf": 8}
    items.update(over)
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


@pytest.mark.parametrize("k", range(12))
def test_augmented_flow_still_aligns_the_frames(lai_root, tmp_path, k):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 24, 0.8, 1.3, True, seed=k)
    s = ds[k]
    assert s["input"].shape == (3, 3, 24, 24) and s["flow"].shape == (2, 2, 24, 24)
    assert 0 <= s["input"].min() and s["input"].max() <= 1
    i_prev, i_t, f = s["input"][:1], s["input"][1:2], s["flow"][:1]
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
    aligned = (warp(i_prev, f) - i_t)[inner].abs().mean()
    raw = (i_prev - i_t)[inner].abs().mean()
    assert aligned < 0.35 * raw, (aligned, raw)
    assert s["flow"].abs().amax() > 0.5  # the pans move 1-2 px per frame


def test_sample_is_a_function_of_seed_and_index(lai_root, tmp_path):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, seed=3)
    a, b, c = ds[7], ds[7], ds[8]
    assert torch.equal(a["input"], b["input"]) and a["name"] == b["name"]
    assert not torch.equal(a["input"], c["input"])


def test_missing_video_and_short_processed_are_named(lai_root):
    (lai_root / "lists" / "toy_train.txt").write_text("v0\nv9\n")
    with pytest.raises(FileNotFoundError, match="v9"):
        find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    (lai_root / "lists" / "toy_train.txt").write_text("v0\n")
    (lai_root / "train" / "processed" / "gain" / "flicker" / "toy" / "v0" / "00005.png").unlink()
    with pytest.raises(ValueError, match="5 processed frames but 6 input frames"):
        find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")


def test_two_steps_then_exact_resume(lai_root, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    straight = config(lai_root, tmp_path, **{"train.steps": 4, "train.out": str(tmp_path / "a")})
    train(straight)
    part = config(lai_root, tmp_path, **{"train.steps": 2, "train.out": str(tmp_path / "b")})
    train(part)
    assert read_checkpoint(tmp_path / "b" / "last.pth")["step"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(part)
    rest = config(lai_root, tmp_path, **{"train.steps": 4, "train.out": str(tmp_path / "b")})
    train(rest, resume=True)
    torch.set_num_threads(threads)
    a, b = read_checkpoint(tmp_path / "a" / "last.pth"), read_checkpoint(tmp_path / "b" / "last.pth")
    assert b["step"] == 4 and b["config"]["train"]["steps"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    first = read_checkpoint(tmp_path / "a" / "last.pth")["model"]["conv1a.conv2d.weight"]
    assert not torch.equal(first, torch.zeros_like(first))
    assert (tmp_path / "a" / "config.yaml").is_file() and any((tmp_path / "a" / "tb").iterdir())


def test_losses_fall_on_a_tiny_problem(lai_root, tmp_path):
    torch.manual_seed(0)
    from tdms.model import TDMSNet

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
    from tdms.model import TDMSNet

    cfg = config(lai_root, tmp_path)
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    ds = ClipDataset(clips, FlowCache(tmp_path / "c", ShiftFlow()), 3, 16, augment=False)
    s = ds[0]
    batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}
    batch["processed"][0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss at frame 1"):
        clip_losses(TDMSNet(nf=8), batch, cfg)
