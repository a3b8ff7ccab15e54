"""Frames in: frame folders (OpenCV's image codecs) and video files (PyAV: tdms/frames/video.py), and the pairing
of clips.

Every frame handed to or returned by this module is float32 RGB (H, W, 3) in [0, 1].
"""

import copy
import os
import queue
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import torch

from tdms.errors import MissingFile, UserError
from tdms.frames.video import VideoFile

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # read; written: frames.writers.VIDEO_OUT
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk (type + CRC) that closes every complete PNG
# FFmpeg's own log inside OpenCV (AV_LOG_QUIET = -8), for the videos OpenCV still opens (the builder's sources).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def image_files(folder: Path) -> list[Path]:
    """Non-hidden image files directly in folder, unordered."""
    return [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
    ]


def frame_number(p: Path) -> int:
    """The frame number of a frame file: the last integer of its name ("frame_2.png" -> 2)."""
    numbers = re.findall(r"\d+", p.stem)
    if not numbers:
        raise UserError(f"{p}: frame file name has no number")
    return int(numbers[-1])


def list_frames(folder) -> list[Path]:
    """Image files of a frame folder in numeric order.

    Non-image files, sub-folders and hidden files (".DS_Store", "._00001.jpg") are ignored. Errors when
    two files share a number or the folder mixes image types (".jpg" next to ".png" means a half-replaced
    folder more often than a real video).
    """
    folder = Path(folder)
    if not folder.exists():
        raise MissingFile(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    files = image_files(folder)
    if not files:
        raise UserError(f"no frames in {folder}")
    exts = sorted({p.suffix.lower() for p in files})
    if len(exts) > 1:
        raise UserError(f"{folder}: mixed image types {', '.join(exts)} in one frame folder")
    by_index: dict[int, Path] = {}
    for p in files:
        i = frame_number(p)
        if i in by_index:
            raise UserError(f"{folder}: {by_index[i].name} and {p.name} have the same frame number {i}")
        by_index[i] = p
    return [by_index[i] for i in sorted(by_index)]


def cuts(src: "FrameSource") -> list[int]:
    """Positions t where a frame folder's numbers jump (00004 then 00007): frames are missing there, so
    frame t starts a new shot for the recurrence. None for a video."""
    if src.paths is None:
        return []
    numbers = [frame_number(p) for p in src.paths]
    return [t for t in range(1, len(numbers)) if numbers[t] - numbers[t - 1] > 1]


def check_paired(*sources) -> None:
    """Frames of several sources (FrameSource) pair by position. For frame folders, that pairs the same moments
    only if their numbers keep one offset (00000.. against 00001.., as ffmpeg numbers, is fine); a frame missing
    from one folder shifts every later pair, and that is an error naming the first pair it shifts."""
    folders = [src for src in sources if src.paths is not None]
    for src in folders[1:]:
        ref = folders[0]
        offset = frame_number(src.paths[0]) - frame_number(ref.paths[0])
        for a, b in zip(ref.paths, src.paths, strict=False):  # counts are checked apart, with their own error
            if frame_number(b) - frame_number(a) != offset:
                raise UserError(f"frame numbers do not pair up: {b} comes where {a} does (a frame missing from "
                                 f"{src.path} or {ref.path}? frames pair by position)")


def is_truncated(data: bytes) -> bool:
    """True when a JPEG lacks its end marker or a PNG its IEND chunk.

    OpenCV decodes truncated JPEGs with only a warning (grey rows at the bottom), so the markers are
    checked on the raw bytes. Trailing zero bytes after the JPEG end marker are padding, not truncation.
    """
    if data.startswith(b"\xff\xd8"):
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data.startswith(b"\x89PNG"):
        return not data.endswith(PNG_END)
    return False


def to_float_rgb(arr: np.ndarray, name) -> np.ndarray:
    """An OpenCV image (H,W), (H,W,1|3|4) BGR(A), uint8/uint16/float -> float32 RGB (H,W,3) in [0,1]."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise UserError(f"{name}: unsupported image layout {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype in (np.float32, np.float64):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
            raise UserError(f"{name}: float image has values outside [0, 1]")
    else:
        raise UserError(f"{name}: unsupported pixel type {arr.dtype}")
    if out.shape[2] == 1:
        return np.repeat(out, 3, axis=2)
    # [..., 2::-1] drops alpha (channel 3) and turns BGR into RGB in one step.
    return np.ascontiguousarray(out[:, :, 2::-1])


def read_frame(path) -> np.ndarray:
    """Read an image as float32 RGB (H,W,3) in [0,1].

    Grayscale becomes 3 equal channels, alpha is ignored (dropped), 16-bit is divided by 65535, float
    images (e.g. float TIFF) must already lie in [0, 1]. Truncated JPEG/PNG files are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: empty file (0 bytes), not an image")
    arr = None if is_truncated(data) else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UserError(f"{path}: cannot read image (truncated or not an image)")
    return to_float_rgb(arr, path)


def rgb_to_float(rgb: np.ndarray) -> np.ndarray:
    """A decoded video frame, uint8 or uint16 RGB (H,W,3) -> float32 RGB in [0,1]."""
    return rgb.astype(np.float32) / (65535.0 if rgb.dtype == np.uint16 else 255.0)


class FrameSource:
    """Frames of a frame folder or a video file, as float32 RGB (H,W,3) in [0,1].

    `len(src)`, `src.size` (H, W), `src.fps` (30.0 for folders and videos without a rate), `src.name`,
    `iter(src)`, `src[i]`; for a video also `src.video` (frames.video.VideoFile: its time stamps, codec, audio).
    A video's length is counted by decoding it once at open (container counts can be wrong); `src[i]` on a video
    decodes forward from the last position and restarts when i goes back, so one pass at a time is fast. Reading
    a frame whose size differs from frame 0 is an error.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise MissingFile(f"{self.path}: no such folder or video")
        self.is_video = self.path.is_file()
        if self.is_video and self.path.suffix.lower() not in VIDEO_EXTS:
            raise UserError(f"{self.path}: not a frame folder or a video ({', '.join(VIDEO_EXTS)})")
        self.name = self.path.stem if self.is_video else self.path.name
        self.paths = None if self.is_video else list_frames(self.path)
        self.video = VideoFile(self.path) if self.is_video else None
        self.fps = float(self.video.timing.fps) if self.is_video else 30.0
        self._decoded, self._pos = None, 0  # video decoder for random access; _pos = index of its next frame
        self._n = len(self.paths or self.video)
        self.size = None  # frame 0 sets it; every later frame is checked against it
        self.size = self[0].shape[:2]

    def _reopen(self) -> None:
        if self._decoded is not None:
            self._decoded.close()
        self._decoded, self._pos = self.video.frames(), 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        i = range(len(self))[i]  # negative indices count from the end; out of range -> IndexError
        if self.is_video:
            if self._decoded is None or i < self._pos:
                self._reopen()
            rgb = None
            while self._pos <= i and (rgb := next(self._decoded, None)) is not None:
                self._pos += 1
            if rgb is None or self._pos != i + 1:
                raise UserError(f"{self.path}: cannot decode frame {i}")
            frame, where = rgb_to_float(rgb), f"{self.path} frame {i}"
        else:
            frame, where = read_frame(self.paths[i]), self.paths[i]
        if self.size is not None and frame.shape[:2] != self.size:
            raise UserError(f"{where}: frame size {size_text(frame.shape[:2])} differs from frame 0's "
                            f"{size_text(self.size)}")
        return frame

    def __iter__(self):
        twin = copy.copy(self)  # its own decoder: two loops over one video do not restart each other
        if self.is_video:
            twin._decoded = None
            twin._reopen()
        return (twin[i] for i in range(len(twin)))








def frames_to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H,W,3) float frame -> float32 tensor (1,3,H,W)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"expected an (H, W, 3) frame, got {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0)


def tensor_to_frame(t: torch.Tensor) -> np.ndarray:
    """Tensor (1,3,H,W) or (3,H,W) -> float32 numpy frame (H,W,3), not clipped."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise UserError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()


def prefetch(iterable, depth: int = 4):
    """Iterate in a background thread, `depth` items ahead (decoding overlaps the network). When the consumer
    stops (an error, Ctrl-C, or closing this generator), the thread stops too and is joined: no thread is left
    decoding behind (one inside OpenCV at interpreter exit can abort the process)."""
    q: queue.Queue = queue.Queue(depth)
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer
            put(e)
        put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def open_clips(paths: dict, resize: bool = False, resize_flag: str = "") -> dict[str, "FrameSource"]:
    """Open {role: path} (frame folders or videos) and check that every clip has the first one's frame count,
    frame numbers that pair up (check_paired) and, unless the others are to be resized to it (`resize`), size.
    `resize_flag` names the option that resizes, for the message."""
    sources = {role: FrameSource(path) for role, path in paths.items()}
    (ref_role, ref), *others = sources.items()
    for role, src in others:
        if len(src) != len(ref):
            kind = "missing" if len(src) < len(ref) else "extra"
            raise UserError(f"frame count mismatch ({kind} frames): {role} {src.path} has {len(src)} frames, "
                            f"{ref_role} {ref.path} has {len(ref)}")
    check_paired(*sources.values())
    for role, src in others:
        if src.is_video and ref.is_video and abs(src.fps - ref.fps) > 1e-3 * ref.fps:
            raise UserError(f"frame rate mismatch: {role} {src.path} is {src.fps:.6g} fps, {ref_role} {ref.path} is "
                            f"{ref.fps:.6g} fps (frames pair by position: were frames dropped or added?)")
    for role, src in others:
        if src.size != ref.size and not resize:
            fix = f" ({resize_flag} resizes it)" if resize_flag else ""
            raise UserError(f"frame size mismatch: {role} {src.path} is {size_text(src.size)}, {ref_role} "
                            f"{ref.path} is {size_text(ref.size)}{fix}")
    return sources


def open_pair(input_path, processed_path, resize: bool = False) -> tuple["FrameSource", "FrameSource"]:
    """I and P opened and checked by open_clips; `resize` lets P be resized (--resize-processed)."""
    src = open_clips({"input": input_path, "processed": processed_path}, resize, "--resize-processed")
    return src["input"], src["processed"]


def size_text(size: tuple[int, int]) -> str:
    """(H, W) -> 'W×H' with its labels, the one way tdms writes a frame size in a message."""
    return f"{size[1]}×{size[0]} (W×H)"


def resized(src: FrameSource, size: tuple[int, int]):
    """src's frames resized (INTER_AREA) to size (H, W) where they differ."""
    for f in src:
        yield f if f.shape[:2] == size else cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def is_video(out: Path) -> bool:
    return out.suffix.lower() in VIDEO_EXTS
