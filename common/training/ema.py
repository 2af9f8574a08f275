"""The target network's exponential moving average (BYOL, C-BYOL)."""
from __future__ import annotations

import tensorflow as tf


def ema_update(target_vars, online_vars, tau) -> None:
    """xi <- xi + (1 - tau) * (theta - xi), for each (target xi, online theta) pair.

    This is tau*xi + (1-tau)*theta written as DeepMind's reference computes it, so float32 results
    match it bit for bit. It runs after the optimizer step and reads the updated online weights.
    Only parameters are averaged; the target's BN moving statistics come from its own forward passes.
    """
    target_vars, online_vars = list(target_vars), list(online_vars)
    if len(target_vars) != len(online_vars):
        raise ValueError(f"target has {len(target_vars)} variables, online {len(online_vars)}")
    tau = tf.convert_to_tensor(tau, tf.float32)
    for t, o in zip(target_vars, online_vars):
        if t.shape != o.shape:
            raise ValueError(f"EMA pair {t.name} {t.shape} vs {o.name} {o.shape} differ in shape")
        t.assign_add((1.0 - tf.cast(tau, t.dtype)) * (o - t))
