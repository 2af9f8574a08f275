"""common.schedules against the BYOL reference's float32 schedules (golden group b) and float64 formulas."""
import dataclasses
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from common.training import schedules

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "golden", "byol_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files if k.startswith("b/")}


@pytest.mark.parametrize("epochs", [1000, 300])
def test_golden_lr_and_tau_in_tf_function_with_int32_steps(golden, epochs):
    total, warmup, base_lr, base_ema, _ = golden[f"b/config_e{epochs}"]
    total, warmup = int(total), int(warmup)
    assert schedules.imagenet_steps(epochs, 4096) == (total, warmup)
    cfg = schedules.LRConfig(base_lr=float(base_lr), batch_size=4096, warmup_steps=warmup,
                             total_steps=total)

    @tf.function
    def both(step):
        return (schedules.learning_rate(step, cfg),
                schedules.target_ema_tau(step, float(base_ema), total))

    out = [both(tf.constant(s, tf.int32)) for s in golden["b/steps"]]
    lr = np.array([o[0].numpy() for o in out])
    tau = np.array([o[1].numpy() for o in out])
    assert lr.dtype == np.float32 and tau.dtype == np.float32
    np.testing.assert_allclose(lr, golden[f"b/lr_e{epochs}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tau, golden[f"b/tau_e{epochs}"], rtol=1e-6, atol=1e-7)
    # The float64 formula differs from float32 only by rounding.
    np.testing.assert_allclose(lr, golden[f"b/lr_e{epochs}_f64"], rtol=1e-5, atol=1e-6)


def test_golden_lr_with_int64_steps_and_eager(golden):
    total, warmup, base_lr, _, _ = golden["b/config_e1000"]
    peak = schedules.scaled_learning_rate(float(base_lr), 4096)
    lr = np.array([schedules.warmup_cosine_lr(tf.constant(s, tf.int64), peak, int(warmup), int(total))
                   .numpy() for s in golden["b/steps"]])
    np.testing.assert_allclose(lr, golden["b/lr_e1000"], rtol=1e-6, atol=1e-7)


def f64_warmup_cosine(k, peak, warmup, total):
    if k < warmup:
        return k / warmup * peak
    return peak * 0.5 * (1 + math.cos(math.pi * min(k - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("scaling,want_peak", [("linear", 0.3 * 512 / 256), ("sqrt", 0.3 * math.sqrt(512))])
def test_scaling_and_constant_schedule(scaling, want_peak):
    assert schedules.scaled_learning_rate(0.3, 512, scaling) == pytest.approx(want_peak, rel=1e-15)
    cosine = schedules.LRConfig(0.3, 512, warmup_steps=10, total_steps=100, scaling=scaling)
    constant = dataclasses.replace(cosine, schedule="constant")
    for k in [0, 3, 10, 11, 55, 99, 100, 1000]:
        want = f64_warmup_cosine(k, want_peak, 10, 100)
        assert float(schedules.learning_rate(tf.constant(k), cosine)) == pytest.approx(
            want, rel=1e-6, abs=1e-6)
        want_const = k / 10 * want_peak if k < 10 else want_peak
        assert float(schedules.learning_rate(tf.constant(k), constant)) == pytest.approx(
            want_const, rel=1e-6)


def test_no_warmup_starts_at_peak():
    assert float(schedules.warmup_cosine_lr(tf.constant(0), 2.0, 0, 10)) == pytest.approx(2.0)
    assert float(schedules.warmup_cosine_lr(tf.constant(5), 2.0, 0, 10)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("kind", ["constant", "linear_warmup", "cosine"])
def test_beta_schedules_against_float64(kind):
    beta, warmup, total = 1.5, 40, 200
    graph = tf.function(lambda s: schedules.beta_schedule(s, beta, kind, warmup, total))
    for k in [0, 1, 20, 39, 40, 41, 100, 199, 200, 250]:
        if kind == "constant":
            want = beta
        elif kind == "linear_warmup":
            want = beta * min(1.0, k / warmup)
        else:
            want = beta * (1 - math.cos(math.pi * min(k, total) / total)) / 2
        got = float(graph(tf.constant(k, tf.int32)))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (kind, k)


def test_tau_endpoints_float64():
    for k, want in [(0, 0.99), (500, 1 - 0.01 * 0.5), (1000, 1.0), (2000, 1.0)]:
        assert float(schedules.target_ema_tau(tf.constant(k), 0.99, 1000)) == pytest.approx(want, abs=1e-7)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Unknown learning-rate scaling"):
        schedules.scaled_learning_rate(0.1, 256, "cube")
    with pytest.raises(ValueError, match="choose one of"):
        schedules.LRConfig(0.1, 256, 1, 10, schedule="step")
    with pytest.raises(ValueError, match="warmup_steps must lie in"):
        schedules.LRConfig(0.1, 256, 20, 10)
    with pytest.raises(ValueError, match="Unknown beta schedule"):
        schedules.beta_schedule(tf.constant(0), 1.0, "exp")
