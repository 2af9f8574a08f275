"""C-BYOL's loss: BYOL's regression plus beta times the CEB residual information."""
from __future__ import annotations

import tensorflow as tf

from common.ceb import terms as ceb_terms
from common.losses import terms as common_losses

# b(z1|y) is built from the target's view of view 1 (the original release; docs/DECISIONS.md 3).
SAME_VIEW = "same"
# b(z1|y) is built from the target's view of view 2, the other view, as in CEB's b(z|y).
OTHER_VIEW = "other"
BACKWARD_VIEWS = (SAME_VIEW, OTHER_VIEW)


def byol_ceb_loss(p1, p2, t1, t2, z1, z2, mu1, mu2, b_mean1, b_mean2,
                  kappa_e=16384.0, kappa_b=10.0, beta=1.0, byol_loss_weight=1.0,
                  backward_view: str = SAME_VIEW):
    """The C-BYOL loss of one replica.

    Args (every tensor [B, d]; index k is the view the online network saw):
      p1, p2: online predictions of view 1 and 2 (with the stochastic predictor, the sample z_k itself).
      t1, t2: target projections of view 1 and 2, the regression targets; gradient stopped here.
      z1, z2: samples of the forward encoder e(z|x_k) = vMF(mu_k, kappa_e) (from the stochastic
        predictor; the gradient to mu_k through the sample is the caller's).
      mu1, mu2: the forward encoder's mean directions (l2-normalised here, a no-op on unit vectors).
      b_mean1, b_mean2: outputs of the trainable target projector for view 1 and 2; the backward
        encoder b(z|y) = vMF(l2n(b_mean), kappa_b). Gradients flow into them.
      kappa_e, kappa_b: concentrations of e and b (scalars).
      beta: weight of the residual information (Python number or scalar tensor, for schedules).
      byol_loss_weight: weight w of the regression term (half the vMF decoder concentration).
      backward_view: which target view builds b for each sample:
        "same" (default, the original release): z1 under vMF(l2n(b_mean1)), z2 under vMF(l2n(b_mean2));
        "other": z1 under vMF(l2n(b_mean2)), z2 under vMF(l2n(b_mean1)).

    Returns:
      loss: scalar, mean over the local batch of
          w * [reg(p1, sg t2) + reg(p2, sg t1)] + beta * (i_1 + i_2),
        with reg = 2 - 2 cos and i_k = log e(z_k|x_k) - log b(z_k|y). Both directions summed.
      metrics: dict of scalar tensors, every one summed over the two directions like the loss, so
        loss = w * byol_loss + beta * i_xzx_y:
        byol_loss: the unweighted regression term (as in byol.losses.byol_loss).
        i_xzx_y: mean(i_1 + i_2), the residual information.
        h_e_zx_x: mean(-log e(z_1|x_1) - log e(z_2|x_2)).
        h_b_zx_y: mean(-log b(z_1|y) - log b(z_2|y)).
        The original release logs direction 1 only, about half of these values.

    Raises:
      ValueError: unknown `backward_view`, or mismatched shapes.
    """
    if backward_view not in BACKWARD_VIEWS:
        raise ValueError(
            f"backward_view={backward_view!r} is not one of {BACKWARD_VIEWS}: use 'same' (the "
            "original release's pairing) or 'other' (b(z|y) from the other view).")
    common_losses.check_positive(kappa_e, "kappa_e")
    common_losses.check_positive(kappa_b, "kappa_b")
    p1, p2, t1, t2, z1, z2, mu1, mu2, b_mean1, b_mean2 = common_losses.as_embeddings(
        p1=p1, p2=p2, t1=t1, t2=t2, z1=z1, z2=z2, mu1=mu1, mu2=mu2,
        b_mean1=b_mean1, b_mean2=b_mean2)

    regression = common_losses.symmetric_regression_loss(p1, p2, t1, t2)
    b1, b2 = common_losses.l2_normalize(b_mean1), common_losses.l2_normalize(b_mean2)
    if backward_view == OTHER_VIEW:
        b1, b2 = b2, b1
    i_1, log_e1, log_b1 = ceb_terms.residual_information(
        z1, common_losses.l2_normalize(mu1), kappa_e, b1, kappa_b)
    i_2, log_e2, log_b2 = ceb_terms.residual_information(
        z2, common_losses.l2_normalize(mu2), kappa_e, b2, kappa_b)
    residual = i_1 + i_2

    byol_loss = tf.reduce_mean(regression)
    i_xzx_y = tf.reduce_mean(residual)
    dtype = byol_loss.dtype
    loss = (common_losses.scalar(byol_loss_weight, dtype) * byol_loss
            + common_losses.scalar(beta, dtype) * i_xzx_y)
    metrics = {
        "byol_loss": byol_loss,
        "i_xzx_y": i_xzx_y,
        "h_e_zx_x": -tf.reduce_mean(log_e1 + log_e2),
        "h_b_zx_y": -tf.reduce_mean(log_b1 + log_b2),
    }
    return loss, metrics
