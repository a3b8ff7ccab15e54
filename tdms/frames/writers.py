"""Frames out: image files and videos written whole or not at all, with a record (size, SHA-256) of each file, and
disk errors (a full disk, a read-only folder) said in one line.

Every frame handed to this module is float32 RGB (H, W, 3) in [0, 1]; it is clipped and rounded to uint8.
"""

import errno
import hashlib
import os
from pathlib import Path

import av
import cv2
import numpy as np

from tdms.errors import UserError
from tdms.files import write_bytes_atomic
from tdms.frames.io import IMAGE_EXTS, VIDEO_EXTS, FrameSource, image_files, is_video, size_text
from tdms.frames.video import Encoding, VideoEncoder, check_written

VIDEO_OUT = (".mp4", ".mov", ".mkv", ".avi")  # the containers H.264 is written in (.webm takes VP8/VP9/AV1 only)

JPEG_QUALITY = 95  # OpenCV's own default, used when quality is None


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_error(err: OSError, where) -> UserError:
    """An OSError of writing `where` as the one line a command prints: a full disk, or a folder not writable."""
    if err.errno in NO_SPACE:
        return UserError(f"no space left on device: {where}; free some space or write elsewhere")
    return UserError(f"cannot write {where}: {err.strerror or err}")


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


class FrameWriter:
    """Write frames to a folder (%05d.ext: 0, 1, ... or the given `numbers`) or to a video (.mp4/.mov/.mkv/.avi:
    H.264 as `encoding` says, frames.video.Encoding: CRF, lossless, the audio to copy, the time stamps to keep).

    Refuses an output that already holds frames (or an existing video) unless overwrite=True, which first
    deletes the folder's image files so no stale frame survives (call check_output before), or keep=True, which
    appends after them (a resumed output). `files` maps each frame file written to its file_record. A video is
    encoded to a hidden temp file renamed at close() once it reads back whole (the encoder accepted every frame,
    and the file reopened holds them all); otherwise, or on an exception inside `with`, the temp file is removed.
    H.264 in yuv420p needs an even width and height (the lossless RGB encoding does not).
    """

    def __init__(self, out, fps: float = 30.0, ext: str = ".png", quality=None, overwrite: bool = False,
                 numbers: list[int] | None = None, keep: bool = False, encoding: Encoding | None = None):
        self.out = Path(out)
        self.fps, self.quality, self.count, self.numbers, self.files = float(fps), quality, 0, numbers, {}
        self.is_video = self.out.suffix.lower() in VIDEO_EXTS
        self.ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
        self.encoding = encoding or Encoding()
        self._video, self._size = None, None
        if self.is_video:
            if self.out.suffix.lower() not in VIDEO_OUT:
                raise UserError(f"{self.out}: tdms writes H.264 videos as {', '.join(VIDEO_OUT)}, not "
                                f"{self.out.suffix} (its container takes other codecs)")
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
        rgb = np.ascontiguousarray(to_uint8_bgr(img, self.out)[:, :, ::-1])
        h, w = rgb.shape[:2]
        if self._video is None:
            if (h % 2 or w % 2) and not self.encoding.lossless:
                raise UserError(
                    f"{self.out}: H.264 (yuv420p) needs an even width and height, got {size_text((h, w))} "
                    "(write a frame folder instead, or a lossless video: --lossless)"
                )
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                self._video, self._size = VideoEncoder(self._tmp, (h, w), self.fps, self.encoding), (h, w)
            except OSError as err:
                raise write_error(err, self.out.parent) from None
            except av.error.FFmpegError as err:
                raise self._broken(f"cannot open the encoder: {err}") from None
        if (h, w) != self._size:
            raise UserError(
                f"{self.out}: frame {self.count} is {size_text((h, w))}, earlier frames {size_text(self._size)}"
            )
        try:
            self._video.write(rgb)
        except (OSError, av.error.FFmpegError) as err:
            raise self._broken(f"the encoder refused frame {self.count}: {getattr(err, 'strerror', err)}") from None
        self.count += 1

    def close(self) -> None:
        """Finish the output; for a video, check that it reads back whole and rename the temp file into place."""
        if not self.is_video:
            return
        if self._video is None:
            if self.count == 0:
                raise UserError(f"{self.out}: no frames written")
            return  # already closed
        video, self._video = self._video, None
        try:
            video.close()
        except (OSError, av.error.FFmpegError) as err:
            raise self._broken(f"the encoder failed at the end: {getattr(err, 'strerror', err)}") from None
        if short := check_written(self._tmp, self.count):
            raise self._broken(short)
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
                self._video.abort()
                self._video = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()




def video_encoding(out: Path, src_i: FrameSource, src_p: FrameSource, crf: int, lossless: bool, audio: bool
                   ) -> tuple[Encoding | None, list[str]]:
    """How a video output of I and P is written, and what to say of it: the time stamps of the input video (else of
    the processed one), the audio of the processed video (else of the input) unless not `audio`. None for a
    frame folder."""
    if not is_video(out):
        return None, []
    notes = []
    timed = next((s for s in (src_i, src_p) if s.is_video and s.video.monotonic), None)
    if timed is not None and timed.video.timing.variable:
        notes.append(f"{timed.path}: variable frame rate (average {timed.fps:.6g} fps): its time stamps are kept")
    heard = next((s for s in (src_p, src_i) if s.is_video and s.video.audio), None) if audio else None
    if heard is not None:
        notes.append(f"audio: the {heard.video.audio} track of {heard.path} goes into {out.name}")
    elif audio and (src_i.is_video or src_p.is_video):
        notes.append(f"audio: none in {' or '.join(str(s.path) for s in (src_p, src_i) if s.is_video)}")
    return Encoding(crf, lossless, heard.path if heard else None, timed.video.timing if timed else None), notes


def disk_full(folder: Path) -> bool:
    """Whether 64 KiB no longer fit in folder's file system (ENOSPC, or EDQUOT over a quota)."""
    probe = folder / f".tdms-space-probe.{os.getpid()}"
    try:
        write_bytes_atomic(probe, bytes(1 << 16))
    except OSError as err:
        return err.errno in NO_SPACE
    probe.unlink()
    return False
