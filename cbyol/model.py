"""C-BYOL: BYOL with a stochastic vMF predictor e(z|x) and a trainable backward encoder b(z|y)."""
from __future__ import annotations

import tensorflow as tf

from cbyol import heads as cbyol_heads
from cbyol import losses
from common.ceb import settings as ceb_settings
from common.losses import terms as common_losses
from common.training import models


class CBYOL(models.OnlineTargetMethod):
    """Online f, g, stochastic predictor (prediction, z ~ vMF(mu, kappa_e), mu); EMA target f', g';
    trainable target projector m with b(z|y) = vMF(l2n(m(l2n(sg g'(f'(y))))), kappa_b)."""

    metric_names = ("byol_loss", "i_xzx_y", "h_e_zx_x", "h_b_zx_y", "beta", "probe_loss",
                    "probe_acc", "tau")
    progress_keys = ("loss", "byol_loss", "i_xzx_y", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, target_cfg, num_classes,
                 ceb: ceb_settings.CEBConfig = ceb_settings.CEBConfig(kappa_e=16384.0),
                 byol_loss_weight=1.0, backward_view="same"):
        super().__init__(resnet_cfg, heads_cfg, target_cfg, num_classes, name="cbyol")
        if backward_view not in ("same", "other"):
            raise ValueError(f"backward_view must be 'same' (the release's pairing) or 'other', "
                             f"got {backward_view!r}")
        self.ceb = ceb
        self.byol_loss_weight = byol_loss_weight
        self.backward_view = backward_view
        h = heads_cfg
        self.predictor = cbyol_heads.StochasticPredictor(
            h.out_dim, h.hidden_dim, h.out_dim, kappa_e=ceb.kappa_e, bn=resnet_cfg.bn,
            use_hidden_bias=h.use_hidden_bias, kernel_init=h.kernel_init, name="predictor")
        # The mean network of b(z|y): trained by -beta log b only (its input is stop-gradient).
        self.backward_projector = self._mlp(h.out_dim, resnet_cfg.bn, "backward_projector")

    def release_modules(self):
        # The release's stochastic predictor is its `_projector`, and the mean network of b(z|y)
        # its `_target_projector`.
        return dict(super().release_modules(), predictor="_projector",
                    backward_projector="_target_projector")

    def optimized_variables(self):
        return (self.online_variables() + list(self.predictor.trainable_variables)
                + list(self.backward_projector.trainable_variables)
                + list(self.probe.trainable_variables))

    def _online(self, images, seed):
        feats = self.encoder(images, training=True)
        proj = self.projector(feats, training=True)
        pred, z, mu = self.predictor(proj, training=True, seed=seed)
        return feats, proj, pred, z, mu

    def loss(self, batch, step, seed):
        c = self.ceb
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        f1, proj1, p1, z1, mu1 = self._online(batch["view1"], seeds[0])
        _, _, p2, z2, mu2 = self._online(batch["view2"], seeds[1])
        t1 = self.target(batch["view1"])
        t2 = self.target(batch["view2"])
        b1 = self.backward_projector(common_losses.l2_normalize(t1), training=True)
        b2 = self.backward_projector(common_losses.l2_normalize(t2), training=True)
        beta = c.beta_at(step)
        loss, metrics = losses.byol_ceb_loss(
            p1, p2, t1, t2, z1, z2, mu1, mu2, b1, b2, kappa_e=c.kappa_e, kappa_b=c.kappa_b,
            beta=beta, byol_loss_weight=self.byol_loss_weight, backward_view=self.backward_view)
        probe_in = f1 if self.heads_cfg.probe_input == "backbone" else proj1
        probe_loss, probe_metrics = self.probe_loss(probe_in, batch["label"])
        return loss + probe_loss, dict(metrics, beta=beta, **probe_metrics)
