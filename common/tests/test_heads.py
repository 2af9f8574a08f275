"""MLP and LinearHead against numpy, the reference's parameter tree and the
original release's checkpoint features."""
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from common.networks import heads, layers
from common.tests.test_layers import check_init_moments, np_batch_stats, np_bn

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden"


def _fixture_dir(name):
    path = ROOT / "tools" / "fixtures" / "original" / name
    assert (path / "features.npz").exists(), f"release fixture {path} is missing from the checkout"
    return path


def test_mlp_parameter_counts_release_and_deepmind():
    release = heads.MLP(2048, 4096, 256)
    deepmind = heads.MLP(2048, 4096, 256, use_hidden_bias=True)
    assert layers.count_params(release) == 2048 * 4096 + 2 * 4096 + 4096 * 256 == 9_445_376
    assert layers.count_params(deepmind) == 9_445_376 + 4096
    assert layers.count_params(heads.MLP(256, 4096, 256, use_hidden_bias=True)) == 2_109_440


def test_mlp_haiku_param_map_matches_reference_tree():
    tree = {}
    for line in (GOLDEN / "byol_r50_param_tree.txt").read_text().splitlines():
        parts = line.split(" ", 3)
        if parts[0] in ("param", "state") and parts[1].split("/")[0] in ("projector", "predictor"):
            shape = tuple(int(d) for d in parts[3].split(")")[0].strip("(").split(",") if d.strip())
            tree[f"{parts[1]}/{parts[2]}"] = shape
    projector = heads.MLP(2048, 4096, 256, use_hidden_bias=True, bn=layers.BNConfig(semantics="haiku"))
    predictor = heads.MLP(256, 4096, 256, use_hidden_bias=True, bn=layers.BNConfig(semantics="haiku"))
    pmap = {**projector.haiku_param_map("projector/"), **predictor.haiku_param_map("predictor/")}
    assert set(pmap) == set(tree)
    for key, shape in tree.items():
        assert pmap[key].shape.num_elements() == math.prod(shape), key


def _np_mlp_train(x, mlp):
    h = x.astype(np.float64) @ mlp.linears[0].w.numpy()
    if mlp.linears[0].b is not None:
        h = h + mlp.linears[0].b.numpy()
    mean, var = np_batch_stats(h)
    bn = mlp.batchnorms[0]
    h = np.maximum(np_bn(h, mean, var, bn.scale.numpy(), bn.offset.numpy()), 0)
    return h @ mlp.linears[1].w.numpy(), h, mean, var


@pytest.mark.parametrize("bias", [False, True])
def test_mlp_hidden_bn_matches_numpy(bias):
    rng = np.random.default_rng(1)
    mlp = heads.MLP(5, 7, 3, use_hidden_bias=bias, bn=layers.BNConfig(momentum=0.5))
    bn = mlp.batchnorms[0]
    bn.scale.assign(rng.uniform(0.5, 1.5, 7).astype(np.float32))
    bn.offset.assign(rng.uniform(-0.5, 0.5, 7).astype(np.float32))
    if bias:
        mlp.linears[0].b.assign(rng.standard_normal(7).astype(np.float32))
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y, hidden = mlp(tf.constant(x), training=True, return_hidden=True)
    want_y, want_h, mean, var = _np_mlp_train(x, mlp)
    np.testing.assert_allclose(y.numpy(), want_y, atol=1e-5)
    assert len(hidden) == 1
    np.testing.assert_allclose(hidden[0].numpy(), want_h, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * mean, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-5)
    # Inference: the moving statistics replace the batch's.
    h = x.astype(np.float64) @ mlp.linears[0].w.numpy() + (mlp.linears[0].b.numpy() if bias else 0)
    h = np.maximum(np_bn(h, 0.5 * mean, 0.5 + 0.5 * var, bn.scale.numpy(), bn.offset.numpy()), 0)
    np.testing.assert_allclose(mlp(tf.constant(x), training=False).numpy(), h @ mlp.linears[1].w.numpy(),
                               atol=1e-5)


def test_mlp_layout_without_and_with_output_bn():
    with tf.name_scope("online"):
        mlp = heads.MLP(5, 7, 3, num_layers=3, name="projector")
    names = sorted(v.name for v in mlp.trainable_variables)
    assert names == sorted(["online/projector/linear_0/w:0", "online/projector/linear_1/w:0",
                            "online/projector/linear_2/w:0", "online/projector/batchnorm_0/scale:0",
                            "online/projector/batchnorm_0/offset:0", "online/projector/batchnorm_1/scale:0",
                            "online/projector/batchnorm_1/offset:0"])
    x = tf.random.normal([4, 5])
    y, hidden = mlp(x, training=True, return_hidden=True)
    assert y.shape == (4, 3) and [h.shape for h in hidden] == [(4, 7), (4, 7)]
    # Without an output BN the output is a plain linear map of the last hidden layer.
    np.testing.assert_allclose(y.numpy(), hidden[-1].numpy() @ mlp.linears[-1].w.numpy(), atol=1e-5)
    out_bn = heads.MLP(5, 7, 3, output_bn=True)
    assert out_bn.output_batchnorm.offset is None and "batchnorm_1" in out_bn.output_batchnorm.name
    y = out_bn(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    single = heads.MLP(5, 7, 3, num_layers=1)
    assert [v.name.split("/")[-1] for v in single.trainable_variables] == ["w:0"]


def test_linear_head():
    rng = np.random.default_rng(0)
    probe = heads.LinearHead(6, 4)
    assert sorted(v.name for v in probe.variables) == ["probe/linear/b:0", "probe/linear/w:0"]
    probe.linear.b.assign(rng.standard_normal(4).astype(np.float32))
    x = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(probe(tf.constant(x)).numpy(),
                               x @ probe.linear.w.numpy() + probe.linear.b.numpy(), atol=1e-5)
    zero = heads.LinearHead(6, 4, zero_init=True)
    np.testing.assert_array_equal(zero(tf.constant(x)).numpy(), 0.0)
    assert layers.count_params(probe) == 6 * 4 + 4


def test_release_heads_match_original_checkpoint_features():
    fixture = _fixture_dir("cbyol_r50_s64")
    ckpt = str(fixture / "ckpt-5")
    f = np.load(fixture / "features.npz")
    bn = layers.BNConfig(semantics="keras")
    head = heads.MLP(256, 64, 32, bn=bn, kernel_init="keras")
    layers.assign_from_checkpoint(head.release_checkpoint_map("model/_projection_head/"), ckpt)
    out, hidden = head(tf.constant(f["online_resnet_out"]), training=False, return_hidden=True)
    np.testing.assert_allclose(hidden[0].numpy(), f["online_head_hidden"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), f["online_head_out"], rtol=1e-4, atol=1e-5)

    target_projector = heads.MLP(32, 64, 32, bn=bn)
    layers.assign_from_checkpoint(target_projector.release_checkpoint_map("model/_target_projector/"), ckpt)
    y = target_projector(tf.math.l2_normalize(tf.constant(f["target_head_out"]), -1), training=False)
    np.testing.assert_allclose(y.numpy(), f["target_projector_out"], rtol=1e-4, atol=1e-5)

    probe = heads.LinearHead(32, 10, name="supervised_head")
    layers.assign_from_checkpoint(probe.release_checkpoint_map(), ckpt)
    np.testing.assert_allclose(probe(tf.constant(f["online_head_out"])).numpy(), f["supervised_logits"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["haiku", "keras", "normal"])
def test_mlp_and_probe_kernels_follow_the_chosen_initializer(name):
    tf.random.set_seed(8)
    mlp = heads.MLP(256, 384, 128, num_layers=3, use_hidden_bias=True, kernel_init=name)
    for linear in mlp.linears:
        check_init_moments(linear.w.numpy(), name, linear.in_features)
        if linear.b is not None:
            np.testing.assert_array_equal(linear.b.numpy(), 0.0)
    probe = heads.LinearHead(384, 100, kernel_init=name)
    check_init_moments(probe.linear.w.numpy(), name, 384)
    np.testing.assert_array_equal(probe.linear.b.numpy(), 0.0)
    # zero_init wins over kernel_init (the release's zero_init_logits_layer).
    np.testing.assert_array_equal(
        heads.LinearHead(384, 10, zero_init=True, kernel_init=name).linear.w.numpy(), 0.0)
