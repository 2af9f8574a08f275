"""Tests of the ImageNet-C / CIFAR-10-C corruptions (common/evaluation/corruptions.py).

Oracles: published parameter values typed here from Hendrycks & Dietterich's scripts
(make_imagenet_c.py, make_cifar_c.py); closed-form statistics of clipped normal / Poisson noise;
hand-derived brightness / contrast values; numpy / scipy / TF re-computations of pixelate, zoom
blur and JPEG.
"""
import functools

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats as st
import tensorflow as tf

from common.evaluation import corruptions as C

SEED_A = (3, 11)
SEED_B = (5, 17)
TFDS_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression")


def _seed(s):
    return tf.constant(s, tf.int32)


def _smooth_images(side: int) -> np.ndarray:
    """[3, side, side, 3]: a colour gradient and two smooth random textures, in [0.05, 0.95]."""
    yy, xx = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side), indexing="ij")
    grad = np.stack([yy, xx, 1 - yy], -1) * 0.8 + 0.1
    tex = ndi.gaussian_filter(np.random.RandomState(0).rand(2, side, side, 3),
                              (0, side / 16, side / 16, 0))
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 0.9 + 0.05
    return np.concatenate([grad[None], tex]).astype(np.float32)


def _checkerboard(side: int) -> np.ndarray:
    cells = (np.arange(side)[:, None] // 4 + np.arange(side)[None, :] // 4) % 2
    yy = np.linspace(0, 1, side)[:, None] * np.ones((1, side))
    return np.stack([0.15 + 0.7 * cells, 0.3 * yy + 0.5 * cells, 0.2 + 0.6 * yy.T],
                    -1).astype(np.float32)[None]


def _batch(side: int, channels: int = 3) -> np.ndarray:
    """Smooth images twice (independent corruption draws per copy) + a checkerboard."""
    smooth = _smooth_images(side)
    x = np.concatenate([smooth, smooth, _checkerboard(side)])
    if channels == 1:
        x = x.mean(-1, keepdims=True)
    return x


@functools.lru_cache(maxsize=None)
def _run(side: int, channels: int, name: str, severity: int, seed: tuple) -> np.ndarray:
    return C.corrupt(_batch(side, channels), name, severity, _seed(seed)).numpy()


# ----------------------------------------------------------------------------------------------
# API


def test_names_are_the_benchmarks_in_order():
    assert C.CORRUPTIONS == TFDS_NAMES
    assert set(C.RANDOM_CORRUPTIONS) < set(C.CORRUPTIONS)


def test_unknown_name_lists_close_matches_and_names():
    x = np.zeros([1, 8, 8, 3], np.float32)
    with pytest.raises(ValueError, match="gaussian_noise") as err:
        C.corrupt(x, "gaussian_nosie", 1, _seed(SEED_A))
    assert "Did you mean" in str(err.value) and "jpeg_compression" in str(err.value)
    with pytest.raises(ValueError, match="Known corruptions"):
        C.corrupt(x, "elastic", 1, _seed(SEED_A))


@pytest.mark.parametrize("severity", [6, -1, 2.0, True, "3"])
def test_bad_severity_raises(severity):
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(np.zeros([1, 8, 8, 3], np.float32), "contrast", severity, _seed(SEED_A))


def test_severity_zero_is_identity():
    x = _batch(16)
    np.testing.assert_array_equal(C.corrupt(x, "fog", 0, _seed(SEED_A)).numpy(), x)


# ----------------------------------------------------------------------------------------------
# Every (name, severity): shape, dtype, range, determinism, seed dependence; C = 3 and C = 1


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", TFDS_NAMES)
def test_shape_dtype_range_and_seeding(name, channels):
    x = _batch(32, channels)
    for severity in range(1, 6):
        y = _run(32, channels, name, severity, SEED_A)
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0.0 and y.max() <= 1.0 and np.isfinite(y).all()
        assert np.abs(y - x).max() > 1e-4 or (name, severity) == ("defocus_blur", 1)
        if channels == 1:
            continue
        again = C.corrupt(x, name, severity, _seed(SEED_A)).numpy()
        np.testing.assert_array_equal(again, y)
        other = _run(32, channels, name, severity, SEED_B)
        if name in C.RANDOM_CORRUPTIONS:
            assert np.abs(other - y).max() > 1e-3, (name, severity)
        else:
            np.testing.assert_array_equal(other, y)


# ----------------------------------------------------------------------------------------------
# Severity ordering

# Severity chains along which the mean squared distance from the original must not decrease
# (up to 2 %: sampling noise and near-ties, e.g. CIFAR motion blur (6, 2) -> (8, 2) differ only
# in taps with weight < 0.3 %). Everything is checked along 1..5 except where the published
# parameters are not ordered in that distance:
#   * CIFAR-10-C glass_blur severities 2->3 and 4->5 only raise the Gaussian sigma 0.25 -> 0.4,
#     which smooths the image before and after the local shuffle and so lowers the shuffle's
#     pixel error; the ordered pairs are those that add shuffle iterations (2->4, 3->5).
#   * frost trades image weight for frost weight (e.g. ImageNet-C 3->4: 0.7 -> 0.65 image, 0.7
#     frost: on a mid-grey image with mid-grey frost the distance 0.15 drops to 0.125); it is
#     checked by correlation below.
#   * elastic_transform: the published tables lower the global affine jitter while raising the
#     local warp (pixel distance falls from CIFAR severity 1 to 5); checked by local roughness.
_CHAINS = {
    (32, "glass_blur"): [(1, 2, 4), (3, 5)],
    (32, "frost"): [], (64, "frost"): [],
    (32, "elastic_transform"): [], (64, "elastic_transform"): [],
}


@pytest.mark.parametrize("side", [32, 64])
def test_distance_grows_with_severity(side):
    x = _batch(side)[:6]  # the smooth images, twice: the mean is over independent draws
    dist = {}
    for name in TFDS_NAMES:
        for severity in range(1, 6):
            y = _run(side, 3, name, severity, SEED_A)[:6]
            assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
            dist[name, severity] = float(np.mean((y - x) ** 2))
    for name in TFDS_NAMES:
        for chain in _CHAINS.get((side, name), [(1, 2, 3, 4, 5)]):
            for lo, hi in zip(chain, chain[1:]):
                assert dist[name, hi] >= 0.98 * dist[name, lo], \
                    (name, side, [round(dist[name, s], 6) for s in range(1, 6)])
        assert dist[name, 5] > dist[name, 1] or name == "elastic_transform"


@pytest.mark.parametrize("side", [32, 64])
def test_frost_share_grows_with_severity(side):
    x = _batch(side)[:6]
    decorrelation = []
    for severity in range(1, 6):
        y = _run(side, 3, "frost", severity, SEED_A)[:6]
        r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x, y)]
        decorrelation.append(1 - np.mean(r))
    assert np.all(np.diff(decorrelation) > 0), decorrelation


@pytest.mark.parametrize("side", [32, 64])
def test_elastic_local_warp_grows_with_severity(side):
    # On a linear ramp, an affine warp (and bilinear resampling of it) leaves the image linear:
    # its interior discrete Laplacian is ~0. Only the local displacement field creates curvature.
    ramp = np.tile(np.linspace(0.1, 0.9, side, dtype=np.float32)[None, None, :, None],
                   (8, side, 1, 3))
    curvature = []
    for severity in range(1, 6):
        y = C.corrupt(ramp, "elastic_transform", severity, _seed(SEED_A)).numpy()[..., 0]
        lap = y[:, 1:-1, 2:] + y[:, 1:-1, :-2] + y[:, 2:, 1:-1] + y[:, :-2, 1:-1] \
            - 4 * y[:, 1:-1, 1:-1]
        m = 6
        curvature.append(float(np.abs(lap[:, m:-m, m:-m]).mean()))
    assert np.all(np.diff(curvature) > 0), curvature
    if side == 32:  # CIFAR-10-C severity 1 has alpha = 0: a pure affine warp
        assert curvature[0] < 1e-5


# ----------------------------------------------------------------------------------------------
# Parameters: published values and scaling


def test_published_parameters():
    cifar = {"gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
             "shot_noise": [500, 250, 100, 75, 50],
             "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
             "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
             "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
             "jpeg_compression": [80, 65, 58, 50, 40],
             "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65]}
    imagenet = {"gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
                "shot_noise": [60, 25, 12, 5, 3],
                "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
                "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
                "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
                "jpeg_compression": [25, 18, 15, 10, 7],
                "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25]}
    for side, table, label in [(32, cifar, "CIFAR-10-C"), (224, imagenet, "ImageNet-C"),
                               (64, imagenet, "ImageNet-C")]:
        for name, values in table.items():
            got = [C.corruption_parameters(name, s, side)["published"][0] for s in range(1, 6)]
            assert got == values, (name, side)
            assert C.corruption_parameters(name, 1, side)["table"] == label
    assert C.corruption_parameters("fog", 5, 224)["published"] == (3, 1.4)
    assert C.corruption_parameters("frost", 3, 32)["published"] == (0.9, 0.4)
    # zoom_blur: np.arange(1, 1.06, 0.01) has 7 factors (1.06 included), as in make_cifar_c.py.
    assert len(C.corruption_parameters("zoom_blur", 1, 32)["zooms"]) == 7
    assert C.corruption_parameters("zoom_blur", 5, 224)["zooms"][-1] == pytest.approx(1.30)


def test_pixel_parameters_scale_with_the_image_side():
    for name, fields in [("defocus_blur", ["radius"]), ("motion_blur", ["radius", "sigma"]),
                         ("glass_blur", ["sigma", "max_delta"]),
                         ("elastic_transform", ["alpha", "sigma", "affine"])]:
        for severity in range(1, 6):
            ref = C.corruption_parameters(name, severity, 224)
            half = C.corruption_parameters(name, severity, (112, 150))
            small = C.corruption_parameters(name, severity, 28)
            cifar = C.corruption_parameters(name, severity, 32)
            for i, f in enumerate(fields):
                assert ref[f] == ref["published"][C._FIELDS[name].index(f)]
                assert half[f] == pytest.approx(ref[f] / 2)
                assert small[f] == pytest.approx(cifar[f] * 28 / 32)
    assert C.corruption_parameters("elastic_transform", 2, 224)["affine"] == pytest.approx(48.8)
    # Relative parameters do not scale.
    assert C.corruption_parameters("pixelate", 3, 112)["factor"] == 0.4
    assert C.corruption_parameters("defocus_blur", 2, 112)["alias_blur"] == 0.5


def test_defocus_blur_scales_with_the_image():
    """Blurring a 2x up-sampled image equals (nearly) up-sampling the blurred image: the radius
    follows the image side."""
    x = _smooth_images(64)
    x = np.clip(x + 0.3 * _checkerboard(64), 0, 1)
    up = lambda im: np.repeat(np.repeat(im, 2, axis=1), 2, axis=2)
    big = C.corrupt(up(x), "defocus_blur", 5, _seed(SEED_A)).numpy()
    small = C.corrupt(x, "defocus_blur", 5, _seed(SEED_A)).numpy()
    mismatch = np.abs(big - up(small)).mean()
    blur = np.abs(big - up(x)).mean()
    assert mismatch < 0.35 * blur, (mismatch, blur)


# ----------------------------------------------------------------------------------------------
# Statistics and hand-derived values


def _clipped_normal_std(mu, c):
    z = np.linspace(-12, 12, 200001)
    v = np.clip(mu + c * z, 0, 1)
    p = st.norm.pdf(z)
    m = np.trapezoid(v * p, z)
    return np.sqrt(np.trapezoid((v - m) ** 2 * p, z))


@pytest.mark.parametrize("side", [32, 64])
def test_gaussian_noise_std(side):
    x = np.full([4, side, side, 3], 0.5, np.float32)
    n = x.size
    for severity in range(1, 6):
        c = C.corruption_parameters("gaussian_noise", severity, side)["std"]
        y = C.corrupt(x, "gaussian_noise", severity, _seed(SEED_A)).numpy()
        expected = _clipped_normal_std(0.5, c)
        assert abs(y.std() - expected) < 5 * expected / np.sqrt(2 * n), (severity, y.std(), c)
        assert abs(y.mean() - 0.5) < 5 * expected / np.sqrt(n)


@pytest.mark.parametrize("side", [32, 64])
def test_shot_noise_mean_and_variance(side):
    for level in (0.2, 0.5):
        x = np.full([4, side, side, 3], level, np.float32)
        for severity in range(1, 6):
            c = C.corruption_parameters("shot_noise", severity, side)["rate"]
            k = np.arange(0, 2000)
            pmf = st.poisson.pmf(k, level * c)
            v = np.clip(k / c, 0, 1)
            mean = (pmf * v).sum()
            var = (pmf * (v - mean) ** 2).sum()  # = level / c when clipping is negligible
            y = C.corrupt(x, "shot_noise", severity, _seed(SEED_A)).numpy()
            se = np.sqrt(var / y.size)
            assert abs(y.mean() - mean) < 5 * se, (level, severity)
            assert abs(y.var() / var - 1) < 5 * np.sqrt(2 / y.size) + 0.02, (level, severity)
            if severity == 1:
                assert var == pytest.approx(level / c, rel=1e-3)


@pytest.mark.parametrize("side", [32, 64])
def test_impulse_noise_rate(side):
    x = np.full([4, side, side, 3], 0.5, np.float32)
    for severity in range(1, 6):
        c = C.corruption_parameters("impulse_noise", severity, side)["amount"]
        y = C.corrupt(x, "impulse_noise", severity, _seed(SEED_A)).numpy()
        changed = y != 0.5
        assert np.all(np.isin(y[changed], [0.0, 1.0]))
        rate = changed.mean()
        assert abs(rate - c) < 5 * np.sqrt(c * (1 - c) / y.size), (severity, rate, c)
        salt = (y == 1.0).sum() / max(changed.sum(), 1)
        assert abs(salt - 0.5) < 5 * np.sqrt(0.25 / changed.sum())


def test_brightness_hand_derived():
    colour = np.array([0.2, 0.4, 0.6], np.float32)
    for side in (32, 64):
        x = np.tile(colour, (2, side, side, 1))
        for severity in range(1, 6):
            c = C.corruption_parameters("brightness", severity, side)["delta"]
            # HSV value 0.6 -> min(0.6 + c, 1) at fixed hue and saturation scales RGB by v'/v.
            expected = colour * min(0.6 + c, 1.0) / 0.6
            y = C.corrupt(x, "brightness", severity, _seed(SEED_A)).numpy()
            np.testing.assert_allclose(y, np.broadcast_to(expected, y.shape), atol=1e-5)
            grey = C.corrupt(x[..., :1], "brightness", severity, _seed(SEED_A)).numpy()
            np.testing.assert_allclose(grey, min(0.2 + c, 1.0), atol=1e-6)


def test_contrast_hand_derived():
    for side in (32, 64):
        x = np.full([2, side, side, 3], 0.2, np.float32)
        x[:, :, side // 2:] = 0.8
        x[1] = 0.3  # a constant image is unchanged
        for severity in range(1, 6):
            c = C.corruption_parameters("contrast", severity, side)["factor"]
            y = C.corrupt(x, "contrast", severity, _seed(SEED_A)).numpy()
            np.testing.assert_allclose(y[0, :, : side // 2], 0.5 - 0.3 * c, atol=1e-6)
            np.testing.assert_allclose(y[0, :, side // 2:], 0.5 + 0.3 * c, atol=1e-6)
            np.testing.assert_allclose(y[1], 0.3, atol=1e-6)


def test_fog_on_a_constant_image():
    """(x + c f) * m / (m + c) with f a fractal normalised to [0, 1] over the whole map (the map
    is exactly 32 / 64 px here, so its extremes are in the image): max = v, min = v^2 / (v + c)."""
    v = 0.6
    for side in (32, 64):
        x = np.full([3, side, side, 1], v, np.float32)
        for severity in (1, 5):
            c = C.corruption_parameters("fog", severity, side)["amount"]
            y = C.corrupt(x, "fog", severity, _seed(SEED_A)).numpy()
            np.testing.assert_allclose(y.max(axis=(1, 2, 3)), v, atol=1e-5)
            np.testing.assert_allclose(y.min(axis=(1, 2, 3)), v * v / (v + c), atol=1e-5)
            assert y.std() > 0.01


@pytest.mark.parametrize("channels", [3, 1])
def test_pixelate_matches_block_average(channels):
    # ImageNet-C severity 2 is factor 0.5: 64 -> 32 box average (2x2 blocks) -> nearest back.
    x = _batch(64, channels)
    y = C.corrupt(x, "pixelate", 2, _seed(SEED_A)).numpy()
    b, h, w, c = x.shape
    blocks = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    expected = np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_pixelate_cifar_size():
    # CIFAR-10-C severity 4: int(32 * 0.75) = 24 samples; PIL's box groups 32 -> 24 as 2,1,1
    # input pixels (centres in [i*4/3, (i+1)*4/3)), then each of the 24 is repeated.
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype(np.float32)
    y = C.corrupt(x, "pixelate", 4, _seed(SEED_A)).numpy()
    groups = [[j for j in range(32) if i * 4 / 3 < j + 0.5 <= (i + 1) * 4 / 3] for i in range(24)]
    small = np.stack([x[:, g].mean(1) for g in groups], 1)
    small = np.stack([small[:, :, g].mean(2) for g in groups], 2)
    src = [int((i + 0.5) * 24 / 32) for i in range(32)]
    np.testing.assert_allclose(y, small[:, src][:, :, src], atol=1e-5)


def test_zoom_blur_matches_scipy():
    def clipped_zoom(img, z):  # the benchmark's definition, on scipy
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        out = ndi.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        t = (out.shape[0] - h) // 2
        return out[t:t + h, t:t + h]

    for side, severity in [(32, 2), (64, 5)]:
        x = _batch(side)[[1, 6]]
        zooms = C.corruption_parameters("zoom_blur", severity, side)["zooms"]
        expected = np.stack([(im + sum(clipped_zoom(im, z) for z in zooms)) / (len(zooms) + 1)
                             for im in x])
        y = C.corrupt(x, "zoom_blur", severity, _seed(SEED_A)).numpy()
        np.testing.assert_allclose(y, np.clip(expected, 0, 1), atol=2e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_matches_tf_codec(channels):
    for side, qualities in [(32, [80, 65, 58, 50, 40]), (64, [25, 18, 15, 10, 7])]:
        x = _batch(side, channels)[[1, 6]]
        u8 = np.round(x * 255).astype(np.uint8)
        for severity in (1, 5):
            q = qualities[severity - 1]
            expected = np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(im, quality=q)).numpy()
                                 for im in u8]) / 255.0
            y = C.corrupt(x, "jpeg_compression", severity, _seed(SEED_A)).numpy()
            np.testing.assert_allclose(y, expected, atol=1e-6)


def test_motion_blur_kernel_on_an_impulse():
    """ImageMagick's motion blur: a one-sided line of 2*ceil(radius)+1 taps within +-45 degrees
    of the horizontal, weights exp(-i^2 / 2 sigma^2)."""
    x = np.zeros([6, 32, 32, 1], np.float32)
    x[:, 16, 16] = 1.0
    for severity in (1, 5):
        p = C.corruption_parameters("motion_blur", severity, 32)
        y = C.corrupt(x, "motion_blur", severity, _seed(SEED_A)).numpy()[..., 0]
        for img in y:
            rows, cols = np.nonzero(img)
            dy, dx = 16 - rows, 16 - cols
            assert img.sum() == pytest.approx(1.0, abs=1e-5)  # a normalised kernel
            assert np.all(dx >= 0) and (np.all(dy >= 0) or np.all(dy <= 0))  # one-sided
            assert np.all(np.abs(dy) <= np.abs(dx))  # angle within +-45 degrees
            last = 2 * np.ceil(p["radius"])  # the last tap is at round(last * cos(a)) >= 0.7 last
            assert np.floor(last * 0.7 + 0.5) <= dx.max() <= last
            taps = np.exp(-np.arange(2 * np.ceil(p["radius"]) + 1) ** 2 / (2 * p["sigma"] ** 2))
            assert img[16, 16] == pytest.approx(taps[0] / taps.sum(), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Graph mode and tf.data


def test_inside_tf_data_map_matches_eager():
    x = _batch(32)
    seed = _seed(SEED_A)
    for name, severity in [("glass_blur", 3), ("fog", 4), ("jpeg_compression", 2),
                           ("elastic_transform", 5), ("snow", 2), ("frost", 1)]:
        ds = tf.data.Dataset.from_tensor_slices(x).batch(len(x))  # batch dim unknown in graph
        ds = ds.map(lambda im: C.corrupt(im, name, severity, seed))
        got = next(iter(ds)).numpy()
        np.testing.assert_allclose(got, _run(32, 3, name, severity, SEED_A), atol=2e-5,
                                   err_msg=name)
