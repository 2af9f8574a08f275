"""BYOL's regression loss between online predictions and target projections."""
from __future__ import annotations

import tensorflow as tf

from common.losses import terms as common_losses

# Per-example 2 - 2 cos(p, t), [B, d] x [B, d] -> [B]; see common.losses.terms.regression_loss.
regression_loss = common_losses.regression_loss


def byol_loss(p1, p2, t1, t2, weight=1.0):
    """The symmetric BYOL loss of one replica.

    Args:
      p1, p2: [B, d] online predictions q(g(f(v_k))) of view 1 and view 2.
      t1, t2: [B, d] target projections g'(f'(v_k)) of view 1 and view 2; their gradient is
        stopped here.
      weight: scalar multiplier (the paper configs use 5 for 300 epochs, 2 for 1000). Since
        w ||a - b||^2 = 2w - 2w a.b, it is half the concentration of an equivalent vMF decoder.

    Returns:
      loss: scalar weight * mean_i[reg(p1_i, sg(t2_i)) + reg(p2_i, sg(t1_i))], reg = 2 - 2 cos.
        The directions are summed, not averaged; the mean is over the local batch (the trainer
        averages over replicas).
      metrics: {"byol_loss": the same mean without the weight}, i.e. the JAX reference's
        `repr_loss` (both directions, range [0, 8]). The original TF release logged direction 1
        only (range [0, 4]), so its curves are about half of ours.
    """
    p1, p2, t1, t2 = common_losses.as_embeddings(p1=p1, p2=p2, t1=t1, t2=t2)
    unweighted = tf.reduce_mean(common_losses.symmetric_regression_loss(p1, p2, t1, t2))
    return common_losses.scalar(weight, unweighted.dtype) * unweighted, {"byol_loss": unweighted}
