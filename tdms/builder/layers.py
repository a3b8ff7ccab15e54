"""Layered synthetic clips: cut-outs of photos moving over a filmed photo, with exact flow and occlusion.

The background is a photo filmed by a smooth random camera (pan, zoom, roll); over it move 2-4 objects, each a
soft-edged cut-out of a photo (a random star-shaped blob) with its own motion (translation, rotation, scale), drawn
back to front; they may enter or leave the frame. The original frames also change for real, as a consistent output
must follow: a lighting ramp or a flash, a moving spot light, and motion blur (each frame averages the scene over
an exposure).

Conventions: frames float32 RGB (H, W, 3) in [0, 1]; flows[t] (2, H, W) pixels, x first, maps frame t to frame
t-1 (so warp(frames[t-1], flows[t]) ~ frames[t]; flows[0] is zero); occluded[t] (H, W) bool, True where the point
seen at a pixel of frame t is not seen in frame t-1: hidden there by another layer, outside that frame, or on a
soft edge (a pixel mixing two layers) in either frame. With blur, flows are those of the exposure centres.
"""

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from tdms.builder.sources import camera_flow, camera_matrices

SUBFRAMES = 5  # scene samples averaged over a blurred frame's exposure (odd: the middle one is the frame time)
SPAN = 40  # frames over which speeds are stated: motion per frame does not depend on the clip's length


@dataclass(frozen=True)
class Path:
    """value(t) = start + velocity * t + sum_i amps[i] * sin(2 pi freqs[i] t + phases[i]), for float t; (D,)."""

    start: np.ndarray
    velocity: np.ndarray
    amps: np.ndarray  # (2, D)
    freqs: np.ndarray  # (2, D)
    phases: np.ndarray  # (2, D)

    def __call__(self, t: float) -> np.ndarray:
        return self.start + self.velocity * t + (self.amps * np.sin(2 * np.pi * self.freqs * t + self.phases)).sum(0)


def random_path(rng, start, velocity, wiggle, period: float = 40.0) -> Path:
    """A drift plus two slow sinusoids of total amplitude <= wiggle (per dimension); period in frames."""
    start, velocity, wiggle = (np.atleast_1d(np.asarray(v, np.float64)) for v in (start, velocity, wiggle))
    d = start.shape[0]
    amps = rng.dirichlet([1.0, 1.0], size=d).T * wiggle
    return Path(start, velocity, amps, rng.uniform(0.5, 1.5, (2, d)) / period, rng.uniform(0, 2 * np.pi, (2, d)))


class Sprite(NamedTuple):
    """A cut-out: colour (s, s, 3) float32 and alpha (s, s) float32 in [0, 1], soft over about one pixel."""

    colour: np.ndarray
    alpha: np.ndarray


def blob_alpha(side: int, rng: np.random.Generator) -> np.ndarray:
    """(side, side) alpha of a random star-shaped blob: radius r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)),
    k = 2..4, edge antialiased by the signed distance along the ray (one pixel of ramp)."""
    c = (side - 1) / 2
    ys, xs = np.mgrid[0:side, 0:side] - c
    theta, rho = np.arctan2(ys, xs), np.hypot(xs, ys)
    amps, phases = rng.uniform(0, 0.18, 3), rng.uniform(0, 2 * np.pi, 3)
    shape = 1 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amps, phases, strict=True))
    radius = 0.48 * side * shape / (1 + amps.sum())  # fits inside the square
    return np.clip(radius - rho + 0.5, 0, 1).astype(np.float32)


def cut_sprite(photo: np.ndarray, side: int, rng: np.random.Generator) -> Sprite:
    """A blob of photo, side x side pixels, from a random place, turned by a random multiple of 90 degrees."""
    ph, pw = photo.shape[:2]
    grab = min(ph, pw, round(side * rng.uniform(1.0, 2.0)))  # photo pixels per sprite side: zoomed out up to 2x
    y0, x0 = rng.integers(0, ph - grab + 1), rng.integers(0, pw - grab + 1)
    patch = cv2.resize(photo[y0 : y0 + grab, x0 : x0 + grab], (side, side), interpolation=cv2.INTER_AREA)
    patch = np.ascontiguousarray(np.rot90(patch, rng.integers(4)))
    return Sprite(patch.astype(np.float32), blob_alpha(side, rng))


@dataclass(frozen=True)
class Mover:
    """An object: its sprite and its motion (centre in frame pixels, angle in radians, log-scale)."""

    sprite: Sprite
    centre: Path
    angle: Path
    log_scale: Path

    def matrix(self, t: float) -> np.ndarray:
        """(3, 3) map sprite pixel -> frame pixel at time t."""
        s = self.sprite.alpha.shape[0]
        k = np.exp(self.log_scale(t)[0])
        a = self.angle(t)[0]
        lin = k * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        offset = self.centre(t) - lin @ np.full(2, (s - 1) / 2)
        return np.vstack([np.hstack([lin, offset[:, None]]), [0, 0, 1]])


def random_mover(sprite: Sprite, n: int, size, rng: np.random.Generator, speed: float) -> Mover:
    """A straight crossing through a random point of the frame at mid-clip, covering up to `speed` frame widths
    in SPAN frames (so fast objects enter and leave), a wobble, a slow spin and a +-15 % change of scale."""
    w, h = size
    middle = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    direction = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(0.2, 1.0) * speed * w / SPAN * np.array([np.cos(direction), np.sin(direction)])
    centre = random_path(rng, middle - velocity * (n - 1) / 2, velocity, 0.05 * h)
    angle = random_path(rng, rng.uniform(0, 2 * np.pi), rng.uniform(-0.03, 0.03), 0.1)
    return Mover(sprite, centre, angle, random_path(rng, 0.0, 0.0, np.log(1.15)))


class LayeredClip(NamedTuple):
    """frames: list of float32 (H, W, 3); flows: (T, 2, H, W) float32; occluded: (T, H, W) bool; light: (T, H, W, 3)
    float32 multiplicative lighting applied to the rendered scene (all ones when off)."""

    frames: list
    flows: np.ndarray
    occluded: np.ndarray
    light: np.ndarray


@dataclass(frozen=True)
class Scene:
    background: np.ndarray  # photo, float32 (h, w, 3), scaled to cover the frame with room to move
    centre: Path  # camera centre in photo pixels
    zoom: Path  # relative zoom (log)
    roll: Path  # radians
    movers: tuple
    size: tuple

    def camera(self, t: float) -> np.ndarray:
        """(2, 3) map frame pixel -> background pixel at time t."""
        return camera_matrices(
            self.centre(t)[None], np.exp(self.zoom(t)), self.roll(t), self.size
        )[0]

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The scene at time t: colour (H, W, 3) and the objects' alphas (K, H, W), front-most last."""
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # maps destination (frame) -> source (photo)
        frame = cv2.warpAffine(self.background, self.camera(t), self.size, flags=flags, borderMode=cv2.BORDER_REFLECT)
        alphas = []
        for m in self.movers:
            mat = m.matrix(t)[:2]
            # premultiplied colour: bilinear resampling then mixes no background colour into the edge
            colour = cv2.warpAffine(m.sprite.colour * m.sprite.alpha[..., None], mat, self.size)
            alpha = cv2.warpAffine(m.sprite.alpha, mat, self.size)
            frame = frame * (1 - alpha[..., None]) + colour
            alphas.append(alpha)
        return frame.astype(np.float32), np.stack(alphas) if alphas else np.zeros((0, *frame.shape[:2]), np.float32)


def layer_ids(alphas: np.ndarray) -> np.ndarray:
    """(H, W) int: the front-most object whose alpha is >= 0.5 at each pixel, -1 for the background."""
    ids = np.full(alphas.shape[1:], -1, np.int32)
    for k, alpha in enumerate(alphas):
        ids[alpha >= 0.5] = k
    return ids


def _soft(alphas: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that mix layers (some alpha strictly between 0 and 1)."""
    return ((alphas > 0.01) & (alphas < 0.99)).any(axis=0)


def exact_flow(scene: Scene, t: float, ids: np.ndarray) -> np.ndarray:
    """(2, H, W) flow frame t -> frame t-1 of the layer seen at each pixel: q = M(t-1) M(t)^-1 p per object,
    the camera maps for the background."""
    flow = camera_flow(scene.camera(t), scene.camera(t - 1), scene.size)
    h, w = ids.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # (H, W, 3)
    for k, mover in enumerate(scene.movers):
        sel = ids == k
        if sel.any():
            rel = mover.matrix(t - 1) @ np.linalg.inv(mover.matrix(t))
            flow[:, sel] = (pts[sel] @ rel.T - pts[sel])[:, :2].T
    return flow


def occlusion(flow: np.ndarray, ids: np.ndarray, soft: np.ndarray, ids_prev: np.ndarray, soft_prev: np.ndarray):
    """(H, W) bool: pixels of frame t whose point is not seen in frame t-1 at p + flow(p) (see the module doc).

    A target within a pixel of a layer boundary of frame t-1 counts as occluded too: bilinear sampling there
    mixes the two layers."""
    h, w = ids.shape
    ys, xs = np.mgrid[0:h, 0:w]
    qx, qy = xs + flow[0], ys + flow[1]
    inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
    xi = np.clip(np.rint(qx), 0, w - 1).astype(np.intp)
    yi = np.clip(np.rint(qy), 0, h - 1).astype(np.intp)
    idf, kernel = ids_prev.astype(np.float32), np.ones((3, 3), np.uint8)
    edge_prev = soft_prev | (cv2.dilate(idf, kernel) != cv2.erode(idf, kernel))
    return ~inside | soft | edge_prev[yi, xi] | (ids_prev[yi, xi] != ids)


def random_light(n: int, size, rng: np.random.Generator, drift: float = 0.06) -> np.ndarray:
    """(n, H, W, 3) float32 lighting: a per-channel drift (+-drift), then a ramp (x0.65-1.45 over 4-12 frames) or
    a flash (+30-80 %, decaying over 0.7-2.5 frames), and half the time a soft spot light (+20-60 %) crossing."""
    w, h = size
    t = np.arange(n, dtype=np.float64)
    drift_paths = [random_path(rng, 1.0, 0.0, drift, period=60.0) for _ in range(3)]
    gain = np.stack([np.array([p(x)[0] for x in t]) for p in drift_paths], -1)  # (n, 3)
    at = rng.uniform(0.2, 0.7) * n
    if rng.random() < 0.5:
        target = rng.choice([rng.uniform(0.65, 0.85), rng.uniform(1.2, 1.45)])
        x = np.clip((t - at) / rng.uniform(4, 12), 0, 1)
        gain = gain * (1 + (target - 1) * x * x * (3 - 2 * x))[:, None]  # smoothstep
    else:
        tau, strength = rng.uniform(0.7, 2.5), rng.uniform(0.3, 0.8)
        at = np.floor(at)
        gain = gain * (1 + strength * np.where(t >= at, np.exp(-(t - at) / tau), 0))[:, None]
    light = np.broadcast_to(gain[:, None, None, :], (n, h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:
        sigma, strength = rng.uniform(0.15, 0.3) * w, rng.uniform(0.2, 0.6)
        start, end = rng.uniform([0, 0], [w, h], size=(2, 2))
        ys, xs = np.mgrid[0:h, 0:w]
        spots = []
        for i in range(n):
            cx, cy = start + (end - start) * i / max(n - 1, 1)
            spots.append(1 + strength * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))
        light = light * np.stack(spots)[..., None].astype(np.float32)
    return light


def random_scene(background, sources, n: int, size, rng, objects=(2, 4), speed=1.0, pan=0.5) -> Scene:
    """A background photo filmed with a pan of up to `pan` frame widths in SPAN frames (plus wobble, +-6 % zoom,
    +-3 degrees roll) and objects cut from random `sources` photos, each crossing up to `speed` frame widths in
    SPAN frames."""
    w, h = size
    ph, pw = background.shape[:2]
    scale = max(1.4 * h / ph, 1.4 * w / pw)
    background = cv2.resize(background, (round(pw * scale), round(ph * scale)), interpolation=cv2.INTER_AREA)
    ph, pw = background.shape[:2]
    direction = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(0.3, 1.0) * pan * w / SPAN * np.array([np.cos(direction), np.sin(direction)])
    centre = random_path(rng, np.array([(pw - 1) / 2, (ph - 1) / 2]) - velocity * (n - 1) / 2, velocity, 0.05 * w)
    zoom, roll = random_path(rng, 0.0, 0.0, 0.06), random_path(rng, 0.0, 0.0, np.deg2rad(3))
    movers = []
    for _ in range(rng.integers(objects[0], objects[1] + 1)):
        sprite = cut_sprite(sources[rng.integers(len(sources))], round(rng.uniform(0.25, 0.55) * h), rng)
        movers.append(random_mover(sprite, n, size, rng, speed))
    return Scene(background.astype(np.float32), centre, zoom, roll, tuple(movers), tuple(size))


def render_clip(scene: Scene, n: int, light: np.ndarray | None = None, exposure: float = 0.0) -> LayeredClip:
    """Render n frames of scene with their exact flows and occlusion masks; light (n, H, W, 3) multiplies the
    scene (None: none); exposure > 0 averages SUBFRAMES scene samples over that many frame intervals (blur)."""
    w, h = scene.size
    offsets = exposure * (np.arange(SUBFRAMES) / (SUBFRAMES - 1) - 0.5) if exposure > 0 else np.zeros(1)
    frames, flows, masks = [], np.zeros((n, 2, h, w), np.float32), np.zeros((n, h, w), bool)
    prev = None
    for t in range(n):
        samples = [scene.render(t + o) for o in offsets]
        colour = np.mean([s[0] for s in samples], axis=0)
        sharp = samples[len(samples) // 2][1]  # the alphas at the frame time decide the layer seen
        ids, soft = layer_ids(sharp), _soft(np.mean([s[1] for s in samples], axis=0)) | _soft(sharp)
        if prev is not None:
            flows[t] = exact_flow(scene, t, ids)
            masks[t] = occlusion(flows[t], ids, soft, *prev)
        prev = ids, soft
        if light is not None:
            colour = colour * light[t]
        frames.append(np.clip(colour, 0, 1).astype(np.float32))
    light = np.ones((n, h, w, 3), np.float32) if light is None else light
    return LayeredClip(frames, flows, masks, light)


def layered_clip(background, sources, n: int, size, rng, blur: float = 0.5, lighting: bool = True) -> LayeredClip:
    """A random layered clip (random_scene), lit by random_light when lighting, blurred with probability blur
    (exposure 0.5-1 frame)."""
    scene = random_scene(background, sources, n, size, rng)
    light = random_light(n, size, rng) if lighting else None
    exposure = rng.uniform(0.5, 1.0) if rng.random() < blur else 0.0
    return render_clip(scene, n, light, exposure)
