"""C-SimCLR's model wiring: which rows reach the loss as view 1 and view 2, what the probe reads,
the CEB settings and seed handed to the loss, and where the gradients go."""

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.ceb import settings as ceb_settings
from common.training import models
from csimclr import model


_record = testing.record_calls



def distinct_views(n=4, size=16):
    return testing.distinct_views(n, size, seed=31)


def make(probe_input="backbone", sampling=True):
    heads = models.HeadsConfig(hidden_dim=16, out_dim=8, probe_input=probe_input)
    ceb = ceb_settings.CEBConfig(kappa_e=512.0, kappa_b=7.0, beta=0.5,
                                 beta_schedule="linear_warmup", warmup_steps=4)
    return model.CSimCLR(testing.tiny_resnet(), heads, 4, ceb, sampling=sampling,
                         double_batch_trick=False)


def independent(m, b, perm):
    """Encoder and projector run on the 2B images of both views in the row order `perm` (BN
    statistics do not depend on the order), returned in the order [view 1; view 2]."""
    images = np.concatenate([b["view1"].numpy(), b["view2"].numpy()])[perm]
    feats = m.encoder(tf.constant(images), training=True)
    hidden = m.projector(feats, training=True)
    inv = np.argsort(perm)
    return feats.numpy()[inv], hidden.numpy()[inv]


@pytest.mark.parametrize("probe_input", ["backbone", "projection"])
def test_rows_of_view_one_then_view_two_reach_the_loss_and_the_probe(monkeypatch, probe_input):
    m = make(probe_input)
    calls = _record(monkeypatch, model.losses, "contrastive_ceb_loss")
    probe_calls = _record(monkeypatch, type(m), "probe_loss")
    b = distinct_views()
    seed = tf.constant([9, 10])
    step = tf.constant(1, tf.int64)
    loss, metrics = m.loss(b, step, seed)
    assert len(calls) == 1 and len(probe_calls) == 1
    perm = np.random.default_rng(0).permutation(8)
    feats, hidden = independent(m, b, perm)
    a = calls[0]
    np.testing.assert_allclose(a["hidden"].numpy(), hidden, rtol=1e-4, atol=1e-4)
    # Swapped halves would be far off: the two views' projections differ row by row.
    assert np.abs(hidden[:4] - hidden[4:]).max() > 0.1
    # CEB settings, beta from its schedule at this step (linear warm-up: 0.5 * 1/4), the seed.
    assert (a["kappa_e"], a["kappa_b"], a["sampling"], a["double_batch_trick"]) == (
        512.0, 7.0, True, False)
    np.testing.assert_allclose(float(a["beta"]), 0.5 * 1 / 4, rtol=1e-6)
    np.testing.assert_array_equal(a["seed"].numpy(), [9, 10])
    np.testing.assert_allclose(metrics["beta"].numpy(), 0.125, rtol=1e-6)
    # The probe reads both views' rows (view 1 first) with the labels repeated.
    want = feats if probe_input == "backbone" else hidden
    np.testing.assert_allclose(probe_calls[0]["features"].numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe_calls[0]["labels"].numpy(),
                                  np.tile(b["label"].numpy(), 2))
    # The total is the CEB loss plus the probe's cross-entropy, recomputed in float64.
    logits = want.astype(np.float64) @ m.probe.linear.w.numpy() + m.probe.linear.b.numpy()
    labels = np.tile(b["label"].numpy(), 2)
    mx = logits.max(1, keepdims=True)
    probe = np.mean(mx[:, 0] + np.log(np.exp(logits - mx).sum(1)) - logits[np.arange(8), labels])
    np.testing.assert_allclose(loss.numpy() - metrics["ssl_loss"].numpy(), probe, rtol=1e-4,
                               atol=1e-4)


def test_gradients_reach_encoder_projector_and_probe_only_from_their_terms():
    m = make()
    b = distinct_views()
    with tf.GradientTape(persistent=True) as tape:
        loss, metrics = m.loss(b, tf.constant(2, tf.int64), tf.constant([1, 2]))
    variables = list(m.trainable_variables)
    grads = tape.gradient(loss, variables)
    connected = {v.ref() for v, g in zip(variables, grads) if g is not None}
    assert connected == {v.ref() for v in m.optimized_variables()}
    for v in list(m.projector.trainable_variables) + list(m.probe.trainable_variables):
        g = grads[[u.ref() for u in variables].index(v.ref())]
        assert np.abs(g.numpy()).max() > 0, v.name
    assert list(tape.gradient(metrics["probe_loss"], m.encoder.trainable_variables)) == [None] * len(
        m.encoder.trainable_variables)
    assert list(tape.gradient(metrics["ssl_loss"], m.probe.trainable_variables)) == [None, None]
    del tape


def test_the_loss_needs_the_step_seed():
    m = make()
    b = distinct_views()
    l1, _ = m.loss(b, tf.constant(0, tf.int64), tf.constant([1, 2]))
    l2, _ = m.loss(b, tf.constant(0, tf.int64), tf.constant([1, 2]))
    l3, _ = m.loss(b, tf.constant(0, tf.int64), tf.constant([3, 4]))
    assert l1.numpy() == l2.numpy() != l3.numpy()
