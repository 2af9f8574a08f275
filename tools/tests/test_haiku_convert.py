"""DeepMind BYOL parameter files -> the project's networks and runs (tools/haiku_params.py).

Oracles: the outputs DeepMind's JAX reference stored in tools/golden/byol_golden.npz (group e:
a haiku ResNet-18's inference-mode embedding after one training call; group f: the BYOL losses of
a full update step), and numpy re-derivations of the heads on those embeddings. The parameter
files are written here the way the reference's checkpointer writes them (a pickled dict around
its experiment-state named tuple, jax arrays included) and as .npz.
"""
import os
import pathlib
import pickle
import subprocess
import sys
import types
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from common.data import augment as A
from common.networks import resnet as resnet_lib
from tools import haiku_params
from tools.parity.golden import Golden
from tools.parity.resnet_forward import golden_weight

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"
# Group e: the reference's float32 eval embedding differs from its float64 recomputation by 3e-5
# (tools/golden/README.md); the embedding's entries are O(1), so 1e-4 absolute is a few float32 ulps
# of accumulated rounding, while a wrong BN statistic or a swapped leaf moves entries by >= 1e-2.
TOL_EMBED = 1e-4
# Group f's logs are float32 scalars of size ~1-4; the parity tool holds them to 1e-5 relative.
TOL_LOG = 1e-5


@pytest.fixture(scope="module")
def golden():
    return Golden(GOLDEN)


# --- Files as the reference writes them --------------------------------------------------------

class _ByolExperimentState(NamedTuple):  # the reference's named tuple, same field order
    online_params: dict
    target_params: dict
    online_state: dict
    target_state: dict
    opt_state: tuple


def _reconstruct_array(fun, args, arr_state, aval_state):  # jax's unpickling hook, in shape
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


class _JaxArray:
    """Pickles like a jax array: (jax's reconstruct hook, numpy's own reduce triple, aval state)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __reduce__(self):
        fun, args, state = self.value.__reduce__()
        return _reconstruct_array, (fun, args, state, {"weak_type": False})


def _write_reference_pickle(path, trees, jax_leaf):
    """pickle (protocol 2, as the reference's dill.dump) of {'experiment_state': the named tuple,
    'step', 'rng'} with the classes living in the reference's and jax's module names, which do not
    exist here; `jax_leaf` (tree, module, leaf) is stored as a jax array."""
    fake_experiment = types.ModuleType("byol.byol_experiment")
    fake_jax = types.ModuleType("jax._src.array")
    _ByolExperimentState.__module__ = "byol.byol_experiment"
    _reconstruct_array.__module__ = "jax._src.array"
    fake_experiment._ByolExperimentState = _ByolExperimentState
    fake_jax._reconstruct_array = _reconstruct_array
    nested = {name: haiku_params.unflatten(tree) for name, tree in trees.items()}
    t, m, leaf = jax_leaf
    nested[t][m][leaf] = _JaxArray(nested[t][m][leaf])
    state = _ByolExperimentState(nested["params"], nested["target_params"], nested["state"],
                                 nested["target_state"], ())
    fakes = {"byol.byol_experiment": fake_experiment, "jax._src.array": fake_jax}
    for parent in ("jax", "jax._src"):  # pickle imports the module path (jax is not installed)
        if parent not in sys.modules:
            fakes[parent] = types.ModuleType(parent)
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        with open(path, "wb") as f:
            pickle.dump({"experiment_state": state, "step": 5005,
                         "rng": _JaxArray(np.array([0, 42], np.uint32))}, f, protocol=2)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _write_npz(path, trees):
    np.savez(path, **{f"{'online_' if name in ('params', 'state') else ''}{name}/{k}": v
                      for name, tree in trees.items() for k, v in tree.items()})


# --- Group e: a ResNet-18 with BYOL heads -----------------------------------------------------

HIDDEN, OUT, CLASSES = 16, 8, 10


def _r18_byol_trees(golden):
    """The reference's group-e ResNet-18 (weights from their haiku names by the golden file's
    rule, BN state after its one training call: counter 1, average as stored, hidden = (1 - 0.9) x
    average by haiku's zero-debiasing) plus projector, predictor and classifier with seeded values.
    Online and target trees are equal. Returns (trees, heads) with heads the numpy head values."""
    prefix = "res_net18/~/"
    state = golden.tree("e/r18_state1/")
    counter = np.int32(golden["e/r18_counter1"])
    net = resnet_lib.ResNet(resnet_lib.deepmind_resnet18(), name="keys_only")
    params = {}
    for key, var in resnet_lib.haiku_param_map(net, prefix).items():
        if not haiku_params.is_state_key(key):
            params[key] = golden_weight(key, haiku_params.haiku_shape(key, var, prefix))
    full_state = {}
    for key, avg in state.items():
        base = key.rsplit("/", 1)[0]
        full_state[key] = avg
        full_state[f"{base}/hidden"] = (avg * np.float32(0.1)).astype(np.float32)
        full_state[f"{base}/counter"] = counter
    rng = np.random.default_rng(7)
    heads = {}
    for mlp, d_in in (("projector", 512), ("predictor", OUT)):
        heads[f"{mlp}/linear/w"] = rng.normal(0, d_in ** -0.5, (d_in, HIDDEN))
        heads[f"{mlp}/linear/b"] = rng.normal(0, 0.1, (HIDDEN,))
        heads[f"{mlp}/batch_norm/scale"] = rng.uniform(0.5, 1.5, (1, HIDDEN))
        heads[f"{mlp}/batch_norm/offset"] = rng.uniform(-0.2, 0.2, (1, HIDDEN))
        heads[f"{mlp}/linear_1/w"] = rng.normal(0, HIDDEN ** -0.5, (HIDDEN, OUT))
        heads[f"{mlp}/batch_norm/~/mean_ema/average"] = rng.normal(0, 0.3, (1, HIDDEN))
        heads[f"{mlp}/batch_norm/~/var_ema/average"] = rng.uniform(0.2, 2.0, (1, HIDDEN))
    heads["classifier/w"] = rng.normal(0, 0.05, (512, CLASSES))
    heads["classifier/b"] = rng.normal(0, 0.1, (CLASSES,))
    heads = {k: v.astype(np.float32) for k, v in heads.items()}
    head_params = {k: v for k, v in heads.items() if "/~/" not in k}
    head_state = {}
    for k, v in heads.items():
        if "/~/" in k:
            base = k.rsplit("/", 1)[0]
            head_state.update({k: v, f"{base}/hidden": v * np.float32(0.1),
                               f"{base}/counter": counter})
    trees = {"params": {**params, **head_params}, "state": {**full_state, **head_state},
             "target_params": {**params, **{k: v for k, v in head_params.items()
                                             if k.startswith("projector/")}},
             "target_state": {**full_state, **{k: v for k, v in head_state.items()
                                               if k.startswith("projector/")}}}
    return trees, heads


def _numpy_heads(embedding, heads):
    """Projection and logits in float64: relu(BN(x W1 + b1)) W2, BN with the moving statistics
    and eps 1e-5 (haiku's BatchNorm in inference mode); logits = x Wc + bc."""
    x = embedding.astype(np.float64)
    h = x @ heads["projector/linear/w"] + heads["projector/linear/b"]
    mean = heads["projector/batch_norm/~/mean_ema/average"][0]
    var = heads["projector/batch_norm/~/var_ema/average"][0]
    h = (h - mean) / np.sqrt(var + 1e-5) * heads["projector/batch_norm/scale"][0] \
        + heads["projector/batch_norm/offset"][0]
    projection = np.maximum(h, 0) @ heads["projector/linear_1/w"]
    logits = x @ heads["classifier/w"] + heads["classifier/b"]
    return projection, logits


@pytest.fixture(scope="module")
def r18_files(golden, tmp_path_factory):
    trees, heads = _r18_byol_trees(golden)
    d = tmp_path_factory.mktemp("haiku")
    pkl, npz = d / "pretrain_res18.pkl", d / "pretrain_res18.npz"
    _write_reference_pickle(pkl, trees, ("params", "res_net18/~/initial_conv", "w"))
    _write_npz(npz, trees)
    return pkl, npz, trees, heads


@pytest.mark.parametrize("kind", ["pkl", "npz"])
def test_feature_model_reproduces_reference_embedding(golden, r18_files, kind):
    pkl, npz, trees, heads = r18_files
    path = str(pkl if kind == "pkl" else npz)
    read = haiku_params.read_trees(path)
    assert set(read) == {"params", "state", "target_params", "target_state"}
    np.testing.assert_array_equal(read["params"]["res_net18/~/initial_conv/w"],
                                  trees["params"]["res_net18/~/initial_conv/w"])
    fm = haiku_params.load_feature_model(path, image_size=64)
    assert fm.source == "haiku" and fm.image_size == 64
    out = {k: v.numpy() for k, v in fm.outputs(golden["e/test_images"]).items()}
    want = golden["e/r18_eval_embedding"]
    np.testing.assert_allclose(out["backbone"], want, rtol=0, atol=TOL_EMBED)
    np.testing.assert_allclose(out["target_backbone"], want, rtol=0, atol=TOL_EMBED)
    projection, logits = _numpy_heads(want, heads)
    # The heads see the embedding with its 1e-4 error; through W1 (entries ~ 1/sqrt(512)), the BN
    # (scale / std up to ~3) and W2 that grows to a few 1e-4.
    np.testing.assert_allclose(out["projection"], projection, rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["target_projection"], projection, rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["logits"], logits, rtol=0, atol=1e-3)


def test_bare_resnet_tree_gives_encoder_only(golden, r18_files, tmp_path):
    _, _, trees, _ = r18_files
    path = tmp_path / "resnet_only.npz"
    np.savez(path, **{k: v for name in ("params", "state") for k, v in trees[name].items()
                      if k.startswith("res_net18/")})
    fm = haiku_params.load_feature_model(str(path), image_size=64)
    out = fm.outputs(golden["e/test_images"])
    assert set(out) == {"backbone"}
    np.testing.assert_allclose(out["backbone"].numpy(), golden["e/r18_eval_embedding"], rtol=0,
                               atol=TOL_EMBED)


# --- Group f: the reference's losses from its stored trees -------------------------------------

def test_read_trees_reproduce_reference_losses(golden, tmp_path):
    """Group f's initial trees (TinyResNet, 64-wide heads with hidden bias, 10 classes) written as
    the reference's pickle, read back, loaded: one training-mode forward of the BYOL loss on the
    stored views gives the stored step-1 logs (repr_loss and classif_loss are functions of every
    online and target parameter)."""
    trees = {name: golden.tree(f"f/{p}0/") for name, p in (
        ("params", "online_params"), ("state", "online_state"),
        ("target_params", "target_params"), ("target_state", "target_state"))}
    path = tmp_path / "tiny.pkl"
    _write_reference_pickle(path, trees, ("params", "projector/linear", "w"))
    read = haiku_params.read_trees(str(path))
    layout = haiku_params.layout_from_shapes({k: v.shape for k, v in read["params"].items()})
    model = haiku_params.build_byol(layout)
    haiku_params.load(model, read, encoder_prefix=layout.encoder_prefix)
    batch = {"view1": A.normalize(tf.constant(golden["f/view1"])),
             "view2": A.normalize(tf.constant(golden["f/view2"])),
             "label": tf.constant(golden["f/labels"])}
    _, metrics = model.loss(batch, tf.constant(0), tf.constant([0, 0]))
    for ref, ours in (("repr_loss", "byol_loss"), ("classif_loss", "probe_loss"),
                      ("top1_accuracy", "probe_acc")):
        want = float(golden[f"f/logs1/{ref}"])
        assert abs(float(metrics[ours]) - want) <= TOL_LOG * max(1.0, abs(want)), (ref, metrics[ours], want)


# --- convert: a run of the BYOL trainer ---------------------------------------------------------

def test_convert_writes_a_run_the_project_reads(golden, r18_files, tmp_path):
    """The command, in a subprocess, on the reference-style pickle: a run whose config.json
    rebuilds the network (common.evaluation.suite.load_encoder, what tools/evaluate.py uses) and
    whose checkpoint holds the file's values, reproducing the reference's embedding."""
    from common.evaluation import suite

    pkl, _, trees, heads = r18_files
    run = tmp_path / "converted"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "haiku_params.py"), "convert",
                           f"--params={pkl}", f"--model_dir={run}", "--image_size=64",
                           "--config=byol_small"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("ckpt-0.data")) == [
        "checkpoint", "ckpt-0.index", "config.json"]
    loaded = suite.load_encoder(str(run))
    model_cfg = loaded.config["config"]["model"]
    assert (model_cfg["resnet_depth"], model_cfg["resnet_padding"], model_cfg["bn_semantics"],
            model_cfg["mlp_hidden_bias"], model_cfg["proj_head_hidden_dim"]) == (
                18, "same", "haiku", True, HIDDEN)
    emb = loaded.encoder(A.normalize(tf.constant(golden["e/test_images"])), training=False)
    np.testing.assert_allclose(emb.numpy(), golden["e/r18_eval_embedding"], rtol=0, atol=TOL_EMBED)
    reader = tf.train.load_checkpoint(str(run / "ckpt-0"))
    names = reader.get_variable_to_shape_map()
    w1 = [n for n in names if n.startswith("model/predictor/") and n.endswith("w/.ATTRIBUTES/VARIABLE_VALUE")]
    assert w1, sorted(names)[:20]
    got = {tuple(reader.get_tensor(n).shape): reader.get_tensor(n) for n in w1}
    np.testing.assert_array_equal(got[(OUT, HIDDEN)], heads["predictor/linear/w"])
    assert int(reader.get_tensor("optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE")) == 0


def test_convert_refuses_bad_input_and_writes_nothing(golden, r18_files, tmp_path):
    pkl, _, _, _ = r18_files
    with pytest.raises(haiku_params.HaikuFileError, match="image_size"):
        haiku_params.convert(str(pkl), str(tmp_path / "a"), image_size=32, preset="byol_small")
    bad = tmp_path / "notes.pkl"
    bad.write_bytes(pickle.dumps({"hello": 1}))
    with pytest.raises(haiku_params.HaikuFileError, match="no BYOL trees"):
        haiku_params.convert(str(bad), str(tmp_path / "b"), preset="byol_small")
    tiny = tmp_path / "tiny.npz"
    _write_npz(tiny, {"params": golden.tree("f/online_params0/"),
                      "state": golden.tree("f/online_state0/")})
    with pytest.raises(haiku_params.HaikuFileError, match="not a layout"):
        haiku_params.convert(str(tiny), str(tmp_path / "c"), image_size=64, preset="byol_small")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pkl", "tiny.npz"]
