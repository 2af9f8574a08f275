"""cbyol.losses.byol_ceb_loss against a float64 numpy/scipy re-derivation and hand-built cases."""
import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from cbyol import losses

NAMES = ("p1", "p2", "t1", "t2", "z1", "z2", "mu1", "mu2", "b_mean1", "b_mean2")


def np_log_c(dim, kappa):
    """log C_d(kappa) of the vMF density on the (d-1)-sphere, float64."""
    v = dim / 2.0 - 1.0
    return (v * np.log(kappa) - dim / 2.0 * np.log(2 * np.pi)
            - np.log(scipy.special.ive(v, kappa)) - kappa)


def const_atol(dim, kappa_e, kappa_b):
    """common.ceb.vmf rounds log C_d to float32; the loss adds four of them: allow a few ulps each."""
    return 5e-7 * (abs(np_log_c(dim, kappa_e)) + abs(np_log_c(dim, kappa_b)))


def np_l2n(x):
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), 1e-12))


def np_reg(p, t):
    return np.sum((np_l2n(p) - np_l2n(t)) ** 2, -1)


def np_byol_ceb(x, kappa_e, kappa_b, beta, weight, backward_view):
    d = x["z1"].shape[1]
    regression = np_reg(x["p1"], x["t2"]) + np_reg(x["p2"], x["t1"])
    b_for = {"same": (x["b_mean1"], x["b_mean2"]), "other": (x["b_mean2"], x["b_mean1"])}
    log_e, log_b = [], []
    for z, mu, b in zip((x["z1"], x["z2"]), (x["mu1"], x["mu2"]), b_for[backward_view]):
        log_e.append(kappa_e * np.sum(z * np_l2n(mu), 1) + np_log_c(d, kappa_e))
        log_b.append(kappa_b * np.sum(z * np_l2n(b), 1) + np_log_c(d, kappa_b))
    residual = log_e[0] - log_b[0] + log_e[1] - log_b[1]
    metrics = {"byol_loss": regression.mean(), "i_xzx_y": residual.mean(),
               "h_e_zx_x": -(log_e[0] + log_e[1]).mean(), "h_b_zx_y": -(log_b[0] + log_b[1]).mean()}
    return np.mean(weight * regression + beta * residual), metrics


def make_inputs(b=4, d=16, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = {k: rng.standard_normal((b, d)) for k in NAMES}
    # z is a unit sample near its mean direction, as the stochastic predictor gives.
    for k in ("1", "2"):
        x["mu" + k] = np_l2n(x["mu" + k])
        x["z" + k] = np_l2n(x["mu" + k] + 0.1 * x["z" + k])
    return {k: v.astype(dtype) for k, v in x.items()}


@pytest.mark.parametrize("backward_view", ["same", "other"])
def test_matches_numpy(backward_view):
    x = make_inputs()
    loss, metrics = losses.byol_ceb_loss(
        **x, kappa_e=16384.0, kappa_b=10.0, beta=0.6, byol_loss_weight=2.0,
        backward_view=backward_view)
    want_loss, want_metrics = np_byol_ceb(x, 16384.0, 10.0, 0.6, 2.0, backward_view)
    atol = const_atol(16, 16384.0, 10.0)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-9, atol=atol)
    assert set(metrics) == set(want_metrics)
    for k, v in want_metrics.items():
        np.testing.assert_allclose(metrics[k].numpy(), v, rtol=1e-9, atol=atol, err_msg=k)
    # The metrics add up to the loss.
    np.testing.assert_allclose(
        loss.numpy(), 2.0 * metrics["byol_loss"].numpy() + 0.6 * metrics["i_xzx_y"].numpy(),
        rtol=1e-12)


def test_float32_matches_numpy():
    x = make_inputs(seed=1, dtype=np.float32)
    loss, metrics = losses.byol_ceb_loss(**x)
    assert loss.dtype == tf.float32
    x64 = {k: v.astype(np.float64) for k, v in x.items()}
    want_loss, want_metrics = np_byol_ceb(x64, 16384.0, 10.0, 1.0, 1.0, "same")
    # log e adds terms of size ~kappa_e = 16384: float32 keeps about 1e-3 absolute.
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-2)
    for k, v in want_metrics.items():
        np.testing.assert_allclose(metrics[k].numpy(), v, rtol=1e-5, atol=1e-2, err_msg=k)


def test_beta_zero_is_weighted_byol():
    x = make_inputs(seed=2, dtype=np.float32)
    loss, metrics = losses.byol_ceb_loss(**x, beta=0.0, byol_loss_weight=5.0)
    # BYOL's weighted loss, re-derived: 5 * mean(reg(p1, t2) + reg(p2, t1)).
    x64 = {k: v.astype(np.float64) for k, v in x.items()}
    byol = np.mean(np_reg(x64["p1"], x64["t2"]) + np_reg(x64["p2"], x64["t1"]))
    np.testing.assert_allclose(loss.numpy(), 5.0 * byol, rtol=1e-6)
    assert loss.numpy() == np.float32(5.0) * metrics["byol_loss"].numpy()


def test_backward_view_pairing():
    """z_k lies on axis a_k; b_mean1 points along a_1 and b_mean2 along a_2 (orthogonal to a_1).

    "same": z1 under b(b_mean1), z2 under b(b_mean2): both cosines 1, log b = kappa_b + log C.
    "other": z1 under b(b_mean2), z2 under b(b_mean1): both cosines 0, log b = log C.
    """
    d, kappa_b = 6, 10.0
    eye = np.eye(d)
    x = make_inputs(b=2, d=d, seed=3)
    x["z1"] = x["mu1"] = eye[[0, 1]]
    x["z2"] = x["mu2"] = eye[[2, 3]]
    x["b_mean1"] = 3.0 * eye[[0, 1]]   # not unit: b's mean is the normalised output
    x["b_mean2"] = 0.5 * eye[[2, 3]]
    log_c = np_log_c(d, kappa_b)
    _, same = losses.byol_ceb_loss(**x, kappa_b=kappa_b, backward_view="same")
    _, other = losses.byol_ceb_loss(**x, kappa_b=kappa_b, backward_view="other")
    atol = 5e-7 * abs(log_c)
    np.testing.assert_allclose(same["h_b_zx_y"].numpy(), -2 * (kappa_b + log_c), atol=atol)
    np.testing.assert_allclose(other["h_b_zx_y"].numpy(), -2 * log_c, atol=atol)
    np.testing.assert_allclose(
        other["i_xzx_y"].numpy() - same["i_xzx_y"].numpy(), 2 * kappa_b, rtol=1e-12)
    np.testing.assert_allclose(same["h_e_zx_x"].numpy(), other["h_e_zx_x"].numpy())


def test_gradients_reach_b_mean_mu_z_not_targets():
    x = {k: tf.constant(v) for k, v in make_inputs(b=3, d=8, seed=4).items()}
    beta, kappa_b = 0.5, 10.0
    with tf.GradientTape(persistent=True) as tape:
        for v in x.values():
            tape.watch(v)
        loss, _ = losses.byol_ceb_loss(**x, kappa_e=1024.0, kappa_b=kappa_b, beta=beta)
    grads = {k: tape.gradient(loss, v) for k, v in x.items()}
    assert grads["t1"] is None and grads["t2"] is None
    for k in ("p1", "p2", "z1", "z2", "mu1", "mu2", "b_mean1", "b_mean2"):
        assert np.all(np.isfinite(grads[k].numpy())) and np.abs(grads[k].numpy()).max() > 0, k
    # b_mean only enters -beta * log b(z1|y) = -beta * kappa_b * z1 . l2n(b_mean1) / B + const:
    # the gradient is -beta * kappa_b * (I - u u^T) z1 / (|b_mean1| B), u = l2n(b_mean1).
    b, z = x["b_mean1"].numpy(), x["z1"].numpy()
    norm = np.linalg.norm(b, axis=1, keepdims=True)
    u = b / norm
    tangent = z - np.sum(z * u, 1, keepdims=True) * u
    want = -beta * kappa_b * tangent / norm / 3
    np.testing.assert_allclose(grads["b_mean1"].numpy(), want, rtol=1e-10)


def test_invalid_backward_view():
    x = make_inputs(b=2, d=4)
    with pytest.raises(ValueError, match="backward_view='target'.*'same'.*'other'"):
        losses.byol_ceb_loss(**x, backward_view="target")


def test_shape_mismatch_is_reported():
    x = make_inputs(b=2, d=4)
    x["b_mean2"] = np.ones((3, 4))
    with pytest.raises(ValueError, match="b_mean2"):
        losses.byol_ceb_loss(**x)
