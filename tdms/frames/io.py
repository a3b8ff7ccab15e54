"""Frame I/O: frame folders and video files in, frame folders and videos out.

Every frame handed to or returned by this module is float32 RGB (H, W, 3) in [0, 1].
"""

import copy
import errno
import hashlib
import os
import queue
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import torch

from tdms.errors import MissingFile, UserError
from tdms.files import write_bytes_atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
# Codec per written container: mp4v (MPEG-4 part 2) ships with OpenCV's FFmpeg; MJPG is the safe AVI choice.
FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
JPEG_QUALITY = 95  # OpenCV's own default, used when quality is None
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk (type + CRC) that closes every complete PNG
# FFmpeg's own log (AV_LOG_QUIET = -8): a damaged video otherwise prints a dozen decoder lines before tdms's one
# message. OpenCV reads it when its FFmpeg backend starts, at the first capture; set it to debug a video.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_error(err: OSError, where) -> UserError:
    """An OSError of writing `where` as the one line a command prints: a full disk, or a folder not writable."""
    if err.errno in NO_SPACE:
        return UserError(f"no space left on device: {where}; free some space or write elsewhere")
    return UserError(f"cannot write {where}: {err.strerror or err}")


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


def to_uint8_bgr(img: np.ndarray, name) -> np.ndarray:
    """Float RGB (H,W,3) in [0,1] -> uint8 BGR (H,W,3): clipped, rounded to nearest."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"{name}: expected an (H, W, 3) frame, got {img.shape}")
    if not np.isfinite(img).all():
        raise UserError(f"{name}: frame has NaN or infinite values")
    out = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(out[:, :, ::-1])


def file_record(data: bytes) -> list:
    """[size, first 16 hex digits of the SHA-256] of a file's bytes: how an output folder records its frames."""
    return [len(data), hashlib.sha256(data).hexdigest()[:16]]


def write_frame(path, img: np.ndarray, quality=None) -> list:
    """Write a float RGB frame (H,W,3) in [0,1], clipped and rounded to uint8, atomically; returns the file's
    file_record. A full disk or an unwritable folder is a UserError (write_error).

    PNG/BMP/TIFF are lossless; .jpg/.jpeg use quality (1-100, default 95), which other types ignore.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTS:
        raise UserError(f"{path}: unsupported image type (use one of {', '.join(IMAGE_EXTS)})")
    params = []
    if ext in (".jpg", ".jpeg"):
        quality = JPEG_QUALITY if quality is None else int(quality)
        if not 1 <= quality <= 100:
            raise UserError(f"{path}: JPEG quality must be in 1..100, got {quality}")
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    ok, buf = cv2.imencode(ext, to_uint8_bgr(img, path), params)
    if not ok:
        raise UserError(f"{path}: cannot encode image")
    data = buf.tobytes()
    try:
        write_bytes_atomic(path, data)
    except OSError as err:
        raise write_error(err, path) from None
    return file_record(data)


class FrameSource:
    """Frames of a frame folder or a video file, as float32 RGB (H,W,3) in [0,1].

    `len(src)`, `src.size` (H, W), `src.fps` (30.0 for folders and videos without a rate), `src.name`,
    `iter(src)`, `src[i]`. A video's length is counted by decoding it once at open (container
    counts can be wrong); `src[i]` on a video decodes forward from the last position and restarts when i
    goes back, so one pass at a time is fast. Reading a frame whose size differs from frame 0 is an error.
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
        self._cap, self._pos = None, 0  # video decoder for random access; _pos = index of its next frame
        rate = self._reopen().get(cv2.CAP_PROP_FPS) if self.is_video else 0.0
        self.fps = float(rate) if rate > 0 else 30.0  # NaN > 0 is False too
        self._n = len(self.paths) if self.paths else count_frames(self.path)
        if self._n == 0:
            raise UserError(f"{self.path}: cannot read video (0 frames decoded: truncated, damaged or not a video)"
                            if self.is_video else f"no frames in {self.path}")
        self.size = None  # frame 0 sets it; every later frame is checked against it
        self.size = self[0].shape[:2]

    def _reopen(self) -> cv2.VideoCapture:
        self._cap, self._pos = cv2.VideoCapture(str(self.path)), 0
        if not self._cap.isOpened():
            raise UserError(f"{self.path}: cannot read video (0 frames decoded: truncated, damaged or not a video)")
        return self._cap

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        i = range(len(self))[i]  # negative indices count from the end; out of range -> IndexError
        if self.is_video:
            if i < self._pos:
                self._reopen()
            while self._pos < i and self._cap.grab():
                self._pos += 1
            ok, bgr = self._cap.read()
            if self._pos != i or not ok:
                raise UserError(f"{self.path}: cannot decode frame {i}")
            self._pos += 1
            frame, where = to_float_rgb(bgr, self.path), f"{self.path} frame {i}"
        else:
            frame, where = read_frame(self.paths[i]), self.paths[i]
        if self.size is not None and frame.shape[:2] != self.size:
            raise UserError(f"{where}: frame size {size_text(frame.shape[:2])} differs from frame 0's "
                            f"{size_text(self.size)}")
        return frame

    def __iter__(self):
        twin = copy.copy(self)  # its own decoder: two loops over one video do not restart each other
        if self.is_video:
            twin._reopen()
        return (twin[i] for i in range(len(twin)))


class FrameWriter:
    """Write frames to a folder (%05d.ext: 0, 1, ... or the given `numbers`) or to a video (.mp4/.mov/.mkv: mp4v,
    .avi: MJPG).

    Refuses an output that already holds frames (or an existing video) unless overwrite=True, which first
    deletes the folder's image files so no stale frame survives (call check_output before), or keep=True, which
    appends after them (a resumed output). `files` maps each frame file written to its file_record. A video is
    encoded to a hidden temp file renamed at close() once it reads back whole (the encoder accepted every frame,
    and the file reopened holds them all); otherwise, or on an exception inside `with`, the temp file is removed.
    Video frames need an even width and height (the encoders silently crop odd sizes).
    """

    def __init__(self, out, fps: float = 30.0, ext: str = ".png", quality=None, overwrite: bool = False,
                 numbers: list[int] | None = None, keep: bool = False):
        self.out = Path(out)
        self.fps, self.quality, self.count, self.numbers, self.files = float(fps), quality, 0, numbers, {}
        self.is_video = self.out.suffix.lower() in VIDEO_EXTS
        self.ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
        self._video, self._size = None, None
        if self.is_video:
            if self.out.exists() and not overwrite:
                raise UserError(f"{self.out}: already exists (pass overwrite=True to replace it)")
            self._tmp = self.out.with_name(f".{self.out.stem}.{os.getpid()}.partial{self.out.suffix}")
            return
        if self.ext not in IMAGE_EXTS:
            raise UserError(f"{self.out}: unsupported frame type {ext!r} (use one of {', '.join(IMAGE_EXTS)})")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out}: exists and is not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(err, self.out) from None
        old = image_files(self.out)
        if old and not (overwrite or keep):
            raise UserError(f"{self.out}: already holds {len(old)} image files (pass overwrite=True)")
        for p in [] if keep else old:
            p.unlink()

    def write(self, img: np.ndarray) -> None:
        """Append one float RGB frame (H,W,3) in [0,1]."""
        if not self.is_video:
            name = f"{self.count if self.numbers is None else self.numbers[self.count]:05d}{self.ext}"
            self.files[name] = write_frame(self.out / name, img, self.quality)
            self.count += 1
            return
        bgr = to_uint8_bgr(img, self.out)
        h, w = bgr.shape[:2]
        if self._video is None:
            if h % 2 or w % 2:
                raise UserError(
                    f"{self.out}: video frames need an even width and height, got {size_text((h, w))} "
                    "(write a frame folder instead)"
                )
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise write_error(err, self.out.parent) from None
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.out.suffix.lower()])
            self._video, self._size = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h)), (h, w)
            if not self._video.isOpened():
                raise self._broken("cannot open a video encoder")
        if (h, w) != self._size:
            raise UserError(
                f"{self.out}: frame {self.count} is {size_text((h, w))}, earlier frames {size_text(self._size)}"
            )
        if self._video.write(bgr) is False:  # OpenCV >= 5 says whether the encoder took the frame (4.x: None)
            raise self._broken(f"the encoder refused frame {self.count}")
        self.count += 1

    def close(self) -> None:
        """Finish the output; for a video, check that it reads back whole and rename the temp file into place."""
        if not self.is_video:
            return
        if self._video is None:
            if self.count == 0:
                raise UserError(f"{self.out}: no frames written")
            return  # already closed
        self._video.release()
        self._video = None
        if (read := count_frames(self._tmp)) != self.count:
            raise self._broken(f"{read} of its {self.count} frames read back")
        os.replace(self._tmp, self.out)

    def _broken(self, what: str) -> UserError:
        """The encoder failed (they do not say why): remove the temp file, after asking whether the disk is full
        while the file still fills it."""
        full = disk_full(self._tmp.parent)
        self.abort()
        if full:
            return UserError(f"no space left on device: {self.out} ({what}; the partial video is removed)")
        return UserError(f"{self.out}: the video encoder failed ({what}); nothing was written")

    def abort(self) -> None:
        """Stop without producing a video (frames already in a folder stay)."""
        if self.is_video:
            if self._video is not None:
                self._video.release()
                self._video = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def count_frames(video: Path) -> int:
    """How many frames a video file decodes to (container counts can be wrong); 0 when it does not open."""
    cap, n = cv2.VideoCapture(str(video)), 0
    while cap.grab():  # grab() decodes without read()'s colour conversion
        n += 1
    cap.release()
    return n


def disk_full(folder: Path) -> bool:
    """Whether 64 KiB no longer fit in folder's file system (ENOSPC, or EDQUOT over a quota)."""
    probe = folder / f".tdms-space-probe.{os.getpid()}"
    try:
        write_bytes_atomic(probe, bytes(1 << 16))
    except OSError as err:
        return err.errno in NO_SPACE
    probe.unlink()
    return False


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
