"""C-BYOL's stochastic predictor against numpy, its sampling contract and the original release's
checkpoint features."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from cbyol import heads as cbyol_heads
from common.networks import layers
from common.tests.test_layers import check_init_moments, np_bn

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _predictor(kappa=50.0):
    return cbyol_heads.StochasticPredictor(6, 16, 5, kappa_e=kappa)


def test_stochastic_predictor_unit_vectors_and_eval():
    pred = _predictor()
    x = tf.random.normal([8, 6], seed=1)
    seed = tf.constant([3, 4], tf.int32)
    p, z, mu = pred(x, training=True, seed=seed)
    assert p.shape == z.shape == mu.shape == (8, 5)
    np.testing.assert_allclose(np.linalg.norm(z.numpy(), axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mu.numpy(), axis=1), 1, atol=1e-5)
    assert np.abs(z.numpy() - mu.numpy()).max() > 1e-2  # a draw from vMF(mu, 50) is not mu
    np.testing.assert_allclose(p.numpy(), z.numpy() @ pred.linear_2.w.numpy(), atol=1e-5)
    np.testing.assert_array_equal(pred(x, training=True, seed=seed)[1].numpy(), z.numpy())
    # mu = l2norm(relu(BN(x W0)) W1), eval mode uses the moving statistics; z = mu there.
    p_eval, z_eval, mu_eval = pred(x, training=False)
    np.testing.assert_array_equal(z_eval.numpy(), mu_eval.numpy())
    bn = pred.batchnorm_0
    h = x.numpy().astype(np.float64) @ pred.linear_0.w.numpy()
    h = np.maximum(np_bn(h, bn.moving_mean.numpy(), bn.moving_variance.numpy(), 1, 0), 0) @ pred.linear_1.w.numpy()
    np.testing.assert_allclose(mu_eval.numpy(), h / np.linalg.norm(h, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(p_eval.numpy(), mu_eval.numpy() @ pred.linear_2.w.numpy(), atol=1e-5)
    _, z_nosample, mu_nosample = pred(x, training=True, sample=False)
    np.testing.assert_array_equal(z_nosample.numpy(), mu_nosample.numpy())
    with pytest.raises(ValueError, match="seed"):
        pred(x, training=True)
    with pytest.raises(ValueError, match="kappa_e"):
        _predictor(kappa=0.0)


def _np_reflect(z0, mu):
    """Householder reflection taking e1 to mu, applied to z0 (float64; an involution)."""
    u = -mu.copy()
    u[:, 0] += 1.0
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return z0 - 2.0 * np.sum(z0 * u, 1, keepdims=True) * u


def _np_mu(x, w0, w1, eps=1e-5):
    h = x @ w0
    mean, var = h.mean(0), h.var(0)
    h = np.maximum((h - mean) / np.sqrt(var + eps), 0.0) @ w1
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def test_stochastic_predictor_gradient_through_the_sample_matches_finite_differences():
    """d/dW sum(z * c) with the seed fixed, against a float64 central difference.

    With the seed fixed the draw is z = l2n(H(mu) z0): z0 ~ vMF(e1, kappa) is fixed and H, the
    reflection taking e1 to mu, moves with the weights. z0 is recovered as H(mu) z from the layer's
    own sample, then the oracle recomputes mu (training-mode BN, scale 1, offset 0) and z in float64.
    """
    pred = _predictor(kappa=20.0)
    x = tf.random.normal([8, 6], seed=2)
    c = tf.random.normal([8, 5], seed=3)
    seed = tf.constant([1, 2], tf.int32)
    with tf.GradientTape() as tape:
        _, z, mu = pred(x, training=True, seed=seed)
        loss = tf.reduce_sum(z * c)  # depends on the weights only through the sample z
    got = tape.gradient(loss, [pred.linear_0.w, pred.linear_1.w])
    x64, c64 = x.numpy().astype(np.float64), c.numpy().astype(np.float64)
    w = [pred.linear_0.w.numpy().astype(np.float64), pred.linear_1.w.numpy().astype(np.float64)]
    mu64 = _np_mu(x64, *w)
    np.testing.assert_allclose(mu.numpy(), mu64, atol=1e-5)
    z0 = _np_reflect(z.numpy().astype(np.float64), mu64)
    assert np.all(np.abs(z0[:, 0] - np.sum(z.numpy() * mu.numpy(), 1)) < 1e-5)  # z0.e1 = z.mu

    def np_loss(w0, w1):
        zz = _np_reflect(z0, _np_mu(x64, w0, w1))
        return np.sum(zz / np.linalg.norm(zz, axis=1, keepdims=True) * c64)

    eps = 1e-6
    for k, g in enumerate(got):
        fd = np.zeros_like(w[k])
        for idx in np.ndindex(fd.shape):
            plus, minus = [a.copy() for a in w], [a.copy() for a in w]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            fd[idx] = (np_loss(*plus) - np_loss(*minus)) / (2 * eps)
        assert np.abs(fd).max() > 0.1
        np.testing.assert_allclose(g.numpy(), fd, rtol=0, atol=1e-4 * np.abs(fd).max())


@pytest.mark.parametrize("name", ["haiku", "keras", "normal"])
def test_stochastic_predictor_honours_kernel_init(name):
    tf.random.set_seed(4)
    pred = cbyol_heads.StochasticPredictor(256, 384, 128, kappa_e=50.0, use_hidden_bias=True,
                                           kernel_init=name)
    for linear in (pred.linear_0, pred.linear_1, pred.linear_2):
        check_init_moments(linear.w.numpy(), name, linear.in_features)
    np.testing.assert_array_equal(pred.linear_0.b.numpy(), 0.0)


def test_cbyol_model_passes_the_heads_init_to_the_predictor():
    from cbyol import model
    from common import testing
    from common.training import models
    tf.random.set_seed(6)
    heads_cfg = models.HeadsConfig(hidden_dim=256, out_dim=128, kernel_init="normal")
    m = model.CBYOL(testing.tiny_resnet(), heads_cfg, models.TargetConfig(), 4)
    for linear in (m.predictor.linear_0, m.predictor.linear_1, m.predictor.linear_2):
        check_init_moments(linear.w.numpy(), "normal", linear.in_features)


def test_release_predictor_matches_original_checkpoint_features():
    fixture = ROOT / "tools" / "fixtures" / "original" / "cbyol_r50_s64"
    ckpt = str(fixture / "ckpt-5")
    f = np.load(fixture / "features.npz")
    bn = layers.BNConfig(semantics="keras")
    predictor = cbyol_heads.StochasticPredictor(32, 64, 32, kappa_e=16384.0, bn=bn)
    layers.assign_from_checkpoint(predictor.release_checkpoint_map("model/_projector/"), ckpt)
    p, z, mu = predictor(tf.constant(f["online_head_out"]), training=False)
    np.testing.assert_allclose(mu.numpy(), f["online_predictor_mu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.numpy(), f["online_predictor_out"], rtol=1e-4, atol=1e-5)
