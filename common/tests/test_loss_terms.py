"""common.losses.terms and common.ceb.terms against float64 numpy/scipy re-derivations and hand-worked values."""
import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from common.losses import terms as losses
from common.ceb import terms as ceb_terms
from common.ceb import vmf
from common import testing


def np_log_c(dim, kappa):
    """log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log 2pi - log I_{d/2-1}(kappa), float64."""
    v = dim / 2.0 - 1.0
    log_bessel = np.log(scipy.special.ive(v, kappa)) + kappa
    return v * np.log(kappa) - dim / 2.0 * np.log(2 * np.pi) - log_bessel


def log_c_atol(dim, kappa):
    """common.ceb.vmf returns log C_d rounded to float32: allow a few float32 ulps of it."""
    return 2.5e-7 * max(1.0, abs(np_log_c(dim, kappa)))


def np_l2n(x):
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), 1e-12))


def unit_rows(n, d, seed):
    return np_l2n(np.random.default_rng(seed).standard_normal((n, d)))


def test_l2_normalize_eps_on_squared_norm():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [3e-7, 4e-7]])
    got = losses.l2_normalize(x).numpy()
    # Norm 5e-7 is below the floor sqrt(1e-12) = 1e-6, so the row is divided by 1e-6.
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [0.3, 0.4]], rtol=1e-12)


def test_half_precision_is_promoted():
    got = losses.l2_normalize(tf.constant([[3.0, 4.0]], tf.bfloat16))
    assert got.dtype == tf.float32
    with pytest.raises(TypeError, match="floating"):
        losses.l2_normalize(tf.constant([[1, 2]]))


def test_regression_loss_is_two_minus_two_cos():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    cos = np.sum(np_l2n(p) * np_l2n(t), 1)
    np.testing.assert_allclose(losses.regression_loss(p, t).numpy(), 2 - 2 * cos, rtol=1e-12)


def test_symmetric_regression_pairs_views_and_stops_targets():
    e1, e2 = [[1.0, 0.0]], [[0.0, 1.0]]
    # p1 equals t2 (0) and p2 is opposite to t1 (4).
    p1, p2, t1, t2 = (tf.constant(v) for v in (e2, [[-1.0, 0.0]], e1, e2))
    with tf.GradientTape(persistent=True) as tape:
        for v in (p1, p2, t1, t2):
            tape.watch(v)
        got = losses.symmetric_regression_loss(p1, p2, t1, t2)
    np.testing.assert_allclose(got.numpy(), [4.0])
    assert tape.gradient(got, t1) is None and tape.gradient(got, t2) is None
    assert tape.gradient(got, p1) is not None


def test_global_labels_and_mask_single_replica():
    np.testing.assert_array_equal(losses.global_labels(3).numpy(), [0, 1, 2])
    logits = tf.zeros([2, 3], tf.float64)
    got = losses.mask_self(logits, tf.constant([0, 2])).numpy()
    np.testing.assert_array_equal(got, [[-1e9, 0, 0], [0, 0, -1e9]])


def test_global_labels_on_two_replicas():
    strategy = testing.two_replica_strategy()
    out = strategy.run(tf.function(lambda: losses.global_labels(3)))
    got = [t.numpy().tolist() for t in strategy.experimental_local_results(out)]
    assert got == [[0, 1, 2], [3, 4, 5]]


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(1)
    ab, aa = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    labels = np.array([4, 1, 3])
    ce, logits, bound = losses.info_nce(ab, losses.mask_self(aa, labels), labels)
    for i, y in enumerate(labels):
        candidates = np.concatenate([ab[i], np.delete(aa[i], y)])
        want = -(ab[i, y] - np.log(np.sum(np.exp(candidates))))
        np.testing.assert_allclose(ce.numpy()[i], want, rtol=1e-12)
    assert logits.shape == (3, 12)
    np.testing.assert_allclose(bound.numpy(), np.log(11))
    ce1, logits1, bound1 = losses.info_nce(ab, None, labels)
    want1 = -(ab[np.arange(3), labels] - np.log(np.exp(ab).sum(1)))
    np.testing.assert_allclose(ce1.numpy(), want1, rtol=1e-12)
    np.testing.assert_allclose(bound1.numpy(), np.log(6))
    assert logits1.shape == (3, 6)


def test_contrast_accuracy_and_entropy_hand_values():
    logits = tf.constant([[2.0, 0.0, -1e9], [0.0, 0.0, 1.0]], tf.float64)
    np.testing.assert_allclose(losses.contrast_accuracy(logits, [0, 0]).numpy(), 0.5)
    p0 = np.array([np.e ** 2, 1.0]) / (np.e ** 2 + 1)
    p1 = np.array([1.0, 1.0, np.e]) / (2 + np.e)
    want = (-(p0 * np.log(p0)).sum() - (p1 * np.log(p1)).sum()) / 2
    np.testing.assert_allclose(losses.contrast_entropy(logits).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("dim,kappa", [(16, 10.0), (16, 1024.0), (8, 0.5)])
def test_vmf_log_prob_pairwise_matches_scipy(dim, kappa):
    z, mu = unit_rows(3, dim, 2), unit_rows(5, dim, 3)
    got = ceb_terms.vmf_log_prob_pairwise(z, mu, kappa).numpy()
    np.testing.assert_allclose(got, kappa * z @ mu.T + np_log_c(dim, kappa), rtol=1e-10,
                               atol=log_c_atol(dim, kappa))


def test_vmf_log_prob_pairwise_agrees_with_broadcast_log_prob():
    z, mu = unit_rows(3, 6, 4), unit_rows(4, 6, 5)
    broadcast = vmf.VonMisesFisher(mu[None], tf.constant(10.0, tf.float64)).log_prob(z[:, None, :])
    assert broadcast.shape == (3, 4)
    np.testing.assert_allclose(
        ceb_terms.vmf_log_prob_pairwise(z, mu, 10.0).numpy(), broadcast.numpy(), rtol=1e-6, atol=1e-6)


def test_residual_information_matches_scipy():
    z, e_mean, b_mean = unit_rows(4, 12, 6), unit_rows(4, 12, 7), unit_rows(4, 12, 8)
    i, log_e, log_b = ceb_terms.residual_information(z, e_mean, 1024.0, b_mean, 10.0)
    want_e = 1024.0 * np.sum(z * e_mean, 1) + np_log_c(12, 1024.0)
    want_b = 10.0 * np.sum(z * b_mean, 1) + np_log_c(12, 10.0)
    atol_e, atol_b = log_c_atol(12, 1024.0), log_c_atol(12, 10.0)
    np.testing.assert_allclose(log_e.numpy(), want_e, rtol=1e-10, atol=atol_e)
    np.testing.assert_allclose(log_b.numpy(), want_b, rtol=1e-10, atol=atol_b)
    np.testing.assert_allclose(i.numpy(), want_e - want_b, rtol=1e-10, atol=atol_e + atol_b)


def test_as_embeddings_reports_bad_shapes():
    with pytest.raises(ValueError, match="rank 2"):
        losses.as_embeddings(a=tf.ones([2, 3, 4]))
    with pytest.raises(ValueError, match="b has shape"):
        losses.as_embeddings(a=tf.ones([2, 3]), b=tf.ones([3, 3]))
    a, b = losses.as_embeddings(a=tf.ones([2, 3]), b=tf.zeros([2, 3]))
    assert a.numpy().sum() == 6 and b.numpy().sum() == 0
