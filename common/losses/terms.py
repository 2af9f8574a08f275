"""Loss pieces shared by the four algorithms (SimCLR, C-SimCLR, BYOL, C-BYOL).

Everything here is a pure function of tensors. The only cross-replica state is read through
`common.distribute` (replica id, cross-replica concatenation), so every function works inside
`strategy.run` of any strategy and outside any strategy alike.

Notation: B = local (per-replica) batch, Bex = global batch = num_replicas * B, d = embedding size.
"""
from __future__ import annotations

import tensorflow as tf

from common.training import distribute

# Added to the self-similarity logits so a row never counts itself as a candidate.
LARGE_NUM = 1e9

# Floor of the *squared* norm in `l2_normalize`, as in the BYOL JAX reference (norm floor 1e-6).
L2_EPS = 1e-12


def as_float(x, name: str = "x") -> tf.Tensor:
    """`x` as a float tensor; half precision is promoted to float32 so the losses do not underflow."""
    x = tf.convert_to_tensor(x, name=name)
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype.name}; cast it first.")
    if x.dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    return x


def scalar(value, dtype) -> tf.Tensor:
    """`value` (Python number or tensor) as a tensor of `dtype`.

    Python numbers become constants of `dtype` directly: tf.cast would round them through float32
    first, which float64 callers would notice.
    """
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def check_rank(x: tf.Tensor, rank: int, name: str) -> None:
    """Raises ValueError when the static rank of `x` is known and is not `rank`."""
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(
            f"{name} must have rank {rank}, got shape {x.shape}; "
            f"pass a [batch, dim] tensor (reshape or squeeze it first).")


def check_same_shape(tensors: dict) -> None:
    """Raises ValueError when the static shapes of the named tensors are known and disagree."""
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if not t0.shape.is_compatible_with(t.shape):
            raise ValueError(
                f"{name} has shape {t.shape} but {name0} has shape {t0.shape}; "
                "all of them must be [B, d] with the same B and d.")


def as_embeddings(**tensors) -> list:
    """Converts named [B, d] tensors with `as_float`, checks rank 2 and equal shapes; returns them in order."""
    out = {name: as_float(t, name) for name, t in tensors.items()}
    for name, t in out.items():
        check_rank(t, 2, name)
    check_same_shape(out)
    return list(out.values())


def l2_normalize(x, axis: int = -1, eps: float = L2_EPS) -> tf.Tensor:
    """x / max(||x||, sqrt(eps)) along `axis`; any shape in, same shape out.

    Equation: l2n(x) = x * rsqrt(max(sum(x^2, axis), eps)). The floor is on the squared norm, as in
    the BYOL reference, so a zero vector maps to zero instead of NaN.
    """
    x = as_float(x)
    sq = tf.reduce_sum(tf.square(x), axis=axis, keepdims=True)
    return x * tf.math.rsqrt(tf.maximum(sq, scalar(eps, x.dtype)))


def regression_loss(prediction, target) -> tf.Tensor:
    """Per-example BYOL regression loss, [B, d] x [B, d] -> [B].

    Equation: ||l2n(p) - l2n(t)||^2 = 2 - 2 cos(p, t) (exactly 1 when one side is zero). Gradients
    flow into both arguments; callers stop the target's gradient themselves.
    """
    p = l2_normalize(prediction)
    t = l2_normalize(target)
    return tf.reduce_sum(tf.square(p - t), axis=-1)


def symmetric_regression_loss(p1, p2, t1, t2) -> tf.Tensor:
    """Both BYOL directions summed per example, four [B, d] tensors -> [B].

    Equation: reg(p1, sg(t2)) + reg(p2, sg(t1)), where p_k is the online prediction of view k, t_k the
    target projection of view k and sg the stop-gradient. The two directions are summed, never
    averaged (docs/DECISIONS.md 8), so the value lies in [0, 8].
    """
    return (regression_loss(p1, tf.stop_gradient(t2))
            + regression_loss(p2, tf.stop_gradient(t1)))


def global_labels(local_batch_size) -> tf.Tensor:
    """Index of each local row in the cross-replica concatenation: replica_id * B + arange(B), [B] int32."""
    b = tf.cast(local_batch_size, tf.int32)
    return distribute.replica_id() * b + tf.range(b, dtype=tf.int32)


def mask_self(logits, labels) -> tf.Tensor:
    """Removes each row's own column: logits [B, Bex] - LARGE_NUM * one_hot(labels, Bex), [B, Bex]."""
    logits = tf.convert_to_tensor(logits)
    mask = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
    return logits - scalar(LARGE_NUM, logits.dtype) * mask


def info_nce(logits_ab, logits_aa, labels):
    """Cross-entropy of the positive among all global candidates.

    Args:
      logits_ab: [B, Bex] scores of every global other-view candidate; the positive of row i is
        column labels[i].
      logits_aa: [B, Bex] scores of every global same-view candidate with the self column already
        masked (`mask_self`), or None to use the other view only.
      labels: [B] int, the positives' columns (`global_labels`).

    Returns:
      cross_entropy: [B], -log softmax(logits)[labels], logits = [logits_ab, logits_aa] ([B, 2Bex]).
      logits: [B, 2Bex] (or [B, Bex] without logits_aa), the scores the softmax ran over.
      mi_upper_bound: scalar log(2Bex - 1) (or log Bex), the log of the number of real candidates;
        mi_upper_bound - cross_entropy is the InfoNCE lower bound on the mutual information.
    """
    logits_ab = tf.convert_to_tensor(logits_ab)
    num_candidates = tf.cast(tf.shape(logits_ab)[1], logits_ab.dtype)
    if logits_aa is None:
        logits = logits_ab
    else:
        logits = tf.concat([logits_ab, logits_aa], axis=1)
        num_candidates = 2.0 * num_candidates - 1.0
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return cross_entropy, logits, tf.math.log(num_candidates)


def contrast_accuracy(logits, labels) -> tf.Tensor:
    """Fraction of rows whose highest-scoring column is the positive; logits [B, N], labels [B] -> scalar."""
    pred = tf.argmax(logits, axis=1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(pred, tf.cast(labels, tf.int32)), logits.dtype))


def contrast_entropy(logits) -> tf.Tensor:
    """Mean entropy of softmax(logits) over rows, [B, N] -> scalar: mean_i -sum_j p_ij log p_ij.

    Masked columns have p = 0 exactly and contribute nothing.
    """
    log_p = tf.nn.log_softmax(logits, axis=1)
    return tf.reduce_mean(-tf.reduce_sum(tf.exp(log_p) * log_p, axis=1))


def check_positive(value, name: str) -> None:
    """Raises ValueError for a Python number <= 0 (tensors are not checked: they may be schedules)."""
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
