"""Small building blocks for tests of the trainers: a tiny ResNet and synthetic batches.

Library code; kept tiny so every package's tests can train a few steps on a CPU in seconds.
"""
from __future__ import annotations

import tensorflow as tf

from common import data as data_lib
from common import models
from common import optim as optim_lib
from common import resnet as resnet_lib
from common import schedules
from common import trainer as trainer_lib


def tiny_resnet(image_size: int = 16, semantics: str = "keras") -> resnet_lib.ResNetConfig:
    """ResNet-18 layout at 1/16 width (4..32 channels), CIFAR stem."""
    cfg = resnet_lib.resnet_config(18, 0.0625, image_size)
    bn = cfg.bn.__class__(momentum=0.9, epsilon=1e-5, semantics=semantics, sync=True)
    return resnet_lib.ResNetConfig(**{**cfg.__dict__, "bn": bn})


def tiny_heads() -> models.HeadsConfig:
    return models.HeadsConfig(hidden_dim=16, out_dim=8, num_layers=2)


def synthetic_dataset_fn(global_batch_size: int = 8, image_size: int = 16, num_classes: int = 4,
                         seed: int = 0):
    """`(input_context, start_step) -> Dataset` of endless random batches {'view1','view2','label'}.

    Batch i of pipeline r is a stateless function of (i, r, seed), so reruns see the same data.
    """

    def make(ctx, start_step=0):
        b = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
        rid = ctx.input_pipeline_id if ctx else 0
        per_step = (ctx.num_replicas_in_sync // ctx.num_input_pipelines) if ctx else 1

        def element(i):
            s = tf.stack([tf.cast(i, tf.int32), seed * 1000 + rid])
            shape = [b, image_size, image_size, 3]
            return {"view1": tf.random.stateless_normal(shape, s),
                    "view2": tf.random.stateless_normal(shape, s + [0, 7]),
                    "label": tf.random.stateless_uniform([b], s + [0, 9], 0, num_classes, tf.int32)}
        return tf.data.Dataset.range(start_step * per_step, 1 << 30).map(element)
    return make


def tiny_train_config(model_dir: str, steps: int = 3, batch: int = 8) -> trainer_lib.TrainConfig:
    return trainer_lib.TrainConfig(
        model_dir=model_dir, train_steps=steps, train_batch_size=batch, eval_batch_size=batch,
        steps_per_loop=1, checkpoint_steps=steps,
        lr=schedules.LRConfig(base_lr=0.5, batch_size=batch, warmup_steps=1, total_steps=steps),
        optim=optim_lib.OptimConfig(name="lars", weight_decay=1e-4), seed=0)


def tiny_pretrainer(method_fn, model_dir: str, steps: int = 3, batch: int = 8,
                    strategy=None, image_size: int = 16, num_classes: int = 4, print_fn=print):
    """A Pretrainer on synthetic batches (no dataset files needed)."""
    strategy = strategy or tf.distribute.get_strategy()
    cfg = tiny_train_config(model_dir, steps, batch)
    make = synthetic_dataset_fn(batch, image_size, num_classes)
    return trainer_lib.Pretrainer(method_fn, cfg, data_lib.DataConfig(image_size=image_size), None,
                                  strategy, dataset_fn=make, num_classes=num_classes,
                                  print_fn=print_fn)
