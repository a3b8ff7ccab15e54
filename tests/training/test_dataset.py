"""Training clips: augmentation that keeps the flow aligned with the frames, frame gaps, samples as a function of
(seed, index), and missing or short videos named."""

import pytest
import torch

from tdms.flow.cache import FlowCache
from tdms.flow.warp import warp
from tdms.training.dataset import ClipDataset, find_clips
from tests.training.common import ShiftFlow


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


def test_frame_gap_draws_clips_with_larger_motion_that_the_flow_still_aligns(lai_root, tmp_path):
    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    cache = FlowCache(tmp_path / "c", ShiftFlow())
    ds = ClipDataset(clips, cache, 3, 24, 1.0, 1.0, True, seed=0, frame_gap=2)
    assert list(ds.gaps()) == [1, 2]
    seen = set()
    for k in range(16):
        s = ds[k]
        name, first = s["name"].split("@")
        gap = int(first.split("+")[1]) if "+" in first else 1
        seen.add(gap)
        shift = 1 + int(name.endswith("v1"))  # the fixture's pans: v0 1 px, v1 2 px a frame
        assert s["flow"].abs().amax().item() == pytest.approx(shift * gap), s["name"]
        i_prev, i_t, f = s["input"][:1], s["input"][1:2], s["flow"][:1]
        inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
        assert (warp(i_prev, f) - i_t)[inner].abs().mean() < 0.35 * (i_prev - i_t)[inner].abs().mean()
    assert seen == {1, 2}
    # the default draws no gap: its samples are those of earlier versions
    plain = ClipDataset(clips, cache, 3, 24, 1.0, 1.0, True, seed=0)
    assert all("+" not in plain[k]["name"] for k in range(16))
    with pytest.raises(ValueError, match="frame_gap must be >= 1"):
        ClipDataset(clips, cache, 3, 24, frame_gap=0)


def test_flow_cache_pairs_with_a_gap(lai_root, tmp_path):
    from tdms.flow.cache import frames_to_tensor

    video = lai_root / "train" / "input" / "toy" / "v0"  # a 1 px pan; ShiftFlow finds up to 4 px
    flow = ShiftFlow()
    cache = FlowCache(tmp_path / "c", flow)
    cache.prepare(video, progress=False, gaps=(1, 3))
    assert flow.calls == 5 + 3  # pairs (t, t+1) of 6 frames and (t, t+3)
    assert all(p.is_file() for t in range(3) for p in cache.paths(video, t, 3))
    assert cache.paths(video, 0, 1)[0].name == "fw_00000.flo"  # consecutive pairs keep their names
    fw, bw, _ = cache.pair(video, 2, 3)
    src = cache.source(video)
    expected = ShiftFlow()(frames_to_tensor(src[2]), frames_to_tensor(src[5]))[0]
    assert torch.equal(fw, expected) and fw[0].abs().max() == 3 and torch.equal(bw, -fw)
    cache.prepare(video, progress=False, gaps=(1, 3))
    assert flow.calls == 8  # all there: nothing recomputed
    with pytest.raises(IndexError, match=r"no frame pair \(3, 6\)"):
        cache.pair(video, 3, 3)


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



class BlobFlow(ShiftFlow):
    """ShiftFlow with 3 px more to the right on a square of either frame, both ways: the forward-backward test
    fails there."""

    name = "blob"

    def __call__(self, a, b):
        out = super().__call__(a, b)
        out[:, 0, 8:16, 8:16] += 3.0
        return out


@pytest.mark.parametrize("k", range(4))
def test_occlusion_samples_are_the_forward_backward_test_of_the_clip_s_flows(lai_root, tmp_path, k):
    """With occlusion=True a sample holds, per pair, the occlusion of the frame F* starts from (occlusion_mask(F*,
    the other way's flow), Ruder et al.), in play order; unaugmented and cropped to the whole frame it is the cached
    flows' mask exactly. Without the flag samples have no such key."""
    from tdms.flow.occlusion import occlusion_mask

    clips = find_clips(lai_root, "train", lai_root / "lists" / "train_tasks.txt")
    cache = FlowCache(tmp_path / "c", BlobFlow())
    h, w = cache.source(clips[0].input_dir).size
    s = ClipDataset(clips, cache, 3, min(h, w), augment=False, occlusion=True, seed=k)[k]
    assert s["occlusion"].shape == (2, 1, min(h, w), min(h, w))
    video = next(c.input_dir for c in clips if s["name"].startswith(f"{c.task}/{c.dataset}/{c.video}@"))
    t0 = int(s["name"].split("@")[1])
    for j in range(2):
        fw, bw, _ = cache.pair(video, t0 + j)
        want = occlusion_mask(bw[None], fw[None])[0]  # frame t0 + j + 1, the one F* = bw starts from
        y = x = 0
        if h != w:  # the crop's offset along the long side: find it
            y, x = next((y, x) for y in range(h - min(h, w) + 1) for x in range(w - min(h, w) + 1)
                        if torch.equal(s["flow"][j], bw[:, y:y + min(h, w), x:x + min(h, w)]))
        assert torch.equal(s["occlusion"][j], want[:, y:y + min(h, w), x:x + min(h, w)])
        assert s["occlusion"][j].sum() > 0  # the square (at least)
    assert "occlusion" not in ClipDataset(clips, cache, 3, min(h, w), augment=False, seed=k)[k]
    moved = ClipDataset(clips, cache, 3, 24, 0.8, 1.3, True, seed=k, occlusion=True)[k]
    assert moved["occlusion"].shape == (2, 1, 24, 24) and set(moved["occlusion"].unique().tolist()) <= {0.0, 1.0}
