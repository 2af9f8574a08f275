"""csimclr.losses.contrastive_ceb_loss against a float64 numpy/scipy re-derivation."""
import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from common.losses import terms as common_losses
from common.ceb import vmf
from common import testing
from csimclr import losses

KAPPA_E, KAPPA_B = 1024.0, 10.0


def np_log_c(dim, kappa):
    """log C_d(kappa) of the vMF density on the (d-1)-sphere, float64."""
    v = dim / 2.0 - 1.0
    return (v * np.log(kappa) - dim / 2.0 * np.log(2 * np.pi)
            - np.log(scipy.special.ive(v, kappa)) - kappa)


def const_atol(dim, kappa_e=KAPPA_E, kappa_b=KAPPA_B):
    """common.ceb.vmf rounds log C_d to float32; the loss adds a few of them: allow a few ulps each."""
    return 2.5e-7 * (abs(np_log_c(dim, kappa_e)) + abs(np_log_c(dim, kappa_b)))


def np_l2n(x):
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), 1e-12))


def np_log_softmax(logits):
    m = logits.max(1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))


def np_direction(z, own, other, kappa_e, kappa_b, beta, double_batch):
    """One direction: z sampled around `own`, positive under `other` (rows aligned)."""
    n, dim = z.shape
    log_e = kappa_e * np.sum(z * own, 1) + np_log_c(dim, kappa_e)
    log_b = kappa_b * np.sum(z * other, 1) + np_log_c(dim, kappa_b)
    logits = kappa_b * z @ other.T + np_log_c(dim, kappa_b)
    bound = np.log(n)
    if double_batch:
        aa = kappa_b * z @ own.T + np_log_c(dim, kappa_b)
        aa = np.stack([np.delete(aa[i], i) for i in range(n)])
        logits = np.concatenate([logits, aa], 1)
        bound = np.log(2 * n - 1)
    i_contrast = bound + np_log_softmax(logits)[np.arange(n), np.arange(n)]
    residual = log_e - log_b
    acc = np.mean(np.argmax(logits, 1) == np.arange(n))
    return beta * residual - i_contrast, residual, i_contrast, log_e, log_b, acc


def np_ceb(hidden, z_x, z_y, kappa_e=KAPPA_E, kappa_b=KAPPA_B, beta=1.0,
           double_batch=True, bidirectional=True):
    """Full loss and metrics for the global batch `hidden` [2N, d] with given samples z_x, z_y [N, d]."""
    r_x, r_y = np.split(np_l2n(hidden.astype(np.float64)), 2)
    loss_a, res_a, ic_a, log_e, log_b, acc = np_direction(
        z_x, r_x, r_y, kappa_e, kappa_b, beta, double_batch)
    metrics = {"i_xzx_y": res_a.mean(), "i_y_zx": ic_a.mean(), "h_e_zx_x": -log_e.mean(),
               "h_b_zx_y": -log_b.mean(), "contrast_acc": acc}
    loss = loss_a
    if bidirectional:
        loss_b, res_b, ic_b, _, _, _ = np_direction(
            z_y, r_y, r_x, kappa_e, kappa_b, beta, double_batch)
        loss = loss + loss_b
        metrics.update(i_yzy_x=res_b.mean(), i_x_zy=ic_b.mean())
    return loss.mean(), metrics


def make_hidden(n=5, d=16, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return np.concatenate([x, x + 0.9 * rng.standard_normal((n, d))]).astype(dtype)


def expected_samples(hidden, seed, replica=0, kappa_e=KAPPA_E):
    """The documented sampling contract, rebuilt from tf.random and common.ceb.vmf directly."""
    r_x, r_y = tf.split(common_losses.l2_normalize(tf.constant(hidden)), 2)
    own = tf.random.experimental.stateless_fold_in(tf.constant(seed), replica)
    seeds = tf.random.experimental.stateless_split(own, num=2)
    kappa = tf.constant(kappa_e, r_x.dtype)
    z_x = vmf.VonMisesFisher(r_x, kappa).sample(seeds[0])
    z_y = vmf.VonMisesFisher(r_y, kappa).sample(seeds[1])
    return z_x.numpy().astype(np.float64), z_y.numpy().astype(np.float64)


def assert_matches(loss, metrics, want_loss, want_metrics, rtol, atol):
    assert set(metrics) == set(want_metrics)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=rtol, atol=atol)
    for k, v in want_metrics.items():
        assert metrics[k].shape == ()
        np.testing.assert_allclose(metrics[k].numpy(), v, rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("double_batch", [True, False])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_mean_direction_matches_numpy(double_batch, bidirectional):
    hidden = make_hidden()
    r_x, r_y = np.split(np_l2n(hidden), 2)
    loss, metrics = losses.contrastive_ceb_loss(
        hidden, KAPPA_E, KAPPA_B, beta=0.7, sampling=False,
        double_batch_trick=double_batch, bidirectional=bidirectional)
    want = np_ceb(hidden, r_x, r_y, beta=0.7, double_batch=double_batch,
                  bidirectional=bidirectional)
    assert_matches(loss, metrics, *want, rtol=1e-9, atol=const_atol(16))


def test_float32_mean_direction_matches_numpy():
    hidden = make_hidden(dtype=np.float32)
    r_x, r_y = np.split(np_l2n(hidden.astype(np.float64)), 2)
    loss, metrics = losses.contrastive_ceb_loss(hidden, sampling=False)
    assert loss.dtype == tf.float32
    # log e(z|x) adds two numbers of size ~kappa_e, so float32 keeps about 1e-4 absolute.
    assert_matches(loss, metrics, *np_ceb(hidden, r_x, r_y), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sampled_matches_numpy_with_same_samples(dtype):
    hidden = make_hidden(seed=1, dtype=dtype)
    seed = [7, 11]
    loss, metrics = losses.contrastive_ceb_loss(hidden, seed=tf.constant(seed), beta=1.3)
    z_x, z_y = expected_samples(hidden, seed)
    # The samples sit near their own mean direction, as kappa_e = 1024 promises.
    r_x = np_l2n(hidden[:5].astype(np.float64))
    assert np.all(np.sum(z_x * r_x, 1) > 0.9)
    atol = const_atol(16) if dtype == np.float64 else 2e-3
    assert_matches(loss, metrics, *np_ceb(hidden, z_x, z_y, beta=1.3), rtol=1e-9, atol=atol)
    again, _ = losses.contrastive_ceb_loss(hidden, seed=tf.constant(seed), beta=1.3)
    assert again.numpy() == loss.numpy()


def test_identity_with_nt_xent():
    """beta=0, no sampling, kappa_b = 1/T: NT-Xent at temperature T minus 2 log(2B - 1).

    NT-Xent is re-derived here in numpy (simclr's own tests check simclr.losses against the
    same formula), so this package's tests do not import another algorithm package.
    """
    t = 0.2
    hidden = make_hidden(n=4, seed=2)
    h1, h2 = np.split(np_l2n(hidden), 2)

    def nt_xent_direction(a, b):
        aa = a @ a.T / t
        aa = np.stack([np.delete(aa[i], i) for i in range(4)])
        logits = np.concatenate([a @ b.T / t, aa], 1)
        return -np_log_softmax(logits)[np.arange(4), np.arange(4)]

    nt_xent = np.mean(nt_xent_direction(h1, h2) + nt_xent_direction(h2, h1))
    loss, _ = losses.contrastive_ceb_loss(hidden, kappa_b=1 / t, beta=0.0, sampling=False)
    np.testing.assert_allclose(loss.numpy(), nt_xent - 2 * np.log(7), rtol=1e-10)


def grads_wrt_hidden(hidden, beta, seed=(3, 4)):
    h = tf.constant(hidden)
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss, _ = losses.contrastive_ceb_loss(h, beta=beta, seed=tf.constant(seed))
    return tape.gradient(loss, h).numpy()


def np_reflect(z0, mu):
    """Householder reflection taking e1 to mu, applied to z0 (float64; an involution)."""
    u = -mu.copy()
    u[:, 0] += 1.0
    u = np_l2n(u)
    return z0 - 2.0 * np.sum(z0 * u, 1, keepdims=True) * u


def central_differences(fn, x, eps=1e-6):
    """d fn / d x [same shape as x] by float64 central differences, one entry at a time."""
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return fd


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sampled_gradient_matches_float64_finite_differences(beta):
    """The whole gradient of the sampled loss with the seed fixed, against a float64 central
    difference of the numpy loss.

    With the seed fixed a sample is z = H(r) z0: the vMF draw z0 around e1 is fixed and H, the
    reflection taking e1 to the mean direction r, moves with the input. z0 is recovered in float64
    as H(r) z from the loss's own float32 samples (H is an involution), so the oracle's samples
    move with `hidden` in exact arithmetic and a small step is possible. The tolerance is float32
    rounding in the sampler: log e(z|x) = kappa_e z.r is stationary in r through the sample, but
    its two paths, each of size ~kappa_e = 1024, cancel only to float32 precision.
    """
    hidden = make_hidden(n=3, d=8, seed=4)
    seed = [3, 4]
    got = grads_wrt_hidden(hidden, beta, seed)
    z_x, z_y = expected_samples(hidden, seed)
    r_x, r_y = np.split(np_l2n(hidden), 2)
    z0_x, z0_y = np_reflect(z_x, r_x), np_reflect(z_y, r_y)

    def loss(hid):
        rx, ry = np.split(np_l2n(hid), 2)
        return np_ceb(hid, np_l2n(np_reflect(z0_x, rx)), np_l2n(np_reflect(z0_y, ry)), beta=beta)[0]

    fd = central_differences(loss, hidden)
    assert np.abs(fd).max() > 0.1
    np.testing.assert_allclose(got, fd, rtol=0, atol=2e-5 * np.abs(fd).max())


def test_beta_gradient_through_the_samples():
    """grad(beta=1) - grad(beta=0) at one seed is the gradient of mean(i_xzx_y + i_yzy_x), with the
    samples moving with hidden through the reflection (oracle as in the test above)."""
    hidden = make_hidden(n=3, d=8, seed=4)
    seed = [3, 4]
    diff = grads_wrt_hidden(hidden, 1.0, seed) - grads_wrt_hidden(hidden, 0.0, seed)
    z_x, z_y = expected_samples(hidden, seed)
    r_x, r_y = np.split(np_l2n(hidden), 2)
    z0_x, z0_y = np_reflect(z_x, r_x), np_reflect(z_y, r_y)

    def residual_sum(hid):
        rx, ry = np.split(np_l2n(hid), 2)
        metrics = np_ceb(hid, np_l2n(np_reflect(z0_x, rx)), np_l2n(np_reflect(z0_y, ry)))[1]
        return metrics["i_xzx_y"] + metrics["i_yzy_x"]

    fd = central_differences(residual_sum, hidden)
    assert np.abs(fd).max() > 1.0
    np.testing.assert_allclose(diff, fd, rtol=0, atol=2e-5 * np.abs(fd).max())


def test_sampling_without_a_seed_is_refused():
    hidden = make_hidden(seed=5, dtype=np.float32)
    with pytest.raises(ValueError, match="seed"):
        losses.contrastive_ceb_loss(hidden)
    # Without sampling the loss is deterministic and needs no seed.
    a, _ = losses.contrastive_ceb_loss(hidden, sampling=False)
    assert np.isfinite(a.numpy())


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        losses.contrastive_ceb_loss(tf.zeros([3, 4]), sampling=False)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        losses.contrastive_ceb_loss(tf.ones([4, 4]), seed=tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="kappa_b"):
        losses.contrastive_ceb_loss(tf.ones([4, 4]), kappa_b=0.0)


@pytest.mark.parametrize("sampling", [False, True])
def test_two_replicas(sampling):
    """Loss and gradients on 2 replicas against one device (no sampling) or against the oracle.

    Without sampling the replicated loss equals the one-device loss on the global batch. With
    sampling, replica r draws from seed folded with r, so its samples differ from the one-device
    draw of the same rows; the check is then the numpy oracle on the global batch fed with every
    replica's own samples.
    """
    strategy = testing.two_replica_strategy()
    n_rep, b_local, k, d = 2, 3, 5, 8
    rng = np.random.default_rng(6)
    x1 = rng.standard_normal((n_rep * b_local, k))
    x2 = x1 + 0.8 * rng.standard_normal(x1.shape)
    w0 = rng.standard_normal((k, d))
    rows = [np.concatenate([x1[r * b_local:(r + 1) * b_local], x2[r * b_local:(r + 1) * b_local]])
            for r in range(n_rep)]
    seed = [5, 6]

    with strategy.scope():
        w = tf.Variable(w0)

    def replica_fn(inputs):
        with tf.GradientTape() as tape:
            rep_loss, rep_metrics = losses.contrastive_ceb_loss(
                tf.matmul(inputs, w), sampling=sampling, seed=tf.constant(seed), strategy=strategy)
            scaled = rep_loss / strategy.num_replicas_in_sync
        return rep_loss, rep_metrics, tape.gradient(scaled, w)

    dist_inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(rows[ctx.replica_id_in_sync_group]))
    rep_loss, rep_metrics, rep_gw = tf.function(
        lambda v: strategy.run(replica_fn, args=(v,)))(dist_inputs)
    mean = tf.distribute.ReduceOp.MEAN
    dist_loss = strategy.reduce(mean, rep_loss, axis=None).numpy()
    dist_metrics = {k: strategy.reduce(mean, v, axis=None).numpy() for k, v in rep_metrics.items()}
    dist_gw = strategy.reduce(tf.distribute.ReduceOp.SUM, rep_gw, axis=None).numpy()

    hidden_global = np.concatenate([x1, x2]) @ w0
    if sampling:
        samples = [expected_samples(rows[r] @ w0, seed, replica=r) for r in range(n_rep)]
        z_x = np.concatenate([s[0] for s in samples])
        z_y = np.concatenate([s[1] for s in samples])
        want_loss, want_metrics = np_ceb(hidden_global, z_x, z_y)
        np.testing.assert_allclose(dist_loss, want_loss, rtol=1e-8, atol=const_atol(d))
        for key, v in want_metrics.items():
            np.testing.assert_allclose(dist_metrics[key], v, rtol=1e-8, atol=const_atol(d),
                                       err_msg=key)
        return

    w_single = tf.Variable(w0)
    with tf.GradientTape() as tape:
        loss, metrics = losses.contrastive_ceb_loss(
            tf.matmul(tf.constant(np.concatenate([x1, x2])), w_single), sampling=False)
    g_w = tape.gradient(loss, w_single).numpy()
    r_x, r_y = np.split(np_l2n(hidden_global), 2)
    np.testing.assert_allclose(loss.numpy(), np_ceb(hidden_global, r_x, r_y)[0], rtol=1e-10,
                               atol=const_atol(d))
    np.testing.assert_allclose(dist_loss, loss.numpy(), rtol=1e-10)
    for key in metrics:
        np.testing.assert_allclose(dist_metrics[key], metrics[key].numpy(), rtol=1e-10,
                                   atol=1e-10, err_msg=key)
    np.testing.assert_allclose(dist_gw, g_w, rtol=1e-8, atol=1e-10)
