"""The two model shapes of the four algorithms, each a `Method` minus its loss.

- `SharedEncoderMethod` (SimCLR, C-SimCLR): one encoder and projection MLP applied to both views
  concatenated on the batch axis, so BN statistics cover both views (as the release does).
- `OnlineTargetMethod` (BYOL, C-BYOL): an online encoder + projector + predictor and a target
  encoder + projector that follows the online one by EMA after every optimizer step. Each view goes
  through each network in its own call (BN statistics per view, moving statistics updated twice per
  step), and the target runs in training mode, as in both references.

Algorithm packages subclass these and supply `ssl_loss`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from common.training import ema as ema_lib
from common.cli.settings import setting
from common.networks import heads as heads_lib
from common.training import method as method_lib
from common.networks import resnet as resnet_lib
from common.training import schedules


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Projection (and predictor) MLPs: backbone -> hidden (BN, ReLU) -> out, no output BN.

    use_hidden_bias: a bias on the hidden Linear before its BN (DeepMind's MLP has one; the release
    has none, since BN's offset makes it redundant). probe_input: what the online probe reads,
    "backbone" or "projection" (the release's online probe, docs/DECISIONS.md 4). output_bn: a scale-only
    BN on the projection output (the release's proj_head_output_bn; not on predictors).
    kernel_init: the heads' and the probe's Dense init (common.networks.layers.initializer:
    'haiku', 'keras' or 'normal'; docs/DECISIONS.md 9).
    """
    hidden_dim: int = 4096
    out_dim: int = 256
    num_layers: int = 2
    probe_input: str = "backbone"
    use_hidden_bias: bool = False
    output_bn: bool = False
    kernel_init: str = "haiku"

    def __post_init__(self):
        if self.probe_input not in ("backbone", "projection"):
            raise ValueError(f"probe_input must be 'backbone' or 'projection', got "
                             f"{self.probe_input!r}")


class SharedEncoderMethod(method_lib.Method):
    """encoder f and projection g shared by both views: h = g(f([v1; v2])) [2B, out_dim]."""

    def __init__(self, resnet_cfg: resnet_lib.ResNetConfig, heads_cfg: HeadsConfig,
                 num_classes: int, name: str):
        super().__init__(name=name)
        self.heads_cfg = heads_cfg
        self.encoder = resnet_lib.ResNet(resnet_cfg, name="encoder")
        self.projector = heads_lib.MLP(self.encoder.feature_dim, heads_cfg.hidden_dim,
                                       heads_cfg.out_dim, num_layers=heads_cfg.num_layers,
                                       bn=resnet_cfg.bn, use_hidden_bias=heads_cfg.use_hidden_bias,
                                       output_bn=heads_cfg.output_bn,
                                       kernel_init=heads_cfg.kernel_init, name="projector")
        probe_dim = (self.encoder.feature_dim if heads_cfg.probe_input == "backbone"
                     else heads_cfg.out_dim)
        self.probe = heads_lib.LinearHead(probe_dim, num_classes, name="probe",
                                          kernel_init=heads_cfg.kernel_init)

    def optimized_variables(self):
        return list(self.encoder.trainable_variables) + list(
            self.projector.trainable_variables) + list(self.probe.trainable_variables)

    def features(self, images, training=False):
        feats = self.encoder(images, training=training)
        if self.heads_cfg.probe_input == "projection":
            feats = self.projector(feats, training=training)
        return feats

    def release_modules(self):
        return dict(super().release_modules(), projector="_projection_head")

    def ssl_loss(self, hidden, step, seed):
        """(loss, metrics) of the self-supervised objective on h [2B, out_dim], view 1 first."""
        raise NotImplementedError

    def loss(self, batch, step, seed):
        images = tf.concat([batch["view1"], batch["view2"]], axis=0)
        feats = self.encoder(images, training=True)
        hidden = self.projector(feats, training=True)
        loss, metrics = self.ssl_loss(hidden, step, seed)
        probe_in = feats if self.heads_cfg.probe_input == "backbone" else hidden
        labels = tf.concat([batch["label"], batch["label"]], axis=0)
        probe_loss, probe_metrics = self.probe_loss(probe_in, labels)
        metrics = dict(metrics, ssl_loss=loss, **probe_metrics)
        return loss + probe_loss, metrics


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """The EMA target: tau(k) = 1 - (1 - base_ema) * (cos(pi k / T) + 1) / 2, T = total_steps."""
    base_ema: float = 0.99
    total_steps: int = 1


@dataclasses.dataclass(frozen=True)
class TargetSettings:
    """The command line's EMA-target block, composed by every algorithm with an online/target pair.

    `config(total_steps)` gives the TargetConfig the model takes."""
    ema_alpha: float = setting(0.999, "Base target-network EMA rate tau_0 (cosine-ramped to 1 over "
                               "the run).")
    use_momentum_encoder: bool = setting(
        True, "EMA target ResNet (release flag).", allowed=(True,),
        why="the target is always an EMA copy of the online network")
    use_momentum_proj_head: bool = setting(
        True, "EMA target projection head (release flag).", allowed=(True,),
        why="the target projector is always an EMA copy of the online projector")

    def errors(self) -> list[str]:
        return [] if 0.0 <= self.ema_alpha <= 1.0 else [
            f"--ema_alpha={self.ema_alpha}: pass a rate in [0, 1]."]

    def config(self, total_steps: int) -> TargetConfig:
        return TargetConfig(base_ema=self.ema_alpha, total_steps=total_steps)


class OnlineTargetMethod(method_lib.Method):
    """Online f, g (+ predictor q, built by the subclass) and EMA target f', g'.

    Attributes: encoder, projector (online); target_encoder, target_projector (EMA, not optimized);
    probe (linear classifier on stop-gradient online features of view 1).
    """

    def __init__(self, resnet_cfg: resnet_lib.ResNetConfig, heads_cfg: HeadsConfig,
                 target_cfg: TargetConfig, num_classes: int, name: str):
        super().__init__(name=name)
        self.heads_cfg = heads_cfg
        self.target_cfg = target_cfg
        self.encoder = resnet_lib.ResNet(resnet_cfg, name="encoder")
        self.projector = self._mlp(self.encoder.feature_dim, resnet_cfg.bn, "projector",
                                   output_bn=heads_cfg.output_bn)
        # Independently initialised, as in both references (the EMA pulls it in within a few
        # hundred steps); its variables are never handed to the optimizer.
        self.target_encoder = resnet_lib.ResNet(resnet_cfg, name="target_encoder")
        self.target_projector = self._mlp(self.encoder.feature_dim, resnet_cfg.bn,
                                          "target_projector", output_bn=heads_cfg.output_bn)
        probe_dim = (self.encoder.feature_dim if heads_cfg.probe_input == "backbone"
                     else heads_cfg.out_dim)
        self.probe = heads_lib.LinearHead(probe_dim, num_classes, name="probe",
                                          kernel_init=heads_cfg.kernel_init)

    def _mlp(self, in_dim, bn, name, output_bn=False):
        """A projection-shaped MLP in_dim -> hidden -> out (projector, predictor, b's mean)."""
        h = self.heads_cfg
        return heads_lib.MLP(in_dim, h.hidden_dim, h.out_dim, num_layers=h.num_layers, bn=bn,
                             use_hidden_bias=h.use_hidden_bias, output_bn=output_bn,
                             kernel_init=h.kernel_init, name=name)

    def release_modules(self):
        # The release keeps the target projection head at `_target_head`.
        return dict(super().release_modules(), projector="_projection_head",
                    target_encoder="_target_resnet", target_projector="_target_head")

    def online_variables(self):
        """The online parameters the target averages, aligned with `target_variables`."""
        return list(self.encoder.trainable_variables) + list(self.projector.trainable_variables)

    def target_variables(self):
        return list(self.target_encoder.trainable_variables) + list(
            self.target_projector.trainable_variables)

    def features(self, images, training=False):
        feats = self.encoder(images, training=training)
        if self.heads_cfg.probe_input == "projection":
            feats = self.projector(feats, training=training)
        return feats

    def target(self, images):
        """The regression target g'(f'(v)) [B, out_dim], in training mode, under stop-gradient."""
        return tf.stop_gradient(
            self.target_projector(self.target_encoder(images, training=True), training=True))

    def tau(self, step):
        return schedules.target_ema_tau(step, self.target_cfg.base_ema, self.target_cfg.total_steps)

    def after_update(self, step):
        tau = self.tau(step)
        ema_lib.ema_update(self.target_variables(), self.online_variables(), tau)
        return {"tau": tau}
