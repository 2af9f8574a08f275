"""The CEB terms on the unit sphere: von Mises-Fisher log-densities and the residual information.

Pure functions of tensors shared by every algorithm with a Conditional Entropy Bottleneck: the
forward encoder e(z|x) and the backward encoder b(z|y) are vMF distributions, and the residual
information log e(z|x) - log b(z|y) is the term beta weights.
"""
from __future__ import annotations

import tensorflow as tf

from common.ceb import vmf
from common.losses.terms import as_float, scalar


def vmf_log_prob_pairwise(z, mean_directions, kappa) -> tf.Tensor:
    """log vMF(z_i; mu_j, kappa) for every pair, z [B, d] x mean_directions [N, d] -> [B, N].

    Equation: kappa * z_i . mu_j + log C_d(kappa), the von Mises-Fisher log-density with one shared
    concentration (the same as common.ceb.vmf.VonMisesFisher(mu[None], kappa).log_prob(z[:, None])).
    Written as a matrix product so the [B, N, d] tensor of the broadcast form is never built. The
    mean directions must be unit vectors.
    """
    z = as_float(z, "z")
    mu = tf.cast(mean_directions, z.dtype)
    return scalar(kappa, z.dtype) * tf.matmul(z, mu, transpose_b=True) + vmf_log_normalizer(z, kappa)


def vmf_log_prob(z, mean_direction, kappa) -> tf.Tensor:
    """Row-wise log vMF(z_i; mu_i, kappa) = kappa * z_i . mu_i + log C_d(kappa), [B, d] x [B, d] -> [B].

    The same as common.ceb.vmf.VonMisesFisher(mu, kappa).log_prob(z), but in z's dtype (vmf works in
    float32), so float64 callers keep float64 everywhere except the float32-rounded constant log C_d.
    """
    z = as_float(z, "z")
    mu = tf.cast(mean_direction, z.dtype)
    return (scalar(kappa, z.dtype) * tf.reduce_sum(z * mu, axis=-1)
            + vmf_log_normalizer(z, kappa))


def vmf_log_normalizer(z, kappa) -> tf.Tensor:
    """log C_d(kappa) (common.ceb.vmf.log_normalizer, float32-rounded) in z's dtype; d = z's static last dim."""
    dim = z.shape[-1]
    if dim is None:
        raise ValueError(
            f"the embedding dimension must be known statically, got shape {z.shape}; "
            "set it with tensor.set_shape or an input signature.")
    return tf.cast(vmf.log_normalizer(int(dim), kappa), z.dtype)


def residual_information(z, e_mean, kappa_e, b_mean, kappa_b):
    """The CEB residual-information term per example, four [B, d] inputs -> three [B] tensors.

    Equation: i = log e(z|x) - log b(z|y), with the forward encoder e(z|x) = vMF(e_mean, kappa_e) and
    the backward encoder b(z|y) = vMF(b_mean, kappa_b). Both means must be unit vectors.

    Returns:
      (i, log_e, log_b), each [B].
    """
    log_e = vmf_log_prob(z, e_mean, kappa_e)
    log_b = vmf_log_prob(z, b_mean, kappa_b)
    return log_e - log_b, log_e, log_b
