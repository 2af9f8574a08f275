"""Supervised fine-tuning (and linear evaluation) of a pretrained encoder: `--train_mode=finetune`.

The release's fine-tune mode crashes (docs/DECISIONS.md 5); this one works for every
algorithm, because every method keeps its online backbone at the same checkpoint path
(`model/encoder`), which is all fine-tuning reads.
"""
from __future__ import annotations

import dataclasses
import re

import tensorflow as tf

from common.networks import heads as heads_lib
from common.training import method as method_lib
from common.networks import resnet as resnet_lib


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """fine_tune_after_block: -1 trains everything; k in 0..3 freezes the stem and block groups
    1..k; 4 freezes the whole encoder (a linear probe: BN in inference mode, stop-gradient
    features). zero_init_head: start the classifier at zero. checkpoint: pretrained weights."""
    fine_tune_after_block: int = -1
    zero_init_head: bool = False
    checkpoint: str | None = None

    def __post_init__(self):
        if self.fine_tune_after_block not in (-1, 0, 1, 2, 3, 4):
            raise ValueError("fine_tune_after_block must be -1 (everything), 0-3 (freeze up to that "
                             f"block group) or 4 (head only), got {self.fine_tune_after_block}")


def _block_group(name: str) -> int | None:
    """1-based block group of an encoder variable from its name, 0 for the stem."""
    m = re.search(r"block_group_?(\d+)", name)
    return int(m.group(1)) if m else 0


class Supervised(method_lib.Method):
    """encoder -> linear classifier, trained with softmax cross-entropy on labelled batches."""

    metric_names = ("supervised_loss", "supervised_acc")
    progress_keys = ("loss", "supervised_acc")

    def __init__(self, resnet_cfg: resnet_lib.ResNetConfig, num_classes: int,
                 cfg: FinetuneConfig = FinetuneConfig()):
        super().__init__(name="supervised")
        self.cfg = cfg
        self.encoder = resnet_lib.ResNet(resnet_cfg, name="encoder")
        self.probe = heads_lib.LinearHead(self.encoder.feature_dim, num_classes,
                                          zero_init=cfg.zero_init_head, name="probe")
        k = cfg.fine_tune_after_block
        numbered = [_block_group(v.name) for v in self.encoder.trainable_variables
                    if "block_group" in v.name]
        first = min(numbered) if numbered else 1  # names may count groups from 0 or from 1
        if k == 4:
            self._encoder_vars = []
        elif k == -1:
            self._encoder_vars = list(self.encoder.trainable_variables)
        else:
            self._encoder_vars = [v for v in self.encoder.trainable_variables
                                  if _block_group(v.name) - first + 1 > k
                                  and "block_group" in v.name]

    def load_pretrained(self, print_fn=print) -> None:
        """Reads the encoder from cfg.checkpoint: a pretraining checkpoint of any algorithm of this
        project, or one of the original release (its `model/_resnet`, with the import report
        printed; the release also starts fine-tuning with a fresh classifier)."""
        if not self.cfg.checkpoint:
            return
        from common.interop import loading
        loading.initialise_method(self, self.cfg.checkpoint, only=("encoder",), print_fn=print_fn)

    def optimized_variables(self):
        return self._encoder_vars + list(self.probe.trainable_variables)

    def loss(self, batch, step, seed):
        del step, seed
        frozen = self.cfg.fine_tune_after_block == 4
        features = self.encoder(batch["image"], training=not frozen)
        if frozen:
            features = tf.stop_gradient(features)
        logits = self.probe(features)
        labels = tf.cast(batch["label"], tf.int32)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        acc = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return loss, {"supervised_loss": loss, "supervised_acc": acc}
