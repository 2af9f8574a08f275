"""SimCLR's NT-Xent contrastive loss over the global batch."""
from __future__ import annotations

import tensorflow as tf

from common.training import distribute
from common.losses import terms as common_losses


def contrastive_loss(hidden, temperature=0.1, double_batch_trick: bool = True,
                     bidirectional: bool = True, strategy=None):
    """NT-Xent of the projection outputs of both views, negatives from every replica.

    Args:
      hidden: [2B, d] projection-head output of this replica, the B view-1 rows first, then the B
        view-2 rows of the same images in the same order.
      temperature: softmax temperature T (Python float or scalar tensor).
      double_batch_trick: also use the other same-view rows as negatives (2Bex - 1 candidates per
        row instead of Bex).
      bidirectional: add the view-2 -> view-1 direction.
      strategy: accepted for API compatibility and not used. The cross-replica behaviour comes from
        the replica context: call this inside `strategy.run` so every replica contributes its
        rows as negatives; outside any replica context it sees only the batch it is given.

    Returns:
      loss: scalar, mean over the B local rows of CE_a (+ CE_b), where with h = l2n(hidden),
        h1, h2 = the two halves and h*_large their cross-replica concatenations [Bex, d],
          logits_ab = h1 h2_large^T / T, logits_aa = h1 h1_large^T / T - 1e9 * self-mask,
          CE_a = -log softmax([logits_ab, logits_aa])[replica_id * B + i],
        and CE_b the same with the views swapped. The directions are summed, not averaged. The
        trainer divides by the number of replicas and sums gradients over replicas.
      metrics: dict of scalar tensors:
        i_y_zx, i_x_zy: mean of log(2Bex - 1) - CE per direction (log Bex without the double batch),
          the InfoNCE bound on I(view; representation); i_x_zy only when bidirectional.
        contrast_acc: top-1 accuracy of the direction-a scores over all candidates.
        contrast_entropy: mean entropy of the direction-a softmax.
    """
    del strategy
    hidden = common_losses.as_float(hidden, "hidden")
    common_losses.check_rank(hidden, 2, "hidden")
    common_losses.check_positive(temperature, "temperature")
    if hidden.shape[0] is not None and hidden.shape[0] % 2:
        raise ValueError(
            f"hidden has {hidden.shape[0]} rows; it must hold both views stacked on the batch axis "
            "(view-1 rows first), so its first dimension must be even.")
    inv_t = 1.0 / common_losses.scalar(temperature, hidden.dtype)

    h1, h2 = tf.split(common_losses.l2_normalize(hidden), 2, axis=0)
    h1_large = distribute.cross_replica_concat(h1)
    h2_large = distribute.cross_replica_concat(h2)
    labels = common_losses.global_labels(tf.shape(h1)[0])

    def direction(anchor, same_large, other_large):
        logits_ab = tf.matmul(anchor, other_large, transpose_b=True) * inv_t
        logits_aa = None
        if double_batch_trick:
            logits_aa = common_losses.mask_self(
                tf.matmul(anchor, same_large, transpose_b=True) * inv_t, labels)
        return common_losses.info_nce(logits_ab, logits_aa, labels)

    ce_a, logits_a, bound = direction(h1, h1_large, h2_large)
    per_example = ce_a
    metrics = {"i_y_zx": bound - tf.reduce_mean(ce_a)}
    if bidirectional:
        ce_b, _, _ = direction(h2, h2_large, h1_large)
        per_example += ce_b
        metrics["i_x_zy"] = bound - tf.reduce_mean(ce_b)
    metrics["contrast_acc"] = common_losses.contrast_accuracy(logits_a, labels)
    metrics["contrast_entropy"] = common_losses.contrast_entropy(logits_a)
    return tf.reduce_mean(per_example), metrics
