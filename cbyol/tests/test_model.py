"""C-BYOL's model: its variables, the vMF predictor in the step, and the backward encoder's wiring."""
import math

import numpy as np
import tensorflow as tf

from cbyol import model
from common.training import models
from common import testing

T = 10


def make(num_classes, beta=1.0):
    return model.CBYOL(testing.tiny_resnet(), testing.tiny_heads(),
                       models.TargetConfig(base_ema=0.9, total_steps=T), num_classes,
                       models.CEBConfig(kappa_e=1024.0, kappa_b=10.0, beta=beta))


def refs(variables):
    return {v.ref() for v in variables}


def batch(n=4):
    return next(iter(testing.synthetic_dataset_fn(n)(None)))


def test_optimizer_and_ema_variables():
    m = make(4)
    opt = refs(m.optimized_variables())
    assert opt == refs(list(m.encoder.trainable_variables) + list(m.projector.trainable_variables)
                       + list(m.predictor.trainable_variables)
                       + list(m.backward_projector.trainable_variables)
                       + list(m.probe.trainable_variables))
    assert not opt & refs(m.target_encoder.variables + m.target_projector.variables)
    # b(z|y)'s mean network is trained, never averaged.
    assert not refs(m.backward_projector.variables) & refs(m.target_variables())
    for o, t in zip(m.online_variables(), m.target_variables()):
        assert t.name == "target_" + o.name


def _grads(m, beta_seed=(3, 4)):
    with tf.GradientTape() as tape:
        loss, metrics = m.loss(batch(), tf.constant(0, tf.int64), tf.constant(beta_seed))
    return loss, metrics, dict(zip([v.name for v in m.optimized_variables()],
                                   tape.gradient(loss, m.optimized_variables())))


def test_backward_projector_learns_only_from_the_compression_term():
    m = make(4, beta=1.0)
    _, metrics, g = _grads(m)
    bp = [n for n in g if n.startswith("backward_projector")]
    assert bp and all(g[n] is not None for n in bp)
    assert max(float(tf.reduce_max(tf.abs(g[n]))) for n in bp) > 0
    m0 = make(4, beta=0.0)
    _, _, g0 = _grads(m0)
    assert all(float(tf.reduce_max(tf.abs(g0[n]))) == 0.0 for n in bp)
    for k in ("byol_loss", "i_xzx_y", "h_e_zx_x", "h_b_zx_y", "beta", "probe_acc"):
        assert np.isfinite(metrics[k].numpy())


def test_loss_is_deterministic_in_the_seed_and_varies_with_it():
    m = make(4)
    b = batch()
    step = tf.constant(0, tf.int64)
    l1, _ = m.loss(b, step, tf.constant([1, 2]))
    l2, _ = m.loss(b, step, tf.constant([1, 2]))
    l3, _ = m.loss(b, step, tf.constant([5, 6]))
    # BN moving statistics change between calls, but training-mode outputs do not depend on them.
    assert l1.numpy() == l2.numpy()
    assert l1.numpy() != l3.numpy()


def test_target_follows_ema_through_training_steps(tmp_path):
    tr = testing.tiny_pretrainer(lambda n: make(n), str(tmp_path), steps=3,
                                 print_fn=lambda *a, **k: None)
    m = tr.method
    expected = [v.numpy().astype(np.float64) for v in m.target_variables()]
    backward0 = [v.numpy() for v in m.backward_projector.trainable_variables]
    for k in range(3):
        tr.run_steps(1)
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * k / T) + 1) / 2
        expected = [e + (1 - tau) * (o.numpy() - e) for e, o in zip(expected, m.online_variables())]
    for e, t in zip(expected, m.target_variables()):
        np.testing.assert_allclose(t.numpy(), e, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b.numpy())
               for a, b in zip(backward0, m.backward_projector.trainable_variables))
