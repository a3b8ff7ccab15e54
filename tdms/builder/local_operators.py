"""Per-frame operators whose flicker is local, textural or colour-shifting, not one global gain.

Same contract as tdms.builder.operators: a float32 RGB frame (H, W, 3) in [0, 1] and a numpy Generator in, a
frame of the same shape, dtype and range out, one frame at a time. Each draws its random parameters from the
generator on every call, as a stochastic image operator run on each frame alone does (a new seed per frame).
"""

import cv2
import numpy as np


def _lab(img: np.ndarray) -> np.ndarray:
    """float RGB [0,1] -> float32 Lab (L in [0, 100], a and b about [-127, 127])."""
    return cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    """float32 Lab -> float32 RGB clipped to [0, 1]."""
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB), 0, 1).astype(np.float32)


def _field(rng: np.random.Generator, shape, grid=(3, 4), channels: int = 1, sigma: float = 1.0) -> np.ndarray:
    """(H, W, channels) float32 smooth random field: N(0, sigma) values on a grid (rows, cols), bicubic-upsampled."""
    h, w = shape[:2]
    coarse = rng.normal(0, sigma, (*grid, channels)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


def gain_field(img, rng, strength: float = 0.15):
    """A spatially varying random gain per channel: exp of a smooth random field (3x4 grid, std `strength`)."""
    return np.clip(img * np.exp(_field(rng, img.shape, channels=3, sigma=strength)), 0, 1).astype(np.float32)


def hue_rotate(img, rng, degrees: float = 25.0, saturation: float = 0.25):
    """Rotate the chroma (a, b) of Lab by a random angle (+-degrees) and scale it by 1 +- saturation."""
    lab = _lab(img)
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    gain = rng.uniform(1 - saturation, 1 + saturation)
    a, b = lab[..., 1].copy(), lab[..., 2].copy()
    lab[..., 1] = gain * (np.cos(angle) * a - np.sin(angle) * b)
    lab[..., 2] = gain * (np.sin(angle) * a + np.cos(angle) * b)
    return _rgb(lab)


def random_dither(img, rng, levels: int = 6):
    """Quantise each channel to `levels` levels with a uniform random threshold per pixel (noise dithering):
    E[out] = in, but the texture is new every frame."""
    step = levels - 1
    out = np.floor(img * step + rng.uniform(0, 1, img.shape)) / step
    return np.clip(out, 0, 1).astype(np.float32)


def local_tonemap(img, rng):
    """Local tone mapping by base/detail split of log luminance (Durand and Dorsey 2002): base from a guided filter,
    compressed by a random factor in [0.4, 0.8], detail boosted by a random factor in [1, 2.5]; the result is
    renormalised so its 99th percentile is white."""
    lum = np.maximum(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 1e-3)
    log = np.log(lum).astype(np.float32)
    radius = max(2, min(img.shape[:2]) // 24)
    base = cv2.ximgproc.guidedFilter(log, log, radius, 0.1)
    mapped = rng.uniform(0.4, 0.8) * (base - base.max()) + rng.uniform(1.0, 2.5) * (log - base)
    out = np.exp(mapped)[..., None] * img / lum[..., None]
    return np.clip(out / max(np.percentile(out, 99), 1e-3), 0, 1).astype(np.float32)


def chroma_shift(img, rng, strength: float = 12.0):
    """A colourisation-like result: the lightness is kept, the chroma is the input's blurred chroma, scaled by a
    random saturation in [0.6, 1.3] and shifted by a smooth random (a, b) field (3x4 grid, std `strength`)."""
    lab = _lab(img)
    sigma = max(1.0, min(img.shape[:2]) / 60)
    chroma = cv2.GaussianBlur(lab[..., 1:], (0, 0), sigma) * rng.uniform(0.6, 1.3)
    lab[..., 1:] = chroma + _field(rng, img.shape, channels=2, sigma=strength)
    return _rgb(lab)


def channel_mix(img, rng, spread: float = 0.08):
    """A random 3x3 colour matrix per frame: identity plus N(0, spread) entries, rows renormalised to sum to 1."""
    mix = np.eye(3) + rng.normal(0, spread, (3, 3))
    mix /= mix.sum(axis=1, keepdims=True)
    return np.clip(img @ mix.T.astype(np.float32), 0, 1).astype(np.float32)


def film_grain(img, rng, strength: float = 0.05):
    """Film grain: Gaussian noise blurred over about a pixel, strongest in mid-tones (x (1 - x) shape), new
    every frame; std scaled by a random factor in [0.7, 1.3]."""
    noise = rng.normal(0, 1, img.shape[:2]).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8)
    noise /= max(noise.std(), 1e-6)
    amount = strength * rng.uniform(0.7, 1.3) * 4 * img * (1 - img)
    return np.clip(img + amount * noise[..., None], 0, 1).astype(np.float32)


def sigmoid_contrast(img, rng, gain: float = 8.0):
    """Sigmoid contrast curve 1 / (1 + exp(gain (c - x))) on each channel around the frame's median lightness c
    (a per-frame statistic), rescaled to map 0 and 1 to themselves."""
    c = float(np.median(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)))
    lo, hi = 1 / (1 + np.exp(gain * c)), 1 / (1 + np.exp(gain * (c - 1)))
    out = (1 / (1 + np.exp(gain * (c - img))) - lo) / (hi - lo)
    return np.clip(out, 0, 1).astype(np.float32)
