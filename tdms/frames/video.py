"""Video files through PyAV (FFmpeg's libraries, bundled by the `av` wheel): decoded frame by frame from any
container and codec this FFmpeg build reads, written as H.264 with the audio stream of a source copied over.

Frames handed out are uint8 or uint16 RGB (H, W, 3) as decoded (16 bits for sources of more than 8 bits a
component), turned upright by the stream's rotation; frames taken in are uint8 RGB. Memory does not depend on
a video's length: frames stream one at a time, audio packets are interleaved as the video is written.
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tdms.errors import UserError

CRF = 18  # libx264's constant rate factor by default: visually near-lossless (x264's own default is 23)
PRESET = "medium"  # x264's default speed/size trade-off
# x264 holds rc-lookahead frames (40 at preset medium) before it writes one: at 1080p that buffer fills over the
# first ~50 frames and holds ~0.4 GB. 10 frames keep the encoder's memory small and reached within a short clip.
LOOKAHEAD = 10
DAMAGED = "cannot read video (0 frames decoded: truncated, damaged or not a video)"


@dataclass
class Timing:
    """When each frame of a video is shown: pts[t] in units of time_base (seconds = pts * time_base)."""

    fps: Fraction  # the average frame rate
    time_base: Fraction
    pts: list[int]

    @property
    def variable(self) -> bool:
        """Whether frame durations differ by more than one tick of the time base (a variable frame rate)."""
        steps = np.diff(self.pts)
        return len(steps) > 1 and int(steps.max() - steps.min()) > 1

    def seconds(self, t: int) -> float:
        return float(self.pts[t] * self.time_base)


def failure(err: Exception) -> str:
    """What FFmpeg said, in a few words."""
    return getattr(err, "strerror", None) or str(err)


def open_container(path: Path):
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError):
        raise UserError(f"{path}: {DAMAGED}") from None


def video_stream(container, path: Path):
    """The first video stream, with threaded decoding; errors name what the file holds instead."""
    if not container.streams:
        raise UserError(f"{path}: {DAMAGED}")
    if not container.streams.video:
        held = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}" for s in container.streams)
        raise UserError(f"{path}: no video stream (it holds {held or 'no streams'})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise UserError(f"{path}: its video codec cannot be decoded by this FFmpeg build (PyAV {av.__version__}, "
                        f"FFmpeg {av.ffmpeg_version_info})")
    stream.thread_type = "AUTO"
    return stream


def rgb_format(stream) -> str:
    """rgb48le for sources of more than 8 bits a component (10-bit HDR, ProRes), else rgb24."""
    fmt = stream.codec_context.format
    return "rgb48le" if fmt is not None and max(c.bits for c in fmt.components) > 8 else "rgb24"


def upright(frame, fmt: str) -> np.ndarray:
    """A decoded frame as RGB `fmt`, turned by its display matrix (FFmpeg's angle: counter-clockwise degrees)."""
    rgb = frame.to_ndarray(format=fmt)
    quarter = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter)) if quarter else rgb


class VideoFile:
    """A video file opened for reading: `len()`, `timing`, `audio` (codec name of its first audio stream, or
    None), `codec`, and `frames()` decoding from frame 0. The frame count and time stamps come from one decoding
    pass at open (container counts can be wrong); a file that decodes to fewer frames than its header lists is
    truncated, said with both counts."""

    def __init__(self, path):
        self.path = Path(path)
        with open_container(self.path) as container:
            stream = video_stream(container, self.path)
            self.codec, self.format = stream.codec_context.name, rgb_format(stream)
            audio = container.streams.audio
            self.audio = audio[0].codec_context.name if audio and audio[0].codec_context else None
            listed, time_base = stream.frames, stream.time_base or Fraction(1, 90000)
            rate = stream.average_rate or stream.guessed_rate or Fraction(30)
            pts, err = [], None
            try:
                for frame in container.decode(stream):
                    pts.append(frame.pts if frame.pts is not None else len(pts))
            except av.error.FFmpegError as e:
                err = e
        if not pts:
            raise UserError(f"{self.path}: {DAMAGED}")
        if err is not None or (listed and len(pts) < listed):
            why = f": {failure(err)}" if err is not None else ""
            of = f" of the {listed} its header lists" if listed else ""
            raise UserError(f"{self.path}: truncated or damaged: {len(pts)} frames{of} decoded{why}")
        self.timing = Timing(Fraction(rate), Fraction(time_base), pts)
        self.monotonic = all(b > a for a, b in zip(pts, pts[1:], strict=False))  # stamps an encoder can keep

    def __len__(self) -> int:
        return len(self.timing.pts)

    def frames(self):
        """The frames from 0 on, RGB uint8 or uint16 (H, W, 3), upright. Closing the generator closes the file."""
        with open_container(self.path) as container:
            stream = video_stream(container, self.path)
            for frame in container.decode(stream):
                yield upright(frame, self.format)


@dataclass
class Encoding:
    """How a video is written: H.264 at `crf` (yuv420p, what browsers play), or `lossless` (libx264rgb at qp 0:
    the RGB frames exactly, High 4:4:4 Predictive, which browsers do not play); `audio_from`: a video whose first
    audio stream is copied in (re-encoded to AAC only where the container cannot hold its codec)."""

    crf: int = CRF
    lossless: bool = False
    audio_from: Path | None = None
    timing: Timing | None = None  # the time stamps to keep (a source's); None: 0, 1, 2, ... at the writer's fps


def check_crf(crf: int) -> None:
    if not 0 <= crf <= 51:
        raise UserError(f"--crf (crf) must be in 0..51 (x264's scale: 0 best, 51 worst; default {CRF}), got {crf}")


class VideoEncoder:
    """Encode uint8 RGB frames (H, W, 3) to `path` (mp4/mov/mkv/avi) as H.264, with the audio of
    `encoding.audio_from` muxed in as the video advances. close() flushes both; abort() stops without flushing."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, encoding: Encoding):
        self.path, self.encoding, self.count = Path(path), encoding, 0
        h, w = size
        timing = encoding.timing
        rate = timing.fps if timing else Fraction(fps).limit_denominator(1001 * 1000)
        self.time_base = timing.time_base if timing else 1 / rate
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
        self.out = av.open(str(self.path), "w", options=options)
        codec, pix_fmt, opts = ("libx264rgb", "rgb24", {"qp": "0"}) if encoding.lossless else (
            "libx264", "yuv420p", {"crf": str(encoding.crf)})
        self.video = self.out.add_stream(codec, rate=rate, options={"preset": PRESET, "rc-lookahead": str(LOOKAHEAD),
                                                                    **opts})
        self.video.width, self.video.height, self.video.pix_fmt = w, h, pix_fmt
        self.video.time_base = self.video.codec_context.time_base = self.time_base
        self.audio_in = self.audio = self.packets = self.pending = None
        if encoding.audio_from is not None:
            self.open_audio(encoding.audio_from)

    def open_audio(self, source: Path) -> None:
        """Copy the first audio stream of `source` (or re-encode it to AAC where the container cannot hold it)."""
        self.audio_in = av.open(str(source))
        if not self.audio_in.streams.audio:
            self.audio_in.close()
            self.audio_in = None
            return
        stream = self.audio_in.streams.audio[0]
        self.copy = stream.codec_context.name in self.out.supported_codecs
        if self.copy:
            self.audio = self.out.add_stream_from_template(stream)
        else:
            self.audio = self.out.add_stream("aac", rate=stream.codec_context.sample_rate)
        self.packets = (p for p in self.audio_in.demux(stream) if p.size and p.pts is not None)
        self.pending = next(self.packets, None)

    def mux_audio(self, until: float | None) -> None:
        """Mux the source's audio packets that start before `until` seconds (None: all that are left)."""
        while self.pending is not None and (until is None or self.pending.pts * self.pending.time_base < until):
            packet, self.pending = self.pending, next(self.packets, None)
            if self.copy:
                packet.stream = self.audio
                self.out.mux(packet)
                continue
            for frame in packet.decode():
                self.out.mux(self.audio.encode(frame))

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        timing = self.encoding.timing
        frame.pts = timing.pts[self.count] if timing and self.count < len(timing.pts) else self.next_pts()
        frame.time_base = self.time_base
        self.out.mux(self.video.encode(frame))
        self.last_pts, self.count = frame.pts, self.count + 1
        if self.audio is not None:  # interleaved: the audio up to this frame's time, a second ahead
            self.mux_audio(float(frame.pts * self.time_base) + 1.0)

    def next_pts(self) -> int:
        """0, 1, 2, ... frames at the stream's rate, in time-base units (after the source's stamps, if it ran out)."""
        if self.count == 0:
            return 0
        return self.last_pts + max(1, round(1 / (self.video.average_rate or Fraction(30)) / self.time_base))

    def close(self) -> None:
        try:
            self.out.mux(self.video.encode(None))
            if self.audio is not None:
                self.mux_audio(None)
                if not self.copy:
                    self.out.mux(self.audio.encode(None))
        finally:
            self.abort()

    def abort(self) -> None:
        for c in (self.out, self.audio_in):
            if c is not None:
                c.close()
        self.out = self.audio_in = None


def decodable(path: Path) -> int:
    """How many frames of a video decode before the end or the first error; 0 when it does not open."""
    n = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                n += 1
    except (av.error.FFmpegError, IndexError):
        pass
    return n


def check_written(path: Path, frames: int) -> str | None:
    """Why a written video does not read back whole (how many of its frames decode), or None when it does."""
    read = decodable(path)
    return None if read == frames else f"{read} of its {frames} frames read back"
