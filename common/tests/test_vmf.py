"""common.ceb.vmf against scipy, independent float64 numpy oracles and exact sampling statistics."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

from common.ceb import vmf
from common import testing


# ---------------------------------------------------------------------------------------------
# float64 oracles, written independently of the library
# ---------------------------------------------------------------------------------------------
def scipy_log_normalizer(d, kappa):
    """log C_d(kappa) from scipy's exponentially scaled Bessel function: log I_v = log ive + kappa."""
    v = d / 2.0 - 1.0
    return v * np.log(kappa) - d / 2.0 * np.log(2 * np.pi) - (np.log(special.ive(v, kappa)) + kappa)


def full_series_log_iv(v, x, n_terms):
    """log I_v(x) as the log-sum-exp of ALL power-series terms k = 0..n_terms-1 (no window)."""
    k = np.arange(n_terms, dtype=np.float64)
    t = (2 * k + v) * np.log(x / 2.0) - special.gammaln(k + 1) - special.gammaln(k + v + 1)
    top = t.max()
    return top + np.log(np.sum(np.exp(t - top)))


def debye_log_iv(v, x):
    """log I_v(x) from the uniform (Debye) asymptotic expansion in 1/v, through u_3 (error ~ v^-4)."""
    z = x / v
    s = np.sqrt(1 + z * z)
    t = 1 / s
    eta = s + np.log(z / (1 + s))
    u1 = (3 * t - 5 * t**3) / 24
    u2 = (81 * t**2 - 462 * t**4 + 385 * t**6) / 1152
    u3 = (30375 * t**3 - 369603 * t**5 + 765765 * t**7 - 425425 * t**9) / 414720
    return (-0.5 * np.log(2 * np.pi * v) + v * eta - 0.5 * np.log(s)
            + np.log1p(u1 / v + u2 / v**2 + u3 / v**3))


def log_normalizer_from_log_iv(d, kappa, log_iv):
    return (d / 2.0 - 1.0) * np.log(kappa) - d / 2.0 * np.log(2 * np.pi) - log_iv


def random_unit(rng, shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# normaliser and mean resultant length
# ---------------------------------------------------------------------------------------------
def test_reference_values_d256():
    got = vmf.log_normalizer(256, [10.0, 1024.0, 16384.0]).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [344.1397, -366.6975, -15380.5694], rtol=0, atol=1e-3)
    a = vmf.mean_resultant_length(256, [10.0, 1024.0, 16384.0]).numpy()
    np.testing.assert_allclose(a, [0.0390, 0.8832, 0.9922], atol=6e-5)


@pytest.mark.parametrize("d", [2, 3, 5, 32, 256, 1024, 2048])
def test_log_normalizer_matches_scipy(d):
    kappas = np.array([0.5, 1.0, 10.0, 100.0, 1024.0, 4096.0, 16384.0])
    v = d / 2.0 - 1.0
    usable = special.ive(v, kappas) > 1e-280  # scipy's scaled value underflows for large v, small kappa
    kappas = kappas[usable]
    assert len(kappas) >= 3
    want = scipy_log_normalizer(d, kappas)
    got = vmf.log_normalizer(d, kappas.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=2e-6)
    a_want = special.ive(v + 1, kappas) / special.ive(v, kappas)
    a_got = vmf.mean_resultant_length(d, kappas.astype(np.float32)).numpy()
    np.testing.assert_allclose(a_got, a_want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("d,kappa", [(2048, 0.01), (2048, 1.0), (2048, 10.0), (1024, 3.0),
                                     (2048, 1024.0), (2048, 16384.0), (256, 16384.0)])
def test_log_normalizer_huge_cases_against_full_series_and_debye(d, kappa):
    v = d / 2.0 - 1.0
    n_terms = int(kappa) + 4000
    series = log_normalizer_from_log_iv(d, kappa, full_series_log_iv(v, kappa, n_terms))
    debye = log_normalizer_from_log_iv(d, kappa, debye_log_iv(v, kappa))
    assert abs(series - debye) < 1e-6 * max(1.0, abs(series))  # the two oracles agree
    got = float(vmf.log_normalizer(d, np.float32(kappa)).numpy())
    assert got == pytest.approx(series, rel=2e-7, abs=2e-6)
    a_series = np.exp(full_series_log_iv(v + 1, kappa, n_terms) - full_series_log_iv(v, kappa, n_terms))
    assert float(vmf.mean_resultant_length(d, kappa).numpy()) == pytest.approx(a_series, rel=1e-6)


@pytest.mark.parametrize("d", [2, 3, 256, 2048])
def test_log_normalizer_at_kappa_zero_is_uniform(d):
    # 1/|S^{d-1}| with |S^{d-1}| = 2 pi^{d/2} / Gamma(d/2).
    want = special.gammaln(d / 2.0) - np.log(2.0) - d / 2.0 * np.log(np.pi)
    assert float(vmf.log_normalizer(d, 0.0)) == pytest.approx(want, rel=1e-6)
    assert float(vmf.mean_resultant_length(d, 0.0)) == 0.0


def test_log_normalizer_runtime_kappa_inside_tf_function():
    kappas = np.array([10.0, 1024.0, 16384.0], np.float32)
    f = tf.function(lambda k: vmf.log_normalizer(256, k),
                    input_signature=[tf.TensorSpec([None], tf.float32)])
    np.testing.assert_allclose(f(kappas).numpy(), scipy_log_normalizer(256, kappas.astype(np.float64)),
                               rtol=2e-7, atol=2e-6)
    kappa_var = tf.Variable(1024.0)
    assert float(vmf.log_normalizer(256, kappa_var)) == pytest.approx(
        scipy_log_normalizer(256, 1024.0), rel=2e-7)


def test_bad_dim_raises():
    with pytest.raises(ValueError, match="dim must be an integer >= 2"):
        vmf.log_normalizer(1, 1.0)
    with pytest.raises(ValueError, match="static last dimension d >= 2"):
        vmf.VonMisesFisher(tf.ones([4, 1]), 1.0)


# ---------------------------------------------------------------------------------------------
# log_prob, mean, entropy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,kappa", [(3, 2.0), (5, 0.7), (32, 50.0), (32, 1024.0)])
def test_log_prob_matches_scipy(d, kappa):
    rng = np.random.default_rng(d)
    mu = random_unit(rng, (d,))
    x = random_unit(rng, (6, d))
    want = stats.vonmises_fisher(mu, kappa).logpdf(x)
    got = vmf.VonMisesFisher(mu.astype(np.float32), kappa).log_prob(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * (1 + kappa))


def test_log_prob_broadcasts_batch_against_distributions():
    rng = np.random.default_rng(1)
    d, b, n = 5, 4, 3
    mus = random_unit(rng, (n, d))
    kappas = np.array([1.0, 5.0, 30.0])
    x = random_unit(rng, (b, d))
    dist = vmf.VonMisesFisher(mus[None].astype(np.float32), kappas[None].astype(np.float32))
    got = dist.log_prob(x[:, None, :].astype(np.float32)).numpy()
    assert got.shape == (b, n)
    want = np.stack([stats.vonmises_fisher(mus[j], kappas[j]).logpdf(x) for j in range(n)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # A scalar kappa with mu [N, d] and x [B, 1, d], the contrastive-logits layout.
    got2 = vmf.VonMisesFisher(mus.astype(np.float32), 10.0).log_prob(x[:, None].astype(np.float32))
    want2 = np.stack([stats.vonmises_fisher(mus[j], 10.0).logpdf(x) for j in range(n)], axis=1)
    np.testing.assert_allclose(got2.numpy(), want2, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("d,kappa", [(3, 2.0), (32, 50.0), (256, 1024.0)])
def test_entropy_and_mean(d, kappa):
    rng = np.random.default_rng(7)
    mu = random_unit(rng, (2, d))
    dist = vmf.VonMisesFisher(mu.astype(np.float32), kappa)
    ent = dist.entropy().numpy()
    assert ent.shape == (2,)
    np.testing.assert_allclose(ent, stats.vonmises_fisher(mu[0], kappa).entropy(), rtol=1e-5, atol=1e-4)
    v = d / 2.0 - 1.0
    a = special.ive(v + 1, kappa) / special.ive(v, kappa)
    np.testing.assert_allclose(dist.mean().numpy(), a * mu, rtol=1e-5, atol=1e-7)


def test_validate_args_rejects_non_unit_mean():
    with pytest.raises(tf.errors.InvalidArgumentError, match="unit vectors"):
        vmf.VonMisesFisher(tf.fill([2, 4], 1.0), 1.0, validate_args=True).log_prob(tf.ones([2, 4]))


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def _w_moments_ok(w, d, kappa, n_se=4.0):
    """E[w] = A_d(kappa) and E[w^2] = 1 - (d-1) A_d(kappa) / kappa (since Var w = A'), within n_se SE."""
    v = d / 2.0 - 1.0
    if special.ive(v, kappa) > 1e-280:
        a = special.ive(v + 1, kappa) / special.ive(v, kappa)
    else:
        a = np.exp(full_series_log_iv(v + 1, kappa, 200) - full_series_log_iv(v, kappa, 200))
    w = w.astype(np.float64)
    n = len(w)
    z1 = (w.mean() - a) / (w.std() / np.sqrt(n))
    w2 = 1 - (d - 1) * a / kappa
    z2 = (np.mean(w * w) - w2) / ((w * w).std() / np.sqrt(n))
    assert abs(z1) < n_se, (d, kappa, w.mean(), a, z1)
    assert abs(z2) < n_se, (d, kappa, np.mean(w * w), w2, z2)


@pytest.mark.parametrize("d,kappa", [(256, 10.0), (256, 1024.0), (256, 16384.0), (2048, 16384.0),
                                     (2048, 10.0), (3, 1.0), (2, 3.0)])
def test_sample_unit_norm_and_moments(d, kappa):
    n = 4000 if d < 2048 else 1500
    rng = np.random.default_rng(d + int(kappa))
    mu = random_unit(rng, (n, d)).astype(np.float32)
    z = vmf.VonMisesFisher(mu, kappa).sample(tf.constant([3, d], tf.int32)).numpy()
    assert z.shape == (n, d) and z.dtype == np.float32
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(np.linalg.norm(z.astype(np.float64), axis=-1), 1.0, atol=1e-5)
    _w_moments_ok(np.sum(z.astype(np.float64) * mu, axis=-1), d, kappa)


def test_sample_w_distribution_ks_d3():
    # On S^2, w = mu.z has density kappa exp(kappa w) / (2 sinh kappa): F(w) = expm1(kappa (w+1)) / expm1(2 kappa).
    kappa = 2.0
    mu = np.array([0.6, 0.0, 0.8], np.float32)
    z = vmf.VonMisesFisher(np.tile(mu, (5000, 1)), kappa).sample([11, 12]).numpy().astype(np.float64)
    w = z @ mu.astype(np.float64)
    p = stats.kstest(w, lambda t: np.expm1(kappa * (np.clip(t, -1, 1) + 1)) / np.expm1(2 * kappa)).pvalue
    assert p > 1e-3


def test_sample_w_distribution_ks_d32():
    # f(w) ∝ exp(kappa w) (1 - w^2)^((d-3)/2), CDF by numerical integration in float64.
    d, kappa = 32, 40.0
    grid = np.linspace(-1, 1, 200001)
    log_f = kappa * grid + (d - 3) / 2 * np.log(np.clip(1 - grid**2, 1e-300, None))
    f = np.exp(log_f - log_f.max())
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    mu = np.eye(d, dtype=np.float32)[5]
    z = vmf.VonMisesFisher(np.tile(mu, (5000, 1)), kappa).sample([5, 6]).numpy().astype(np.float64)
    p = stats.kstest(z[:, 5], lambda t: np.interp(t, grid, cdf)).pvalue
    assert p > 1e-3


@pytest.mark.parametrize("d,kappa", [(16, 20.0), (256, 1024.0)])
def test_sample_tangent_part_is_isotropic(d, kappa):
    n = 6000
    rng = np.random.default_rng(5)
    mu = random_unit(rng, (d,))
    z = vmf.VonMisesFisher(np.tile(mu.astype(np.float32), (n, 1)), kappa).sample([7, 8]).numpy()
    z = z.astype(np.float64)
    w = z @ mu
    t = z - w[:, None] * mu
    per_dir_var = np.mean(1 - w**2) / (d - 1)
    # Mean of the tangent part: N ||mean t||^2 / per_dir_var ~ chi2(d-1) for an isotropic tangent part.
    stat = n * np.sum(t.mean(0) ** 2) / per_dir_var
    assert stats.chi2(d - 1).cdf(stat) < 1 - 1e-4 and stats.chi2(d - 1).cdf(stat) > 1e-4
    # Variance along e1's tangent direction (a wrong reflection favours it) and a random one.
    e1_t = np.eye(d)[0] - mu[0] * mu
    r_t = rng.standard_normal(d)
    r_t -= (r_t @ mu) * mu
    for direction in (e1_t, r_t):
        direction = direction / np.linalg.norm(direction)
        ratio = np.mean((t @ direction) ** 2) / per_dir_var
        assert abs(ratio - 1) < 5 * np.sqrt(2 / n), ratio


def test_sample_deterministic_and_seed_dependent():
    rng = np.random.default_rng(0)
    mu = random_unit(rng, (8, 64)).astype(np.float32)
    dist = vmf.VonMisesFisher(mu, 100.0)
    a = dist.sample(tf.constant([1, 2])).numpy()
    b = dist.sample(tf.constant([1, 2])).numpy()
    c = dist.sample(tf.constant([1, 3])).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    graph = tf.function(lambda m, s: vmf.VonMisesFisher(m, 100.0).sample(s))
    np.testing.assert_allclose(graph(mu, tf.constant([1, 2])).numpy(), a, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        dist.sample(tf.constant([1, 2, 3]))


def test_w_does_not_depend_on_mean_direction():
    # w = mu.z comes from the rejection sampler alone, so the same seed gives the same w for any mu.
    rng = np.random.default_rng(3)
    mu1 = random_unit(rng, (16, 32)).astype(np.float32)
    mu2 = random_unit(rng, (16, 32)).astype(np.float32)
    z1 = vmf.VonMisesFisher(mu1, 30.0).sample([4, 4]).numpy()
    z2 = vmf.VonMisesFisher(mu2, 30.0).sample([4, 4]).numpy()
    np.testing.assert_allclose(np.sum(z1 * mu1, -1), np.sum(z2 * mu2, -1), atol=2e-6)


def _reflect_np(z, mu):
    u = np.zeros_like(mu)
    u[0] = 1.0
    u = u - mu
    u = u / np.linalg.norm(u)
    return z - 2 * (z @ u) * u


def test_sample_gradient_matches_finite_differences_of_the_reflection():
    d, kappa = 8, 5.0
    rng = np.random.default_rng(11)
    mu = random_unit(rng, (d,))
    c = rng.standard_normal(d)
    mu_var = tf.Variable(mu.astype(np.float32))
    with tf.GradientTape() as tape:
        z = vmf.VonMisesFisher(mu_var, kappa).sample([9, 9])
        f = tf.reduce_sum(tf.constant(c, tf.float32) * z)
    grad = tape.gradient(f, mu_var).numpy()
    # Recover the sample around e1 (the reflection is its own inverse), then differentiate
    # c . normalize(H(mu) z0) in float64 with central differences.
    z0 = _reflect_np(z.numpy().astype(np.float64), mu)

    def f64(m):
        y = _reflect_np(z0, m)
        return c @ (y / np.linalg.norm(y))

    h = 1e-6
    fd = np.array([(f64(mu + h * e) - f64(mu - h * e)) / (2 * h) for e in np.eye(d)])
    assert np.linalg.norm(fd) > 0.1
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-4 * np.linalg.norm(fd))


def test_sample_gradient_finite_for_large_kappa_and_dim():
    rng = np.random.default_rng(12)
    mu = tf.Variable(random_unit(rng, (4, 2048)).astype(np.float32))
    y = tf.constant(random_unit(rng, (4, 2048)).astype(np.float32))
    with tf.GradientTape() as tape:
        z = vmf.VonMisesFisher(mu, 16384.0).sample([1, 2])
        # The C-BYOL compression term: -log b(z|y) with b = vMF(y, kappa_b = 10).
        loss = -tf.reduce_sum(vmf.VonMisesFisher(y, 10.0).log_prob(z))
    g = tape.gradient(loss, mu).numpy()
    assert np.all(np.isfinite(g))
    assert np.linalg.norm(g) > 1.0


def test_sample_under_mirrored_strategy_with_per_replica_seeds():
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest.py must provide two logical CPUs"
    strategy = testing.two_replica_strategy()
    mu = tf.math.l2_normalize(tf.random.stateless_normal([4, 64], [0, 1]), -1)

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.random.experimental.stateless_fold_in(tf.constant([5, 6]), rid)
            dist = vmf.VonMisesFisher(mu, 1024.0)
            z = dist.sample(seed)
            return z, dist.log_prob(z)
        return strategy.run(replica_fn)

    zs, log_probs = step()
    zs = strategy.experimental_local_results(zs)
    log_probs = strategy.experimental_local_results(log_probs)
    assert len(zs) == 2
    for z, lp in zip(zs, log_probs):
        z = z.numpy().astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-5)
        want = 1024.0 * np.sum(z * mu.numpy(), -1) + scipy_log_normalizer(64, 1024.0)
        np.testing.assert_allclose(lp.numpy(), want, rtol=1e-5)
    assert np.abs(zs[0].numpy() - zs[1].numpy()).max() > 1e-3
