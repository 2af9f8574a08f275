"""The EMA update against its formula, applied to recorded values."""
import numpy as np
import pytest
import tensorflow as tf

from common.training import ema


def test_ema_matches_formula_over_steps():
    rng = np.random.default_rng(0)
    online = [tf.Variable(rng.normal(size=(3, 2)).astype(np.float32)),
              tf.Variable(rng.normal(size=(4,)).astype(np.float32))]
    target = [tf.Variable(rng.normal(size=(3, 2)).astype(np.float32)),
              tf.Variable(rng.normal(size=(4,)).astype(np.float32))]
    expected = [t.numpy().astype(np.float64) for t in target]
    for tau in (0.9, 0.99, 0.5):
        for o in online:  # the online weights move between updates
            o.assign_add(rng.normal(size=o.shape).astype(np.float32))
        ema.ema_update(target, online, tau)
        expected = [tau * e + (1 - tau) * o.numpy() for e, o in zip(expected, online)]
    for t, e in zip(target, expected):
        np.testing.assert_allclose(t.numpy(), e, rtol=1e-5, atol=1e-6)


def test_tau_one_freezes_and_tau_zero_copies():
    o, t = tf.Variable([1.0, 2.0]), tf.Variable([5.0, -1.0])
    ema.ema_update([t], [o], 1.0)
    np.testing.assert_array_equal(t.numpy(), [5.0, -1.0])
    ema.ema_update([t], [o], 0.0)
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        ema.ema_update([tf.Variable([1.0])], [tf.Variable([1.0, 2.0])], 0.5)
    with pytest.raises(ValueError, match="variables"):
        ema.ema_update([tf.Variable([1.0])], [], 0.5)
