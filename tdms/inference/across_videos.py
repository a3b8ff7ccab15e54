"""Several videos in one batch (dataset mode): the recurrence is per video, so the batch runs across videos.

Videos of one frame size share up to `batch` slots; a video that ends leaves its slot to the next waiting one,
which starts with O_0 = P_0; at a scene cut a video restarts in its slot (O_t = P_t). Each video decodes in its own
thread (frames.io.prefetch), stacking and padding run in another, and a pool of threads writes the frames. Outputs
equal the one-video path (recurrence.step_frames) to ≤ 1e-5 (different batch sizes may pick different conv kernels;
tests/inference/test_batched.py).
"""

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tdms.errors import UserError
from tdms.frames.io import prefetch, size_text
from tdms.frames.outputs import commit, partial_path, remove_partial
from tdms.frames.writers import write_frame
from tdms.inference.recurrence import pad_to

WRITERS = min(8, max(2, os.cpu_count() or 2))  # PNG encoding keeps up with a GPU only in parallel


@dataclass
class Video:
    name: str  # for messages
    size: tuple[int, int]  # (H, W) of every frame
    pairs: Iterable  # (I_t, P_t) float32 (H,W,3) frames
    starts: Callable[[int, np.ndarray], bool] | None = None  # (t, I_t) -> a new shot begins (frames.cuts.ShotStarts)


@dataclass
class Target:
    out: Path  # the frame folder to write
    frames: int  # how many frames the video has
    meta: dict  # written into the output's marker
    numbers: list[int] | None = None  # the frame files' numbers (the input's own); None: 0, 1, ...


def group_by_size(videos: list[Video]) -> list[list[int]]:
    """Indices of the videos grouped by frame size, groups and members in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, v in enumerate(videos):
        groups.setdefault(tuple(v.size), []).append(k)
    return list(groups.values())


def check_frame(video: Video, t: int, frame: np.ndarray, role: str):
    if frame.shape != (*video.size, 3):
        raise UserError(f"{video.name}: {role} frame {t} has shape {frame.shape}, the video's frames are "
                         f"{size_text(video.size)} RGB (frame sizes must not change within a video)")


def stack(frames: list[np.ndarray], pin: bool) -> torch.Tensor:
    """(H,W,3) frames -> (B,3,H',W') float32 reflection-padded to multiples of 4; pinned for an async upload."""
    x = torch.from_numpy(np.stack(frames).astype(np.float32, copy=False)).permute(0, 3, 1, 2)
    x = pad_to(x)[0].contiguous()
    return x.pin_memory() if pin else x


def stacked_steps(videos: list[Video], batch: int, pin: bool = False) -> Iterator[tuple[list[int], torch.Tensor,
                                                                                          torch.Tensor, list[bool]]]:
    """Per step: the indices of the videos in the batch, their I_t and P_t stacked, (B,3,H',W') each, and whether
    each video's frame begins a shot (its frame 0, or a cut its `starts` finds).

    Videos stay in their slots in order; one that ends leaves, and waiting videos join at the end.
    """
    waiting = iter(range(len(videos)))
    readers: dict[int, Iterator] = {}
    count: dict[int, int] = {}
    active: list[int] = []
    while True:
        now, ins, ps, fresh = [], [], [], []
        staying = iter(active)
        while len(now) < batch:
            k = next(staying, None)
            if k is None:
                if (k := next(waiting, None)) is None:
                    break
                readers[k], count[k] = iter(videos[k].pairs), 0
            pair = next(readers[k], None)
            if pair is None:  # the video ended
                del readers[k]
                continue
            check_frame(videos[k], count[k], pair[0], "original")
            check_frame(videos[k], count[k], pair[1], "processed")
            starts = videos[k].starts
            fresh.append(count[k] == 0 or bool(starts and starts(count[k], pair[0])))
            if count[k] == 0 and starts:
                starts(0, pair[0])  # its first frame, seen
            count[k] += 1
            now.append(k)
            ins.append(pair[0])
            ps.append(pair[1])
        if not now:
            return
        active = now
        yield now, stack(ins, pin), stack(ps, pin), fresh


def take(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return x if rows == list(range(x.shape[0])) else x[rows]


@torch.inference_mode()
def batched_frames(step, videos: list[Video], batch: int, device="cpu") -> Iterator[tuple[int, np.ndarray]]:
    """(k, O_t) of videos of one frame size, up to `batch` at a time; each video's frames come in order.

    `step` from fast.make_step, for a network without recurrent state (TDMS-Net). O_t is float32 (H,W,3),
    unclipped.
    """
    sizes = {tuple(v.size) for v in videos}
    if len(sizes) > 1:
        raise UserError(f"one batch needs one frame size, got {sorted(sizes)} (group the videos: group_by_size)")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    if not videos:
        return
    (h, w), device = sizes.pop(), torch.device(device)
    keys, i_prev, o_prev = [], None, None
    for now, i_t, p_t, fresh in prefetch(stacked_steps(videos, batch, device.type == "cuda"), depth=2):
        i_t, p_t = i_t.to(device, non_blocking=True), p_t.to(device, non_blocking=True)
        going = [j for j, k in enumerate(now) if k in keys and not fresh[j]]  # past their shot's first frame
        o_t = p_t  # O_0 = P_0
        if going:
            rows = [keys.index(now[j]) for j in going]
            out, state = step(take(i_prev, rows), take(i_t, going), take(o_prev, rows), take(p_t, going))
            if state is not None:
                raise UserError("batched inference is for networks without recurrent state; use one video a time")
            o_t = out if len(going) == len(now) else p_t.index_copy(0, torch.tensor(going, device=device), out)
        keys, i_prev, o_prev = now, i_t, o_t
        frames = o_t[..., :h, :w].float().cpu().permute(0, 2, 3, 1).numpy()
        for j, k in enumerate(now):
            yield k, frames[j]


def write_outputs(results: Iterator[tuple[int, np.ndarray]], targets: list[Target], ext: str = ".png",
                  quality=None, workers: int = WRITERS, desc: str = "") -> Iterator[tuple[int, dict]]:
    """Write the (k, O_t) results as frame folders by a pool of threads; yield (k, meta) as each video completes.

    Frames go to a hidden partial folder, named by each target's numbers; a complete video gets its marker (with
    its frames' names, sizes and SHA-256) and is moved into place (outputs.commit). An exception (or closing this
    generator) removes the partial folders this run started; a killed run leaves them, and the next run replaces
    them.
    """
    written, started = [0] * len(targets), [0.0] * len(targets)
    futures: list[list] = [[] for _ in targets]
    pending: deque = deque()
    total = sum(t.frames for t in targets)
    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=total, desc=desc, unit="frame", leave=False) as bar:
            for k, img in results:
                tgt, tmp = targets[k], partial_path(targets[k].out)
                if written[k] == 0:
                    started[k] = time.time()
                    remove_partial(tgt.out)
                    tmp.mkdir(parents=True)
                if written[k] == tgt.frames:
                    raise UserError(f"{tgt.out}: more than the {tgt.frames} frames expected")
                number = written[k] if tgt.numbers is None else tgt.numbers[written[k]]
                futures[k].append((f"{number:05d}{ext}", pool.submit(write_frame, tmp / f"{number:05d}{ext}", img,
                                                                      quality)))
                pending.append(futures[k][-1][1])
                written[k] += 1
                bar.update(1)
                while len(pending) > 4 * workers:  # bounded memory: wait for the oldest write
                    pending.popleft().result()
                if written[k] == tgt.frames:
                    files = {name: f.result() for name, f in futures[k]}
                    futures[k] = []
                    meta = {**tgt.meta, "frames": tgt.frames, "seconds": round(time.time() - started[k], 3)}
                    commit(tmp, tgt.out, {**meta, "files": files})
                    yield k, meta
        short = [(t, n) for t, n in zip(targets, written, strict=True) if n != t.frames]
        if short:
            raise UserError(f"{short[0][0].out}: {short[0][1]} frames written, {short[0][0].frames} expected")
    except BaseException:  # the pool has finished its writes by now
        for tgt, begun in zip(targets, started, strict=True):
            if begun:  # a committed output has no partial left
                remove_partial(tgt.out)
        raise
