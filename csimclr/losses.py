"""C-SimCLR's contrastive CEB loss: von Mises-Fisher encoders on the unit-normalised projections."""
from __future__ import annotations

import tensorflow as tf

from common.training import distribute
from common.ceb import terms as ceb_terms
from common.losses import terms as common_losses
from common.ceb import vmf


def direction_seeds(seed):
    """The two stateless seeds of one replica's samples, [2] int -> ([2], [2]) for X->Y and Y->X.

    Equation: (seed_xy, seed_yx) = stateless_split(stateless_fold_in(seed, replica_id), 2). Folding in
    the replica id gives every replica its own draws from one user seed.
    """
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"seed must be an integer tensor of shape [2], got dtype {seed.dtype.name}.")
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"seed must have shape [2] (a stateless RNG seed), got {seed.shape}.")
    own = tf.random.experimental.stateless_fold_in(seed, distribute.replica_id())
    seeds = tf.random.experimental.stateless_split(own, num=2)
    return seeds[0], seeds[1]


def contrastive_ceb_loss(hidden, kappa_e=1024.0, kappa_b=10.0, beta=1.0, sampling: bool = True,
                         double_batch_trick: bool = True, bidirectional: bool = True,
                         strategy=None, seed=None):
    """Contrastive CEB with vMF forward and backward encoders, negatives from every replica.

    With r = l2n(hidden) split into r_x (view 1) and r_y (view 2), [B, d] each, and *_large their
    cross-replica concatenations [Bex, d]:
      X->Y: z_x ~ e(z|x) = vMF(r_x, kappa_e) (z_x = r_x when sampling=False);
            i_xzx_y = log e(z_x|x) - log b(z_x|y), b(z|y) = vMF(r_y, kappa_b);
            logits_ab[i, j] = log vMF(z_x_i; r_y_large_j, kappa_b)                   [B, Bex];
            logits_aa[i, j] = log vMF(z_x_i; r_x_large_j, kappa_b) - 1e9 * [j = self] [B, Bex];
            i_y_zx = log(2Bex - 1) - CE([logits_ab, logits_aa], label) (log Bex, ab only, without
            the double batch), label = replica_id * B + i;
            loss_a = beta * i_xzx_y - i_y_zx.
      Y->X: the same with x and y swapped: z_y ~ vMF(r_y, kappa_e), scored under vMF(r_x, kappa_b)
            for the residual information and vMF(r_x_large, kappa_b) / masked vMF(r_y_large, kappa_b)
            for the contrast; loss_b = beta * i_yzy_x - i_x_zy.
    Since log vMF(z; mu, kappa_b) = kappa_b z.mu + const, the contrast is NT-Xent at temperature
    1/kappa_b on z, so beta=0, sampling=False, kappa_b=1/T gives simclr's loss - 2 log(2Bex - 1).

    Args:
      hidden: [2B, d] projection output, the B view-1 rows first, then the B view-2 rows.
      kappa_e, kappa_b: concentrations of e(z|x) and b(z|y).
      beta: weight of the residual information (Python number or scalar tensor, for schedules).
      sampling: draw z from e(z|x); False uses its mean direction (deterministic).
      double_batch_trick: also contrast against the other same-view rows.
      bidirectional: add the Y->X direction.
      strategy: accepted for API compatibility and not used; the replica context decides which rows
        are negatives (call inside `strategy.run`).
      seed: int tensor [2], the stateless seed of the samples; replica r uses
        `direction_seeds(seed)` (the user seed with r folded in). Required when sampling (None
        raises ValueError, so that a run is a function of its seed); ignored when sampling=False,
        where None is the natural value.

    Returns:
      loss: scalar mean over the B local rows of loss_a (+ loss_b); directions summed.
      metrics: dict of scalar tensors (means over local rows): i_xzx_y, i_y_zx,
        h_e_zx_x = -log e(z_x|x), h_b_zx_y = -log b(z_x|y), and with bidirectional i_yzy_x, i_x_zy;
        contrast_acc, the top-1 accuracy of the X->Y scores over all candidates.

    Raises:
      ValueError: sampling without a seed, an odd number of rows, non-positive kappas, or a seed
        not of shape [2].
    """
    del strategy
    hidden = common_losses.as_float(hidden, "hidden")
    common_losses.check_rank(hidden, 2, "hidden")
    common_losses.check_positive(kappa_e, "kappa_e")
    common_losses.check_positive(kappa_b, "kappa_b")
    if hidden.shape[0] is not None and hidden.shape[0] % 2:
        raise ValueError(
            f"hidden has {hidden.shape[0]} rows; it must hold both views stacked on the batch axis "
            "(view-1 rows first), so its first dimension must be even.")
    beta = common_losses.scalar(beta, hidden.dtype)

    r_x, r_y = tf.split(common_losses.l2_normalize(hidden), 2, axis=0)
    r_x_large = distribute.cross_replica_concat(r_x)
    r_y_large = distribute.cross_replica_concat(r_y)
    labels = common_losses.global_labels(tf.shape(r_x)[0])
    seed_xy = seed_yx = None
    if sampling:
        if seed is None:
            raise ValueError(
                "contrastive_ceb_loss(sampling=True) needs a stateless seed (int [2]) for the vMF "
                "samples z ~ e(z|x); pass seed=..., or sampling=False to use the mean direction.")
        seed_xy, seed_yx = direction_seeds(seed)

    def direction(r_own, r_other, own_large, other_large, dir_seed):
        z = r_own
        if sampling:
            # vmf samples in float32; the cast keeps float64 callers in float64 afterwards.
            z = tf.cast(vmf.VonMisesFisher(r_own, kappa_e).sample(dir_seed), r_own.dtype)
        residual, log_e, log_b = ceb_terms.residual_information(
            z, r_own, kappa_e, r_other, kappa_b)
        logits_ab = ceb_terms.vmf_log_prob_pairwise(z, other_large, kappa_b)
        logits_aa = None
        if double_batch_trick:
            logits_aa = common_losses.mask_self(
                ceb_terms.vmf_log_prob_pairwise(z, own_large, kappa_b), labels)
        ce, logits, bound = common_losses.info_nce(logits_ab, logits_aa, labels)
        return residual, bound - ce, log_e, log_b, logits

    i_xzx_y, i_y_zx, log_e, log_b, logits_a = direction(r_x, r_y, r_x_large, r_y_large, seed_xy)
    per_example = beta * i_xzx_y - i_y_zx
    metrics = {
        "i_xzx_y": tf.reduce_mean(i_xzx_y),
        "i_y_zx": tf.reduce_mean(i_y_zx),
        "h_e_zx_x": -tf.reduce_mean(log_e),
        "h_b_zx_y": -tf.reduce_mean(log_b),
    }
    if bidirectional:
        i_yzy_x, i_x_zy, _, _, _ = direction(r_y, r_x, r_y_large, r_x_large, seed_yx)
        per_example += beta * i_yzy_x - i_x_zy
        metrics["i_yzy_x"] = tf.reduce_mean(i_yzy_x)
        metrics["i_x_zy"] = tf.reduce_mean(i_x_zy)
    metrics["contrast_acc"] = common_losses.contrast_accuracy(logits_a, labels)
    return tf.reduce_mean(per_example), metrics
