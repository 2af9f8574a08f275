"""SavedModel export (common/interop/export.py, tools/export_model.py, --export_eval_model).

The exported model is loaded where the project's code cannot be imported (python -I -S with only
the environment's site-packages folder on the path, checked by `import common` failing), through
tf.saved_model.load and Keras 3's TFSMLayer, and compared with the in-process networks applied to
the project's documented evaluation transform (common.data.augment.eval_preprocess, one image at a
time) on uint8 and float inputs of non-square sizes.
"""
import json
import os
import pathlib
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.data import augment as A
from common.interop import export as export_lib
from tools import export_model
from tools import haiku_params
from tools.parity.golden import Golden

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"
SIZE = 40  # above 32, so the centre crop is part of the transform

# Runs in the isolated interpreter: loads the SavedModel three ways and saves every output.
CHILD = r"""
import json, sys
import numpy as np
try:
    import common  # noqa: F401
    sys.exit("the project's code is importable here; the isolation failed")
except ImportError:
    pass
import tensorflow as tf
import keras
path, inputs, out = sys.argv[1:4]
x = dict(np.load(inputs))
loaded = tf.saved_model.load(path)
res = {}
for name, value in x.items():
    for key, v in loaded(tf.constant(value)).items():
        res[f"call/{name}/{key}"] = v.numpy()
endpoint = {"uint8": "serving_uint8", "float": "serving_default"}
for name, value in x.items():
    for key, v in loaded.signatures[endpoint[name]](images=tf.constant(value)).items():
        res[f"signature/{name}/{key}"] = v.numpy()
    layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint[name])
    for key, v in layer(value).items():
        res[f"tfsmlayer/{name}/{key}"] = np.asarray(v)
np.savez(out, **res)
"""


def _isolated_python(script: str, *args, cwd):
    """python -I -S: no PYTHONPATH, no user site, no cwd, no .pth files (so none of the editable
    installs of this project's packages); only the environment's site-packages folder is added."""
    site = sysconfig.get_paths()["purelib"]
    code = f"import sys; sys.path.append({site!r}); sys.argv = ['child', *{list(args)!r}]\n" + script
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)


def _expected(model, images, crop_rounding):
    """The in-process model on the documented transform, image by image."""
    aug = A.AugmentConfig(image_size=model.image_size, normalize=False,
                          eval_crop_rounding=crop_rounding)
    batch = tf.stack([A.eval_preprocess(tf.constant(im), aug) for im in images])
    return {k: v.numpy() for k, v in model.outputs(batch).items()
            if k in ("backbone", "projection", "logits")}


def _inputs():
    rng = np.random.default_rng(3)
    return {"uint8": rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8),
            "float": rng.uniform(0, 1, (2, 61, 45, 3)).astype(np.float32)}


def _assert_close(got, want, what):
    # float32 through the same ops in a graph and eagerly: a few ulps of the largest output
    # (a wrong crop offset, resize method or normalisation moves outputs by > 1e-2 of their scale).
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=what)


def test_saved_model_runs_without_the_project(tmp_path):
    g = Golden(GOLDEN)
    trees = {f"{'online_' if n in ('params', 'state') else ''}{n}/{k}": v
             for n, p in (("params", "online_params"), ("state", "online_state"),
                          ("target_params", "target_params"), ("target_state", "target_state"))
             for k, v in g.tree(f"f/{p}1/").items()}
    npz = tmp_path / "tiny_byol.npz"
    np.savez(npz, **trees)
    model = haiku_params.load_feature_model(str(npz), image_size=SIZE)
    out_dir = tmp_path / "export"
    # What `python tools/export_model.py --checkpoint=<npz> --output=... --image_size=40` runs.
    description = export_model.export(str(npz), str(out_dir), image_size=SIZE)
    assert description["signatures"]["serving_default"]["outputs"] == {
        "backbone": "float32 [N, 8]", "projection": "float32 [N, 32]", "logits": "float32 [N, 10]"}
    assert json.loads((out_dir / export_lib.SIGNATURE_FILE).read_text()) == description
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    inputs = _inputs()
    np.savez(tmp_path / "inputs.npz", **inputs)
    proc = _isolated_python(CHILD, str(out_dir), str(tmp_path / "inputs.npz"),
                            str(tmp_path / "outputs.npz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = dict(np.load(tmp_path / "outputs.npz"))
    for name, images in inputs.items():
        want = _expected(model, images, "floor")
        for how in ("call", "signature", "tfsmlayer"):
            keys = sorted(k.rsplit("/", 1)[1] for k in got if k.startswith(f"{how}/{name}/"))
            assert keys == ["backbone", "logits", "projection"], (how, name, keys)
            for key, value in want.items():
                _assert_close(got[f"{how}/{name}/{key}"], value, f"{how} {name} {key}")


def test_export_refuses_bad_crop(tmp_path):
    model = haiku_params.load_feature_model  # any FeatureModel; the check comes first
    with pytest.raises(ValueError, match="crop_rounding"):
        export_lib.export_saved_model(model, str(tmp_path / "x"), 0.875, "ceil")
    assert not list(tmp_path.iterdir())


def test_trainer_export_matches_the_trained_networks(tmp_path):
    """--export_eval_model's function (common.cli.job.export_eval_model) on a method whose probe
    reads the projection: the SavedModel computes encoder, projector and probe of the live method
    on the run's evaluation transform (crop, resize, ImageNet normalisation)."""
    import dataclasses
    import types

    from byol import model as byol_model
    from common.cli import job, settings
    from common.data import datasets
    from common.training import models

    size = 36
    heads = dataclasses.replace(testing.tiny_heads(), probe_input="projection")
    method = byol_model.BYOL(testing.tiny_resnet(size), heads, models.TargetConfig(), 5)
    parts = types.SimpleNamespace(augment=A.AugmentConfig(image_size=size),
                                  data=datasets.DataConfig(image_size=size))
    path = job.export_eval_model(method, parts, str(tmp_path), 7, print_fn=lambda *a, **k: None)
    assert path == str(tmp_path / "saved_model")
    loaded = tf.saved_model.load(path)
    images = _inputs()["uint8"]
    got = {k: v.numpy() for k, v in loaded(tf.constant(images)).items()}
    x = tf.stack([A.eval_preprocess(tf.constant(im), parts.augment) for im in images])
    feats = method.encoder(x, training=False)
    proj = method.projector(feats, training=False)
    want = {"backbone": feats, "projection": proj, "logits": method.probe(proj)}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        _assert_close(got[key], value.numpy(), key)
    # The flag is accepted now; the training-graph export stays refused with its reason.
    base = settings.Experiment(algorithm=None)
    on = settings.with_overrides(base, export_eval_model=True)
    assert not [e for e in settings.problems(on)[0] if "export" in e]
    refused = settings.problems(settings.with_overrides(base, export_train_model=True))[0]
    assert any("--export_train_model=True is not supported" in e for e in refused), refused
