"""Mixed precision: what runs in which dtype, dynamic loss scaling, numerics against float32."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.networks import heads as heads_lib
from common.networks import resnet as resnet_lib
from common.training import precision
from common.training import trainer as trainer_lib


def _ops(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return graph.get_operations()


def test_networks_compute_in_bfloat16_and_hand_float32_out_with_float32_variables():
    tf.random.set_seed(0)
    net = resnet_lib.ResNet(testing.tiny_resnet(16))
    head = heads_lib.MLP(net.feature_dim, 16, 8, num_layers=2)
    x = tf.random.normal([4, 16, 16, 3])

    def f(x):
        with precision.policy("bfloat16"):
            return head(net(x, training=True), training=True)

    ops = _ops(f, x)
    convs = [op for op in ops if op.type == "Conv2D"]
    matmuls = [op for op in ops if op.type == "MatMul"]
    assert convs and matmuls
    assert {op.get_attr("T") for op in convs + matmuls} == {tf.bfloat16}
    with precision.policy("bfloat16"):
        y = head(net(x, training=True), training=True)
    assert y.dtype == tf.float32
    assert {v.dtype for v in net.variables + head.variables} == {tf.float32}
    # Outside the policy nothing changes: float32 convolutions.
    assert {op.get_attr("T") for op in _ops(lambda x: net(x, training=True), x)
            if op.type == "Conv2D"} == {tf.float32}


def test_bfloat16_features_match_float32_within_bfloat16_rounding():
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operation); through
    # the tiny ResNet's 17 layers, errors of that size add up to about 1% of the features' norm:
    # the relative error must stay under 3% (float16, 11 bits, 8x less).
    tf.random.set_seed(1)
    net = resnet_lib.ResNet(testing.tiny_resnet(16))
    x = tf.random.normal([8, 16, 16, 3])
    ref = net(x, training=False).numpy()
    with precision.policy("bfloat16"):
        low = net(x, training=False).numpy()
    error = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    assert 0 < error < 0.03, error  # > 0: it really ran in another dtype


def _pretrainer(tmp_path, name, prec):
    cfg = testing.tiny_train_config(str(tmp_path / name), steps=2)
    cfg = dataclasses.replace(cfg, precision=prec)
    return trainer_lib.Pretrainer(testing.ToyContrastive, cfg, None, None,
                                  tf.distribute.get_strategy(),
                                  dataset_fn=testing.synthetic_dataset_fn(8, 16, 4),
                                  num_classes=4, print_fn=lambda *a, **k: None)


def _weights(tr):
    return [v.numpy() for v in tr.method.trainable_variables]


@pytest.mark.parametrize("prec", [pytest.param("bfloat16", marks=pytest.mark.slow), "float16"])
def test_a_mixed_precision_step_matches_float32_and_keeps_float32_state(tmp_path, prec):
    runs = {}
    for p in ("float32", prec):
        tf.random.set_seed(3)
        tr = _pretrainer(tmp_path, p, p)
        before = _weights(tr)
        tr.run_steps(2)  # step 0 is at learning rate 0 (warm-up): the second one moves weights
        runs[p] = (tr, before, _weights(tr), tr.metrics.result())
    tr, before, after, metrics = runs[prec]
    _, before32, after32, metrics32 = runs["float32"]
    for a, b in zip(before, before32):
        np.testing.assert_array_equal(a, b)
    assert {v.dtype for v in tr.method.variables + tr.optimizer.variables} <= {tf.float32, tf.int64,
                                                                                tf.int32}
    # The loss (mean of 2 steps) is computed in float32 from low-precision features: within 2%.
    assert metrics["loss"] == pytest.approx(metrics32["loss"], rel=0.02)
    # The update (LARS: the trust ratio normalises the gradient's scale) points the same way: a
    # loss scale that was not divided out would change its size by 2^15 (weights without LARS
    # adaptation), a lost gradient would leave weights unchanged.
    deltas = np.concatenate([(a - b).ravel() for a, b in zip(after, before)])
    deltas32 = np.concatenate([(a - b).ravel() for a, b in zip(after32, before32)])
    cos = deltas @ deltas32 / np.linalg.norm(deltas) / np.linalg.norm(deltas32)
    assert cos > 0.95, cos
    assert np.linalg.norm(deltas) == pytest.approx(np.linalg.norm(deltas32), rel=0.1)
    if prec == "float16":
        assert tr.loss_scale.scale.numpy() == 2.0 ** 15  # finite step: no change before 2000
        assert int(tr.loss_scale.good_steps.numpy()) == 2
    else:
        assert tr.loss_scale is None


def test_float16_overflow_skips_the_update_halves_the_scale_and_advances_the_step(tmp_path):
    tf.random.set_seed(4)
    tr = _pretrainer(tmp_path, "f16", "float16")
    tr.loss_scale.scale.assign(3e38)  # loss x scale overflows float16 (and float32) gradients
    before = _weights(tr)
    slots = [v.numpy() for v in tr.optimizer.variables if "iterations" not in v.name]
    tr.run_steps(1)
    assert tr.step == 1
    for a, b in zip(_weights(tr), before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip([v.numpy() for v in tr.optimizer.variables if "iterations" not in v.name],
                    slots):
        np.testing.assert_array_equal(a, b)
    assert tr.loss_scale.scale.numpy() == np.float32(1.5e38)
    assert int(tr.loss_scale.good_steps.numpy()) == 0
    tr.loss_scale.scale.assign(2.0 ** 10)
    tr.run_steps(1)  # a finite step updates again
    assert tr.step == 2
    assert any(np.any(a != b) for a, b in zip(_weights(tr), before))


def test_loss_scale_grows_after_growth_steps_finite_steps_and_halves_on_overflow():
    ls = precision.LossScale(initial_scale=8.0, growth_steps=3)
    expected = []
    seen = []
    # Hand-derived: 3 finite -> 16 (count resets), overflow -> 8, 2 finite -> 8, 1 more -> 16.
    for finite, scale in [(True, 8), (True, 8), (True, 16), (False, 8), (True, 8), (True, 8),
                          (True, 16)]:
        ls.update(tf.constant(finite))
        seen.append(float(ls.scale.numpy()))
        expected.append(float(scale))
    assert seen == expected
    grads, finite = ls.unscale([tf.constant([16.0, 32.0]), tf.constant(8.0)])
    np.testing.assert_allclose(grads[0].numpy(), [1.0, 2.0])
    assert bool(finite.numpy())
    _, finite = ls.unscale([tf.constant([np.inf, 1.0])])
    assert not bool(finite.numpy())


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        precision.check("float8")
