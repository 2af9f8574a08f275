"""The von Mises-Fisher distribution on the unit sphere S^{d-1} in R^d, without TensorFlow Probability.

Density, for a unit mean direction mu and concentration kappa >= 0:

    vMF(z; mu, kappa) = C_d(kappa) exp(kappa mu.z),
    log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log 2pi - log I_{d/2-1}(kappa),

with I_v the modified Bessel function of the first kind. C-SimCLR and C-BYOL use it for the forward
encoder e(z|x) = vMF(mu_x, kappa_e) and the backward encoder b(z|y) = vMF(mu_y, kappa_b), at d = 256
and kappa up to 16384, where I_v over- and under-flows every floating-point type. The normaliser is
therefore evaluated in log space in float64: log I_v(x) = v log(x/2) + log sum_k exp(t_k), with
t_k = 2k log(x/2) - lgamma(k+1) - lgamma(k+v+1), summed by log-sum-exp over a window of k around the
largest term. Everything else is float32.

Sampling follows Wood (1994): the component w = mu.z is drawn by rejection (it does not depend on
mu, so it carries no gradient), the rest of z is a uniformly random direction orthogonal to e1, and a
Householder reflection maps e1 to mu. Gradients reach `mean_direction` through that reflection.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

_LOG_2PI = math.log(2.0 * math.pi)
# Wood's envelope accepts at least ~64% of the proposals for every (d, kappa) (the worst case is d = 2
# at large kappa), so 64 rounds leave an entry unaccepted with probability below 1e-28.
_MAX_REJECTION_ROUNDS = 64


def _log_series_sum(v: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """log I_v(x) - v log(x/2) for float64 tensors v, x >= 0 of one shape [...].

    Computes log sum_k exp(2k log(x/2) - lgamma(k+1) - lgamma(k+v+1)). The terms are log-concave in k,
    peak near k* = (sqrt(v^2 + x^2) - v - 2)/2 with a spread below sqrt(k*+1), so a window of
    +-(12 sqrt(k*+1) + 30) terms around the peak holds every term within exp(-70) of the largest.
    """
    # k* written without the cancellation of sqrt(v^2+x^2) - v for x << v.
    k_peak = tf.maximum(
        (tf.square(x) - 4.0 * (v + 1.0)) / (2.0 * (tf.sqrt(tf.square(v) + tf.square(x)) + v + 2.0)),
        0.0)
    half_width = tf.math.ceil(12.0 * tf.sqrt(k_peak + 1.0)) + 30.0
    k_start = tf.maximum(tf.floor(k_peak) - half_width, 0.0)
    n_terms = tf.cast(2.0 * tf.reduce_max(half_width), tf.int32) + 1
    k = k_start[..., tf.newaxis] + tf.cast(tf.range(n_terms), tf.float64)
    log_half_x = tf.math.log(x / 2.0)[..., tf.newaxis]
    # The k = 0 term is exactly 1 even at x = 0, where 0 * log 0 would give NaN.
    power = tf.where(k > 0.0, 2.0 * k * log_half_x, tf.zeros_like(k))
    terms = power - tf.math.lgamma(k + 1.0) - tf.math.lgamma(k + v[..., tf.newaxis] + 1.0)
    return tf.reduce_logsumexp(terms, axis=-1)


def _log_normalizer_f64(dim: int, kappa: tf.Tensor) -> tf.Tensor:
    """log C_d(kappa) in float64: the v log kappa term cancels against log I_v's v log(kappa/2)."""
    v = tf.fill(tf.shape(kappa), tf.constant(dim / 2.0 - 1.0, tf.float64))
    return (dim / 2.0 - 1.0) * math.log(2.0) - (dim / 2.0) * _LOG_2PI - _log_series_sum(v, kappa)


def _mean_resultant_length_f64(dim: int, kappa: tf.Tensor) -> tf.Tensor:
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = (kappa/2) exp(S_{d/2} - S_{d/2-1}), float64."""
    v = tf.fill(tf.shape(kappa), tf.constant(dim / 2.0 - 1.0, tf.float64))
    return kappa / 2.0 * tf.exp(_log_series_sum(v + 1.0, kappa) - _log_series_sum(v, kappa))


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"dim must be an integer >= 2 (the sphere S^(d-1) lives in R^d), got {dim!r}.")
    return int(dim)


def _evaluate_f64(fn, dim: int, kappa) -> tf.Tensor:
    """Runs the float64 function `fn(dim, kappa64)` and returns float32 of kappa's shape.

    A kappa known at trace time (a Python number, a constant, an eager tensor) is evaluated eagerly
    once and enters the graph as a float32 constant, so no float64 op reaches accelerators that lack
    float64 (TPU). A kappa known only at run time is computed in-graph in float64.
    """
    static = None if isinstance(kappa, tf.Variable) else tf.get_static_value(kappa)
    if static is not None:
        with tf.init_scope():
            if tf.executing_eagerly():
                value = fn(dim, tf.constant(np.asarray(static, np.float64))).numpy()
                return tf.constant(value.astype(np.float32))
    kappa64 = tf.cast(tf.convert_to_tensor(kappa), tf.float64)
    return tf.cast(fn(dim, kappa64), tf.float32)


def log_normalizer(dim: int, kappa) -> tf.Tensor:
    """log C_d(kappa) = (d/2-1) log kappa - (d/2) log 2pi - log I_{d/2-1}(kappa).

    Args:
      dim: d, the ambient dimension (an int >= 2).
      kappa: concentration >= 0, any shape [...] (a number or a tensor). kappa = 0 gives the uniform
        density, -log |S^{d-1}|.
    Returns:
      float32 [...], computed in float64 (accurate to float32 rounding for d <= 2048, kappa <= 16384
      and well beyond).
    """
    return _evaluate_f64(_log_normalizer_f64, _check_dim(dim), kappa)


def mean_resultant_length(dim: int, kappa) -> tf.Tensor:
    """A_d(kappa) = E[mu.z] = I_{d/2}(kappa) / I_{d/2-1}(kappa), float32 [...] of kappa's shape [...]."""
    return _evaluate_f64(_mean_resultant_length_f64, _check_dim(dim), kappa)


def _check_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            f"seed must be an integer tensor of shape [2] (a stateless seed), got dtype {seed.dtype.name} "
            f"and shape {seed.shape}; derive one with tf.random.experimental.stateless_split.")
    return seed


def _sample_one_minus_w(kappa: tf.Tensor, dim: int, seed: tf.Tensor) -> tf.Tensor:
    """1 - w for w = mu.z ~ f(w) ∝ exp(kappa w) (1-w^2)^((d-3)/2) (Wood 1994), float32 of kappa's shape.

    Wood's proposal W = (1-(1+b)Z)/(1-(1-b)Z), Z ~ Beta((d-1)/2, (d-1)/2), is accepted when
    kappa W + (d-1) log(1 - x0 W) - c >= log U, with b = (d-1)/(2 kappa + sqrt(4 kappa^2 + (d-1)^2)),
    x0 = (1-b)/(1+b) and c = kappa x0 + (d-1) log(1 - x0^2). For kappa = 16384 both sides are ~1e4
    and 1-W ~ 1e-2, so everything is rewritten in y = 2Z-1 (Z = (1+y)/2) and D = (1+b) - (1-b) y:
        1 - W = 2b(1+y)/D,   x0 - W = 4by/((1+b)D),
        log-acceptance = -kappa (x0 - W) + (d-1) log1p((1-b) y / D),
    which has no cancellation. y is the first coordinate of a uniform direction in R^d (then
    (1+y)/2 ~ Beta((d-1)/2, (d-1)/2)), drawn from normals because XLA has no gamma sampler.
    """
    m = float(dim - 1)
    kappa = tf.stop_gradient(kappa)
    b = m / (2.0 * kappa + tf.sqrt(4.0 * tf.square(kappa) + m * m))
    shape = tf.shape(kappa)

    def body(i, done, one_minus_w):
        round_seed = tf.random.experimental.stateless_fold_in(seed, i)
        seeds = tf.random.experimental.stateless_split(round_seed, num=2)
        x = tf.random.stateless_normal(tf.concat([shape, [dim]], 0), seeds[0])
        y = x[..., 0] * tf.math.rsqrt(tf.reduce_sum(tf.square(x), axis=-1))
        den = (1.0 + b) - (1.0 - b) * y
        proposal = 2.0 * b * (1.0 + y) / den
        x0_minus_w = 4.0 * b * y / ((1.0 + b) * den)
        log_accept = -kappa * x0_minus_w + m * tf.math.log1p((1.0 - b) * y / den)
        u = tf.random.stateless_uniform(shape, seeds[1])
        # Entries still waiting always hold the latest proposal, so a (practically impossible)
        # run out of rounds still returns a point of the sphere.
        one_minus_w = tf.where(done, one_minus_w, proposal)
        done = done | (log_accept >= tf.math.log(u))
        return i + 1, done, one_minus_w

    def cond(i, done, one_minus_w):
        del one_minus_w
        return tf.logical_and(i < _MAX_REJECTION_ROUNDS, tf.logical_not(tf.reduce_all(done)))

    _, _, one_minus_w = tf.while_loop(
        cond, body,
        (tf.constant(0, tf.int32), tf.zeros(shape, tf.bool), tf.ones(shape, tf.float32)))
    return tf.stop_gradient(one_minus_w)


def _reflect_e1_to(z0: tf.Tensor, mu: tf.Tensor) -> tf.Tensor:
    """Householder reflection H z0 = z0 - 2 (u.z0) u, u = (e1 - mu)/||e1 - mu||, so H e1 = mu. [..., d].

    At mu = e1 the normalisation leaves u = 0 and H is the identity, the right limit.
    """
    e1_minus_mu = tf.concat([1.0 - mu[..., :1], -mu[..., 1:]], axis=-1)
    u = tf.math.l2_normalize(e1_minus_mu, axis=-1)
    return z0 - 2.0 * tf.reduce_sum(z0 * u, axis=-1, keepdims=True) * u


class VonMisesFisher:
    """vMF(mu, kappa) over the last axis: a batch [...] of distributions on S^{d-1}.

    Args:
      mean_direction: mu, float [..., d] unit vectors (d static, >= 2). Gradients flow to it through
        `log_prob`, `mean` and `sample`.
      concentration: kappa >= 0, a number or float [...] broadcastable against mu's batch shape.
      validate_args: check at run time that mu has unit norm and kappa >= 0.
    """

    def __init__(self, mean_direction, concentration, validate_args: bool = False):
        mu = tf.convert_to_tensor(mean_direction)
        if not mu.dtype.is_floating:
            raise TypeError(f"mean_direction must be a float tensor, got {mu.dtype.name}.")
        self._mu = tf.cast(mu, tf.float32)
        dim = self._mu.shape[-1] if self._mu.shape.rank else None
        if dim is None or dim < 2:
            raise ValueError(
                "mean_direction must have a static last dimension d >= 2 (shape [..., d]), got shape "
                f"{self._mu.shape}.")
        self._dim = int(dim)
        self._kappa = tf.cast(tf.convert_to_tensor(concentration), tf.float32)
        if validate_args:
            norms = tf.norm(self._mu, axis=-1)
            checks = [
                tf.debugging.assert_near(
                    norms, tf.ones_like(norms), atol=1e-4,
                    message="mean_direction must be unit vectors: pass tf.math.l2_normalize(h, -1)."),
                tf.debugging.assert_non_negative(
                    self._kappa, message="concentration (kappa) must be >= 0."),
            ]
            with tf.control_dependencies(checks):
                self._mu = tf.identity(self._mu)
                self._kappa = tf.identity(self._kappa)
        self._static_batch_shape = tf.broadcast_static_shape(self._mu.shape[:-1], self._kappa.shape)

    @property
    def mean_direction(self) -> tf.Tensor:
        """mu, float32 [..., d]."""
        return self._mu

    @property
    def concentration(self) -> tf.Tensor:
        """kappa, float32 of the shape it was given."""
        return self._kappa

    @property
    def dim(self) -> int:
        """d, the ambient dimension."""
        return self._dim

    def _batch_shape(self) -> tf.Tensor:
        return tf.broadcast_dynamic_shape(tf.shape(self._mu)[:-1], tf.shape(self._kappa))

    def log_normalizer(self) -> tf.Tensor:
        """log C_d(kappa), float32 of kappa's shape."""
        return log_normalizer(self._dim, self._kappa)

    def log_prob(self, x) -> tf.Tensor:
        """log vMF(x) = kappa mu.x + log C_d(kappa) for x [..., d]; the result broadcasts like TFP.

        For example mu [1, N, d] (or [N, d]) and x [B, 1, d] give [B, N], the logits of a batch of
        samples under every distribution of the batch.
        """
        x = tf.cast(tf.convert_to_tensor(x), tf.float32)
        if x.shape.rank is not None and x.shape[-1] is not None and x.shape[-1] != self._dim:
            raise ValueError(f"log_prob expects points of R^{self._dim} (shape [..., {self._dim}]), "
                             f"got shape {x.shape}.")
        return self._kappa * tf.reduce_sum(self._mu * x, axis=-1) + self.log_normalizer()

    def mean(self) -> tf.Tensor:
        """E[z] = A_d(kappa) mu, float32 [..., d] (batch shape broadcast with kappa's)."""
        return mean_resultant_length(self._dim, self._kappa)[..., tf.newaxis] * self._mu

    def entropy(self) -> tf.Tensor:
        """H = -E[log vMF(z)] = -kappa A_d(kappa) - log C_d(kappa), float32 of the batch shape [...]."""
        value = -self._kappa * mean_resultant_length(self._dim, self._kappa) - self.log_normalizer()
        return tf.broadcast_to(value, self._batch_shape())

    def sample(self, seed) -> tf.Tensor:
        """One draw z ~ vMF(mu, kappa) per distribution: float32 [..., d] with ||z|| = 1.

        z = normalize(H [w, sqrt(1-w^2) v]) with w from Wood's rejection sampler (no gradient), v a
        uniform unit vector of R^{d-1}, and H the reflection taking e1 to mu, through which the
        gradient reaches mu. Stateless: the same `seed` (int [2]) gives the same sample, also inside
        tf.function and in every replica of a tf.distribute strategy (pass each replica its own seed).
        """
        seed = _check_seed(seed)
        seed_w, seed_v = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        batch_shape = self._batch_shape()
        mu = tf.broadcast_to(self._mu, tf.concat([batch_shape, [self._dim]], 0))
        kappa = tf.broadcast_to(self._kappa, batch_shape)
        one_minus_w = _sample_one_minus_w(kappa, self._dim, seed_w)
        # 1 - w^2 = (1-w)(1+w) keeps its relative precision when w is close to 1 (large kappa).
        # Rounding can push 1-w a hair outside [0, 2] when y is +-1 (small d); clip before the sqrt.
        one_minus_w = tf.clip_by_value(one_minus_w, 0.0, 2.0)
        radius = tf.sqrt(one_minus_w * (2.0 - one_minus_w))
        v = tf.math.l2_normalize(
            tf.random.stateless_normal(tf.concat([batch_shape, [self._dim - 1]], 0), seed_v), axis=-1)
        z0 = tf.concat([(1.0 - one_minus_w)[..., tf.newaxis], radius[..., tf.newaxis] * v], axis=-1)
        z = tf.math.l2_normalize(_reflect_e1_to(z0, mu), axis=-1)
        z.set_shape(self._static_batch_shape.concatenate([self._dim]))
        return z
