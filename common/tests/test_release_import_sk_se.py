"""A release checkpoint with selective kernels, the ResNet-D stem and shortcuts, and
squeeze-excitation (SimCLRv2's sk_ratio = 0.0625, se_ratio = 0.25): the architecture read from the
shapes, every output the original code stored for it reproduced, a full import report, and the
refusals when no ratio fits the stored widths. The fixture was written by the original code
(tools/fixtures/original/csimclr_r50_sk_se_s64/README.md)."""
import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from common.interop import loading, release

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tools" / "fixtures" / "original" / "csimclr_r50_sk_se_s64"
STAGES = ("stem", "block_group1", "block_group2", "block_group3", "block_group4")


@pytest.fixture(scope="module")
def stored():
    assert (FIXTURE / "features.npz").exists(), f"release fixture {FIXTURE} is missing"
    return dict(np.load(FIXTURE / "features.npz"))


@pytest.fixture(scope="module")
def imported():
    lines = []
    model = loading.load_feature_model(str(FIXTURE), print_fn=lambda s, **k: lines.append(s))
    return model, "\n".join(lines)


def assert_close(got, want, what):
    """Within 1e-4 of the array's largest magnitude."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-4, f"{what}: relative error {err:.2e}"


def test_architecture_is_read_from_the_shapes():
    # Oracle: the fixture README's flags (ResNet-50, --channel_divisor=8, image 64 -> ImageNet
    # stem, --sk_ratio=0.0625, --se_ratio=0.25, heads 64 / 32).
    ckpt = release.read(FIXTURE)
    layout = release.infer_resnet(ckpt)
    cfg = layout.config
    assert (cfg.depth, cfg.width_multiplier, cfg.cifar_stem) == (50, 0.125, False)
    assert (cfg.sk_ratio, cfg.se_ratio, layout.expressible) == (0.0625, 0.25, True)
    assert (cfg.stem_width, tuple(o for _, o in cfg.group_channels)) == (8, (32, 64, 128, 256))
    assert "--sk_ratio=0.0625 --se_ratio=0.25" in layout.flags()
    assert ckpt.variant == "pretrain" and ckpt.step == 3 and ckpt.slots == 0


def test_every_stored_output_is_reproduced(stored, imported):
    model, _ = imported
    x = tf.constant(stored["x"])
    np.testing.assert_array_equal(model.normalize(x).numpy(), stored["x_normalized"])
    out = model.outputs(x)
    assert sorted(out) == ["backbone", "logits", "projection"]
    for ours, theirs in [("backbone", "online_resnet_out"), ("projection", "online_head_out"),
                         ("logits", "supervised_logits")]:
        assert_close(out[ours], stored[theirs], theirs)
    ends = model.encoder(tf.constant(stored["x_normalized"]), training=False, return_endpoints=True)
    for key in STAGES:
        assert_close(ends[key], stored[f"online_{key}"], f"online_{key}")
    _, hidden = model.projector(ends["pooled"], training=False, return_hidden=True)
    assert_close(hidden[0], stored["online_head_hidden"], "online_head_hidden")
    # One selective-kernel layer's branch weights [2, B, f] (group 2, block 0), from the
    # imported attention layers: softmax over the branches of W_e relu(BN(W_r mean(u_0 + u_1))).
    block = model.encoder.block_groups[1].blocks[0]
    sk = block.selective_kernel
    t = tf.nn.relu(block.batchnorms[0](block.convs[0](ends["block_group1"]), False))
    u0, u1 = tf.split(tf.nn.relu(sk.batchnorm(sk.conv(t), False)), 2, axis=-1)
    g = tf.nn.relu(sk.attention_batchnorm(sk.attention_reduce(tf.reduce_mean(u0 + u1, [1, 2])), False))
    a = tf.nn.softmax(tf.stack(tf.split(sk.attention_expand(g), 2, axis=-1)), axis=0)
    assert_close(a, stored["sk_group2_block0_attention"], "sk_group2_block0_attention")


def test_import_report_uses_every_array(imported):
    # 435 / 6 / 2 = the fixture's vars.txt counts of model/_resnet, _projection_head, supervised_head.
    _, text = imported
    assert "loaded: encoder <- model/_resnet (435 arrays)" in text
    assert "loaded: projector <- model/_projection_head (6 arrays)" in text
    assert "loaded: classifier <- model/supervised_head (2 arrays)" in text
    assert "not in the checkpoint: nothing" in text and "in the checkpoint, not used: nothing" in text
    assert "0 optimizer slot arrays, global_step=3, save_counter=1" in text


def _with_width(ckpt, key, width):
    variables = dict(ckpt.variables)
    variables[key] = variables[key][:-1] + [width]
    return dataclasses.replace(ckpt, variables=variables)


def test_ratios_that_fit_no_block_are_refused_with_the_flag():
    ckpt = release.read(FIXTURE)
    block = "block_groups/0/layers/1/conv_relu_dropblock_layers/"
    odd_sk = _with_width(ckpt, f"model/_resnet/{block}3/conv2d_0/kernel", 40)
    with pytest.raises(release.ReleaseCheckpointError, match=r"no single sk_ratio.*--sk_ratio"):
        release.infer_resnet(odd_sk)
    # An explicit ratio wins over the inference; the import then checks every shape.
    assert release.infer_resnet(odd_sk, sk_ratio=0.03).config.sk_ratio == 0.03
    odd_se = _with_width(ckpt, f"model/_resnet/{block}8/se_reduce/kernel", 3)
    with pytest.raises(release.ReleaseCheckpointError, match=r"no single se_ratio.*--se_ratio"):
        release.infer_resnet(odd_se)
    with pytest.raises(release.ReleaseCheckpointError,
                       match=r"se_reduce/kernel' has shape \[1, 1, 32, 2\] in the checkpoint but "
                             r"\[32, 4\]"):
        loading.load_feature_model(str(FIXTURE), se_ratio=0.5)
