"""Training clips from Lai et al.'s layout (root/train/input/<dataset>/<video>/, root/train/processed/<task>/
<dataset>/<video>/, root/lists/), with cached flows and the original code's augmentation: a scale drawn from
U[scale_min, scale_max] (0.5, 2 by default) that keeps the short side >= crop, a random crop, one of the 8
rotations/flips and temporal reversal. No frame is ever scaled past scale_max (nor, without augmentation, past
max(1, scale_max)): a crop larger than a video's short side × scale_max is refused, by key, before any work.
build_data and make_loader turn a config into the run's samples.

A sample is a dict:
    'input'     (S,3,h,w) float [0,1]   original frames I
    'processed' (S,3,h,w) float [0,1]   per-frame processed frames P
    'flow'      (S-1,2,h,w) pixels       F*_t = flow(I_t -> I_{t-1}) for t = 1..S-1 (x first)
    'name'      str                      "<task>/<dataset>/<video>@<first frame>"
Sample k is a pure function of (seed, k), so a resumed run sees exactly the data it would have seen.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from tdms import distributed
from tdms.config import Config
from tdms.errors import MissingFile, UserError
from tdms.flow.cache import FlowCache
from tdms.flow.occlusion import occlusion_mask
from tdms.frames.io import list_frames, read_frame, size_text
from tdms.frames.layout import entries, read_list, read_tasks


@dataclass
class Clip:
    task: str
    dataset: str
    video: str
    input_dir: Path
    processed_dir: Path
    input_files: list[Path]  # listed once here, not on every sample
    processed_files: list[Path]

    @property
    def frames(self) -> int:
        return len(self.input_files)


def find_clips(root: Path, phase: str, tasks_list: Path) -> list[Clip]:
    """All (task, dataset, video) triples of a phase, checked against the disk."""
    clips = []
    for dataset, _ in read_tasks(tasks_list):
        list_file = root / "lists" / f"{dataset}_{phase}.txt"
        if not read_list(list_file):
            raise UserError(f"{list_file}: lists no videos (dataset {dataset} of {tasks_list})")
    for e in entries(root, phase, tasks_list):
        for d in (e.input, e.processed):
            if not d.is_dir():
                raise MissingFile(f"{tasks_list}: video {e.dataset}/{e.video} (task {e.task}) not on disk: {d}")
        in_files, p_files = list_frames(e.input), list_frames(e.processed)
        if len(p_files) < len(in_files):
            raise UserError(f"{e.processed}: {len(p_files)} processed frames but {len(in_files)} input frames in "
                            f"{e.input}")
        clips.append(Clip(e.task, e.dataset, e.video, e.input, e.processed, in_files, p_files))
    if not clips:
        raise UserError(f"{tasks_list}: no training videos")
    return clips


def check_processed(clip: Clip, size: tuple[int, int]):
    """Each processed frame paired with an input frame is a non-empty image of the input's size (H, W).

    Sizes come from the image headers (PIL reads no pixels); a file PIL does not know is decoded."""
    h, w = size
    for path in clip.processed_files[:clip.frames]:
        if path.stat().st_size == 0:
            raise UserError(f"{path}: empty file (0 bytes), not an image")
        try:
            with Image.open(path) as img:
                pw, ph = img.size
        except (UnidentifiedImageError, OSError):
            ph, pw = read_frame(path).shape[:2]
        if (ph, pw) != (h, w):
            raise UserError(f"{path}: processed frame is {pw}×{ph}, the input frames in {clip.input_dir} are {w}×{h}")


def check_crop(crop: int, scale_max: float, video: Path, size: tuple[int, int], which: str = "video"):
    """A crop of `crop` px is cut from the frames of `video` (size (H, W)) scaled by at most scale_max: refused when
    the short side × scale_max falls short of it (the sampler would otherwise upsize every frame to the crop)."""
    short = min(size)
    if crop <= short * scale_max:
        return
    limit = int(short * scale_max) // 4 * 4  # data.crop is a multiple of 4
    smaller = f"set data.crop <= {limit} or " if limit >= 4 else ""
    raise UserError(f"data.crop={crop} is more than the {which} gives: {video} is {size_text(size)}, and a crop at "
                    f"most its short side {short} × data.scale_max={scale_max:g} = {short * scale_max:g} px; {smaller}"
                    f"data.scale_max >= {math.ceil(crop / short * 100) / 100:g}")


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR)


def _dihedral(arr: np.ndarray, transpose: bool, hflip: bool, vflip: bool, is_flow: bool) -> np.ndarray:
    """Apply one of the 8 rotations/flips to an (H,W,C) image or flow; flow vectors move with the pixels."""
    if transpose:  # (x, y) -> (y, x): swap axes, and u <-> v
        arr = arr.transpose(1, 0, 2)
        if is_flow:
            arr = arr[..., ::-1]
    if hflip:
        arr = arr[:, ::-1]
        if is_flow:
            arr = arr * np.array([-1.0, 1.0], np.float32)
    if vflip:
        arr = arr[::-1]
        if is_flow:
            arr = arr * np.array([1.0, -1.0], np.float32)
    return arr


class ClipDataset(Dataset):
    """Random clips of `sample_frames` frames. Index k draws its clip and augmentation from rng(seed, k)."""

    def __init__(self, clips: list[Clip], cache: FlowCache, sample_frames: int, crop: int,
                 scale_min: float = 0.5, scale_max: float = 2.0, augment: bool = True, seed: int = 0,
                 length: int = 10**9, frame_gap: int = 1, occlusion: bool = False):
        short = [c for c in clips if c.frames < sample_frames]
        if short:
            c = short[0]
            raise UserError(f"{c.input_dir}: {c.frames} frames, fewer than sample_frames={sample_frames}")
        if frame_gap < 1:
            raise UserError(f"data.frame_gap must be >= 1, got {frame_gap}")
        self.clips, self.cache = clips, cache
        self.s, self.crop = sample_frames, crop
        self.scale_min, self.scale_max, self.augment = scale_min, scale_max, augment
        self.seed, self.length = seed, length
        self.frame_gap = frame_gap if augment else 1
        self.occlusion = occlusion  # samples also hold each target frame's occlusion (loss.mask_target=occlusion)

    def gaps(self) -> range:
        """The frame gaps a clip may be drawn with: the flow cache needs their pairs."""
        return range(1, self.frame_gap + 1)

    def __len__(self):
        return self.length

    def _scale(self, rng, h: int, w: int) -> float:
        need = self.crop / min(h, w)  # keep the short side >= crop; check_crop made need <= scale_max
        if not self.augment:
            return max(1.0, need)
        return float(rng.uniform(max(self.scale_min, need), self.scale_max))

    def __getitem__(self, k: int) -> dict:
        rng = np.random.default_rng([self.seed, k])
        clip = self.clips[rng.integers(len(self.clips))]
        gap = 1
        if self.frame_gap > 1:  # drawn only then: the default's samples stay those of earlier versions
            gap = int(rng.integers(1, min(self.frame_gap, (clip.frames - 1) // max(self.s - 1, 1)) + 1))
        t0 = int(rng.integers(clip.frames - (self.s - 1) * gap))
        reverse = self.augment and rng.random() < 0.5
        transpose, hflip, vflip = (rng.random(3) < 0.5) if self.augment else (False, False, False)

        idx = list(range(t0, t0 + (self.s - 1) * gap + 1, gap))
        files = [clip.input_files[i] for i in idx] + [clip.processed_files[i] for i in idx]
        frames = [read_frame(f) for f in files]
        h, w = frames[0].shape[:2]
        for f, frame in zip(files, frames, strict=True):  # never resized to fit: a wrong size is an error
            if frame.shape[:2] != (h, w):
                raise UserError(f"{f}: frame is {frame.shape[1]}×{frame.shape[0]}, {files[0]} is {w}×{h}")
        check_crop(self.crop, self.scale_max, clip.input_dir, (h, w))
        ins, ps = frames[:len(idx)], frames[len(idx):]
        # F*_t = flow(frame t -> frame t-1) in the order the clip is played
        flows, occlusions = [], []
        for i in idx[:-1]:
            fw, bw, _ = self.cache.pair(clip.input_dir, i, gap)
            f_star, other = (fw, bw) if reverse else (bw, fw)
            flows.append(f_star.permute(1, 2, 0).numpy())
            if self.occlusion:  # in the frame F* starts from, where the forward-backward test fails (Ruder et al.)
                occlusions.append(occlusion_mask(f_star[None], other[None])[0].permute(1, 2, 0).numpy())
        if reverse:
            ins, ps, flows, occlusions = ins[::-1], ps[::-1], flows[::-1], occlusions[::-1]

        s = self._scale(rng, h, w)
        nh, nw = max(self.crop, round(h * s)), max(self.crop, round(w * s))
        y = int(rng.integers(nh - self.crop + 1))
        x = int(rng.integers(nw - self.crop + 1))
        ratio = np.array([nw / w, nh / h], np.float32)  # per-axis flow rescale

        def prep(img, is_flow=False):
            img = _resize(img, nh, nw).reshape(nh, nw, -1) * (ratio if is_flow else 1.0)  # (cv2 drops C = 1)
            img = img[y:y + self.crop, x:x + self.crop]
            img = _dihedral(img, transpose, hflip, vflip, is_flow)
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))

        sample = {
            "input": torch.stack([prep(f) for f in ins]),
            "processed": torch.stack([prep(f) for f in ps]),
            "flow": torch.stack([prep(f, True) for f in flows]),
            "name": f"{clip.task}/{clip.dataset}/{clip.video}@{t0}" + (f"+{gap}" if gap > 1 else ""),
        }
        if self.occlusion:  # 1 = occluded; resampled masks are cut at ½
            sample["occlusion"] = (torch.stack([prep(o) for o in occlusions]) > 0.5).float()
        return sample


def build_data(cfg: Config, backend, world: distributed.World) -> ClipDataset:
    """The clips of cfg.data with their flows cached by `backend` (computed once per backend; slow for networks
    on CPU). Every processed frame, and data.crop against the smallest video, is checked before any flow is computed,
so a bad one fails at once, by name.

    With several processes each fills the cache for its share of the videos (entries are written atomically),
    then all wait for the others."""
    d = cfg.data
    root = Path(d.root)
    clips = find_clips(root, d.phase, root / d.tasks_list)
    cache = FlowCache(Path(d.flow_cache or root / "cache" / "flow"), backend)
    sizes = {}
    for clip in clips:
        sizes[clip.input_dir] = cache.source(clip.input_dir).size
        check_processed(clip, sizes[clip.input_dir])
    smallest = min(sizes, key=lambda video: min(sizes[video]))
    check_crop(d.crop, d.scale_max, smallest, sizes[smallest], "smallest video")
    ds = ClipDataset(clips, cache, d.sample_frames, d.crop, d.scale_min, d.scale_max, d.augment, cfg.train.seed,
                     frame_gap=d.frame_gap, occlusion=needs_occlusion(cfg))
    videos = distributed.shard(sorted({c.input_dir for c in clips}), world)
    for video in tqdm(videos, desc="flow cache", unit="video", disable=not world.main):
        try:
            cache.prepare(video, progress=False, gaps=ds.gaps())
        except ValueError as e:
            raise UserError(f"{video}: {e}") from None
    distributed.barrier(world)
    return ds


class Samples(Dataset):
    """Samples first ... end - 1 of a ClipDataset (sample k is a function of the seed and k), as 0 ... n - 1."""

    def __init__(self, ds: ClipDataset, first: int, end: int):
        self.ds, self.first, self.n = ds, first, max(0, end - first)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        return self.ds[self.first + k]


def make_loader(ds: ClipDataset, step: int, cfg: Config, world: distributed.World, device) -> DataLoader:
    """This rank's share of the samples of the steps still to run (those after `step`, up to train.steps).

    Step s (counted from 0) trains on samples s·batch ... (s+1)·batch - 1 of the global batch train.batch; each
    rank takes every world.size-th of them, so a global batch holds the same samples for any number of processes."""
    batch = cfg.train.batch
    remaining = Samples(ds, step * batch, cfg.train.steps * batch)
    sampler = DistributedSampler(remaining, world.size, world.rank, shuffle=False) if world.distributed else None
    return DataLoader(remaining, batch // world.size, sampler=sampler, num_workers=cfg.data.workers,
                      pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg.data.workers > 0)


def needs_occlusion(cfg) -> bool:
    """Whether the samples carry each target frame's occlusion: the mask target, the temporal term's pixels or the
    model's gate read it."""
    return (cfg.loss.mask_target == "occlusion" or cfg.loss.temporal_mask == "occlusion"
            or cfg.model.occlusion_gate != "none")
