"""SimCLR's model wiring: view 1's rows then view 2's reach the NT-Xent loss, the probe reads the
backbone (or projection) of both views, gradients reach the encoder, projector and probe only."""

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.training import models
from simclr import model


_record = testing.record_calls



def distinct_views(n=4, size=16):
    return testing.distinct_views(n, size, seed=41)


def make(probe_input="backbone"):
    heads = models.HeadsConfig(hidden_dim=16, out_dim=8, probe_input=probe_input)
    return model.SimCLR(testing.tiny_resnet(), heads, 4, temperature=0.3, double_batch_trick=False)


@pytest.mark.parametrize("probe_input", ["backbone", "projection"])
def test_rows_and_probe_input(monkeypatch, probe_input):
    m = make(probe_input)
    calls = _record(monkeypatch, model.losses, "contrastive_loss")
    probe_calls = _record(monkeypatch, type(m), "probe_loss")
    b = distinct_views()
    loss, metrics = m.loss(b, tf.constant(0, tf.int64), tf.constant([1, 2]))
    # Encoder and projector on both views in a shuffled row order (BN statistics are order-free).
    perm = np.random.default_rng(1).permutation(8)
    images = np.concatenate([b["view1"].numpy(), b["view2"].numpy()])[perm]
    feats = m.encoder(tf.constant(images), training=True)
    hidden = m.projector(feats, training=True)
    inv = np.argsort(perm)
    feats, hidden = feats.numpy()[inv], hidden.numpy()[inv]
    a = calls[0]
    np.testing.assert_allclose(a["hidden"].numpy(), hidden, rtol=1e-4, atol=1e-4)
    assert np.abs(hidden[:4] - hidden[4:]).max() > 0.1
    assert (a["temperature"], a["double_batch_trick"]) == (0.3, False)
    want = feats if probe_input == "backbone" else hidden
    np.testing.assert_allclose(probe_calls[0]["features"].numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(probe_calls[0]["labels"].numpy(), np.tile(b["label"].numpy(), 2))
    # NT-Xent at T = 0.3 without the double batch, both directions, in float64.
    u = hidden.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x, y = u[:4], u[4:]

    def xent(logits):
        mx = logits.max(1, keepdims=True)
        return mx[:, 0] + np.log(np.exp(logits - mx).sum(1)) - np.diag(logits)
    ssl = np.mean(xent(x @ y.T / 0.3) + xent(y @ x.T / 0.3))
    logits = want.astype(np.float64) @ m.probe.linear.w.numpy() + m.probe.linear.b.numpy()
    labels = np.tile(b["label"].numpy(), 2)
    mx = logits.max(1, keepdims=True)
    probe = np.mean(mx[:, 0] + np.log(np.exp(logits - mx).sum(1)) - logits[np.arange(8), labels])
    np.testing.assert_allclose(loss.numpy(), ssl + probe, rtol=1e-4, atol=1e-4)


def test_gradients_reach_encoder_projector_and_probe_only():
    m = make()
    with tf.GradientTape(persistent=True) as tape:
        loss, metrics = m.loss(distinct_views(), tf.constant(0, tf.int64), tf.constant([1, 2]))
    variables = list(m.trainable_variables)
    grads = tape.gradient(loss, variables)
    assert {v.ref() for v, g in zip(variables, grads) if g is not None} == {
        v.ref() for v in m.optimized_variables()}
    assert list(tape.gradient(metrics["probe_loss"], m.encoder.trainable_variables)) == [None] * len(
        m.encoder.trainable_variables)
    del tape
