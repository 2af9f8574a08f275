"""BYOL: online encoder, projector and predictor regressing onto an EMA target."""
from __future__ import annotations

from byol import losses
from common.training import models


class BYOL(models.OnlineTargetMethod):
    """q(g(f(v1))) regressed onto g'(f'(v2)) and vice versa; target updated by EMA.

    `use_predictor=False` reproduces the release's scripts, which forgot the predictor
    (docs/DECISIONS.md 1); the paper configs keep it.
    """

    metric_names = ("byol_loss", "probe_loss", "probe_acc", "tau")
    progress_keys = ("loss", "byol_loss", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, target_cfg, num_classes, byol_loss_weight=1.0,
                 use_predictor=True):
        super().__init__(resnet_cfg, heads_cfg, target_cfg, num_classes, name="byol")
        self.byol_loss_weight = byol_loss_weight
        self.predictor = (self._mlp(heads_cfg.out_dim, resnet_cfg.bn, "predictor")
                          if use_predictor else None)

    def release_modules(self):
        # The release's online predictor is its `_projector`.
        out = super().release_modules()
        if self.predictor is not None:
            out["predictor"] = "_projector"
        return out

    def optimized_variables(self):
        out = self.online_variables()
        if self.predictor is not None:
            out += list(self.predictor.trainable_variables)
        return out + list(self.probe.trainable_variables)

    def _online(self, images):
        feats = self.encoder(images, training=True)
        proj = self.projector(feats, training=True)
        pred = self.predictor(proj, training=True) if self.predictor is not None else proj
        return feats, proj, pred

    def loss(self, batch, step, seed):
        del step, seed
        f1, proj1, p1 = self._online(batch["view1"])
        _, _, p2 = self._online(batch["view2"])
        t1 = self.target(batch["view1"])
        t2 = self.target(batch["view2"])
        loss, metrics = losses.byol_loss(p1, p2, t1, t2, weight=self.byol_loss_weight)
        probe_in = f1 if self.heads_cfg.probe_input == "backbone" else proj1
        probe_loss, probe_metrics = self.probe_loss(probe_in, batch["label"])
        return loss + probe_loss, dict(metrics, **probe_metrics)
