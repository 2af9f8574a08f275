"""The parity check against DeepMind's BYOL goldens, its sensitivity, and the haiku mapping.

* Every group of tools/golden/byol_golden.npz passes, and every stored array is compared or used as
  input, none skipped (the JAX PRNG key regenerates the augmentation decisions through
  tools/jax_prng.py). The oracle is the reference's
  stored output; the project's code computes the other side.
* Sensitivity: changing any single compared array by 1% of its largest magnitude fails its
  comparison; perturbing one array per group in a copy of the file fails that group, and the
  command line exits non-zero.
* Generality: a file with fewer steps, fewer images and without ResNet-50 (derived from the shipped
  one) still passes, so nothing is keyed to the shipped shapes.
* tools/haiku_params.py: every leaf of the reference's ResNet-50 BYOL tree
  (tools/golden/byol_r50_param_tree.txt) maps to exactly one variable of a width-1 BYOL ResNet-50
  with the listed shape, and random trees round-trip exactly.

The whole check (ResNet-50 included) runs once per session; the file takes about a minute.
"""
from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tools import haiku_params
from tools import parity_check as pc

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"
TREE = ROOT / "tools" / "golden" / "byol_r50_param_tree.txt"


@pytest.fixture(scope="session")
def golden():
    return pc.Golden(GOLDEN)


@pytest.fixture(scope="session")
def shipped_runs(golden):
    return {run.name: run for run in pc.run_checks(golden, list(pc.GROUPS))}


def _copy_golden(tmp_path, arrays, name="perturbed"):
    """Writes `arrays` as <tmp>/<name>.npz with the shipped manifest and float64 file beside it."""
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    shutil.copy(GOLDEN.with_name("byol_golden_manifest.txt"), tmp_path / f"{name}_manifest.txt")
    shutil.copy(GOLDEN.with_name("byol_golden_resnet_f64.npz"), tmp_path / f"{name}_resnet_f64.npz")
    return path


# ------------------------------------------------------------------------------------------------
# The shipped golden file
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", pc.GROUPS)
def test_group_passes_on_shipped_golden(shipped_runs, group):
    run = shipped_runs[group]
    failed = [f"{r.key}: {r.max_abs:.3g} > {r.tol} [{r.note}]" for r in run.rows + run.extra_rows
              if not r.ok]
    assert run.error is None, run.error + "\n" + run.traceback
    assert not failed, "\n".join(failed[:20])
    assert run.ok and run.rows


def test_every_array_is_compared_or_used_as_input(golden, shipped_runs):
    accounted = {"meta_json"}
    for run in shipped_runs.values():
        accounted |= run.compared | run.inputs | set(run.skipped)
        assert not run.compared & run.inputs, "an array counted both as input and as compared"
    assert accounted == set(golden.arrays)
    skipped = {k: r for run in shipped_runs.values() for k, r in run.skipped.items()}
    assert not skipped, skipped
    assert "d/pp_key" in shipped_runs["d"].inputs
    # Outputs are compared, never just read: every group's outputs appear among the comparisons.
    compared = set().union(*(run.compared for run in shipped_runs.values()))
    for key in ("a/grad_mean_reg_loss_wrt_x", "b/tau_e300_f64", "c/filter_mask/net/~/zero_w/w",
                "c/big/updates2/net/~/conv/w", "d/pp_replay_maxabsdiff", "d/pp_view2_decisions",
                "e/r50_num_params",
                "e/r18_init_state_counter_example", "f/target_state2/predictor/batch_norm/~/var_ema/counter",
                "f/target_params2/classifier/w", "f/mu2/classifier/b", "f/logs2/top5_accuracy"):
        assert key in compared, key


def test_f_compares_both_chained_and_restarted_steps(shipped_runs):
    notes = [r.note for r in shipped_runs["f"].rows if r.key.startswith("f/grads2/")]
    assert any(n.startswith("chained") for n in notes)
    assert any(n.startswith("restarted from stored step 1") for n in notes)


def test_chained_tolerance_is_the_float32_spread_of_the_projects_own_code(golden, shipped_runs):
    """Moving the stored inputs by one ulp moves the project's own chained step 2 by more than 1e-4;
    those comparisons are ill-conditioned and held to SPREAD_FACTOR x their own spread, the
    reference sits inside it, and every restarted comparison stays at the strict bounds."""
    run = shipped_runs["f"]
    spread = run.float32_spread
    assert set(spread) == {1, 2}
    assert spread[1] < pc.TOL_F.rtol < spread[2]
    ill = run.ill_conditioned
    assert ill and all(r.note.startswith("chained") for r in ill)
    for r in ill:
        assert r.tol.normwise and r.tol.rtol == pc.SPREAD_FACTOR * r.spread
        # Only where the spread bound beats the strict one: 1e-4 normwise, or for a scalar log
        # min(1e-6, 1e-5 |x|) + 1e-5 |x|.
        x = float(np.max(np.abs(golden[r.key])))
        strict = (min(1e-6, 1e-5 * x) + 1e-5 * x) if r.key.startswith("f/logs") else 1e-4 * x
        assert pc.SPREAD_FACTOR * r.spread * x > strict * 0.999, r.key
        assert r.ok and r.max_rel < 2 * r.spread
    assert any(r.key.startswith("f/grads2/") for r in ill)
    restarted = [r for r in run.rows if r.note.startswith("restarted")]
    assert restarted and not any(r.ill_conditioned for r in restarted)
    chained2 = [r.max_rel for r in run.rows if r.note.startswith("chained") and r.tol.normwise
                and re.match(r"^f/[a-z_]+2/", r.key) and not math.isnan(r.max_rel)]
    assert chained2 and max(chained2) < 2 * spread[2]


def _perturbed(row, want):
    """`want` with one element moved by 1% of the array's largest magnitude (a flipped boolean,
    an integer + 1; for a numerically-zero array, 100 x its noise bound)."""
    bad = np.array(want, copy=True)
    flat = bad.reshape(-1)
    i = int(np.argmax(np.abs(flat.astype(np.float64)))) if flat.dtype.kind != "U" else 0
    if flat.dtype.kind == "b":
        flat[i] = ~flat[i]
    elif flat.dtype.kind in "iu":
        flat[i] += 1
    elif row.tol.label.startswith("numerical zero"):
        flat[i] += 100 * row.tol.atol
    else:
        scale = float(np.max(np.abs(flat)))
        flat[i] += 0.01 * (scale if scale > 0 else 1.0)
    return bad


def test_every_comparison_detects_a_one_percent_change(golden, shipped_runs):
    missed = []
    count = 0
    for run in shipped_runs.values():
        for row in run.rows:
            want = golden[row.key]
            if want.dtype.kind == "U":
                continue
            ok = pc.compare(row.got, _perturbed(row, want), row.tol)[3]
            count += 1
            if ok:
                missed.append(f"{row.key} ({row.tol})")
    assert count > 1000
    assert not missed, missed[:10]


def _bump(index, delta):
    """x with element `index` (flat) moved by `delta`."""
    def change(x):
        out = np.array(x, copy=True)
        out.reshape(-1)[index] += delta
        return out
    return change


# One array per group, changed in a copy of the file by an amount its tolerance must catch.
PERTURB = {
    "a": ("a/reg_loss", _bump(3, 1e-3)),
    "b": ("b/lr_e300", lambda x: x * np.float32(1 + 1e-4)),
    "c": ("c/real/params2/net/~/linear/w", _bump(5, 1e-4)),
    "d": ("d/pp_view2_out", _bump(100, 1e-3)),
    "e": ("e/r50_eval_embedding", _bump(7, 0.02)),
    "f": ("f/logs2/tau", lambda x: x + np.float32(1e-6)),
}


@pytest.mark.parametrize("group", pc.GROUPS)
def test_perturbing_one_array_fails_its_group(tmp_path, golden, group):
    key, change = PERTURB[group]
    arrays = dict(golden.arrays)
    arrays[key] = change(arrays[key]).astype(arrays[key].dtype)
    assert not np.array_equal(arrays[key], golden[key])
    (run,) = pc.run_checks(pc.Golden(_copy_golden(tmp_path, arrays)), [group])
    assert not run.ok
    assert run.error is None, run.error
    failed = {r.key for r in run.rows if not r.ok}
    # Only the perturbed array, and for d the replay error derived from the same stored output.
    assert key in failed and failed <= {key, "d/pp_replay_maxabsdiff"}, failed


def test_another_key_changes_the_regenerated_decisions(tmp_path, golden):
    """The decisions are drawn from d/pp_key, not read: a different key fails them (and the
    outputs replayed from them)."""
    arrays = dict(golden.arrays)
    arrays["d/pp_key"] = golden["d/pp_key"] + np.uint32(1)
    (run,) = pc.run_checks(pc.Golden(_copy_golden(tmp_path, arrays)), ["d"])
    failed = {r.key for r in run.rows if not r.ok}
    assert {"d/pp_view1_decisions", "d/pp_view2_decisions"} <= failed, failed


def test_unknown_stream_layout_falls_back_to_the_recorded_decisions(tmp_path, golden):
    """Without the threefry flag or JAX version in meta_json the key cannot be read: it is listed
    as skipped with the reason, and the pipeline replays the recorded decisions."""
    arrays = dict(golden.arrays)
    arrays["meta_json"] = np.array(json.dumps({"backend": "cpu"}))
    (run,) = pc.run_checks(pc.Golden(_copy_golden(tmp_path, arrays)), ["d"])
    assert run.ok, [r.key for r in run.rows if not r.ok]
    assert set(run.skipped) == {"d/pp_key"} and "threefry_partitionable" in run.skipped["d/pp_key"]
    assert {"d/pp_view1_decisions", "d/pp_view2_decisions"} <= run.inputs


def test_command_line_exit_codes(tmp_path, golden):
    arrays = dict(golden.arrays)
    arrays["a/softmax_xent_mean"] = arrays["a/softmax_xent_mean"] + np.float32(1e-3)
    path = _copy_golden(tmp_path, arrays)
    cmd = [sys.executable, str(ROOT / "tools" / "parity_check.py"), "--golden", str(path), "--groups", "a"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "a/softmax_xent_mean" in out.stdout and "PARITY FAILED" in out.stdout
    assert pc.main(["--golden", str(path), "--groups", "z"]) == 2
    assert pc.main(["--golden", str(tmp_path / "missing.npz")]) == 2


def test_other_shapes_of_the_same_schema_pass(tmp_path, golden):
    """A file with every other schedule step, one image per augmentation view, and ResNet-18 only
    (all sliced from the shipped file): the tool reads counts, steps and nets from the file."""
    arrays = {k: v for k, v in golden.arrays.items()
              if k.split("/", 1)[0] in ("b", "d", "e") and not k.startswith("e/r50")}
    for key in [k for k in arrays if k.startswith("b/") and not k.startswith("b/config")]:
        arrays[key] = arrays[key][::2]
    images = golden["d/images"]
    arrays["d/images"] = images[[0, 2]]  # view 1 replays image 0, view 2 image 2
    for key in [k for k in arrays if k.startswith("d/") and k != "d/images"]:
        value = arrays[key]
        if value.ndim == 4 or key.endswith("_decisions"):
            arrays[key] = value[:1]
    runs = pc.run_checks(pc.Golden(_copy_golden(tmp_path, arrays, "sliced")), ["b", "d", "e"])
    for run in runs:
        assert run.ok, (run.name, run.error, [r.key for r in run.rows if not r.ok])
    assert len(runs[0].rows) == 8 and all(r.got.shape == (11,) for r in runs[0].rows)
    assert not any(k.startswith("e/r50") for k in runs[2].compared)


# ------------------------------------------------------------------------------------------------
# tools/haiku_params.py with the reference's ResNet-50 BYOL tree
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def r50_tree():
    return haiku_params.parse_param_tree(str(TREE))


@pytest.fixture(scope="session")
def r50_model(r50_tree):
    layout = haiku_params.layout_from_shapes(r50_tree["params"])
    return haiku_params.build_byol(layout)


def test_tree_listing_matches_the_reference_totals(r50_tree):
    assert len(r50_tree["params"]) == 171
    assert haiku_params.num_params(r50_tree["params"]) == 37_115_944
    torso = {k: s for k, s in r50_tree["params"].items() if k.startswith("res_net50/")}
    assert haiku_params.num_params(torso) == 23_508_032


def test_layout_read_from_the_tree_is_deepmind_resnet50(r50_tree):
    layout = haiku_params.layout_from_shapes(r50_tree["params"])
    assert layout.encoder_prefix == "res_net50/~/"
    assert layout.resnet.depth == 50 and layout.resnet.blocks == (3, 4, 6, 3)
    assert layout.resnet.is_bottleneck and layout.resnet.feature_dim == 2048
    assert layout.resnet.padding == "same" and layout.resnet.bn.semantics == "haiku"
    assert (layout.hidden_dim, layout.out_dim, layout.num_layers) == (4096, 256, 2)
    assert layout.hidden_bias and layout.num_classes == 1000


def _squeezed(shape):
    return [d for d in shape if d != 1]


def test_every_leaf_maps_to_exactly_one_variable_with_its_shape(r50_model, r50_tree):
    m = r50_model
    maps = haiku_params.byol_maps(m, "res_net50/~/")
    assert set(maps.params) == set(r50_tree["params"])
    assert set(maps.state) == set(r50_tree["state"])
    for name in ("params", "state"):
        for key, shape in r50_tree[name].items():
            var = maps.tree(name)[key]
            assert _squeezed(var.shape.as_list()) == _squeezed(shape), key
            assert haiku_params.haiku_shape(key, var, "res_net50/~/") == tuple(shape), key
            assert var.trainable == (name == "params"), key
    # Distinct leaves are distinct variables, except haiku's two EMA counters of one BN.
    refs = {}
    for key, var in {**maps.params, **maps.state}.items():
        refs.setdefault(var.ref(), []).append(key)
    shared = [keys for keys in refs.values() if len(keys) > 1]
    assert all(len(k) == 2 and {x.rsplit("/", 2)[-2] for x in k} == {"mean_ema", "var_ema"}
               for k in shared)
    online = (m.encoder.variables + m.projector.variables + m.predictor.variables + m.probe.variables)
    assert set(refs) == {v.ref() for v in online}
    # The target: the same backbone and projector keys, onto the target variables only.
    target_keys = {k for k in r50_tree["params"] if not k.startswith(("predictor/", "classifier/"))}
    assert set(maps.target_params) == target_keys
    target_refs = {v.ref() for v in {**maps.target_params, **maps.target_state}.values()}
    assert target_refs == {v.ref() for v in m.target_encoder.variables + m.target_projector.variables}
    assert sum(v.shape.num_elements() for v in maps.params.values()) == 37_115_944


def _random_trees(tree, seed):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in tree["params"].items()}
    state = {}
    counters = {}
    for key, shape in tree["state"].items():
        if key.endswith("/counter"):
            module = key.rsplit("/~/", 1)[0]
            counters.setdefault(module, np.int32(rng.integers(0, 10_000)))
            state[key] = counters[module]
        else:
            state[key] = rng.standard_normal(shape).astype(np.float32)
    return params, state


def test_random_trees_round_trip_exactly(r50_model, r50_tree):
    params, state = _random_trees(r50_tree, 0)
    t_params, t_state = _random_trees(r50_tree, 1)
    nested = haiku_params.unflatten(params)  # the nested form haiku uses
    ignored = haiku_params.load(r50_model, {"params": nested, "state": state,
                                            "target_params": t_params, "target_state": t_state})
    assert ignored["params"] == [] and ignored["state"] == []
    reference_only = {k for k in t_params if k.startswith(("predictor/", "classifier/"))}
    assert set(ignored["target_params"]) == reference_only
    out = haiku_params.export(r50_model)
    for name, want in (("params", params), ("state", state), ("target_params", t_params),
                       ("target_state", t_state)):
        got = haiku_params.flatten(out[name])
        expected = {k: v for k, v in want.items()
                    if not (name.startswith("target") and k.startswith(("predictor/", "classifier/")))}
        assert set(got) == set(expected), name
        for key, value in expected.items():
            assert got[key].shape == np.shape(value) and got[key].dtype == np.asarray(value).dtype, key
            assert np.array_equal(got[key], value), key
    # The classifier is the online probe; the predictor is the online predictor.
    np.testing.assert_array_equal(r50_model.probe.linear.w.numpy(), params["classifier/w"])
    np.testing.assert_array_equal(r50_model.predictor.linears[0].b.numpy(), params["predictor/linear/b"])


def test_bad_trees_are_rejected_and_leave_the_model_untouched(r50_model, r50_tree):
    params, state = _random_trees(r50_tree, 2)
    before = r50_model.encoder.initial_conv.w.numpy().copy()
    key = "res_net50/~/initial_batchnorm/~/var_ema/counter"
    bad_state = dict(state, **{key: state[key] + 1})
    with pytest.raises(ValueError, match="counter"):
        haiku_params.load(r50_model, {"params": params, "state": bad_state})
    bad_params = dict(params, **{"classifier/w": np.zeros((2048, 10), np.float32)})
    with pytest.raises(ValueError, match="classifier/w"):
        haiku_params.load(r50_model, {"params": bad_params})
    with pytest.raises(KeyError, match="no variable"):
        extra = dict(params, **{"projector/linear_2/w": params["projector/linear_1/w"]})
        haiku_params.load(r50_model, {"params": extra})
    with pytest.raises(KeyError, match="not in the tree"):
        haiku_params.load(r50_model, {"params": {k: v for k, v in params.items() if k != "classifier/b"}})
    np.testing.assert_array_equal(r50_model.encoder.initial_conv.w.numpy(), before)


def test_tiny_resnet_layout_from_group_f(golden):
    shapes = {k: v.shape for k, v in golden.tree("f/online_params0/").items()}
    layout = haiku_params.layout_from_shapes(shapes)
    assert layout.encoder_prefix == "tiny_res_net/~/"
    assert layout.resnet.blocks == (1, 1, 1, 1) and not layout.resnet.is_bottleneck
    assert layout.resnet.group_channels == ((8, 8),) * 4 and layout.resnet.stem_width == 64
    assert (layout.hidden_dim, layout.out_dim, layout.num_classes) == (64, 32, 10)
    assert math.prod(shapes["tiny_res_net/~/initial_conv/w"]) == 7 * 7 * 3 * 64
