"""byol.losses against the golden outputs of DeepMind's BYOL JAX reference (group a)."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from byol import losses
from common.losses import terms as common_losses

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "tools" / "golden" / "byol_golden.npz"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files if k.startswith("a/")}


def test_l2_normalize_golden(golden):
    got = common_losses.l2_normalize(golden["a/x"]).numpy()
    np.testing.assert_allclose(got, golden["a/l2n_x"], rtol=1e-5, atol=1e-6)
    # Row 7 is all zeros: the eps on the squared norm maps it to zero, not NaN.
    assert not np.any(got[7])


def test_regression_loss_golden(golden):
    got = losses.regression_loss(golden["a/x"], golden["a/y"]).numpy()
    assert got.shape == (8,)
    np.testing.assert_allclose(got, golden["a/reg_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[7], 1.0, rtol=1e-6)


def test_regression_gradient_golden(golden):
    x = tf.constant(golden["a/x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_mean(losses.regression_loss(x, golden["a/y"]))
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(grad, golden["a/grad_mean_reg_loss_wrt_x"], rtol=1e-4, atol=1e-6)


def test_byol_loss_golden(golden):
    loss, metrics = losses.byol_loss(golden["a/p1"], golden["a/p2"], golden["a/z1"], golden["a/z2"])
    np.testing.assert_allclose(loss.numpy(), golden["a/byol_sym_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["byol_loss"].numpy(), golden["a/byol_sym_loss"], rtol=1e-5)
    assert set(metrics) == {"byol_loss"}


def test_weight_scales_loss_not_metric(golden):
    args = [golden[k] for k in ("a/p1", "a/p2", "a/z1", "a/z2")]
    loss, metrics = losses.byol_loss(*args, weight=2.5)
    np.testing.assert_allclose(loss.numpy(), 2.5 * golden["a/byol_sym_loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["byol_loss"].numpy(), golden["a/byol_sym_loss"], rtol=1e-5)


def test_hand_derived_cosines():
    # cos = 1, 0, -1 give 0, 2, 4 per direction.
    p = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], np.float32)
    t = np.array([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    np.testing.assert_allclose(losses.regression_loss(p, t).numpy(), [0.0, 2.0, 4.0], atol=1e-6)
    loss, _ = losses.byol_loss(p, p, t, t, weight=1.0)
    np.testing.assert_allclose(loss.numpy(), 2 * 6.0 / 3, rtol=1e-6)


def test_targets_get_no_gradient(golden):
    p1, p2, t1, t2 = (tf.constant(golden[k]) for k in ("a/p1", "a/p2", "a/z1", "a/z2"))
    with tf.GradientTape(persistent=True) as tape:
        for v in (p1, p2, t1, t2):
            tape.watch(v)
        loss, _ = losses.byol_loss(p1, p2, t1, t2)
    assert tape.gradient(loss, t1) is None and tape.gradient(loss, t2) is None
    # Online view 1 regresses onto the target of view 2:
    # d/dp mean_i ||p^_i - t^_i||^2 = -2 (I - p^ p^T) t^ / (|p| B).
    p, t = golden["a/p1"].astype(np.float64), golden["a/z2"].astype(np.float64)
    p_norm = np.linalg.norm(p, axis=1, keepdims=True)
    p_hat, t_hat = p / p_norm, t / np.linalg.norm(t, axis=1, keepdims=True)
    radial = np.sum(p_hat * t_hat, 1, keepdims=True) * p_hat
    want = -2 * (t_hat - radial) / p_norm / p.shape[0]
    np.testing.assert_allclose(tape.gradient(loss, p1).numpy(), want, rtol=1e-4, atol=1e-7)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="t2"):
        losses.byol_loss(tf.ones([4, 3]), tf.ones([4, 3]), tf.ones([4, 3]), tf.ones([4, 2]))
