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
