"""C-BYOL: BYOL with a stochastic vMF predictor e(z|x) and a trainable backward encoder b(z|y)."""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from cbyol import losses
from common import heads as heads_lib
from common import losses as common_losses
from common import models
from common import schedules


@dataclasses.dataclass(frozen=True)
class CBYOLConfig:
    """CEB hyper-parameters: kappa_e, kappa_b, beta (and its schedule), the regression weight
    byol_loss_weight (= kappa_d / 2), and which target view builds b(z|y) (decision 3)."""
    kappa_e: float = 16384.0
    kappa_b: float = 10.0
    beta: float = 1.0
    beta_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    byol_loss_weight: float = 1.0
    backward_view: str = "same"


class CBYOL(models.OnlineTargetMethod):
    """Online f, g, stochastic predictor (prediction, z ~ vMF(mu, kappa_e), mu); EMA target f', g';
    trainable target projector m with b(z|y) = vMF(l2n(m(l2n(sg g'(f'(y))))), kappa_b)."""

    metric_names = ("byol_loss", "i_xzx_y", "h_e_zx_x", "h_b_zx_y", "beta", "probe_loss",
                    "probe_acc", "tau")
    progress_keys = ("loss", "byol_loss", "i_xzx_y", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, target_cfg, num_classes,
                 cfg: CBYOLConfig = CBYOLConfig()):
        super().__init__(resnet_cfg, heads_cfg, target_cfg, num_classes, name="cbyol")
        self.cfg = cfg
        h = heads_cfg
        self.predictor = heads_lib.StochasticPredictor(
            h.out_dim, h.hidden_dim, h.out_dim, kappa_e=cfg.kappa_e, bn=resnet_cfg.bn,
            name="predictor")
        # The mean network of b(z|y): trained by -beta log b only (its input is stop-gradient).
        self.backward_projector = heads_lib.MLP(h.out_dim, h.hidden_dim, h.out_dim,
                                                num_layers=h.num_layers, bn=resnet_cfg.bn,
                                                name="backward_projector")

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
        c = self.cfg
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        f1, proj1, p1, z1, mu1 = self._online(batch["view1"], seeds[0])
        _, _, p2, z2, mu2 = self._online(batch["view2"], seeds[1])
        t1 = self.target(batch["view1"])
        t2 = self.target(batch["view2"])
        b1 = self.backward_projector(common_losses.l2_normalize(t1), training=True)
        b2 = self.backward_projector(common_losses.l2_normalize(t2), training=True)
        beta = schedules.beta_schedule(step, c.beta, c.beta_schedule, c.warmup_steps,
                                       c.total_steps)
        loss, metrics = losses.byol_ceb_loss(
            p1, p2, t1, t2, z1, z2, mu1, mu2, b1, b2, kappa_e=c.kappa_e, kappa_b=c.kappa_b,
            beta=beta, byol_loss_weight=c.byol_loss_weight, backward_view=c.backward_view)
        probe_in = f1 if self.heads_cfg.probe_input == "backbone" else proj1
        probe_loss, probe_metrics = self.probe_loss(probe_in, batch["label"])
        return loss + probe_loss, dict(metrics, beta=beta, **probe_metrics)
