"""Flow and occlusion of frame pairs: computed (pair_flows) and kept on disk per video (FlowCache).

Layout: <root>/<backend.name>/<video key>/{fw,bw}_%05d.flo and occ_%05d.png (0/255, 255 = occluded),
for the pair (t, t+1): fw = flow(I_t -> I_{t+1}), bw = flow(I_{t+1} -> I_t), occ_t = occlusion_mask(fw, bw).
Pairs (t, t+g) that skip frames (training's data.frame_gap) are named {fw,bw}_%05d_g<g>.flo, occ_%05d_g<g>.png.
The video key hashes the frames' names, sizes and mtimes too: frames changed in place get a new folder.
"""

import hashlib
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from tdms.errors import UserError
from tdms.files import stamp_files, write_bytes_atomic
from tdms.flow.flo import read_flo, write_flo
from tdms.flow.occlusion import occlusion_mask
from tdms.frames.io import FrameSource, frames_to_tensor


def video_key(src: FrameSource) -> str:
    """Readable and unique folder name: the last two path parts plus a short hash of path, length, size and
    each frame file's name, byte size and mtime (the video file's), a cheap stand-in for the frames' content."""
    path = src.path.resolve()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(path.parts[-2:]))
    digest = hashlib.sha1(f"{path}|{len(src)}|{src.size[0]}x{src.size[1]}|".encode())
    stamp_files(digest, src.paths or [src.path])
    return f"{readable}-{digest.hexdigest()[:10]}"


class FlowCache:
    """cache.pair(video, t) -> (fw (2,H,W), bw (2,H,W), occ (1,H,W)) float32 CPU; computes what is missing."""

    def __init__(self, root, backend):
        self.root = Path(root)
        self.backend = backend
        self._sources: dict[Path, FrameSource] = {}
        self._folders: dict[Path, Path] = {}

    def source(self, video) -> FrameSource:
        """The frames of `video` (a frame folder or a video file), opened once."""
        key = Path(video).resolve()
        if key not in self._sources:
            self._sources[key] = FrameSource(video)
        return self._sources[key]

    def folder(self, video) -> Path:
        """The cache folder of `video`'s frames as they were when this cache first opened them."""
        key = Path(video).resolve()
        if key not in self._folders:
            self._folders[key] = self.root / self.backend.name / video_key(self.source(video))
        return self._folders[key]

    def paths(self, video, t: int, gap: int = 1) -> tuple[Path, Path, Path]:
        """Cache files (fw, bw, occ) of the pair (t, t+gap)."""
        folder = self.folder(video)
        end = f"{t:05d}" if gap == 1 else f"{t:05d}_g{gap}"
        return folder / f"fw_{end}.flo", folder / f"bw_{end}.flo", folder / f"occ_{end}.png"

    def pair(self, video, t: int, gap: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flows and occlusion of the pair (t, t+gap), read from the cache or computed and written."""
        src = self.source(video)
        if gap < 1 or not 0 <= t < len(src) - gap:
            raise IndexError(f"{video}: no frame pair ({t}, {t + gap}), the video has {len(src)} frames")
        fw_path, bw_path, occ_path = self.paths(video, t, gap)
        fw, bw = load_flow(fw_path, src.size), load_flow(bw_path, src.size)
        if fw is None or bw is None:
            return self._compute(video, t, gap, src[t], src[t + gap])
        occ = load_occlusion(occ_path, src.size)
        if occ is None:
            occ = occlusion_mask(fw[None], bw[None])[0]
            write_occlusion(occ_path, occ)
        return fw, bw, occ

    def forward(self, video, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(fw, occ) of the pair (t, t+1), all the warping error needs: bw is read only if occ must be made."""
        src = self.source(video)
        fw_path, _, occ_path = self.paths(video, t)
        fw, occ = load_flow(fw_path, src.size), load_occlusion(occ_path, src.size)
        if fw is None or occ is None:
            fw, _, occ = self.pair(video, t)
        return fw, occ

    def prepare(self, video, progress: bool = True, gaps=(1,)) -> None:
        """Compute every pair (t, t+g), g in `gaps`, whose files are not all there, reading the frames once."""
        src = self.source(video)
        todo = {(t, g) for g in gaps for t in range(len(src) - g)
                if not all(p.exists() for p in self.paths(video, t, g))}
        if not todo:
            return
        recent: dict[int, np.ndarray] = {}  # the last max(gaps) frames
        with tqdm(total=len(todo), desc=f"{self.backend.name} {src.name}", disable=not progress) as bar:
            for t, frame in enumerate(src):
                for g in gaps:
                    if (t - g, g) in todo:
                        self._compute(video, t - g, g, recent[t - g], frame)
                        bar.update(1)
                recent[t] = frame
                recent.pop(t - max(gaps), None)

    def _compute(self, video, t: int, gap: int, frame_a: np.ndarray, frame_b: np.ndarray):
        """pair_flows of (t, t+gap), written to the cache and returned."""
        fw, bw, occ = pair_flows(self.backend, frame_a, frame_b)
        fw_path, bw_path, occ_path = self.paths(video, t, gap)
        write_flo(fw_path, fw.numpy())
        write_flo(bw_path, bw.numpy())
        write_occlusion(occ_path, occ)
        return fw, bw, occ


def pair_flows(backend, frame_a: np.ndarray, frame_b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fw, bw, occ) of two (H,W,3) frames, float32 CPU: fw = flow(a -> b) (2,H,W), bw = flow(b -> a), and
    occ = occlusion_mask(fw, bw) (1,H,W), 1 = occluded in a. The backend runs both ways in one batch of 2."""
    a, b = frames_to_tensor(frame_a), frames_to_tensor(frame_b)
    flows = backend(torch.cat([a, b]), torch.cat([b, a])).float().cpu()  # (2,2,H,W): fw, bw
    return flows[0], flows[1], occlusion_mask(flows[:1], flows[1:])[0]


def load_flow(path: Path, size: tuple[int, int]) -> torch.Tensor | None:
    """(2,H,W) flow from a cache file, or None (with a warning if the file is bad) to recompute it."""
    if not path.exists():
        return None
    try:
        flow = read_flo(path)
    except ValueError as err:
        warnings.warn(f"corrupt flow cache file, recomputing: {err}", stacklevel=3)
        return None
    if flow.shape[1:] != tuple(size):
        warnings.warn(
            f"{path}: flow is {flow.shape[1:]}, frames are {tuple(size)}; recomputing", stacklevel=3
        )
        return None
    return torch.from_numpy(flow)


def load_occlusion(path: Path, size: tuple[int, int]) -> torch.Tensor | None:
    """(1,H,W) {0,1} occlusion from a cache PNG, or None (with a warning if the file is bad)."""
    if not path.exists():
        return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.shape != tuple(size):
        warnings.warn(f"corrupt occlusion cache file {path}, recomputing", stacklevel=3)
        return None
    return torch.from_numpy((img > 127).astype(np.float32))[None]


def write_occlusion(path: Path, occ: torch.Tensor) -> None:
    """Write (1,H,W) {0,1} occlusion as an 8-bit PNG (0/255), atomically."""
    img = (occ[0].numpy() > 0.5).astype(np.uint8) * 255
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise UserError(f"could not encode occlusion PNG for {path}")
    write_bytes_atomic(path, buf.tobytes())
