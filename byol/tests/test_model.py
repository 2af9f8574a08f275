"""BYOL's model and training step: which variables move how, the EMA target, the tau schedule."""
import math

import numpy as np
import pytest
import tensorflow as tf

from byol import model
from common.training import models
from common import testing

T = 10
BASE_EMA = 0.9


def make(num_classes):
    return model.BYOL(testing.tiny_resnet(), testing.tiny_heads(),
                      models.TargetConfig(base_ema=BASE_EMA, total_steps=T), num_classes)


def refs(variables):
    return {v.ref() for v in variables}


def test_optimizer_gets_online_predictor_probe_and_never_the_target():
    m = make(4)
    opt = refs(m.optimized_variables())
    expected = refs(list(m.encoder.trainable_variables) + list(m.projector.trainable_variables)
                    + list(m.predictor.trainable_variables) + list(m.probe.trainable_variables))
    assert opt == expected
    assert not opt & refs(m.target_encoder.variables + m.target_projector.variables)
    # The EMA pairs every online encoder/projector parameter with its target twin, same layout.
    assert len(m.online_variables()) == len(m.target_variables()) > 0
    for o, t in zip(m.online_variables(), m.target_variables()):
        assert t.name == "target_" + o.name and o.shape == t.shape
    assert not refs(m.target_variables()) & refs(m.online_variables())


def test_target_is_the_ema_of_the_recorded_online_parameters(tmp_path):
    tr = testing.tiny_pretrainer(make, str(tmp_path), steps=4, print_fn=lambda *a, **k: None)
    m = tr.method
    expected = [v.numpy().astype(np.float64) for v in m.target_variables()]
    init_online = [v.numpy() for v in m.online_variables()]
    # Independent initialisation, as in both references.
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(init_online, m.target_variables()))
    for k in range(4):
        tr.run_steps(1)
        tau = 1 - (1 - BASE_EMA) * (math.cos(math.pi * min(k, T) / T) + 1) / 2
        online = [v.numpy() for v in m.online_variables()]
        expected = [e + (1 - tau) * (o - e) for e, o in zip(expected, online)]
        for e, t in zip(expected, m.target_variables()):
            np.testing.assert_allclose(t.numpy(), e, rtol=1e-5, atol=1e-6)
    assert abs(tr.metrics.result()["tau"] - np.mean(
        [1 - (1 - BASE_EMA) * (math.cos(math.pi * k / T) + 1) / 2 for k in range(4)])) < 1e-6


def test_tau_schedule_matches_deepmind_golden():
    golden = np.load("tools/golden/byol_golden.npz")
    for tag in ("e1000", "e300"):
        total, _, _, base_ema, _ = golden[f"b/config_{tag}"]
        m_cfg = models.TargetConfig(base_ema=float(base_ema), total_steps=int(total))
        fn = tf.function(lambda s, c=m_cfg: models.OnlineTargetMethod.tau(
            type("M", (), {"target_cfg": c})(), s))
        got = np.array([fn(tf.constant(s, tf.int32)).numpy() for s in golden["b/steps"]])
        np.testing.assert_allclose(got, golden[f"b/tau_{tag}"], rtol=1e-6, atol=1e-7)


def test_no_predictor_option_reproduces_the_release_scripts():
    m = model.BYOL(testing.tiny_resnet(), testing.tiny_heads(), models.TargetConfig(), 4,
                   use_predictor=False)
    assert m.predictor is None
    batch = next(iter(testing.synthetic_dataset_fn(4)(None)))
    loss, metrics = m.loss(batch, tf.constant(0, tf.int64), tf.constant([1, 2]))
    assert np.isfinite(loss.numpy()) and "byol_loss" in metrics


@pytest.mark.parametrize("probe_input,dim", [("backbone", 32), ("projection", 8)])
def test_probe_reads_backbone_or_projection(probe_input, dim):
    heads = models.HeadsConfig(hidden_dim=16, out_dim=8, probe_input=probe_input)
    m = model.BYOL(testing.tiny_resnet(), heads, models.TargetConfig(), 4)
    assert m.probe.in_dim == dim
    assert m.features(tf.zeros([2, 16, 16, 3])).shape == (2, dim)


# ------------------------------------------------------------------------------ wiring

_record = testing.record_calls



def distinct_views(n=4, size=16):
    return testing.distinct_views(n, size, seed=51)


@pytest.mark.parametrize("probe_input", ["backbone", "projection"])
def test_predictions_and_targets_reach_the_loss_view_by_view(monkeypatch, probe_input):
    heads = models.HeadsConfig(hidden_dim=16, out_dim=8, probe_input=probe_input)
    m = model.BYOL(testing.tiny_resnet(), heads, models.TargetConfig(), 4, byol_loss_weight=0.6)
    calls = _record(monkeypatch, model.losses, "byol_loss")
    probe_calls = _record(monkeypatch, type(m), "probe_loss")
    b = distinct_views()
    loss, metrics = m.loss(b, tf.constant(0, tf.int64), tf.constant([1, 2]))
    a = calls[0]
    close = dict(rtol=1e-5, atol=1e-5)
    outs = {}
    for k in (1, 2):
        v = b[f"view{k}"]
        feats = m.encoder(v, training=True)
        proj = m.projector(feats, training=True)
        outs[k] = (feats, proj)
        np.testing.assert_allclose(a[f"p{k}"].numpy(), m.predictor(proj, training=True).numpy(),
                                   **close, err_msg=f"p{k}")
        target = m.target_projector(m.target_encoder(v, training=True), training=True)
        np.testing.assert_allclose(a[f"t{k}"].numpy(), target.numpy(), **close, err_msg=f"t{k}")
    assert np.abs(a["t1"].numpy() - a["t2"].numpy()).max() > 0.1
    assert a["weight"] == 0.6
    want = outs[1][0] if probe_input == "backbone" else outs[1][1]
    np.testing.assert_allclose(probe_calls[0]["features"].numpy(), want.numpy(), **close)
    np.testing.assert_array_equal(probe_calls[0]["labels"].numpy(), b["label"].numpy())
    # Each prediction regresses onto the target of the other view (float64).
    def unit(x):
        x = x.numpy().astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    reg = (2 - 2 * np.sum(unit(a["p1"]) * unit(a["t2"]), 1)) + (
        2 - 2 * np.sum(unit(a["p2"]) * unit(a["t1"]), 1))
    np.testing.assert_allclose(metrics["byol_loss"].numpy(), reg.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss.numpy() - metrics["probe_loss"].numpy(), 0.6 * reg.mean(),
                               rtol=1e-5, atol=1e-5)


def test_gradients_reach_online_predictor_probe_never_the_target():
    m = make(4)
    with tf.GradientTape(persistent=True) as tape:
        loss, metrics = m.loss(distinct_views(), tf.constant(0, tf.int64), tf.constant([1, 2]))
    variables = list(m.trainable_variables)
    grads = tape.gradient(loss, variables)
    assert {v.ref() for v, g in zip(variables, grads) if g is not None} == refs(
        m.optimized_variables())
    for v, g in zip(variables, grads):
        if v.ref() in refs(list(m.predictor.trainable_variables) + list(m.probe.trainable_variables)):
            assert np.abs(g.numpy()).max() > 0, v.name
    assert list(tape.gradient(metrics["probe_loss"], m.encoder.trainable_variables)) == [None] * len(
        m.encoder.trainable_variables)
    del tape
