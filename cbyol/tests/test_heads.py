"""C-BYOL's stochastic predictor against numpy, its sampling contract and the original release's
checkpoint features."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from cbyol import heads as cbyol_heads
from common.networks import layers
from common.tests.test_layers import np_bn

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


def test_stochastic_predictor_gradient_flows_through_the_sample():
    pred = _predictor(kappa=20.0)
    x = tf.random.normal([8, 6], seed=2)
    c = tf.random.normal([8, 5], seed=3)
    with tf.GradientTape() as tape:
        _, z, _ = pred(x, training=True, seed=tf.constant([1, 2], tf.int32))
        loss = tf.reduce_sum(z * c)  # depends on the weights only through the sample z
    g0, g1 = tape.gradient(loss, [pred.linear_0.w, pred.linear_1.w])
    for g in (g0, g1):
        assert g is not None and np.isfinite(g.numpy()).all() and np.abs(g.numpy()).max() > 1e-4


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
