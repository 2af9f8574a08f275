"""Tests of common/augment.py against independent oracles.

* Golden group d of DeepMind's BYOL JAX reference (tools/golden/byol_golden.npz): every single op,
  the HSV conversions, a fixed-order jitter, the blur and its taps, and the full per-view
  `postprocess` replayed from the decisions the reference drew (eagerly and inside tf.data).
* float64 numpy re-derivations: crop-box math, bicubic resize, centre crop, normalisation, blur with
  zero padding, dtype and channel handling.
* The sampler, statistically, over 2000 stateless draws (8000 for the crop distribution), with
  5-sigma binomial / uniform bounds.

Tolerances reached against the golden file (float32, CPU): brightness, saturation, hue, HSV,
grayscale and solarize are bit-exact. Contrast is within 6e-8 (the reference's XLA float32 mean
sums in a machine-specific vectorised order and is off by an ulp on some channels), blur within
1.8e-7 (XLA's exp differs from TF's by about an ulp), the full replayed pipeline within 1.8e-7 and
the fixed-order jitter within 3.6e-7 (a one-ulp contrast mean carried through the HSV ops). The
golden assertions allow 5e-7 for those.
"""
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from common.data import augment as A

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "tools" / "golden" / "byol_golden.npz"
CLOSE = 5e-7  # float32 parity bound for the ops that are not bit-exact (contrast, blur, pipeline)
N = 2000  # sampler draws


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files if k.startswith("d/")}


def _per_image(fn, images):
    return np.stack([fn(tf.constant(x)).numpy() for x in images])


def _clip(x):
    return tf.clip_by_value(x, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Golden parity (group d)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,fn,tol", [
    ("d/brightness_p0.25", lambda x: _clip(A.adjust_brightness(x, 0.25)), 0.0),
    ("d/brightness_m0.3", lambda x: _clip(A.adjust_brightness(x, -0.3)), 0.0),
    ("d/contrast_1.3", lambda x: _clip(A.adjust_contrast(x, 1.3)), CLOSE),
    ("d/contrast_0.6", lambda x: _clip(A.adjust_contrast(x, 0.6)), CLOSE),
    ("d/saturation_1.2", lambda x: _clip(A.adjust_saturation(x, 1.2)), 0.0),
    ("d/saturation_0.8", lambda x: _clip(A.adjust_saturation(x, 0.8)), 0.0),
    ("d/hue_0.07", lambda x: _clip(A.adjust_hue(x, 0.07)), 0.0),
    ("d/hue_m0.1", lambda x: _clip(A.adjust_hue(x, -0.1)), 0.0),
    ("d/grayscale", A.to_grayscale, 0.0),
    ("d/solarize", A.solarize, 0.0),
])
def test_single_ops_match_reference(golden, key, fn, tol):
    out = _per_image(fn, golden["d/images"][:2])
    assert np.abs(out - golden[key]).max() <= tol


def test_hsv_matches_reference(golden):
    x = tf.constant(golden["d/images"][0])
    hsv = A.rgb_to_hsv(x).numpy()
    assert np.array_equal(hsv, golden["d/hsv"])
    assert np.array_equal(A.hsv_to_rgb(tf.constant(hsv)).numpy(), golden["d/hsv_roundtrip"])


def test_hsv_hand_values():
    rgb = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5],
                       [0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 0.0, 0.5]])
    want = np.array([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [0, 0, 0],
                     [1 / 12, 1, 1], [11 / 12, 1, 1]], np.float32)
    np.testing.assert_allclose(A.rgb_to_hsv(rgb).numpy(), want, atol=1e-7)
    np.testing.assert_allclose(A.hsv_to_rgb(tf.constant(want)).numpy(), rgb.numpy(), atol=1e-6)


def test_jitter_fixed_order_matches_reference(golden):
    order = golden["d/jitter_order"]
    assert list(order) == [A.HUE, A.CONTRAST, A.BRIGHTNESS, A.SATURATION]

    def jitter(x):
        return _clip(A.color_jitter(x, order, 0.2, 1.25, 0.85, -0.05))

    out = _per_image(jitter, golden["d/images"][:2])
    assert np.abs(out - golden["d/jitter_fixed"]).max() <= CLOSE
    out_gray = _per_image(lambda x: _clip(A.to_grayscale(jitter(x))), golden["d/images"][:2])
    assert np.abs(out_gray - golden["d/jitter_fixed_gray"]).max() <= CLOSE
    # The order matters: the same factors in the default order give a visibly different image.
    other = _per_image(lambda x: _clip(A.color_jitter(x, [0, 1, 2, 3], 0.2, 1.25, 0.85, -0.05)),
                       golden["d/images"][:2])
    assert np.abs(other - golden["d/jitter_fixed"]).max() > 1e-2


@pytest.mark.parametrize("sigma", ["0.1", "1.0", "2.0"])
def test_blur64_matches_reference(golden, sigma):
    assert A.blur_kernel_size(64) == pytest.approx(6.4)
    out = _per_image(lambda x: A.gaussian_blur(x, float(sigma), A.blur_kernel_size(64)),
                     golden["d/images"][:2])
    assert np.abs(out - golden[f"d/blur64_sigma{sigma}"]).max() <= CLOSE


def test_blur_taps_match_reference_and_float64(golden):
    taps = np.stack([A.blur_taps(s, A.blur_kernel_size(224)).numpy() for s in (0.1, 0.5, 1.0, 2.0)])
    assert taps.shape == (4, 23)
    assert np.abs(taps - golden["d/blur224_taps"]).max() <= 1e-7
    pos = np.arange(-11, 12, dtype=np.float64)
    for row, s in zip(taps, (0.1, 0.5, 1.0, 2.0)):
        g = np.exp(-pos ** 2 / (2 * s * s))
        np.testing.assert_allclose(row, g / g.sum(), rtol=1e-5, atol=1e-12)


def test_blur_zero_padding_float64_oracle():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(9, 11, 3))
    sigma, ks = 1.3, 5.0  # radius 2, 5 taps
    pos = np.arange(-2, 3)
    t = np.exp(-pos ** 2 / (2 * sigma ** 2))
    t /= t.sum()
    pad = np.pad(x, [(2, 2), (2, 2), (0, 0)])
    want = np.zeros_like(x)
    for i in range(9):
        for j in range(11):
            want[i, j] = np.einsum("a,b,abc->c", t, t, pad[i:i + 5, j:j + 5])
    out = A.gaussian_blur(tf.constant(x, tf.float32), sigma, ks).numpy()
    np.testing.assert_allclose(out, want, atol=2e-6)


@pytest.mark.parametrize("view", [1, 2])
def test_full_pipeline_replay_matches_reference(golden, view):
    images = golden["d/images"][:2] if view == 1 else golden["d/images"][2:]
    rows = golden[f"d/pp_view{view}_decisions"]
    out = np.stack([A.postprocess_from_decisions(tf.constant(x), r).numpy()
                    for x, r in zip(images, rows)])
    assert np.abs(out - golden[f"d/pp_view{view}_out"]).max() <= CLOSE


def test_full_pipeline_replay_in_graph_mode(golden):
    """tf.data runs the ops as a graph (Grappler rewrites); the replay must still match."""
    images = golden["d/images"]
    rows = np.concatenate([golden["d/pp_view1_decisions"], golden["d/pp_view2_decisions"]])
    ds = tf.data.Dataset.from_tensor_slices((images, rows)).map(A.postprocess_from_decisions)
    out = next(iter(ds.batch(4))).numpy()
    want = np.concatenate([golden["d/pp_view1_out"], golden["d/pp_view2_out"]])
    assert np.abs(out - want).max() <= CLOSE


def test_replay_clips_before_blur_float64_oracle():
    """Out-of-range input: only the clips before and after the blur keep the result in [0, 1]."""
    x = np.random.default_rng(11).uniform(-1.0, 2.0, size=(20, 20, 3))
    row = np.zeros(14)
    row[3:7] = [0, 1, 2, 3]
    row[11], row[12] = 1.0, 0.7  # blur only, sigma 0.7, kernel 2.0 -> radius 1
    t = np.exp(-np.arange(-1, 2) ** 2 / (2 * 0.7 ** 2))
    t /= t.sum()
    c = np.pad(np.clip(x, 0, 1), [(1, 1), (1, 1), (0, 0)])
    blur_w = sum(t[k] * c[:, k:k + 20] for k in range(3))
    want = np.clip(sum(t[k] * blur_w[k:k + 20] for k in range(3)), 0, 1)
    out = A.postprocess_from_decisions(tf.constant(x, tf.float32), row).numpy()
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_decision_row_roundtrip(golden):
    row = golden["d/pp_view1_decisions"][0]
    back = A.decisions_to_row(A.row_to_decisions(row)).numpy()
    np.testing.assert_array_equal(back, row.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \[14\]"):
        A.row_to_decisions(np.zeros(13))


# ------------------------------------------------------------------------------------------------
# numpy oracles
# ------------------------------------------------------------------------------------------------

def _keys_weight(d, a=-0.5):
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _bicubic_matrix(n_in, n_out):
    """[n_out, n_in] half-pixel Keys (a = -0.5) interpolation; taps outside the image get weight 0
    and the rest are renormalised (TF's ResizeBicubic with half_pixel_centers)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            if 0 <= k < n_in:
                m[i, k] = _keys_weight(src - k)
        m[i] /= m[i].sum()
    return m


def _resize_oracle(x, size):
    rows = _bicubic_matrix(x.shape[0], size)
    cols = _bicubic_matrix(x.shape[1], size)
    return np.clip(np.einsum("ih,hwc,jw->ijc", rows, x, cols), 0.0, 1.0)


def test_random_resized_crop_numpy_oracle():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    box = [3, 5, 13, 17]
    x = img.astype(np.float64) / 255.0
    want = _resize_oracle(x[3:16, 5:22], 16)
    out = A.random_resized_crop(A.to_float_rgb(tf.constant(img)), tf.constant(box), 16).numpy()
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out, want, atol=2e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


def _log_box_oracle(h_img, w_img, u, area_range=(0.08, 1.0), aspect_range=(0.75, 4 / 3)):
    u_area, u_aspect, u_top, u_left = [float(v) for v in u]
    target = (area_range[0] + (area_range[1] - area_range[0]) * u_area) * h_img * w_img
    lo, hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    ratio = math.exp(lo + (hi - lo) * u_aspect)
    w = min(max(int(np.rint(math.sqrt(target * ratio))), 1), w_img)
    h = min(max(int(np.rint(math.sqrt(target / ratio))), 1), h_img)
    return [math.floor(u_top * (h_img - h + 1)), math.floor(u_left * (w_img - w + 1)), h, w]


def test_logarithmic_crop_box_numpy_oracle():
    rng = np.random.default_rng(2)
    u_all = rng.uniform(size=(300, 4)).astype(np.float32)
    u_all[:3] = [[0.0, 0.0, 0.0, 0.0], [0.9999999, 0.9999999, 0.9999999, 0.9999999],
                 [0.999, 0.5, 0.5, 0.5]]  # smallest, largest (clipped to the image), centred
    mismatches = 0
    for k, u in enumerate(u_all):
        h_img, w_img = (40, 60) if k % 2 else (97, 35)
        got = A.logarithmic_crop_box(h_img, w_img, tf.constant(u)).numpy().tolist()
        want = _log_box_oracle(h_img, w_img, u)
        if got != want:
            # float32 vs float64 may round a size that sits within 1e-4 of .5 differently.
            target = (0.08 + 0.92 * float(u[0])) * h_img * w_img
            ratio = math.exp(math.log(0.75) + math.log(16 / 9) * float(u[1]))
            frac = [math.sqrt(target * ratio) % 1, math.sqrt(target / ratio) % 1]
            assert any(abs(f - 0.5) < 1e-4 for f in frac), (u, got, want)
            mismatches += 1
        top, left, h, w = got
        assert 0 <= top and top + h <= h_img and 0 <= left and left + w <= w_img
    assert mismatches <= 2


@pytest.mark.parametrize("shape,rounding,want", [
    ((256, 300), "rint", [16, 38, 224, 224]),
    ((300, 200), "rint", [63, 13, 175, 175]),
    ((100, 120), "rint", [6, 16, 88, 88]),  # 87.5 -> 88 (half to even)
    ((100, 120), "floor", [7, 17, 87, 87]),
    ((116, 116), "rint", [7, 7, 102, 102]),  # 101.5 -> 102
    ((116, 116), "floor", [8, 8, 101, 101]),
])
def test_center_crop_box_hand_values(shape, rounding, want):
    # want = [((H - c) + 1) // 2, ((W - c) + 1) // 2, c, c] with c = round(0.875 * min(H, W))
    got = A.center_crop_box(shape[0], shape[1], 0.875, rounding).numpy().tolist()
    assert got == want


def test_eval_preprocess_crop_offsets_and_normalisation():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(256, 300, 3), dtype=np.uint8)
    cfg = A.byol_config(224)
    out = A.eval_preprocess(tf.constant(img), cfg).numpy()
    # side 224 = rint(0.875 * 256): the bicubic resize 224 -> 224 samples the pixels themselves.
    crop = img[16:240, 38:262].astype(np.float64) / 255.0
    want = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert out.shape == (224, 224, 3)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_eval_preprocess_small_images_are_not_cropped():
    rng = np.random.default_rng(4)
    img = rng.uniform(size=(40, 24, 3)).astype(np.float32)
    cfg = A.AugmentConfig(image_size=32, normalize=False)
    out = A.eval_preprocess(tf.constant(img), cfg).numpy()
    np.testing.assert_allclose(out, _resize_oracle(img.astype(np.float64), 32), atol=2e-6)


def test_normalize_numpy_oracle():
    x = np.random.default_rng(5).uniform(size=(4, 5, 3))
    want = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(A.normalize(tf.constant(x, tf.float32)).numpy(), want, atol=1e-6)


def test_to_float_rgb_dtypes_and_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20
    out = A.to_float_rgb(tf.constant(gray)).numpy()
    np.testing.assert_allclose(out, np.repeat(gray / 255.0, 3, axis=-1), atol=1e-7)
    out2 = A.to_float_rgb(tf.constant(gray[..., 0])).numpy()
    np.testing.assert_array_equal(out2, out)
    rgb = np.random.default_rng(6).uniform(size=(3, 4, 3))
    np.testing.assert_allclose(A.to_float_rgb(tf.constant(rgb)).numpy(), rgb, atol=1e-7)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    def dynamic(x):
        return A.to_float_rgb(x)

    np.testing.assert_array_equal(dynamic(tf.constant(gray)).numpy(), out)
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\) channels"):
        A.to_float_rgb(tf.zeros([4, 4, 4], tf.uint8))
    with pytest.raises(ValueError, match="single images"):
        A.to_float_rgb(tf.zeros([2, 4, 4, 3], tf.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        A.to_float_rgb(tf.zeros([4, 4, 3], tf.int32))


def test_jitter_multiplicative_brightness_and_disabled_ops():
    x = np.random.default_rng(7).uniform(size=(6, 5, 3)).astype(np.float32)
    out = A.color_jitter(tf.constant(x), [0, 1, 2, 3], 0.3, 1.0, 1.0, 0.0,
                         brightness_mode="multiplicative", enabled=(True, False, False, False))
    np.testing.assert_allclose(out.numpy(), np.clip(x * 1.3, 0, 1), atol=1e-7)
    out = A.color_jitter(tf.constant(x), [3, 2, 1, 0], 5.0, 3.0, 3.0, 0.3,
                         enabled=(False, False, False, False))
    np.testing.assert_array_equal(out.numpy(), x)


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------

def test_configs():
    b = A.byol_config(96)
    assert (b.image_size, b.crop, b.brightness_mode, b.normalize) == (
        96, "logarithmic", "additive", True)
    assert (b.brightness, b.contrast, b.saturation, b.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (b.blur_prob, b.solarize_prob, b.grayscale_prob, b.color_jitter_prob) == (
        (1.0, 0.1), (0.0, 0.2), 0.2, 0.8)
    s = A.simclr_config(32, strength=0.5)
    assert (s.brightness, s.contrast, s.saturation, s.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert (s.brightness_mode, s.blur_prob, s.solarize_prob, s.normalize) == (
        "multiplicative", (0.5, 0.5), (0.0, 0.0), False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(crop="random"), "crop must be one of"),
    (dict(area_range=(0.0, 1.0)), "area_range"),
    (dict(area_range=(0.5, 0.2)), "area_range"),
    (dict(aspect_range=(2.0, 1.0)), "aspect_range"),
    (dict(brightness_mode="simclrv1"), "brightness_mode must be one of"),
    (dict(blur_prob=0.5), "pair \\(view 0, view 1\\)"),
    (dict(solarize_prob=(0.0, 1.5)), "probability"),
    (dict(hue=0.6), "hue must be <= 0.5"),
    (dict(contrast=-0.1), "contrast must be a number >= 0"),
    (dict(image_size=0), "image_size"),
    (dict(eval_crop_rounding="ceil"), "eval_crop_rounding"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.AugmentConfig(**kwargs)


def test_bad_view_and_shape_errors():
    with pytest.raises(ValueError, match="view must be 0"):
        A.sample_view_decisions(tf.constant([1, 2]), A.byol_config(32), 2, [40, 40])
    with pytest.raises(ValueError, match="static shape"):
        A.postprocess_from_decisions(tf.zeros([8, 8]), np.zeros(14))


# ------------------------------------------------------------------------------------------------
# Sampler statistics (stateless, so deterministic; bounds are 5 sigma anyway)
# ------------------------------------------------------------------------------------------------

def _draws(cfg, view, shape=(120, 180, 3), n=N):
    ds = tf.data.Dataset.range(n).map(
        lambda i: A.sample_view_decisions(tf.stack([i, 12345]), cfg, view, shape)).batch(n)
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


@pytest.fixture(scope="module")
def byol_draws():
    cfg = A.byol_config(32)
    return _draws(cfg, 0), _draws(cfg, 1)


def _assert_rate(flags, p):
    rate = np.mean(flags)
    if p in (0.0, 1.0):
        assert rate == p
    else:
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / flags.size), (rate, p)


def _assert_uniform(v, lo, hi):
    assert v.min() >= lo and v.max() <= hi
    width = hi - lo
    assert v.min() - lo < 0.01 * width and hi - v.max() < 0.01 * width
    assert abs(v.mean() - (lo + hi) / 2) <= 5 * width / math.sqrt(12 * v.size)
    hist = np.histogram(v, bins=4, range=(lo, hi))[0]
    expected = v.size / 4
    assert np.all(np.abs(hist - expected) <= 5 * math.sqrt(expected * 0.75)), hist


def test_sampler_rates(byol_draws):
    for view, d in enumerate(byol_draws):
        _assert_rate(d["flip"], 0.5)
        _assert_rate(d["jitter_applied"], 0.8)
        _assert_rate(d["gray_applied"], 0.2)
        _assert_rate(d["blur_applied"], (1.0, 0.1)[view])
        _assert_rate(d["solarize_applied"], (0.0, 0.2)[view])
    a, b = byol_draws
    # Folding the view into the seed makes the two views' decisions independent.
    assert np.mean(a["flip"] == b["flip"]) < 0.6


def test_sampler_factor_ranges(byol_draws):
    d = byol_draws[1]
    _assert_uniform(d["bright_delta"], -0.4, 0.4)
    _assert_uniform(d["contrast_f"], 0.6, 1.4)
    _assert_uniform(d["sat_f"], 0.8, 1.2)
    _assert_uniform(d["hue_delta"], -0.1, 0.1)
    _assert_uniform(d["sigma"], 0.1, 2.0)


def test_sampler_decisions_are_independent(byol_draws):
    d = byol_draws[1]
    keys = ["flip", "jitter_applied", "gray_applied", "bright_delta", "contrast_f", "sat_f",
            "hue_delta", "blur_applied", "sigma", "solarize_applied"]
    cols = [d[k].astype(np.float64) for k in keys]
    cols += [d["order"][:, 0].astype(np.float64), d["crop_box"][:, 2] * d["crop_box"][:, 3] * 1.0]
    corr = np.corrcoef(np.stack(cols))
    off = corr[~np.eye(len(cols), dtype=bool)]
    assert np.abs(off).max() <= 5 / math.sqrt(N), np.abs(off).max()


def test_sampler_order_is_uniform_permutation(byol_draws):
    order = byol_draws[0]["order"]
    assert order.shape == (N, 4)
    assert np.all(np.sort(order, axis=1) == np.arange(4))
    counts = np.stack([(order == op).sum(axis=0) for op in range(4)])  # [op, position]
    expected = N / 4
    assert np.all(np.abs(counts - expected) <= 5 * math.sqrt(expected * 0.75)), counts


def test_sampler_simclr_multiplicative_ranges():
    d = _draws(A.simclr_config(32, strength=1.5), 0, n=500)
    # brightness 1.2: factor 1 + delta with delta in [max(-1, -1.2), 1.2]
    assert d["bright_delta"].min() >= -1.0 and d["bright_delta"].max() <= 1.2
    assert d["bright_delta"].min() < -0.95
    assert d["contrast_f"].min() >= 0.0 and d["contrast_f"].max() <= 2.2
    assert np.all(np.abs(d["hue_delta"]) <= 0.3)
    _assert_rate(d["blur_applied"], 0.5)
    _assert_rate(d["solarize_applied"], 0.0)


def test_logarithmic_crop_bounds(byol_draws):
    h_img, w_img = 120, 180
    top, left, h, w = byol_draws[0]["crop_box"].T
    assert np.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0))
    assert np.all((top + h <= h_img) & (left + w <= w_img))
    area = h * w / (h_img * w_img)
    # Rounding each side by at most half a pixel bounds the smallest area below.
    lo_area = (math.sqrt(0.08 * 3 / 4) - 0.5 / h_img) * (math.sqrt(0.08 * 4 / 3) - 0.5 / w_img)
    assert area.min() >= lo_area and area.min() < 0.09 and area.max() <= 1.0
    assert np.any(h == h_img)  # tall crops of a 2:3 image are clipped to its height


def test_logarithmic_crop_distribution():
    n, side = 8000, 400
    cfg = A.byol_config(32)
    ds = tf.data.Dataset.range(n).map(
        lambda i: A.sample_crop_box(tf.stack([i, 99]), cfg, side, side)).batch(n)
    _, _, h, w = next(iter(ds)).numpy().T
    area = h * w / side ** 2
    # Areas below 0.5 are never clipped (sqrt(0.5 * 4/3) < 1): P(area < 0.5) = 0.42 / 0.92.
    p = 0.42 / 0.92
    small = area < 0.5
    assert abs(small.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n)
    hist = np.histogram(area[small], bins=4, range=(0.08, 0.5))[0]
    expected = small.sum() / 4
    assert np.all(np.abs(hist - expected) <= 5 * math.sqrt(expected * 0.75)), hist
    # For those unclipped crops log(w / h) ~ U[log 3/4, log 4/3] (a linear aspect would fail this).
    log_aspect = np.log(w[small] / h[small])
    slack = 1.0 / math.sqrt(0.08 * 0.75 * side ** 2)  # half a pixel per side of the smallest crop
    assert log_aspect.min() >= math.log(3 / 4) - slack
    assert log_aspect.max() <= math.log(4 / 3) + slack
    hist = np.histogram(log_aspect, bins=4, range=(math.log(3 / 4), math.log(4 / 3)))[0]
    assert np.all(np.abs(hist - expected) <= 5 * math.sqrt(expected * 0.75)), hist
    assert abs(log_aspect.mean()) <= 5 * math.log(16 / 9) / math.sqrt(12 * small.sum())


def test_uniform_bbox_crop():
    cfg = A.AugmentConfig(image_size=32, crop="uniform")
    d = _draws(cfg, 0, shape=(90, 90, 3), n=500)
    top, left, h, w = d["crop_box"].T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 90) & (left + w <= 90))
    area = h * w / 8100.0
    assert area.min() >= 0.1  # min_object_covered 0.1 of the whole-image box
    assert area.max() <= 1.0 and np.mean(area < 0.5) > 0.3
    aspect = w / h
    assert aspect.min() >= 0.75 - 2 / 9 and aspect.max() <= 4 / 3 + 2 / 9


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------

def test_apply_view_without_random_ops_is_crop_resize_normalise():
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, size=(41, 37, 3), dtype=np.uint8)
    cfg = A.byol_config(24)
    off = tf.constant(False)
    dec = {"crop_box": tf.constant([4, 2, 30, 33]), "flip": off, "jitter_applied": off,
           "gray_applied": off, "blur_applied": off, "solarize_applied": off,
           "order": tf.range(4), "bright_delta": 0.0, "contrast_f": 1.0, "sat_f": 1.0,
           "hue_delta": 0.0, "sigma": 1.0}
    want = _resize_oracle(img[4:34, 2:35].astype(np.float64) / 255.0, 24)
    norm = lambda v: (v - np.array(A.IMAGENET_MEAN)) / np.array(A.IMAGENET_STD)  # noqa: E731
    np.testing.assert_allclose(A.apply_view(tf.constant(img), dec, cfg).numpy(), norm(want),
                               atol=2e-5)
    dec.update(flip=tf.constant(True), solarize_applied=tf.constant(True))
    want_fs = np.where(want[:, ::-1] < 0.5, want[:, ::-1], 1 - want[:, ::-1])
    np.testing.assert_allclose(A.apply_view(tf.constant(img), dec, cfg).numpy(), norm(want_fs),
                               atol=2e-5)


def test_pretrain_view_determinism_eager_and_graph():
    rng = np.random.default_rng(9)
    img = tf.constant(rng.integers(0, 256, size=(50, 44, 3), dtype=np.uint8))
    cfg = A.byol_config(32)
    seed = tf.constant([3, 4], tf.int32)
    a = A.pretrain_view(img, seed, cfg, 0).numpy()
    b = A.pretrain_view(img, tf.constant([3, 4], tf.int64), cfg, 0).numpy()
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(A.pretrain_view(img, tf.constant([3, 5]), cfg, 0).numpy() - a).max() > 0.05
    assert np.abs(A.pretrain_view(img, seed, cfg, 1).numpy() - a).max() > 0.05
    ds = tf.data.Dataset.from_tensors(img).map(lambda x: A.pretrain_view(x, seed, cfg, 0))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), a)


def test_simclr_and_linear_views_in_tf_data():
    img = tf.constant(np.random.default_rng(10).integers(0, 256, (30, 36, 1), dtype=np.uint8))
    simclr = A.simclr_config(32)
    ds = tf.data.Dataset.from_tensors(img).repeat(2).enumerate().map(
        lambda i, x: (A.pretrain_view(x, tf.stack([i, 0]), simclr, 0),
                      A.linear_train_view(x, tf.stack([i, 1]), A.byol_config(32))))
    for view, lin in ds:
        assert view.shape == (32, 32, 3) and lin.shape == (32, 32, 3)
        # Not normalised for SimCLR: values stay in [0, 1].
        assert float(tf.reduce_min(view)) >= 0.0 and float(tf.reduce_max(view)) <= 1.0
        # A grayscale input stays gray through crop, resize and flip.
        raw = lin.numpy() * np.array(A.IMAGENET_STD) + np.array(A.IMAGENET_MEAN)
        np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-6)
        np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-6)
