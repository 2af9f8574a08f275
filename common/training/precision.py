"""Mixed precision: the compute dtype of the networks and dynamic loss scaling for float16.

Policy (docs/DECISIONS.md 25). With `precision` 'bfloat16' or 'float16', inside `policy(...)`:
  - every ResNet and MLP head casts its input to the compute dtype, so convolutions and matmuls run
    in it (`layers.Conv2D`/`layers.Dense` cast their float32 kernels to the input's dtype), and
    casts its output back to float32: losses, the vMF log-normaliser and sampler, metrics and the
    linear probe see float32 tensors;
  - variables stay float32 (gradients reach them through the casts, in float32), so the optimizer,
    the EMA target and the checkpoints are unchanged; BatchNorm computes its statistics and moving
    averages in float32 and returns the input's dtype.
'float32' (the default) changes nothing. The policy is read while a step is traced, so the
trainer opens it around its loss computation only; evaluation runs in float32.

float16's narrow range needs loss scaling: `LossScale` multiplies the loss by S before the
gradient and divides the gradients by S; when any reduced gradient is not finite, the step's
update is skipped (variables and optimizer slots keep their values, the step counter advances so
the data stream and the schedules stay aligned with it) and S halves; after `growth_steps`
consecutive finite steps S doubles. bfloat16 has float32's range and needs no scaling.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf

PRECISIONS = ("float32", "bfloat16", "float16")

_compute_dtype = [tf.float32]


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    return precision


@contextlib.contextmanager
def policy(precision: str):
    """Within the block, networks compute in `precision` ('float32', 'bfloat16', 'float16')."""
    dtype = tf.as_dtype(check(precision))
    _compute_dtype.append(dtype)
    try:
        yield dtype
    finally:
        _compute_dtype.pop()


def compute_dtype() -> tf.DType:
    """The dtype networks compute in at this point of tracing (float32 outside `policy`)."""
    return _compute_dtype[-1]


def to_compute(x: tf.Tensor) -> tf.Tensor:
    """x cast to the compute dtype (floating inputs only; a no-op in float32)."""
    dtype = compute_dtype()
    return tf.cast(x, dtype) if x.dtype.is_floating and x.dtype != dtype else x


def to_float32(x: tf.Tensor) -> tf.Tensor:
    """A network's output back in float32 for the losses."""
    return tf.cast(x, tf.float32) if x.dtype != tf.float32 else x


class LossScale(tf.Module):
    """Dynamic loss scaling: loss x S; gradients / S; S halves on overflow, doubles after
    `growth_steps` consecutive finite steps (Keras' defaults: S0 = 2^15, 2000 steps).

    Variables (float32 `scale`, int64 `good_steps`) are checkpointed with the trainer's optimizer
    state so a resumed float16 run continues with the same scale.
    """

    def __init__(self, initial_scale: float = 2.0 ** 15, growth_steps: int = 2000,
                 name: str = "loss_scale"):
        super().__init__(name=name)
        if initial_scale <= 0 or growth_steps < 1:
            raise ValueError(f"LossScale needs initial_scale > 0 and growth_steps >= 1, got "
                             f"{initial_scale}, {growth_steps}.")
        self.growth_steps = int(growth_steps)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        with self.name_scope:
            self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, trainable=False,
                                     aggregation=agg, name="scale")
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=agg,
                                          name="good_steps")

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, grads) -> tuple[list, tf.Tensor]:
        """grads (already reduced across replicas, so every replica agrees) -> (grads / S, all
        finite as a scalar bool)."""
        inv = 1.0 / self.scale
        out = [tf.cast(g, tf.float32) * inv for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in out])
        return out, finite

    def update(self, finite: tf.Tensor) -> None:
        """After a step: halve S on overflow (resetting the count), else count, doubling S after
        `growth_steps` finite steps in a row."""
        good = tf.where(finite, self.good_steps + 1, tf.zeros([], tf.int64))
        grow = good >= self.growth_steps
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), self.scale * 0.5)
        self.scale.assign(tf.maximum(scale, 1.0))
        self.good_steps.assign(tf.where(grow, tf.zeros([], tf.int64), good))
