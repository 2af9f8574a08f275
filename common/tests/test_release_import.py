"""The original release's checkpoints through `common.interop`: architecture inferred from the
shapes, every stored output of the fixtures (files written by the original code) reproduced, the
import report's three lists, refusals, and a fine-tuning step started from a release checkpoint."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from common.interop import loading, release
from common.networks import resnet
from common.data import datasets
from common.training import finetune, models
from common.training import trainer as trainer_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tools" / "fixtures" / "original"


def _fixture(name):
    path = FIXTURES / name
    assert (path / "features.npz").exists(), f"release fixture {path} is missing from the checkout"
    return path, np.load(path / "features.npz")


def assert_close(got, want, what):
    """Within 1e-4 of the array's largest magnitude (the brief's tolerance)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-4, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("name,depth,stem,groups,cifar", [
    ("csimclr_r18_s32", 18, 8, (8, 16, 32, 64), True),
    ("cbyol_r50_s64", 50, 8, (32, 64, 128, 256), False)])
def test_architecture_is_read_from_the_shapes(name, depth, stem, groups, cifar):
    # Oracle: the fixture READMEs' flags (--resnet_depth, --channel_divisor=8 -> width 1/8,
    # image size 32 -> CIFAR stem, 64 -> ImageNet stem, heads 64 hidden / 32 out).
    ckpt = release.read(FIXTURES / name)
    layout = release.infer_resnet(ckpt)
    cfg = layout.config
    assert (cfg.depth, cfg.width_multiplier, cfg.cifar_stem) == (depth, 0.125, cifar)
    assert (cfg.stem_width, tuple(o for _, o in cfg.group_channels)) == (stem, groups)
    assert (cfg.sk_ratio, cfg.se_ratio, layout.expressible) == (0.0, 0.0, True)
    head = release.infer_head(ckpt, "_projection_head")
    assert (head.kind, head.hidden_dim, head.out_dim, head.num_layers, head.output_bn) == (
        "mlp", 64, 32, 2, False)
    assert ckpt.variant == "pretrain" and ckpt.step == 5
    assert ckpt.has("_target_resnet") == (name == "cbyol_r50_s64")
    if name == "cbyol_r50_s64":
        assert release.infer_head(ckpt, "_projector").kind == "stochastic"


@pytest.mark.parametrize("name", ["csimclr_r18_s32", "cbyol_r50_s64"])
def test_feature_model_reproduces_every_stored_output(name):
    path, f = _fixture(name)
    model = loading.load_feature_model(str(path))
    assert model.source == "release"
    x = tf.constant(f["x"])
    # The release's input transform, bit for bit what its graph computed.
    np.testing.assert_array_equal(model.normalize(x).numpy(), f["x_normalized"])
    out = model.outputs(x)
    stored = {"backbone": "online_resnet_out", "projection": "online_head_out",
              "logits": "supervised_logits"}
    if "target_resnet_out" in f:
        stored.update(target_backbone="target_resnet_out", target_projection="target_head_out")
    assert sorted(out) == sorted(stored)
    for ours, theirs in stored.items():
        assert_close(out[ours], f[theirs], theirs)
    branches = [("online", model.encoder, model.projector)]
    if model.target_encoder is not None:
        branches.append(("target", model.target_encoder, model.target_projector))
    for tag, encoder, projector in branches:
        ends = encoder(tf.constant(f["x_normalized"]), training=False, return_endpoints=True)
        for key in ("stem", "block_group1", "block_group2", "block_group3", "block_group4"):
            assert_close(ends[key], f[f"{tag}_{key}"], f"{tag}_{key}")
        _, hidden = projector(ends["pooled"], training=False, return_hidden=True)
        assert_close(hidden[0], f[f"{tag}_head_hidden"], f"{tag}_head_hidden")


def test_import_report_lists_loaded_missing_and_unused():
    # A shared-encoder model takes the C-SimCLR checkpoint's encoder and projector; an
    # online/target model finds no target in it, and its probe reads the backbone (64) where the
    # release's supervised head reads the projection (32).
    path, _ = _fixture("csimclr_r18_s32")
    cfg = resnet.resnet_config(18, 0.125, 32)
    heads = models.HeadsConfig(hidden_dim=64, out_dim=32)
    method = models.OnlineTargetMethod(cfg, heads, models.TargetConfig(), 10, name="m")
    lines = []
    report = release.import_into_method(method, str(path), print_fn=lambda s, **k: lines.append(s))
    assert report.loaded == ["encoder <- model/_resnet (105 arrays)",
                             "projector <- model/_projection_head (6 arrays)"]
    assert [m.split(" ")[0] for m in report.missing] == ["probe", "target_encoder", "target_projector"]
    assert "[32, 10] in the checkpoint, [64, 10] here" in report.missing[0]
    assert report.unused == ["model/supervised_head (2 arrays)"]
    assert report.expected_unused == "69 optimizer slot arrays, global_step=5, save_counter=1"
    text = "\n".join(lines)
    assert "loaded: encoder <- model/_resnet" in text and "not used: model/supervised_head" in text
    # The encoder now holds the stored arrays (read independently with TF's checkpoint reader).
    reader = tf.train.load_checkpoint(str(path / "ckpt-5"))
    stem = "model/_resnet/initial_conv_relu_max_pool/0/conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(method.encoder.initial_conv.w.numpy(), reader.get_tensor(stem))


def test_refusals_name_the_first_mismatch_and_assign_nothing():
    path, _ = _fixture("csimclr_r18_s32")
    with pytest.raises(release.ReleaseCheckpointError,
                       match=r"'model/_resnet/initial_conv_relu_max_pool/0/conv2d/kernel' has shape "
                             r"\[3, 3, 3, 8\] in the checkpoint but \[3, 3, 3, 16\]"):
        loading.load_feature_model(str(path), width_multiplier=0.25)
    with pytest.raises(release.ReleaseCheckpointError, match=r"has no 'model/_resnet/block_groups/0/"
                       r"layers/0/conv_relu_dropblock_layers/0/conv2d/kernel'.*ResNet-18"):
        loading.load_feature_model(str(path), resnet_depth=50)
    # sk_ratio > 0 moves the shortcut conv behind an average pool (ResNet-D): absent here.
    with pytest.raises(release.ReleaseCheckpointError, match=r"has no 'model/_resnet/block_groups/0/"
                       r"layers/0/shortcut_layers/1/conv2d/kernel'"):
        loading.load_feature_model(str(path), sk_ratio=0.0625)
    # Nothing is assigned when any module refuses: the encoder keeps its initial weights.
    cfg = resnet.resnet_config(18, 0.125, 32)
    method = models.SharedEncoderMethod(cfg, models.HeadsConfig(hidden_dim=48, out_dim=32), 10, "m")
    before = method.encoder.initial_conv.w.numpy()
    with pytest.raises(release.ReleaseCheckpointError, match=r"projector does not match"):
        release.import_into_method(method, str(path), print_fn=None)
    np.testing.assert_array_equal(method.encoder.initial_conv.w.numpy(), before)
    with pytest.raises(ValueError, match="(?i)no checkpoint at"):
        loading.load_feature_model(str(path / "ckpt-6"))


def test_finetuning_starts_from_a_release_checkpoint(tmp_path):
    from common import testing
    path, f = _fixture("csimclr_r18_s32")
    cfg = resnet.resnet_config(18, 0.125, 32)
    ft = finetune.FinetuneConfig(checkpoint=str(path))

    trainer = trainer_lib.Pretrainer(
        lambda n: finetune.Supervised(cfg, n, ft), testing.tiny_train_config(str(tmp_path), 1, 8),
        datasets.DataConfig(image_size=32), None, tf.distribute.get_strategy(),
        dataset_fn=lambda ctx, start_step: None, num_classes=10, print_fn=lambda *a, **k: None)
    lines = []
    trainer.method.load_pretrained(print_fn=lambda s, **k: lines.append(s))
    assert "loaded: encoder <- model/_resnet (105 arrays)" in lines[0]
    # The loaded encoder is the original's: its features on the stored inputs.
    feats = trainer.method.encoder(tf.constant(f["x_normalized"]), training=False)
    assert_close(feats, f["online_resnet_out"], "online_resnet_out")
    rng = np.random.default_rng(0)
    batch = {"image": tf.constant(rng.uniform(0, 1, (8, 32, 32, 3)), tf.float32),
             "label": tf.constant(rng.integers(0, 10, 8), tf.int32)}
    trainer.run_steps(1, batches=[batch])  # one eager step
    assert trainer.step == 1
    assert np.isfinite(trainer.metrics.result()["supervised_loss"])
