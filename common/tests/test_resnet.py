"""ResNet against DeepMind's BYOL goldens (group e), the original release's checkpoints, the
reference's parameter trees and hand-derived shapes and parameter counts."""
import math
import pathlib
import zlib

import numpy as np
import pytest
import tensorflow as tf

from common.networks import layers, resnet
from common.tests.test_layers import np_bn, np_batch_stats, np_conv2d

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "byol_golden.npz")


@pytest.fixture(scope="module")
def golden_f64():
    return np.load(GOLDEN / "byol_golden_resnet_f64.npz")


def _fixture_dir(name):
    path = ROOT / "tools" / "fixtures" / "original" / name
    assert (path / "features.npz").exists(), f"release fixture {path} is missing from the checkout"
    return path


def regenerate_haiku_param(key, var):
    """Golden group e's weights: each one drawn from an rng seeded by crc32 of its haiku name."""
    param = key.rsplit("/", 1)[1]
    shape = var.shape.as_list()
    if param in ("scale", "offset"):
        shape = [1, 1, 1] + shape  # haiku keeps BN parameters as (1, 1, 1, C)
    r = np.random.default_rng(zlib.crc32(key.encode()))
    if param == "w":
        value = r.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))
    elif param == "scale":
        value = r.uniform(0.5, 1.5, shape)
    else:
        value = r.uniform(-0.2, 0.2, shape)
    return value.astype(np.float32)


@pytest.mark.parametrize("tag,depth,atol", [("r18", 18, 1e-4), ("r50", 50, 5e-3)])
def test_deepmind_resnet_matches_golden_group_e(golden, golden_f64, tag, depth, atol):
    cfg = resnet.deepmind_resnet18() if depth == 18 else resnet.deepmind_resnet50()
    net = resnet.ResNet(cfg)
    assert resnet.count_params(net) == int(golden[f"e/{tag}_num_params"])
    pmap = resnet.haiku_param_map(net)  # prefix res_net{depth}/~/
    params = {k: regenerate_haiku_param(k, v) for k, v in pmap.items()
              if k.rsplit("/", 1)[1] in ("w", "scale", "offset")}
    assert len(params) == len(net.trainable_variables)
    layers.assign_from_haiku(pmap, params, strict=False)

    def normalise(x):
        return tf.constant((x - IMAGENET_MEAN) / IMAGENET_STD)

    calib, test = normalise(golden["e/calib_images"]), normalise(golden["e/test_images"])
    train = net(calib, training=True).numpy()
    np.testing.assert_allclose(train, golden[f"e/{tag}_train_embedding"], atol=atol)
    np.testing.assert_allclose(train, golden_f64[f"e64/{tag}_train_embedding"], atol=atol)

    prefix = f"e/{tag}_state1/"
    state_keys = [k for k in golden.files if k.startswith(prefix)]
    assert len(state_keys) == 2 * sum(1 for k in pmap if k.endswith("/scale"))
    for key in state_keys:
        want = golden[key].reshape(-1)
        got = pmap[key[len(prefix):]].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=atol, err_msg=key)
    counter = pmap[f"res_net{depth}/~/initial_batchnorm/~/mean_ema/counter"]
    assert int(counter.numpy()) == int(golden[f"e/{tag}_counter1"]) == 1

    np.testing.assert_allclose(net(test, training=False).numpy(), golden[f"e/{tag}_eval_embedding"], atol=atol)
    np.testing.assert_allclose(net(test, training=False).numpy(), golden_f64[f"e64/{tag}_eval_embedding"],
                               atol=atol)
    np.testing.assert_allclose(net(calib, training=False).numpy(),
                               golden[f"e/{tag}_eval_embedding_calib"], atol=atol)
    assert int(counter.numpy()) == 1  # eval calls leave the statistics alone


def _parse_param_tree(path, prefix):
    entries = {}
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if parts[0] not in ("param", "state") or not parts[1].startswith(prefix):
            continue
        shape = tuple(int(d) for d in parts[3].split(")")[0].strip("(").split(",") if d.strip())
        entries[f"{parts[1]}/{parts[2]}"] = (parts[0], shape)
    return entries


def test_haiku_param_map_covers_the_reference_resnet50_tree():
    tree = _parse_param_tree(GOLDEN / "byol_r50_param_tree.txt", "res_net50/~/")
    net = resnet.ResNet(resnet.deepmind_resnet50())
    pmap = resnet.haiku_param_map(net, prefix="res_net50/~/")
    assert set(pmap) == set(tree)
    for key, (kind, shape) in tree.items():
        var = pmap[key]
        assert var.shape.num_elements() == math.prod(shape), key
        assert var.trainable == (kind == "param"), key
    assert sum(math.prod(s) for k, s in tree.values() if k == "param") == 23_508_032


def test_tiny_resnet_matches_golden_group_f_tree(golden):
    net = resnet.ResNet(resnet.deepmind_tiny_resnet())
    pmap = resnet.haiku_param_map(net, prefix="tiny_res_net/~/")
    ref = {}
    for group in ("f/online_params0/", "f/online_state0/"):
        ref.update({k[len(group):]: golden[k].shape for k in golden.files
                    if k.startswith(group + "tiny_res_net/")})
    assert set(pmap) == set(ref)
    for key, shape in ref.items():
        assert [d for d in pmap[key].shape.as_list() if d != 1] == [d for d in shape if d != 1], key
    n_ref = sum(math.prod(s) for k, s in ref.items() if k.rsplit("/", 1)[1] in ("w", "scale", "offset"))
    assert resnet.count_params(net) == n_ref
    assert net.feature_dim == 8


def test_parameter_counts_of_standard_layouts():
    # torchvision: resnet50 25,557,032 and resnet18 11,689,512 parameters, fc included.
    assert resnet.count_params(resnet.ResNet(resnet.resnet_config(50, 1, 224))) == 25_557_032 - (2048 * 1000 + 1000)
    tv18 = resnet.resnet_config(18, 1, 224, projection_shortcut="first_block_if_needed")
    assert resnet.count_params(resnet.ResNet(tv18)) == 11_689_512 - (512 * 1000 + 1000)
    # The release and DeepMind add a 1x1 projection + BN in ResNet-18's group 0 (64*64 + 2*64).
    assert resnet.count_params(resnet.ResNet(resnet.resnet_config(18, 1, 224))) == 11_176_512 + 64 * 64 + 128


def test_cifar_stem_and_fractional_width_shapes():
    net = resnet.ResNet(resnet.resnet_config(18, 0.25, 32))
    ends = net(tf.zeros([2, 32, 32, 3]), training=False, return_endpoints=True)
    assert {k: tuple(v.shape) for k, v in ends.items()} == {
        "stem": (2, 32, 32, 16), "block_group1": (2, 32, 32, 16), "block_group2": (2, 16, 16, 32),
        "block_group3": (2, 8, 8, 64), "block_group4": (2, 4, 4, 128), "pooled": (2, 128)}
    assert net.feature_dim == 128
    assert net.initial_conv.w.shape == (3, 3, 3, 16)
    # round(c * 0.3): 64 -> 19, 128 -> 38, 256 -> 77 (76.8), 512 -> 154 (153.6)
    cfg = resnet.ResNetConfig(depth=50, width_multiplier=0.3)
    assert cfg.group_channels == ((19, 76), (38, 152), (77, 308), (154, 616))
    assert cfg.stem_width == 19 and cfg.feature_dim == 616
    imagenet = resnet.ResNet(resnet.deepmind_resnet18(width_multiplier=0.125))
    ends = imagenet(tf.zeros([1, 64, 64, 3]), training=True, return_endpoints=True)
    assert tuple(ends["stem"].shape) == (1, 16, 16, 8) and tuple(ends["pooled"].shape) == (1, 64)


def test_variable_names_follow_the_module_path():
    with tf.name_scope("online"):
        net = resnet.ResNet(resnet.resnet_config(18, 0.125, 32))
    names = {v.name for v in net.variables}
    assert "online/resnet/block_group_1/block_0/conv_1/w:0" in names
    assert "online/resnet/block_group_1/block_0/shortcut_batchnorm/scale:0" in names
    assert "online/resnet/initial_batchnorm/moving_variance:0" in names
    for v in net.trainable_variables:
        leaf = v.name.split("/")[-1]
        assert leaf in ("w:0", "scale:0", "offset:0"), v.name
        assert (leaf == "w:0") != ("batchnorm" in v.name), v.name


def test_zero_init_of_last_bn():
    release = resnet.ResNet(resnet.resnet_config(18, 0.125, 32))
    deepmind = resnet.ResNet(resnet.deepmind_resnet18(width_multiplier=0.125))
    r50 = resnet.ResNet(resnet.deepmind_resnet50(width_multiplier=0.125))
    for net, zero in ((release, True), (deepmind, False), (r50, True)):
        for group in net.block_groups:
            for block in group.blocks:
                np.testing.assert_array_equal(block.batchnorms[-1].scale.numpy(), 0.0 if zero else 1.0)
                np.testing.assert_array_equal(block.batchnorms[0].scale.numpy(), 1.0)


def _release_features_match(fixture, cfg, branches):
    features = np.load(fixture / "features.npz")
    x = tf.constant(features["x_normalized"])
    for prefix, tag in branches:
        net = resnet.ResNet(cfg)
        layers.assign_from_checkpoint(resnet.release_checkpoint_map(net, prefix), str(fixture / "ckpt-5"))
        ends = net(x, training=False, return_endpoints=True)
        for ours, theirs in (("stem", "stem"), ("block_group1", "block_group1"), ("block_group2", "block_group2"),
                             ("block_group3", "block_group3"), ("block_group4", "block_group4"),
                             ("pooled", "resnet_out")):
            want = features[f"{tag}_{theirs}"]
            np.testing.assert_allclose(ends[ours].numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                       err_msg=f"{tag} {ours}")


def test_release_resnet18_cifar_stem_matches_original_checkpoint_features():
    fixture = _fixture_dir("csimclr_r18_s32")
    _release_features_match(fixture, resnet.resnet_config(18, 0.125, 32), [("model/_resnet/", "online")])


def test_release_resnet50_fixed_padding_matches_original_checkpoint_features():
    fixture = _fixture_dir("cbyol_r50_s64")
    cfg = resnet.resnet_config(50, 0.125, 64)
    _release_features_match(fixture, cfg, [("model/_resnet/", "online"), ("model/_target_resnet/", "target")])
    # The same weights with 'same' padding shift every strided window: the features change.
    features = np.load(fixture / "features.npz")
    same = resnet.ResNet(resnet.resnet_config(50, 0.125, 64, padding="same"))
    layers.assign_from_checkpoint(resnet.release_checkpoint_map(same), str(fixture / "ckpt-5"))
    out = same(tf.constant(features["x_normalized"]), training=False).numpy()
    assert np.abs(out - features["online_resnet_out"]).max() > 1e-2


# --------------------------------------------------------------------- selective kernel, SE, ResNet-D

def _bottleneck_params(c_in, f, sk_ratio, se_ratio):
    """Hand count of one projecting bottleneck block (see the structure in common/resnet.py)."""
    n = c_in * 4 * f + 2 * 4 * f                                   # shortcut conv + BN
    n += c_in * f + 2 * f                                          # conv_0 + BN
    if sk_ratio > 0:
        mid = max(int(f * sk_ratio), 32)
        n += 9 * f * 2 * f + 2 * 2 * f + f * mid + 2 * mid + mid * 2 * f
    else:
        n += 9 * f * f + 2 * f
    n += f * 4 * f + 2 * 4 * f                                     # conv_2 + BN
    if se_ratio > 0:
        r = max(1, int(f * se_ratio))
        n += 4 * f * r + r + r * 4 * f + 4 * f
    return n


def test_selective_kernel_and_squeeze_excite_parameter_counts():
    cfg = resnet.ResNetConfig(depth=50, blocks_per_group=(1, 1, 1, 1), channels_per_group=(16, 32, 64, 128),
                              stem_channels=8, sk_ratio=0.0625, se_ratio=0.25)
    net = resnet.ResNet(cfg)
    # Worked by hand: ResNet-D stem 572, groups 1097 + 3218 + 10724 + 38792.
    assert resnet.count_params(net) == 54_403
    stem = 3 * 3 * 3 * 4 + 8 + 3 * 3 * 4 * 4 + 8 + 3 * 3 * 4 * 8 + 16
    assert stem + sum(_bottleneck_params(c, f, 0.0625, 0.25)
                      for c, f in ((8, 4), (16, 8), (32, 16), (64, 32))) == 54_403
    ends = net(tf.random.uniform([2, 32, 32, 3]), training=True, return_endpoints=True)
    assert tuple(ends["stem"].shape) == (2, 8, 8, 8) and tuple(ends["pooled"].shape) == (2, 128)
    assert np.isfinite(ends["pooled"].numpy()).all()


def test_zero_ratios_reproduce_the_plain_model():
    plain = resnet.ResNet(resnet.ResNetConfig(depth=50, width_multiplier=0.125))
    zeros = resnet.ResNet(resnet.ResNetConfig(depth=50, width_multiplier=0.125, sk_ratio=0.0, se_ratio=0.0))
    assert sorted((v.name, tuple(v.shape)) for v in plain.variables) == \
        sorted((v.name, tuple(v.shape)) for v in zeros.variables)
    for a, b in zip(plain.variables, zeros.variables):
        b.assign(a)
    x = tf.random.uniform([2, 32, 32, 3])
    np.testing.assert_array_equal(plain(x, training=True).numpy(), zeros(x, training=True).numpy())
    se_only = resnet.ResNetConfig(depth=50, width_multiplier=0.125, se_ratio=0.25)
    # SE adds the same parameters to every block of a group, whatever its input width.
    se_extra = sum(n * (_bottleneck_params(1, f, 0, 0.25) - _bottleneck_params(1, f, 0, 0))
                   for n, f in zip((3, 4, 6, 3), (8, 16, 32, 64)))
    assert resnet.count_params(resnet.ResNet(se_only)) == resnet.count_params(plain) + se_extra


def test_squeeze_excite_matches_numpy():
    rng = np.random.default_rng(2)
    se = resnet.SqueezeExcite(6, 2, layers.initializer("haiku"))
    se.se_reduce.b.assign(rng.standard_normal(2).astype(np.float32))
    se.se_expand.b.assign(rng.standard_normal(6).astype(np.float32))
    x = rng.standard_normal((2, 3, 3, 6)).astype(np.float32)
    s = x.astype(np.float64).mean((1, 2))
    s = np.maximum(s @ se.se_reduce.w.numpy() + se.se_reduce.b.numpy(), 0)
    s = 1 / (1 + np.exp(-(s @ se.se_expand.w.numpy() + se.se_expand.b.numpy())))
    np.testing.assert_allclose(se(tf.constant(x)).numpy(), x * s[:, None, None, :], atol=1e-5)


def test_selective_kernel_conv_matches_numpy():
    rng = np.random.default_rng(4)
    conv = lambda *a, **k: layers.Conv2D(*a, padding="fixed", **k)  # noqa: E731
    sk = resnet.SelectiveKernelConv(3, 4, 2, 0.0625, conv, layers.BatchNorm, layers.initializer("haiku"))
    x = rng.standard_normal((3, 6, 6, 3)).astype(np.float32)
    h = np_conv2d(x, sk.conv.w.numpy(), 2, ((1, 1), (1, 1)))
    h = np.maximum(np_bn(h, *np_batch_stats(h), 1, 0), 0)
    u0, u1 = h[..., :4], h[..., 4:]
    g = (u0 + u1).mean((1, 2)) @ sk.attention_reduce.w.numpy()
    assert g.shape == (3, 32)  # mid = max(int(4 * 0.0625), 32)
    g = np.maximum(np_bn(g, *np_batch_stats(g), 1, 0), 0)
    logits = g @ sk.attention_expand.w.numpy()
    a = np.exp(logits[:, :4]) / (np.exp(logits[:, :4]) + np.exp(logits[:, 4:]))
    want = a[:, None, None, :] * u0 + (1 - a[:, None, None, :]) * u1
    np.testing.assert_allclose(sk(tf.constant(x), training=True).numpy(), want, atol=1e-4)


def test_resnet_d_shortcut_pooling():
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    # stride 2: zero pad (0, 1), 2x2 VALID mean: the last window of an odd map averages in zeros.
    got = resnet._resnet_d_pool(tf.constant(x), 2).numpy()[0, :, :, 0]
    padded = np.pad(x[0, :, :, 0], ((0, 1), (0, 1)))
    want = np.array([[padded[i:i + 2, j:j + 2].mean() for j in (0, 2, 4)] for i in (0, 2, 4)])
    np.testing.assert_allclose(got, want)
    # stride 1: 2x2 SAME mean over the in-bounds pixels only.
    got = resnet._resnet_d_pool(tf.constant(x), 1).numpy()[0, :, :, 0]
    img = x[0, :, :, 0]
    want = np.array([[img[i:i + 2, j:j + 2].mean() for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(got, want)


def test_config_errors():
    with pytest.raises(ValueError, match="depth 42"):
        resnet.ResNetConfig(depth=42)
    with pytest.raises(ValueError, match="multiples of 4"):
        resnet.ResNetConfig(depth=50, channels_per_group=(10, 20, 40, 80))
    with pytest.raises(ValueError, match="padding"):
        resnet.ResNetConfig(padding="valid")
    with pytest.raises(ValueError, match="projection_shortcut"):
        resnet.ResNetConfig(projection_shortcut="never")
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        resnet.ResNet(resnet.resnet_config(18, 0.125, 32))(tf.zeros([1, 32, 32, 1]), training=False)
    with pytest.raises(ValueError, match="selective-kernel"):
        resnet.haiku_param_map(resnet.ResNet(resnet.ResNetConfig(depth=18, width_multiplier=0.125, se_ratio=0.5)))
