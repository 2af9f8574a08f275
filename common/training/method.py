"""The small object an algorithm hands the generic trainer.

A `Method` owns every variable of one algorithm (online and target networks, heads, the online
linear probe) and knows its loss. The trainer in `common.training.trainer` knows nothing of SimCLR or BYOL:
it draws batches, asks the method for `(loss, metrics)`, applies the optimizer to
`optimized_variables()`, then calls `after_update` (where BYOL updates its EMA target).
"""
from __future__ import annotations

import tensorflow as tf

from common.networks import heads as heads_lib


class Method(tf.Module):
    """Base class of the four algorithms (and of supervised fine-tuning).

    Subclasses set `self.encoder` (a `common.resnet.ResNet`), `self.probe` (a
    `common.networks.heads.LinearHead` over the probe input) and implement `loss`.
    """

    encoder: tf.Module
    probe: heads_lib.LinearHead
    #: Names of the scalar metrics `loss` and `after_update` return (declared up front because the
    #: trainer keeps their running means in variables).
    metric_names: tuple = ()
    #: Metrics shown on the progress line.
    progress_keys: tuple = ("loss", "probe_acc")

    def optimized_variables(self) -> list[tf.Variable]:
        """Variables the optimizer updates, in a fixed order (the checkpointed slot order)."""
        raise NotImplementedError

    def loss(self, batch: dict, step: tf.Tensor, seed: tf.Tensor):
        """Per-replica `(loss, metrics)` for one batch.

        Args:
          batch: {'view1': [B,S,S,3], 'view2': [B,S,S,3], 'label': [B]} for this replica.
          step: int64 scalar, the optimizer step before this update (schedules read it).
          seed: int32 [2], a stateless seed unique to (run, step, replica) for stochastic layers.
        Returns:
          loss: scalar, the mean over this replica's examples (the trainer divides by the number
            of replicas and sums gradients across them).
          metrics: dict of scalar tensors (means over this replica's examples).
        """
        raise NotImplementedError

    def release_modules(self) -> dict[str, str]:
        """{attribute of this method: attribute of the original release's model} for every module
        with a counterpart in the release's checkpoints (`common.interop.release` imports through
        it; each module maps itself with its `release_checkpoint_map(prefix)`). Subclasses add
        their heads."""
        return {"encoder": "_resnet", "probe": "supervised_head"}

    def after_update(self, step: tf.Tensor) -> dict:
        """Runs after the optimizer step (EMA target update); returns extra scalar metrics."""
        del step
        return {}

    def features(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The probe's input for `images` [B,S,S,3]: the backbone feature [B, F] by default."""
        return self.encoder(images, training=training)

    def probe_loss(self, features: tf.Tensor, labels: tf.Tensor):
        """Softmax cross-entropy of the online linear probe on stop-gradient features.

        The stop-gradient keeps the probe from shaping the representation (it only reads it).
        Returns (loss, metrics) with `probe_loss` and `probe_acc`.
        """
        logits = self.probe(tf.stop_gradient(features))
        labels = tf.cast(labels, tf.int32)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                                     tf.float32))
        return loss, {"probe_loss": loss, "probe_acc": acc}
