"""Real per-frame image operators that make flickering "processed" videos.

Every operator maps a float32 RGB frame (H, W, 3) in [0, 1] and a numpy Generator to a frame of the same
shape, dtype and range. Each runs on one frame with no memory of the others; most adapt to per-frame
statistics (white point, histogram, airlight, percentiles, cluster init), which is what makes them flicker.
"""

from collections.abc import Callable

import cv2
import numpy as np

from tdms.builder import local_operators as local

Operator = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _bgr8(img: np.ndarray) -> np.ndarray:
    """float RGB [0,1] (H,W,3) -> uint8 BGR, rounded."""
    return cv2.cvtColor(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def _rgbf(bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (H,W,3) -> float32 RGB [0,1]."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def _on_lightness(img: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply fn to the uint8 L channel of Lab, keeping a and b."""
    lab = cv2.cvtColor(_bgr8(img), cv2.COLOR_BGR2LAB)
    lab[..., 0] = fn(lab[..., 0])
    return _rgbf(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR))


def _wide_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma, computed at reduced resolution (a full-size kernel would be slow)."""
    factor = max(1.0, sigma / 4)
    h, w = x.shape[:2]
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = cv2.resize(x, small_size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(x.shape)


def _stretch(x: np.ndarray, low: float = 1, high: float = 99) -> np.ndarray:
    """Map this frame's [low, high] percentiles (per channel) to [0, 1] and clip: a per-frame statistic."""
    lo = np.percentile(x, low, axis=(0, 1))
    hi = np.percentile(x, high, axis=(0, 1))
    return np.clip((x - lo) / np.maximum(hi - lo, 1e-6), 0, 1).astype(np.float32)


def simple_wb(img, rng):
    """Simple white balance (cv2.xphoto): stretches each channel between its per-frame percentiles."""
    return _rgbf(cv2.xphoto.createSimpleWB().balanceWhite(_bgr8(img)))


def learning_wb(img, rng):
    """Learning-based white balance (cv2.xphoto, its built-in model; no file needed)."""
    return _rgbf(cv2.xphoto.createLearningBasedWB().balanceWhite(_bgr8(img)))


def clahe(img, rng):
    """Contrast-limited adaptive histogram equalisation of Lab lightness (8x8 tiles, clip 2)."""
    return _on_lightness(img, cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply)


def histeq(img, rng):
    """Global histogram equalisation of Lab lightness."""
    return _on_lightness(img, cv2.equalizeHist)


def stylization(img, rng):
    """cv2.stylization (edge-aware abstraction)."""
    return _rgbf(cv2.stylization(_bgr8(img), sigma_s=60, sigma_r=0.45))


def detail_enhance(img, rng):
    """cv2.detailEnhance (boosts fine detail, so also noise and compression artefacts)."""
    return _rgbf(cv2.detailEnhance(_bgr8(img), sigma_s=10, sigma_r=0.15))


def pencil_sketch(img, rng):
    """cv2.pencilSketch, colour output."""
    return _rgbf(cv2.pencilSketch(_bgr8(img), sigma_s=60, sigma_r=0.07, shade_factor=0.05)[1])


def oil_painting(img, rng):
    """cv2.xphoto.oilPainting (neighbourhood size 4, dynamic ratio 1)."""
    return _rgbf(cv2.xphoto.oilPainting(_bgr8(img), 4, 1))


def _luminance(linear: np.ndarray) -> np.ndarray:
    """(H, W) Rec. 709 luminance of linear RGB, offset so log and division stay finite."""
    return linear @ np.array([0.2126, 0.7152, 0.0722], np.float32) + 1e-4


def _retone(linear: np.ndarray, lum: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """Scale linear RGB by mapped / lum per pixel, clip, and gamma-encode (1/2.2)."""
    return np.power(np.clip(linear * (mapped / lum)[..., None], 0, 1), 1 / 2.2).astype(np.float32)


def tonemap_reinhard(img, rng, key: float = 0.18):
    """Reinhard et al.'s global photographic tone mapping in linear light.

    The frame's log-average luminance sets the exposure and its maximum the white point: both per frame.
    """
    linear = np.power(img, 2.2)
    lum = _luminance(linear)
    scaled = key / np.exp(np.log(lum).mean()) * lum
    return _retone(linear, lum, scaled * (1 + scaled / scaled.max() ** 2) / (1 + scaled))


def tonemap_drago(img, rng, bias: float = 0.85):
    """Drago et al.'s adaptive logarithmic tone mapping; luminance relative to the frame's mean and max."""
    linear = np.power(img, 2.2)
    lum = _luminance(linear)
    world = lum / np.exp(np.log(lum).mean())
    peak = world.max()
    curve = np.log(2 + 8 * (world / peak) ** (np.log(bias) / np.log(0.5)))
    mapped = np.log1p(world) / (np.log10(peak + 1) * curve)
    return _retone(linear, lum, mapped)


def kmeans_quantize(img, rng, k: int = 8):
    """Colour quantisation to k colours by k-means, started from k pixels drawn by rng (new each frame)."""
    pixels = img.reshape(-1, 3).astype(np.float32)
    centres = pixels[rng.choice(len(pixels), size=k, replace=False)]
    labels = np.argmin(((pixels[:, None, :] - centres[None]) ** 2).sum(-1), axis=1).astype(np.int32)[:, None]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 8, 1e-3)
    _, labels, centres = cv2.kmeans(pixels, k, labels, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    return centres[labels[:, 0]].reshape(img.shape).astype(np.float32)


def dark_channel_dehaze(img, rng, omega: float = 0.95, t_min: float = 0.1):
    """He et al.'s dark-channel-prior dehazing with a guided-filter-refined transmission.

    The airlight is the brightest input pixel among the 0.1 % brightest dark-channel pixels of this frame.
    """
    h, w = img.shape[:2]
    patch = max(3, min(h, w) // 16) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(img.min(axis=2), kernel)
    top = np.argsort(dark.ravel())[-max(1, dark.size // 1000) :]
    flat = img.reshape(-1, 3)
    airlight = np.maximum(flat[top[np.argmax(flat[top].sum(1))]], 0.05)  # (3,)
    trans = 1 - omega * cv2.erode((img / airlight).min(axis=2).astype(np.float32), kernel)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    trans = cv2.ximgproc.guidedFilter(gray, trans.astype(np.float32), 2 * patch, 1e-3)
    out = (img - airlight) / np.maximum(trans, t_min)[..., None] + airlight
    return np.clip(out, 0, 1).astype(np.float32)


def _log_surround(img: np.ndarray, fractions=(0.02, 0.1, 0.3)) -> np.ndarray:
    """Mean over scales of log(Gaussian surround), sigmas as fractions of the long side (multi-scale)."""
    long_side = max(img.shape[:2])
    return np.mean([np.log(_wide_blur(img, f * long_side) + 1e-3) for f in fractions], axis=0)


def retinex_reflectance(img, rng):
    """Multi-scale retinex reflectance: log image minus log surround, stretched by per-frame percentiles."""
    return _stretch(np.log(img + 1e-3) - _log_surround(img))


def retinex_shading(img, rng):
    """Retinex shading (gray): the multi-scale surround of luminance over its per-frame 99th percentile."""
    luma = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    shading = np.exp(_log_surround(luma))
    shading = np.clip(shading / max(np.percentile(shading, 99), 1e-3), 0, 1).astype(np.float32)
    return np.repeat(shading[..., None], 3, axis=2)


# Gray-world white balance and cv2.edgePreservingFilter were measured not to flicker on our clips (warping
# error below the input's), so they are not here. The three splits share no operator on purpose: validation and
# test measure the blind property on operators never seen in training. The last five training operators (and
# the validation ones) flicker locally, texturally or in colour (tdms.builder.local_operators): a single global
# blend weight cannot remove that flicker.
TRAIN_TASKS = (
    "wb/learning",
    "cv/clahe",
    "cv/stylization",
    "cv/detailenhance",
    "tonemap/reinhard",
    "quantize/kmeans",
    "retinex/reflectance",
    "local/gainfield",
    "color/hue",
    "noise/dither",
    "tonemap/local",
    "colorize/chroma",
)
VAL_TASKS = ("color/channelmix", "noise/grain", "tonemap/sigmoid")
TEST_TASKS = (
    "wb/simple",
    "cv/histeq",
    "cv/pencilsketch",
    "cv/oilpainting",
    "tonemap/drago",
    "dehaze/darkchannel",
    "retinex/shading",
)
OPERATORS: dict[str, Operator] = {
    "wb/learning": learning_wb,
    "cv/clahe": clahe,
    "cv/stylization": stylization,
    "cv/detailenhance": detail_enhance,
    "tonemap/reinhard": tonemap_reinhard,
    "quantize/kmeans": kmeans_quantize,
    "retinex/reflectance": retinex_reflectance,
    "local/gainfield": local.gain_field,
    "color/hue": local.hue_rotate,
    "noise/dither": local.random_dither,
    "tonemap/local": local.local_tonemap,
    "colorize/chroma": local.chroma_shift,
    "color/channelmix": local.channel_mix,
    "noise/grain": local.film_grain,
    "tonemap/sigmoid": local.sigmoid_contrast,
    "wb/simple": simple_wb,
    "cv/histeq": histeq,
    "cv/pencilsketch": pencil_sketch,
    "cv/oilpainting": oil_painting,
    "tonemap/drago": tonemap_drago,
    "dehaze/darkchannel": dark_channel_dehaze,
    "retinex/shading": retinex_shading,
}
