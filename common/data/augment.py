"""Per-image augmentations for SimCLR/BYOL-style pretraining and the evaluation preprocessing.

Every image operation is a deterministic, pure function of one image `x` [H, W, 3] (float32 in
[0, 1]) and explicit factors, so it can be checked against DeepMind's BYOL reference op by op. The
randomness lives in `sample_view_decisions`, which turns a stateless seed into one view's decisions
(crop box, flip, jitter factors and order, grayscale, blur sigma, solarize); `apply_view` replays
them. The same seed therefore always gives the same view, which exact resumption of a tf.data
pipeline needs.

All functions run eagerly or inside `tf.data.Dataset.map` (graph mode) on a single image.

Pipeline of one pretraining view (`pretrain_view`), following the BYOL reference and the release:
  to_float_rgb -> random crop -> bicubic resize -> clip -> flip -> [colour jitter in random order,
  clip after each op] -> [grayscale] -> clip -> [Gaussian blur] -> [solarize] -> clip
  -> [normalise].
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Sequence

import tensorflow as tf

# The ImageNet statistics the BYOL reference and the release normalise with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601 luma weights, as in tf.image.rgb_to_grayscale and the BYOL reference.
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)

# Colour-jitter operation ids, as used by `order` (the BYOL reference's and the golden file's ids).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# Column layout of one replayable decision row (the golden file's `d/pp_view*_decisions`).
DECISION_ROW_FIELDS = ("flip", "jitter_applied", "gray_applied", "order0", "order1", "order2",
                       "order3", "bright_delta", "contrast_f", "sat_f", "hue_delta",
                       "blur_applied", "sigma", "solarize_applied")

_CROPS = ("logarithmic", "uniform")
_BRIGHTNESS_MODES = ("additive", "multiplicative")
_ROUNDINGS = ("rint", "floor")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings. The defaults are BYOL's (the release's default 'byol' batch type).

    Attributes:
      image_size: side of the square output, in pixels.
      crop: 'logarithmic' = one try of area ~ U(area_range) * H * W, aspect ~
        exp(U(log aspect_range)), clipped to the image (BYOL reference, release default);
        'uniform' = SimCLR's tf.image.sample_distorted_bounding_box (min_object_covered 0.1,
        100 attempts).
      area_range: (lower, upper) fraction of the image area of the crop, 0 < lower <= upper <= 1.
      aspect_range: (lower, upper) width/height ratio of the crop, 0 < lower <= upper.
      flip: random left-right flip with probability 0.5.
      color_jitter_prob: probability of applying the whole colour jitter (all four ops or none).
      brightness, contrast, saturation, hue: jitter strengths; 0 disables that op.
        brightness delta ~ U[-b, b]; contrast factor ~ U[max(0, 1-c), 1+c]; saturation factor
        ~ U[max(0, 1-s), 1+s]; hue delta ~ U[-h, h] with h <= 0.5.
      brightness_mode: 'additive' = x + delta (the release's 'simclrv1', BYOL); 'multiplicative' =
        x * (1 + delta), delta ~ U[max(-1, -b), b] (the release's 'simclrv2', SimCLR v2).
      grayscale_prob: probability of converting to grayscale (independent of the jitter).
      blur_prob: (view 0, view 1) probability of the Gaussian blur.
      solarize_prob: (view 0, view 1) probability of solarisation.
      blur_sigma: (min, max) of sigma ~ U[min, max], in pixels.
      normalize: subtract IMAGENET_MEAN and divide by IMAGENET_STD at the end (BYOL, the release's
        'byol' type).
      eval_crop_proportion: side of the evaluation centre crop as a fraction of min(H, W).
      eval_crop_rounding: 'rint' (release/SimCLR: round half to even) or 'floor' (BYOL reference's
        int()).
    """
    image_size: int = 224
    crop: str = "logarithmic"
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    brightness_mode: str = "additive"
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (1.0, 0.1)
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    normalize: bool = True
    eval_crop_proportion: float = 0.875
    eval_crop_rounding: str = "rint"

    def __post_init__(self):
        for name in ("area_range", "aspect_range", "blur_prob", "solarize_prob", "blur_sigma"):
            if isinstance(getattr(self, name), list):  # keep the frozen config hashable
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or self.image_size < 1:
            raise ValueError("AugmentConfig.image_size must be a positive int, "
                             f"got {self.image_size!r}.")
        for name in ("flip", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AugmentConfig.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}.")
        if self.crop not in _CROPS:
            raise ValueError(f"AugmentConfig.crop must be one of {_CROPS}, got {self.crop!r}.")
        _check_pair("area_range", self.area_range, low=0.0, high=1.0, open_low=True)
        _check_pair("aspect_range", self.aspect_range, low=0.0, high=math.inf, open_low=True)
        if self.brightness_mode not in _BRIGHTNESS_MODES:
            raise ValueError(f"AugmentConfig.brightness_mode must be one of {_BRIGHTNESS_MODES}, "
                             f"got {self.brightness_mode!r}.")
        for name in ("color_jitter_prob", "grayscale_prob"):
            _check_prob(name, getattr(self, name))
        for name in ("blur_prob", "solarize_prob"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"AugmentConfig.{name} must be a pair (view 0, view 1) of "
                                 f"probabilities, got {value!r}.")
            for p in value:
                _check_prob(name, p)
        for name in ("brightness", "contrast", "saturation", "hue"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"AugmentConfig.{name} must be a number >= 0 (0 disables it), "
                                 f"got {value!r}.")
        if self.hue > 0.5:
            raise ValueError("AugmentConfig.hue must be <= 0.5 (a hue shift is modulo 1), "
                             f"got {self.hue}.")
        _check_pair("blur_sigma", self.blur_sigma, low=0.0, high=math.inf, open_low=True)
        if not 0.0 < self.eval_crop_proportion <= 1.0:
            raise ValueError("AugmentConfig.eval_crop_proportion must be in (0, 1], "
                             f"got {self.eval_crop_proportion}.")
        if self.eval_crop_rounding not in _ROUNDINGS:
            raise ValueError(f"AugmentConfig.eval_crop_rounding must be one of {_ROUNDINGS}, "
                             f"got {self.eval_crop_rounding!r}.")


def _check_prob(name, p):
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p!r}.")


def _check_pair(name, pair, low, high, open_low):
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(v, (int, float)) for v in pair)
    if ok:
        lo, hi = pair
        ok = (lo > low if open_low else lo >= low) and lo <= hi <= high
    if not ok:
        raise ValueError(f"AugmentConfig.{name} must be a pair (lower, upper) with {low} "
                         f"{'<' if open_low else '<='} lower <= upper <= {high}, got {pair!r}.")


def byol_config(image_size: int = 224) -> AugmentConfig:
    """BYOL augmentations (the paper's; the release's default 'byol' type): the defaults."""
    return AugmentConfig(image_size=image_size)


def simclr_config(image_size: int = 224, strength: float = 1.0) -> AugmentConfig:
    """SimCLR augmentations (the release's 'simclr' batch type, SimCLR v2's data_util).

    Colour jitter strengths (0.8 s, 0.8 s, 0.8 s, 0.2 s), multiplicative brightness, blur with
    p=0.5 on both views, no solarisation, no mean/std normalisation.
    """
    return AugmentConfig(
        image_size=image_size, brightness=0.8 * strength, contrast=0.8 * strength,
        saturation=0.8 * strength, hue=0.2 * strength, brightness_mode="multiplicative",
        blur_prob=(0.5, 0.5), solarize_prob=(0.0, 0.0), normalize=False)


# --------------------------------------------------------------------------------------------------
# Pure image operations. x: [H, W, 3] float32 in [0, 1] unless stated.
# --------------------------------------------------------------------------------------------------

def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """[H, W, C] (or [H, W]) uint8 or float, C in {1, 3} -> [H, W, 3] float32.

    uint8 is mapped to [0, 1] by x * (1 / 255); float input is assumed to be in [0, 1] already.
    One channel is repeated to three (grayscale -> RGB).
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[:, :, None]
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"Expected one image of shape [H, W, C] (or [H, W]), got shape "
                         f"{image.shape}; map the augmentation over single images, not batches.")
    if image.dtype == tf.uint8:
        # A product, not a quotient: graph-mode Grappler turns x / 255 into x * (1/255), and eager
        # and tf.data results must agree bit for bit.
        image = tf.cast(image, tf.float32) * (1.0 / 255.0)
    elif image.dtype.is_floating:
        image = tf.cast(image, tf.float32)
    else:
        raise ValueError(f"Expected a uint8 or float image, got dtype {image.dtype.name}; "
                         "cast it to uint8 (0..255) or float (0..1) first.")
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels is not None:
        raise ValueError(f"Expected 1 (grayscale) or 3 (RGB) channels, got {channels}; "
                         "drop the alpha channel or convert the image to RGB first.")
    # Channel count only known at run time (e.g. decoded images with unknown shape).
    n = tf.shape(image)[-1]
    tf.debugging.assert_equal(tf.logical_or(tf.equal(n, 1), tf.equal(n, 3)), True,
                              message="Expected 1 (grayscale) or 3 (RGB) channels.")
    image = tf.cond(tf.equal(n, 1), lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(image, [None, None, 3])


def crop(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crops `image` [H, W, C] to box = [offset_h, offset_w, h, w] (int32) -> [h, w, C]."""
    box = tf.cast(box, tf.int32)
    return tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """[h, w, C] -> [size, size, C]: bicubic (Keys a=-0.5, half-pixel centres, no antialias), then
    clip to [0, 1].

    Bicubic overshoots, hence the clip (release: clip_by_value_after_resizing=True; BYOL reference).
    """
    out = tf.image.resize(image[None], [size, size], method=tf.image.ResizeMethod.BICUBIC,
                          antialias=False)[0]
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """[H, W, 3] -> [size, size, 3]: resize(crop(image, box)), box = [offset_h, offset_w, h, w]."""
    return resize(crop(image, box), size)


def center_crop_box(height, width, proportion: float = 0.875, rounding: str = "rint") -> tf.Tensor:
    """Centred square crop box [offset_h, offset_w, c, c] with c = round(proportion * min(H, W)).

    Offsets are ((H - c) + 1) // 2 and ((W - c) + 1) // 2 (release and BYOL reference);
    rounding 'rint' rounds half to even (release), 'floor' truncates (BYOL reference's int()).
    """
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}.")
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    side = proportion * tf.cast(tf.minimum(height, width), tf.float64)
    side = tf.math.rint(side) if rounding == "rint" else tf.floor(side)
    side = tf.maximum(tf.cast(side, tf.int32), 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def center_crop(image: tf.Tensor, proportion: float = 0.875, rounding: str = "rint") -> tf.Tensor:
    """[H, W, C] -> [c, c, C], the centred square of `center_crop_box` (no resize)."""
    shape = tf.shape(image)
    return crop(image, center_crop_box(shape[0], shape[1], proportion, rounding))


def flip_left_right(x: tf.Tensor) -> tf.Tensor:
    """[H, W, C] -> x[:, ::-1, :]."""
    return tf.reverse(x, axis=[1])


def adjust_brightness(x: tf.Tensor, delta) -> tf.Tensor:
    """Additive brightness ('simclrv1', BYOL): x + delta (no clip)."""
    return x + tf.cast(delta, x.dtype)


def scale_brightness(x: tf.Tensor, factor) -> tf.Tensor:
    """Multiplicative brightness ('simclrv2', SimCLR v2): x * factor (no clip)."""
    return x * tf.cast(factor, x.dtype)


def channel_mean(x: tf.Tensor) -> tf.Tensor:
    """[H, W, C] -> [1, 1, C]: m[c] = (1 / HW) sum_{h,w} x[h, w, c], accumulated in float64.

    Accumulating in float64 and rounding once makes the float32 mean (practically) independent of
    the summation order, so contrast gives the same bits on any device. The BYOL reference's XLA
    float32 sum can differ from it by one ulp.
    """
    return tf.cast(tf.reduce_mean(tf.cast(x, tf.float64), axis=[0, 1], keepdims=True), x.dtype)


def adjust_contrast(x: tf.Tensor, factor) -> tf.Tensor:
    """factor * (x - m) + m, m = channel_mean(x) (per image, per channel, as TF's adjust_contrast;
    no clip). x: [H, W, C]."""
    mean = channel_mean(x)
    return tf.cast(factor, x.dtype) * (x - mean) + mean


def rgb_to_hsv(x: tf.Tensor) -> tf.Tensor:
    """[..., 3] RGB -> [..., 3] (h, s, v), the formulas of TF's adjust_saturation/hue kernels.

    v = max(r, g, b); range = v - min(r, g, b); s = range / v (0 when v = 0);
    h = (g - b) / (6 range) if r = v, else (b - r) / (6 range) + 2/6 if g = v, else
    (r - g) / (6 range) + 4/6; h = 0 when range = 0; h += 1 when h < 0. So h, s, v in [0, 1].
    """
    r, g, b = tf.unstack(x, axis=-1)
    value = tf.maximum(tf.maximum(r, g), b)
    spread = value - tf.minimum(tf.minimum(r, g), b)
    sat = tf.where(value > 0, spread / tf.where(value > 0, value, 1.0), 0.0)
    # 1/(6*range) is formed first and then multiplied, as in the kernels, for bit-identical hues.
    norm = 1.0 / (6.0 * tf.where(spread > 0, spread, 1.0))
    hue = tf.where(tf.equal(r, value), norm * (g - b),
                   tf.where(tf.equal(g, value), norm * (b - r) + 2.0 / 6.0,
                            norm * (r - g) + 4.0 / 6.0))
    hue = tf.where(spread > 0, hue, 0.0)
    hue = tf.where(hue < 0, hue + 1.0, hue)
    return tf.stack([hue, sat, value], axis=-1)


def hsv_to_rgb(hsv: tf.Tensor) -> tf.Tensor:
    """[..., 3] (h, s, v) -> [..., 3] RGB, the inverse of `rgb_to_hsv` (TF kernels' hsv_to_rgb).

    c = s v; m = v - c; h6 = (h mod 1) * 6; x = c (1 - |h6 mod 2 - 1|); sector k = floor(h6) picks
    (r, g, b) - m = (c,x,0), (x,c,0), (0,c,x), (0,x,c), (x,0,c), (c,0,x) for k = 0..5.
    """
    h, s, v = tf.unstack(hsv, axis=-1)
    chroma = s * v
    m = v - chroma
    h6 = tf.math.floormod(h, 1.0) * 6.0
    x = chroma * (1.0 - tf.abs(tf.math.floormod(h6, 2.0) - 1.0))
    sector = tf.cast(tf.floor(h6), tf.int32)
    zero = tf.zeros_like(chroma)

    def pick(c_sectors, x_sectors):
        is_c = tf.logical_or(tf.equal(sector, c_sectors[0]), tf.equal(sector, c_sectors[1]))
        is_x = tf.logical_or(tf.equal(sector, x_sectors[0]), tf.equal(sector, x_sectors[1]))
        return tf.where(is_c, chroma, tf.where(is_x, x, zero)) + m

    r = pick((0, 5), (1, 4))
    g = pick((1, 2), (0, 3))
    b = pick((3, 4), (2, 5))
    return tf.stack([r, g, b], axis=-1)


def adjust_saturation(x: tf.Tensor, factor) -> tf.Tensor:
    """HSV saturation scaling: s <- clip(s * factor, 0, 1), then back to RGB (no final clip)."""
    h, s, v = tf.unstack(rgb_to_hsv(x), axis=-1)
    s = tf.clip_by_value(s * tf.cast(factor, x.dtype), 0.0, 1.0)
    return hsv_to_rgb(tf.stack([h, s, v], axis=-1))


def adjust_hue(x: tf.Tensor, delta) -> tf.Tensor:
    """HSV hue rotation: h <- (h + delta) mod 1, then back to RGB (no final clip)."""
    h, s, v = tf.unstack(rgb_to_hsv(x), axis=-1)
    h = tf.math.floormod(h + tf.cast(delta, x.dtype), 1.0)
    return hsv_to_rgb(tf.stack([h, s, v], axis=-1))


def to_grayscale(x: tf.Tensor) -> tf.Tensor:
    """[..., 3] -> [..., 3]: y = 0.2989 r + 0.5870 g + 0.1140 b on all three channels (no clip).

    Evaluated as fma(b, w2, fma(g, w1, r w0)), one rounding per step (more accurate than separate
    products and sums, and what XLA emits, so it matches the BYOL reference bit for bit).
    """
    # float64 holds each float32 product exactly, which emulates the fused multiply-add.
    r, g, b = tf.unstack(tf.cast(x, tf.float32), axis=-1)
    w0, w1, w2 = (tf.constant(w, tf.float32) for w in GRAYSCALE_WEIGHTS)

    def fma(a, w, acc):
        return tf.cast(tf.cast(a, tf.float64) * tf.cast(w, tf.float64) + tf.cast(acc, tf.float64),
                       tf.float32)

    y = tf.cast(fma(b, w2, fma(g, w1, r * w0)), x.dtype)
    return tf.stack([y, y, y], axis=-1)


def solarize(x: tf.Tensor) -> tf.Tensor:
    """x if x < 0.5 else 1 - x (elementwise)."""
    return tf.where(x < 0.5, x, 1.0 - x)


def normalize(x: tf.Tensor) -> tf.Tensor:
    """[..., 3] -> (x - IMAGENET_MEAN) / IMAGENET_STD per channel.

    Written as a product with 1 / std, the form graph mode rewrites a division by a constant to, so
    eager and tf.data agree bit for bit.
    """
    inv_std = tf.constant([1.0 / s for s in IMAGENET_STD], x.dtype)
    return (x - tf.constant(IMAGENET_MEAN, x.dtype)) * inv_std


def blur_kernel_size(height: int) -> float:
    """BYOL's (and the release's) blur kernel size: height / 10 (224 px -> 22.4 -> 23 taps)."""
    return height / 10.0


def blur_taps(sigma, kernel_size: float) -> tf.Tensor:
    """[2r+1] normalised Gaussian taps, r = int(kernel_size / 2):

    t_i = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)), i = -r..r.
    """
    radius = int(kernel_size / 2)
    sigma = tf.cast(sigma, tf.float32)
    pos = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-(pos * pos) / (2.0 * (sigma * sigma)))
    return taps / tf.reduce_sum(taps)


def gaussian_blur(x: tf.Tensor, sigma, kernel_size: float) -> tf.Tensor:
    """[H, W, C] -> [H, W, C]: separable Gaussian blur, first along W then along H.

    y = conv_H(conv_W(x, t), t) with the taps t of `blur_taps` and ZERO 'SAME' padding (borders
    darken, as in the BYOL reference and the release; there is no reflect padding).
    """
    if x.shape.rank != 3 or x.shape[-1] is None:
        raise ValueError(f"gaussian_blur needs one image [H, W, C] with a static C, got {x.shape}.")
    taps = blur_taps(sigma, kernel_size)
    k = int(taps.shape[0])
    channels = int(x.shape[-1])
    kernel_w = tf.tile(tf.reshape(taps, [1, k, 1, 1]), [1, 1, channels, 1])
    kernel_h = tf.tile(tf.reshape(taps, [k, 1, 1, 1]), [1, 1, channels, 1])
    out = tf.nn.depthwise_conv2d(x[None], kernel_w, strides=[1, 1, 1, 1], padding="SAME")
    out = tf.nn.depthwise_conv2d(out, kernel_h, strides=[1, 1, 1, 1], padding="SAME")
    return out[0]


def color_jitter(x: tf.Tensor, order, bright_delta, contrast_f, sat_f, hue_delta,
                 brightness_mode: str = "additive",
                 enabled: Sequence[bool] = (True, True, True, True)) -> tf.Tensor:
    """Applies the four colour ops in `order` (ids BRIGHTNESS, CONTRAST, SATURATION, HUE), clipping
    to [0, 1] after each: x <- clip(op_{order[k]}(x)) for k = 0..3.

    order: [4] int, a permutation of 0..3 (may be a tensor). `enabled[i]` False skips op i entirely
    (strength 0), as the references do. Brightness is x + bright_delta ('additive') or
    x * (1 + bright_delta) ('multiplicative').
    """
    if brightness_mode not in _BRIGHTNESS_MODES:
        raise ValueError(f"brightness_mode must be one of {_BRIGHTNESS_MODES}, "
                         f"got {brightness_mode!r}.")
    if brightness_mode == "additive":
        bright = lambda y: adjust_brightness(y, bright_delta)  # noqa: E731
    else:
        bright = lambda y: scale_brightness(y, 1.0 + tf.cast(bright_delta, y.dtype))  # noqa: E731
    ops = [bright,
           lambda y: adjust_contrast(y, contrast_f),
           lambda y: adjust_saturation(y, sat_f),
           lambda y: adjust_hue(y, hue_delta)]
    def clipped(fn, on):
        return (lambda y: tf.clip_by_value(fn(y), 0.0, 1.0)) if on else (lambda y: y)

    branches = [clipped(fn, on) for fn, on in zip(ops, enabled)]
    order = tf.cast(tf.convert_to_tensor(order), tf.int32)
    for k in range(4):
        x = tf.switch_case(order[k], [functools.partial(fn, x) for fn in branches])
    return x


# --------------------------------------------------------------------------------------------------
# Random decisions (stateless RNG) and the pipelines that replay them.
# --------------------------------------------------------------------------------------------------

def _check_view(view) -> int:
    if view not in (0, 1) or isinstance(view, bool):
        raise ValueError(f"view must be 0 (first view) or 1 (second view), got {view!r}; it "
                         "indexes AugmentConfig.blur_prob and solarize_prob.")
    return int(view)


def logarithmic_crop_box(height, width, u, area_range=(0.08, 1.0),
                         aspect_range=(3.0 / 4.0, 4.0 / 3.0)) -> tf.Tensor:
    """Crop box [offset_h, offset_w, h, w] (int32) from four uniforms u = (u_area, u_aspect, u_top,
    u_left) in [0, 1) (BYOL reference and release 'logarithmic'; one try, no retry or fallback):

    A = (lo + (hi - lo) u_area) H W; r = exp(log a_lo + (log a_hi - log a_lo) u_aspect);
    w = clip(round(sqrt(A r)), 1, W); h = clip(round(sqrt(A / r)), 1, H) (round half to even);
    offset_h = floor(u_top (H - h + 1)); offset_w = floor(u_left (W - w + 1)).
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    u_area, u_aspect, u_top, u_left = tf.unstack(tf.cast(u, tf.float32))
    area = tf.cast(height * width, tf.float32)
    target = (area_range[0] + (area_range[1] - area_range[0]) * u_area) * area
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u_aspect)
    w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, width)
    h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, height)

    def offset(v, slack):
        # float64: v <= 1 - 2^-24, so v * slack stays below slack and the offset below the bound.
        return tf.cast(tf.floor(tf.cast(v, tf.float64) * tf.cast(slack, tf.float64)), tf.int32)

    return tf.stack([offset(u_top, height - h + 1), offset(u_left, width - w + 1), h, w])


def _crop_box_logarithmic(seed, height, width, area_range, aspect_range) -> tf.Tensor:
    return logarithmic_crop_box(height, width, tf.random.stateless_uniform([4], seed),
                                area_range, aspect_range)


def _crop_box_uniform(seed, height, width, area_range, aspect_range) -> tf.Tensor:
    """SimCLR's crop: tf.image.stateless_sample_distorted_bounding_box over the whole image with
    min_object_covered 0.1, the given aspect and area ranges and 100 attempts (the whole image if
    all fail).
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size=tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=list(aspect_range),
        area_range=list(area_range), max_attempts=100, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def sample_crop_box(seed, cfg: AugmentConfig, height, width) -> tf.Tensor:
    """Random crop box [offset_h, offset_w, h, w] (int32) for an H x W image, per `cfg.crop`.

    seed: int32/int64 [2] (tf.random stateless seed).
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    sampler = _crop_box_logarithmic if cfg.crop == "logarithmic" else _crop_box_uniform
    return sampler(seed, height, width, cfg.area_range, cfg.aspect_range)


def sample_view_decisions(seed, cfg: AugmentConfig, view: int, image_shape) -> dict:
    """All random decisions of one view of one image, a pure function of (seed, cfg, view, shape).

    seed: int32/int64 [2]; the view index is folded into it, so both views may share one seed.
    image_shape: [H, W] or [H, W, C] of the raw image (int tensor or sequence).
    Returns a dict of scalar tensors unless noted:
      crop_box [4] int32 (offset_h, offset_w, h, w); flip, jitter_applied, gray_applied,
      blur_applied, solarize_applied (bool, each true with its probability, u < p);
      order [4] int32 (uniform random permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE);
      bright_delta ~ U[-b, b] (additive) or U[max(-1, -b), b] (multiplicative, factor 1 + delta);
      contrast_f ~ U[max(0, 1 - c), 1 + c]; sat_f ~ U[max(0, 1 - s), 1 + s]; hue_delta ~ U[-h, h];
      sigma ~ U[blur_sigma] (float32).
    """
    view = _check_view(view)
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), view)
    crop_seed, order_seed, u_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image_shape = tf.convert_to_tensor(image_shape)
    box = sample_crop_box(crop_seed, cfg, image_shape[0], image_shape[1])

    u = tf.unstack(tf.random.stateless_uniform([10], u_seed))

    def between(lo, hi, v):
        return tf.constant(lo, tf.float32) + tf.constant(hi - lo, tf.float32) * v

    b_lo = -cfg.brightness if cfg.brightness_mode == "additive" else max(-1.0, -cfg.brightness)
    return {
        "crop_box": box,
        "flip": tf.logical_and(tf.constant(cfg.flip), u[0] < 0.5),
        "jitter_applied": u[1] < cfg.color_jitter_prob,
        "gray_applied": u[2] < cfg.grayscale_prob,
        "order": tf.cast(tf.argsort(tf.random.stateless_uniform([4], order_seed)), tf.int32),
        "bright_delta": between(b_lo, cfg.brightness, u[3]),
        "contrast_f": between(max(0.0, 1.0 - cfg.contrast), 1.0 + cfg.contrast, u[4]),
        "sat_f": between(max(0.0, 1.0 - cfg.saturation), 1.0 + cfg.saturation, u[5]),
        "hue_delta": between(-cfg.hue, cfg.hue, u[6]),
        "blur_applied": u[7] < cfg.blur_prob[view],
        "sigma": between(cfg.blur_sigma[0], cfg.blur_sigma[1], u[8]),
        "solarize_applied": u[9] < cfg.solarize_prob[view],
    }


def decisions_to_row(decisions: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Decision dict -> [14] float32 row in the layout DECISION_ROW_FIELDS (crop box dropped)."""
    f = lambda k: tf.cast(decisions[k], tf.float32)  # noqa: E731
    return tf.concat([tf.stack([f("flip"), f("jitter_applied"), f("gray_applied")]), f("order"),
                      tf.stack([f("bright_delta"), f("contrast_f"), f("sat_f"), f("hue_delta"),
                                f("blur_applied"), f("sigma"), f("solarize_applied")])], axis=0)


def row_to_decisions(row) -> dict:
    """[14] row in the golden layout DECISION_ROW_FIELDS -> decision dict (without crop_box)."""
    row = tf.convert_to_tensor(row)
    if row.shape.rank != 1 or (row.shape[0] is not None and row.shape[0] != 14):
        raise ValueError(f"Expected a decision row of shape [14] (fields {DECISION_ROW_FIELDS}), "
                         f"got shape {row.shape}.")
    flag = lambda i: row[i] > 0.5  # noqa: E731
    # float64 rows hold float32 factors exactly, so the cast recovers the sampled bits.
    val = lambda i: tf.cast(row[i], tf.float32)  # noqa: E731
    return {
        "flip": flag(0), "jitter_applied": flag(1), "gray_applied": flag(2),
        "order": tf.cast(tf.round(row[3:7]), tf.int32),
        "bright_delta": val(7), "contrast_f": val(8), "sat_f": val(9), "hue_delta": val(10),
        "blur_applied": flag(11), "sigma": val(12), "solarize_applied": flag(13),
    }


def _postprocess(x, dec, brightness_mode, enabled, kernel_size):
    """The BYOL reference's per-view `postprocess` on one image, decisions given:
    flip -> [jitter] -> [grayscale] -> clip -> [blur] -> [solarize] -> clip."""
    x = tf.cond(dec["flip"], lambda: flip_left_right(x), lambda: x)
    x = tf.cond(dec["jitter_applied"],
                lambda: color_jitter(x, dec["order"], dec["bright_delta"], dec["contrast_f"],
                                     dec["sat_f"], dec["hue_delta"], brightness_mode, enabled),
                lambda: x)
    x = tf.cond(dec["gray_applied"], lambda: to_grayscale(x), lambda: x)
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.cond(dec["blur_applied"], lambda: gaussian_blur(x, dec["sigma"], kernel_size), lambda: x)
    x = tf.cond(dec["solarize_applied"], lambda: solarize(x), lambda: x)
    return tf.clip_by_value(x, 0.0, 1.0)


def _static_height(x, what):
    if x.shape.rank != 3 or x.shape[0] is None or x.shape[-1] != 3:
        raise ValueError(f"{what} needs an image of static shape [H, W, 3] (the blur kernel size "
                         f"is H / 10), got {x.shape}; resize or tf.ensure_shape it first.")
    return int(x.shape[0])


def postprocess_from_decisions(image: tf.Tensor, row) -> tf.Tensor:
    """Replays one golden decision row on image [H, W, 3] in [0, 1] -> [H, W, 3] in [0, 1].

    Exactly the BYOL reference's `postprocess` for one image: flip, colour transform (jitter in
    `order` with additive brightness and a clip after each op, then grayscale, then clip), blur with
    kernel size H / 10, solarize, clip. row: [14] in the layout DECISION_ROW_FIELDS.
    """
    x = tf.cast(tf.convert_to_tensor(image), tf.float32)
    height = _static_height(x, "postprocess_from_decisions")
    return _postprocess(x, row_to_decisions(row), "additive", (True, True, True, True),
                        blur_kernel_size(height))


def _jitter_enabled(cfg: AugmentConfig):
    return (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)


def apply_view(image: tf.Tensor, decisions: Mapping[str, tf.Tensor],
               cfg: AugmentConfig) -> tf.Tensor:
    """Deterministic view from raw image [H, W, C] (uint8 or float, C in {1, 3}) and its decisions
    -> [S, S, 3] float32, S = cfg.image_size.

    to_float_rgb -> crop(decisions['crop_box']) -> bicubic resize to S -> clip -> flip -> [jitter]
    -> [grayscale] -> clip -> [blur, kernel S / 10] -> [solarize] -> clip -> [normalise].
    """
    x = random_resized_crop(to_float_rgb(image), decisions["crop_box"], cfg.image_size)
    x = tf.ensure_shape(x, [cfg.image_size, cfg.image_size, 3])
    x = _postprocess(x, decisions, cfg.brightness_mode, _jitter_enabled(cfg),
                     blur_kernel_size(cfg.image_size))
    return normalize(x) if cfg.normalize else x


def pretrain_view(image: tf.Tensor, seed, cfg: AugmentConfig, view: int) -> tf.Tensor:
    """One pretraining view: apply_view(image, sample_view_decisions(seed, cfg, view, shape), cfg).

    image: [H, W, C] uint8 or float; seed: int32/int64 [2]; view: 0 or 1 -> [S, S, 3] float32.
    """
    decisions = sample_view_decisions(seed, cfg, view, tf.shape(image))
    return apply_view(image, decisions, cfg)


def linear_train_view(image: tf.Tensor, seed, cfg: AugmentConfig) -> tf.Tensor:
    """Linear-evaluation / fine-tuning training input: random crop, resize, clip, flip, [normalise].

    image: [H, W, C] uint8 or float; seed: int32/int64 [2] -> [S, S, 3] float32 (no colour ops).
    """
    seed = tf.cast(seed, tf.int64)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    box = sample_crop_box(crop_seed, cfg, shape[0], shape[1])
    x = random_resized_crop(to_float_rgb(image), box, cfg.image_size)
    flip = tf.logical_and(tf.constant(cfg.flip), tf.random.stateless_uniform([], flip_seed) < 0.5)
    x = tf.cond(flip, lambda: flip_left_right(x), lambda: x)
    x = tf.ensure_shape(x, [cfg.image_size, cfg.image_size, 3])
    return normalize(x) if cfg.normalize else x


def eval_preprocess(image: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Evaluation input: [H, W, C] uint8 or float -> [S, S, 3] float32.

    to_float_rgb -> centre crop (side round(cfg.eval_crop_proportion * min(H, W)); skipped when
    S <= 32, as for CIFAR-sized inputs) -> bicubic resize to S -> clip -> [normalise].
    """
    x = to_float_rgb(image)
    if cfg.image_size > 32:
        x = center_crop(x, cfg.eval_crop_proportion, cfg.eval_crop_rounding)
    x = tf.ensure_shape(resize(x, cfg.image_size), [cfg.image_size, cfg.image_size, 3])
    return normalize(x) if cfg.normalize else x
