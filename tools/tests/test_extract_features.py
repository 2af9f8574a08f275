"""tools/extract_features.py: the original release's fixtures (features written by the original
code) reproduced through the importable function and the command, the dataset path's labels
(Debian's Fashion-MNIST files), refusals, and the dispatch of DeepMind parameter files."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from common.interop import loading
from tools import extract_features as ef

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tools" / "fixtures" / "original"
STORED = {"backbone": "online_resnet_out", "projection": "online_head_out",
          "logits": "supervised_logits", "target_backbone": "target_resnet_out",
          "target_projection": "target_head_out"}


def _check(out, f):
    assert sorted(out) == sorted(k for k, v in STORED.items() if v in f)
    for ours, theirs in STORED.items():
        if theirs in f:
            err = np.abs(out[ours] - f[theirs]).max() / np.abs(f[theirs]).max()
            assert err <= 1e-4, f"{ours}: relative error {err:.2e}"


@pytest.mark.parametrize("name,batch_size", [
    ("csimclr_r18_s32", 3), ("cbyol_r50_s64", 4),
    # Same loader as common/tests/test_release_import_sk_se.py (which CI runs); ~5 s more here.
    pytest.param("csimclr_r50_sk_se_s64", 4, marks=pytest.mark.slow)])
def test_function_reproduces_the_fixtures_in_batches(name, batch_size):
    f = np.load(FIXTURES / name / "features.npz")
    model = ef.load_model(str(FIXTURES / name))
    _check(ef.extract_features(model, images=f["x"], batch_size=batch_size), f)


def test_command_reproduces_a_fixture_and_refuses_a_mismatch(tmp_path):
    f = np.load(FIXTURES / "cbyol_r50_s64" / "features.npz")
    np.save(tmp_path / "x.npy", f["x"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    base = [sys.executable, str(ROOT / "tools" / "extract_features.py"),
            f"--checkpoint={FIXTURES / 'cbyol_r50_s64'}", f"--images={tmp_path / 'x.npy'}"]
    run = subprocess.run(base + [f"--output={tmp_path / 'f.npz'}"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded: target_encoder <- model/_target_resnet (265 arrays)" in run.stdout
    assert "in the checkpoint, not used: model/_projector (7 arrays)" in run.stdout
    with np.load(tmp_path / "f.npz") as out:
        _check(dict(out), f)
    bad = subprocess.run(base + [f"--output={tmp_path / 'g.npz'}", "--resnet_depth=18"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-3000:]
    error = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "conv2d_bn_layers" in error[0] and "ResNet-50" in error[0], bad.stderr
    assert not (tmp_path / "g.npz").exists()


def test_dataset_path_writes_the_split_labels():
    from common.data import datasets
    model = ef.load_model(str(FIXTURES / "csimclr_r18_s32"))
    batches = ef.dataset_batches("fashion_mnist", "test[:10]", model.image_size, batch_size=4)
    out = ef.extract_features(model, dataset=batches)
    _, labels = datasets.load_fashion_mnist("test")
    np.testing.assert_array_equal(out["labels"], labels[:10])
    assert out["backbone"].shape == (10, 64) and out["logits"].shape == (10, 10)


def test_bad_images_are_refused():
    with pytest.raises(SystemExit) as e:
        ef._read_images(str(FIXTURES / "csimclr_r18_s32" / "features.npz"))
    assert e.value.code == 2


def test_haiku_files_go_to_the_haiku_loader(tmp_path):
    # A bare haiku ResNet tree (DeepMind's names and shapes); the command's dispatch must hand it
    # to tools.haiku_params, whose loader the haiku tests check against DeepMind's outputs.
    from common.networks import resnet
    from tools import haiku_params
    net = resnet.ResNet(resnet.deepmind_tiny_resnet())
    rng = np.random.default_rng(0)
    arrays = {}
    for key, var in resnet.haiku_param_map(net, "tiny_res_net/~/").items():
        leaf = key.rsplit("/", 1)[1]
        if leaf == "counter":
            arrays[key] = np.array(1, np.int32)
            continue
        shape = var.shape.as_list()
        shape = [1, 1, 1] + shape if leaf in ("scale", "offset", "average", "hidden") else shape
        value = rng.uniform(0.5, 1.5, shape) if leaf in ("scale", "average") and "var_ema" in key \
            or leaf == "scale" else rng.standard_normal(shape) * 0.1
        arrays[key] = value.astype(np.float32)
    path = tmp_path / "tiny.npz"
    np.savez(path, **{f"online_{'state' if '_ema/' in k else 'params'}/{k}": v
                      for k, v in arrays.items()})
    assert ef.is_haiku_file(str(path)) and not ef.is_haiku_file(str(FIXTURES / "cbyol_r50_s64"))
    model = ef.load_model(str(path), image_size=32)
    assert model.source == "haiku"
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    direct = haiku_params.load_feature_model(str(path), image_size=32).outputs(x)["backbone"]
    np.testing.assert_array_equal(ef.extract_features(model, images=x)["backbone"], direct.numpy())


def test_project_checkpoints_load_from_their_config(tmp_path):
    # tools/import_checkpoint.py writes the release's C-SimCLR checkpoint as a run of the
    # C-SimCLR trainer; that run, read back as a project checkpoint, gives the original's outputs.
    from tools import import_checkpoint
    f = np.load(FIXTURES / "csimclr_r18_s32" / "features.npz")
    run = tmp_path / "run"
    lines = []
    command = import_checkpoint.convert(str(FIXTURES / "csimclr_r18_s32"), "csimclr", str(run),
                                        probe_input="projection",
                                        print_fn=lambda s, **k: lines.append(s))
    assert "--resnet_depth=18 --width_multiplier=0.125 --image_size=32" in command
    assert (run / "config.json").exists() and (run / "ckpt-0.index").exists()
    model = loading.load_feature_model(str(run))
    assert model.source == "project" and model.classifier_input == "projection"
    _check(ef.extract_features(model, images=f["x"]), f)
    with pytest.raises(ValueError, match="already exists"):
        import_checkpoint.convert(str(FIXTURES / "csimclr_r18_s32"), "csimclr", str(run))
