"""`FeatureModel`: the networks of a checkpoint that feature extraction and export run, whatever
wrote the checkpoint (this project, the original release, DeepMind's BYOL parameters).

Every loader returns one; `outputs` is the single forward pass they all share.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf


@dataclasses.dataclass
class FeatureModel:
    """A loaded checkpoint's inference-time networks.

    image_size: the side the encoder was trained at (inputs are resized to it by callers that
      accept other sizes; `outputs` takes the batch as given).
    normalize: [N, H, W, 3] float in [0, 1] -> the encoder's input (ImageNet mean/std or identity),
      what the checkpoint's own input pipeline applied.
    encoder: f, images -> backbone features [N, D] (`__call__(x, training=False)`).
    projector: g, [N, D] -> [N, d], or None when the checkpoint has no projection head.
    target_encoder, target_projector: the EMA target's f', g', or None.
    classifier: the linear head (probe or supervised head) on `classifier_input`, or None.
    classifier_input: 'backbone' or 'projection'.
    source: 'project', 'release' or 'haiku'; description: one line on what was loaded.
    """
    image_size: int
    normalize: Callable
    encoder: tf.Module
    projector: tf.Module | None = None
    target_encoder: tf.Module | None = None
    target_projector: tf.Module | None = None
    classifier: tf.Module | None = None
    classifier_input: str = "backbone"
    source: str = "project"
    description: str = ""

    def outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """images [N, H, W, 3] in [0, 1] -> {'backbone' [N, D], 'projection' [N, d] (with a
        projector), 'target_backbone', 'target_projection' (with a target), 'logits' [N, K] (with a
        classifier)}, every network in inference mode (BN moving statistics)."""
        x = self.normalize(tf.convert_to_tensor(images, tf.float32))
        out = {"backbone": self.encoder(x, training=False)}
        if self.projector is not None:
            out["projection"] = self.projector(out["backbone"], training=False)
        if self.target_encoder is not None:
            out["target_backbone"] = self.target_encoder(x, training=False)
            if self.target_projector is not None:
                out["target_projection"] = self.target_projector(out["target_backbone"],
                                                                 training=False)
        if self.classifier is not None:
            out["logits"] = self.classifier(out[self.classifier_input])
        return out
