"""Learning-rate, target-EMA and beta schedules: pure functions of a scalar step tensor.

The arithmetic is float32 and follows the order of DeepMind's BYOL reference, so the values equal
its float32 schedules (tools/golden/byol_golden.npz, group b) to the last bit or two:
the step is cast to float32 after the integer subtraction and clamp, then pi * step / T, cos,
0.5 * (1 + cos), times the peak; Python-side constants (base_lr * B / 256, 1 - base_ema) are
computed in float64 and rounded once.
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

_SCALINGS = ("linear", "sqrt")
_LR_SCHEDULES = ("cosine", "constant")
_BETA_KINDS = ("constant", "linear_warmup", "cosine")
IMAGENET_TRAIN_EXAMPLES = 1281167


def scaled_learning_rate(base_lr: float, batch_size: int, scaling: str = "linear") -> float:
    """The peak learning rate: base_lr * B / 256 ('linear') or base_lr * sqrt(B) ('sqrt'). A float."""
    if scaling == "linear":
        return base_lr * batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(f"Unknown learning-rate scaling {scaling!r}; choose one of {_SCALINGS}.")


def imagenet_steps(epochs: int, batch_size: int, num_examples: int = IMAGENET_TRAIN_EXAMPLES,
                   warmup_epochs: int = 10) -> tuple[int, int]:
    """(total_steps, warmup_steps) = (epochs * N // B, warmup_epochs * N // B), integer division.

    With B = 4096: warmup 3127 and total 12511 / 31278 / 93835 / 312784 for 40 / 100 / 300 / 1000 epochs.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    return epochs * num_examples // batch_size, warmup_epochs * num_examples // batch_size


def _check_steps(warmup_steps: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}.")


def _clamped_steps(step: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    """float32 min(step - offset, length); integer steps are subtracted and clamped before the cast."""
    step = tf.convert_to_tensor(step)
    if step.dtype.is_integer:
        return tf.cast(tf.minimum(step - tf.cast(offset, step.dtype), tf.cast(length, step.dtype)),
                       tf.float32)
    return tf.minimum(tf.cast(step, tf.float32) - float(offset), float(length))


def _before(step: tf.Tensor, boundary: int) -> tf.Tensor:
    """step < boundary, compared in the step's own dtype (exact for integer steps)."""
    step = tf.convert_to_tensor(step)
    return step < tf.cast(boundary, step.dtype)


def _cosine_decay(step: tf.Tensor, offset: int, length: int, initial: float) -> tf.Tensor:
    """initial * 0.5 * (1 + cos(pi * min(step - offset, length) / length)), float32 []."""
    angle = tf.constant(math.pi, tf.float32) * _clamped_steps(step, offset, length) / float(length)
    return tf.constant(initial, tf.float32) * (0.5 * (1.0 + tf.cos(angle)))


def _float_step(step) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(step), tf.float32)


def warmup_cosine_lr(step, peak_lr: float, warmup_steps: int, total_steps: int) -> tf.Tensor:
    """Linear warm-up then cosine decay to 0 at `total_steps` (and 0 after). float32 [].

    lr(k) = k / warmup * peak                                          for k < warmup,
          = peak * 0.5 * (1 + cos(pi * min(k - warmup, T - warmup) / (T - warmup)))   otherwise.
    `step` is a scalar integer (or float) tensor.
    """
    _check_steps(warmup_steps, total_steps)
    step = tf.convert_to_tensor(step)
    peak = tf.constant(peak_lr, tf.float32)
    if total_steps == warmup_steps:
        decayed = tf.zeros([], tf.float32)
    else:
        decayed = _cosine_decay(step, warmup_steps, total_steps - warmup_steps, peak_lr)
    if warmup_steps == 0:
        return decayed
    warm = _float_step(step) / float(warmup_steps) * peak
    return tf.where(_before(step, warmup_steps), warm, decayed)


@dataclasses.dataclass(frozen=True)
class LRConfig:
    """Learning-rate schedule settings.

    Attributes:
      base_lr: learning rate before batch scaling (0.2 / 0.3 for BYOL 1000 / 300 epochs).
      batch_size: global batch size B.
      warmup_steps, total_steps: schedule length in optimizer steps.
      scaling: 'linear' (base_lr * B / 256) or 'sqrt' (base_lr * sqrt(B)).
      schedule: 'cosine' (warm-up then cosine to 0) or 'constant' (warm-up then the peak).
    """
    base_lr: float
    batch_size: int
    warmup_steps: int
    total_steps: int
    scaling: str = "linear"
    schedule: str = "cosine"

    def __post_init__(self):
        if self.scaling not in _SCALINGS:
            raise ValueError(f"Unknown scaling {self.scaling!r}; choose one of {_SCALINGS}.")
        if self.schedule not in _LR_SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; choose one of {_LR_SCHEDULES}.")
        _check_steps(self.warmup_steps, self.total_steps)


def learning_rate(step, cfg: LRConfig) -> tf.Tensor:
    """The learning rate at `step` (scalar tensor) under `cfg`, float32 []."""
    peak = scaled_learning_rate(cfg.base_lr, cfg.batch_size, cfg.scaling)
    if cfg.schedule == "cosine":
        return warmup_cosine_lr(step, peak, cfg.warmup_steps, cfg.total_steps)
    peak_t = tf.constant(peak, tf.float32)
    if cfg.warmup_steps == 0:
        return peak_t
    step_f = _float_step(step)
    return tf.where(_before(step, cfg.warmup_steps), step_f / float(cfg.warmup_steps) * peak_t, peak_t)


def target_ema_tau(step, base_ema: float, total_steps: int) -> tf.Tensor:
    """BYOL's target decay tau(k) = 1 - (1 - base_ema) * 0.5 * (1 + cos(pi * min(k, T) / T)), float32 [].

    Rises from base_ema at k = 0 to 1 at k = T.
    """
    _check_steps(0, total_steps)
    return 1.0 - tf.constant(1.0 - base_ema, tf.float32) * _cosine_decay(step, 0, total_steps, 1.0)


def beta_schedule(step, beta: float, kind: str = "constant", warmup_steps: int = 0,
                  total_steps: int = 1) -> tf.Tensor:
    """The CEB weight beta at `step`, float32 [].

    constant:      beta;
    linear_warmup: beta * min(1, k / warmup)   (beta when warmup_steps = 0);
    cosine:        beta * (1 - cos(pi * min(k, T) / T)) / 2   (0 at k = 0, beta from k = T on).
    """
    if kind == "constant":
        return tf.constant(beta, tf.float32)
    if kind == "linear_warmup":
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if warmup_steps == 0:
            return tf.constant(beta, tf.float32)
        return tf.constant(beta, tf.float32) * tf.minimum(1.0, _float_step(step) / float(warmup_steps))
    if kind == "cosine":
        _check_steps(0, total_steps)
        angle = tf.constant(math.pi, tf.float32) * _clamped_steps(step, 0, total_steps) / float(
            total_steps)
        return tf.constant(beta, tf.float32) * (1.0 - tf.cos(angle)) / 2.0
    raise ValueError(f"Unknown beta schedule {kind!r}; choose one of {_BETA_KINDS}.")
