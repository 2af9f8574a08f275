"""DeepMind BYOL's haiku parameter trees <-> the project's BYOL model (`byol.model.BYOL`).

DeepMind's reference (deepmind-research/byol) keeps four haiku trees, each a dict
{module_name: {leaf_name: array}} (the trees' key names: tools/PARITY.md, "The reference's trees"):

  params         online network: '<enc>/~/...' backbone, 'projector/...', 'predictor/...',
                 'classifier/{w,b}' (the online linear probe, trained with the same optimizer);
  state          online BN state: '<bn module>/~/{mean_ema,var_ema}/{counter,hidden,average}';
  target_params  the EMA of *every* online parameter, including 'predictor/...' and 'classifier/...',
                 which the reference's target never uses;
  target_state   the target's BN state, including a 'predictor/...' state no forward pass touches.

<enc> is 'res_net50' (or 'res_net18', 'tiny_res_net', ...). The project's model maps as:

  <enc>/~/...                   encoder            (common.resnet.haiku_param_map)
  projector/..., predictor/...  projector, predictor (common.heads.MLP.haiku_param_map)
  classifier/{w, b}             probe.linear.{w, b}
  target <enc>, projector       target_encoder, target_projector

The project's target has no predictor and no classifier (nothing reads them), so those target
entries have no variable: `load` ignores them and names them in its report, `export` leaves them out.

Shapes: conv kernels are HWIO and Linear kernels [in, out] on both sides. haiku stores BN scale,
offset, hidden and average with broadcast shapes, (1, 1, 1, C) in the backbone and (1, C) in the
MLPs; the project stores (C,). haiku keeps two EMA counters per BN (mean_ema, var_ema), always
equal; the project keeps one, so both keys map to it (on import they must agree).

Both nested haiku dicts and flat {'module/leaf': array} dicts are accepted everywhere; a key is
split on its *last* '/' (module names contain '/~/').

Parameter files (`read_trees`, `load_feature_model`, `convert`): the .pkl DeepMind's checkpointer
writes, read without jax, haiku or the reference's code, or an .npz of the trees. Command:

  python tools/haiku_params.py convert --params=FILE --model_dir=NEW [--image_size=224]
      [--config=byol_1000epochs] [--<BYOL trainer flag>=VALUE ...]
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import shutil
import tempfile
from typing import Mapping

import numpy as np
import tensorflow as tf

from byol import model as byol_model
from common.training import models
from common.networks import resnet as resnet_lib

HEAD_MODULES = ("projector", "predictor", "classifier")
TREES = ("params", "state", "target_params", "target_state")
_BN_LEAVES = ("scale", "offset")
_STATE_LEAVES = ("hidden", "average")
_STANDARD_DEPTHS = {  # (blocks per group, bottleneck) -> depth, the haiku ResNet names
    ((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152, ((3, 24, 36, 3), True): 200,
}


def split_key(key: str) -> tuple[str, str]:
    """'<module>/<leaf>' -> (module, leaf), split on the last '/'."""
    if "/" not in key:
        raise ValueError(f"haiku key {key!r} has no '/': expected '<module>/<leaf>'.")
    module, leaf = key.rsplit("/", 1)
    return module, leaf


def is_state_key(key: str) -> bool:
    """True for BN state entries ('.../~/mean_ema/...' or '.../~/var_ema/...')."""
    return "/~/mean_ema/" in key or "/~/var_ema/" in key


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """Nested haiku dict {module: {leaf: array}} (or a flat {'module/leaf': array}) -> flat dict."""
    out = {}
    for module, leaves in tree.items():
        if isinstance(leaves, Mapping):
            for leaf, value in leaves.items():
                out[f"{module}/{leaf}"] = np.asarray(value)
        else:
            split_key(module)
            out[module] = np.asarray(leaves)
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Flat {'module/leaf': array} -> nested haiku dict {module: {leaf: array}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        module, leaf = split_key(key)
        out.setdefault(module, {})[leaf] = value
    return out


def encoder_prefix_of(keys) -> str:
    """The backbone's haiku prefix ('res_net50/~/', 'tiny_res_net/~/', ...) found in `keys`."""
    roots = {k.split("/~/", 1)[0] for k in keys
             if "/~/" in k and k.split("/", 1)[0] not in HEAD_MODULES}
    if len(roots) != 1:
        raise ValueError(f"expected the keys of exactly one haiku ResNet ('<name>/~/...'), found "
                         f"{sorted(roots) or 'none'}; pass encoder_prefix explicitly.")
    return f"{roots.pop()}/~/"


def default_encoder_prefix(resnet_cfg: resnet_lib.ResNetConfig) -> str:
    """haiku's module prefix for a standard layout: 'res_net{depth}/~/'."""
    return f"res_net{resnet_cfg.depth}/~/"


@dataclasses.dataclass(frozen=True)
class ByolMaps:
    """haiku key -> tf.Variable for each of DeepMind's four trees (see the module docstring)."""
    params: dict
    state: dict
    target_params: dict
    target_state: dict
    encoder_prefix: str

    def tree(self, name: str) -> dict:
        if name not in TREES:
            raise ValueError(f"unknown tree {name!r}; use one of {TREES}.")
        return getattr(self, name)


def _split_state(entries: dict) -> tuple[dict, dict]:
    params = {k: v for k, v in entries.items() if not is_state_key(k)}
    state = {k: v for k, v in entries.items() if is_state_key(k)}
    return params, state


def byol_maps(model, encoder_prefix: str | None = None) -> ByolMaps:
    """The haiku key -> variable maps of a `byol.model.BYOL` (or any OnlineTargetMethod with a
    predictor MLP and a LinearHead probe). encoder_prefix defaults to 'res_net{depth}/~/'."""
    if encoder_prefix is None:
        encoder_prefix = default_encoder_prefix(model.encoder.cfg)
    if not encoder_prefix.endswith("/~/"):
        raise ValueError(f"encoder_prefix must end with '/~/' like 'res_net50/~/', got {encoder_prefix!r}.")
    if getattr(model, "predictor", None) is None:
        raise ValueError("DeepMind's BYOL has a predictor; this model was built with "
                         "use_predictor=False, so its tree cannot be mapped.")
    online = dict(resnet_lib.haiku_param_map(model.encoder, prefix=encoder_prefix))
    online.update(model.projector.haiku_param_map("projector/"))
    online.update(model.predictor.haiku_param_map("predictor/"))
    online["classifier/w"] = model.probe.linear.w
    if model.probe.linear.b is not None:
        online["classifier/b"] = model.probe.linear.b
    target = dict(resnet_lib.haiku_param_map(model.target_encoder, prefix=encoder_prefix))
    target.update(model.target_projector.haiku_param_map("projector/"))
    params, state = _split_state(online)
    target_params, target_state = _split_state(target)
    return ByolMaps(params, state, target_params, target_state, encoder_prefix)


def optimizer_slot_map(optimizer, maps: ByolMaps, slot: str = "momentum") -> dict:
    """haiku key -> the optimizer's `slot` variable of each online parameter (DeepMind's opt_state
    `ScaleByLarsState.mu` has the params tree's keys). `optimizer` is a common.optim optimizer
    built over (a subset of) the model's online parameters."""
    key_of = {v.ref(): k for k, v in maps.params.items()}
    slots = getattr(optimizer, slot, None)
    if slots is None:
        raise ValueError(f"{type(optimizer).__name__} has no slot {slot!r}.")
    out = {}
    for var, slot_var in zip(optimizer.variables_to_update, slots):
        if var.ref() not in key_of:
            raise KeyError(f"optimized variable {var.name} is not an online BYOL parameter.")
        out[key_of[var.ref()]] = slot_var
    return out


def haiku_shape(key: str, var: tf.Variable, encoder_prefix: str) -> tuple:
    """The shape haiku gives `key`: BN scale/offset/hidden/average are (1, 1, 1, C) in the backbone
    and (1, C) in the MLPs; everything else has the variable's own shape."""
    _, leaf = split_key(key)
    shape = tuple(var.shape.as_list())
    broadcast = leaf in _BN_LEAVES or (is_state_key(key) and leaf in _STATE_LEAVES)
    if broadcast and len(shape) == 1:
        rank = 4 if key.startswith(encoder_prefix) else 2
        return (1,) * (rank - 1) + shape
    return shape


def _expected_extras(maps: ByolMaps, name: str, key: str) -> bool:
    """Entries of DeepMind's trees that legitimately have no variable here."""
    if name.startswith("target") and key.split("/", 1)[0] in ("predictor", "classifier"):
        return True
    # Keras-semantics BN keeps only the averages: haiku's hidden/counter have nowhere to go.
    if is_state_key(key) and split_key(key)[1] in ("hidden", "counter"):
        module = key.rsplit("/~/", 1)[0]
        return f"{module}/~/mean_ema/average" in maps.tree(name) and key not in maps.tree(name)
    return False


def _value_for(key: str, value: np.ndarray, var: tf.Variable) -> np.ndarray:
    target = var.shape.as_list()
    if [d for d in value.shape if d != 1] != [d for d in target if d != 1]:
        raise ValueError(f"haiku entry {key!r} has shape {tuple(value.shape)}, incompatible with "
                         f"variable {var.name} of shape {tuple(target)}: the model's layout differs "
                         "from the tree's (depth, width, head sizes or number of classes).")
    if var.dtype.is_integer:
        if not np.all(np.asarray(value) == np.round(value)):
            raise ValueError(f"haiku entry {key!r} must hold integers (a BN EMA counter), got {value}.")
    return np.reshape(value, target).astype(var.dtype.as_numpy_dtype)


def load(model, trees: Mapping[str, Mapping], encoder_prefix: str | None = None,
         strict: bool = True) -> dict[str, list[str]]:
    """Assigns DeepMind haiku trees to the model's variables.

    trees: {'params': ..., 'state': ..., 'target_params': ..., 'target_state': ...} (any subset),
      each a nested or flat haiku dict (numpy or JAX arrays).
    strict: every variable of each given tree must receive a value, and every entry must have a
      variable, except the target's predictor/classifier entries (no counterpart here) and haiku's
      hidden/counter when the model uses Keras BN semantics.
    Returns {tree name: [ignored keys]}.
    Raises ValueError (shape or counter mismatch) or KeyError (missing or unknown entries).
    """
    unknown = set(trees) - set(TREES)
    if unknown:
        raise KeyError(f"unknown tree names {sorted(unknown)}; use {TREES} (DeepMind's "
                       "online_params, online_state, target_params, target_state).")
    if encoder_prefix is None:
        keys = [k for tree in trees.values() for k in flatten(tree)]
        encoder_prefix = encoder_prefix_of(keys)
    maps = byol_maps(model, encoder_prefix)
    pending = []
    ignored = {}
    for name, tree in trees.items():
        flat = flatten(tree)
        vmap = maps.tree(name)
        extra = [k for k in flat if k not in vmap]
        bad = [k for k in extra if not _expected_extras(maps, name, k)]
        if strict and bad:
            raise KeyError(f"{name}: {len(bad)} entries have no variable in the model, e.g. "
                           f"{bad[:3]}; the tree is not a BYOL tree of this layout (check depth, "
                           "heads, and encoder_prefix).")
        missing = [k for k in vmap if k not in flat]
        if strict and missing:
            raise KeyError(f"{name}: {len(missing)} model entries are not in the tree, e.g. "
                           f"{missing[:3]}; pass strict=False to load a subset.")
        ignored[name] = sorted(extra)
        by_var: dict = {}
        for key, var in vmap.items():
            if key in flat:
                value = _value_for(key, flat[key], var)
                prev = by_var.get(var.ref())
                if prev is not None and not np.array_equal(prev[1], value):
                    raise ValueError(f"{name}: {prev[0]!r} = {prev[1]} and {key!r} = {value} map to "
                                     f"the same variable {var.name} (the BN's single EMA counter) "
                                     "but differ; haiku's two counters of one BN must be equal.")
                by_var[var.ref()] = (key, value)
        pending.extend((ref.deref(), value) for ref, (_, value) in by_var.items())
    # Assign only after every check passed, so a bad tree leaves the model untouched.
    for var, value in pending:
        var.assign(value)
    return ignored


def export(model, encoder_prefix: str | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """The model's variables as DeepMind's four nested haiku trees of numpy arrays, haiku shapes.

    The target trees have no 'predictor' and 'classifier' modules (the project has no such target
    variables). BN counters appear under both 'mean_ema' and 'var_ema'.
    """
    maps = byol_maps(model, encoder_prefix)
    out = {}
    for name in TREES:
        flat = {k: np.reshape(v.numpy(), haiku_shape(k, v, maps.encoder_prefix))
                for k, v in maps.tree(name).items()}
        out[name] = unflatten(flat)
    return out


def shapes_of(tree: Mapping) -> dict[str, tuple]:
    """{'module/leaf': shape} of a nested or flat haiku tree."""
    return {k: tuple(np.shape(v)) for k, v in flatten(tree).items()}


def resnet_config_from_shapes(shapes: Mapping[str, tuple], encoder_prefix: str,
                              **overrides) -> resnet_lib.ResNetConfig:
    """The DeepMind-layout ResNetConfig ('same' padding, haiku BN, ...) whose haiku tree has these
    parameter shapes: stem width, blocks per group, block type and group widths are read from the
    tree, so ResNet-18/50 at any width and BYOL's TinyResNet all work."""
    p = encoder_prefix
    stem = shapes.get(f"{p}initial_conv/w")
    if stem is None:
        raise KeyError(f"no '{p}initial_conv/w' in the tree: not a haiku ResNet with prefix {p!r}.")
    if tuple(stem[:2]) != (7, 7):
        raise ValueError(f"{p}initial_conv/w has shape {stem}; haiku's ResNet stem is 7x7.")
    bottleneck = f"{p}block_group_0/~/block_0/~/conv_2/w" in shapes
    last = "conv_2" if bottleneck else "conv_1"
    blocks, channels = [], []
    for g in range(4):
        n = 0
        while f"{p}block_group_{g}/~/block_{n}/~/conv_0/w" in shapes:
            n += 1
        if n == 0:
            raise KeyError(f"no '{p}block_group_{g}/~/block_0/~/conv_0/w' in the tree: a haiku "
                           "ResNet has four block groups.")
        blocks.append(n)
        channels.append(int(shapes[f"{p}block_group_{g}/~/block_0/~/{last}/w"][-1]))
    depth = _STANDARD_DEPTHS.get((tuple(blocks), bottleneck), 50 if bottleneck else 18)
    kw = dict(depth=depth, blocks_per_group=tuple(blocks), bottleneck=bottleneck,
              channels_per_group=tuple(channels), stem_channels=int(stem[-1]))
    kw.update(overrides)
    return resnet_lib.deepmind_resnet18(**kw)


def _mlp_dims(shapes, name):
    n = 0
    while f"{name}/{'linear' if n == 0 else f'linear_{n}'}/w" in shapes:
        n += 1
    if n == 0:
        raise KeyError(f"no '{name}/linear/w' in the tree: not a BYOL tree.")
    hidden = int(shapes[f"{name}/linear/w"][1])
    out = int(shapes[f"{name}/{'linear' if n == 1 else f'linear_{n - 1}'}/w"][1])
    return n, hidden, out, f"{name}/linear/b" in shapes


@dataclasses.dataclass(frozen=True)
class ByolLayout:
    """What a BYOL model must look like to hold a given haiku tree."""
    resnet: resnet_lib.ResNetConfig
    hidden_dim: int
    out_dim: int
    num_layers: int
    hidden_bias: bool
    num_classes: int
    encoder_prefix: str


def layout_from_shapes(shapes: Mapping[str, tuple], encoder_prefix: str | None = None,
                       **resnet_overrides) -> ByolLayout:
    """Reads backbone, projector/predictor sizes and class count off a BYOL params tree's shapes."""
    if encoder_prefix is None:
        encoder_prefix = encoder_prefix_of(shapes)
    resnet_cfg = resnet_config_from_shapes(shapes, encoder_prefix, **resnet_overrides)
    proj = _mlp_dims(shapes, "projector")
    pred = _mlp_dims(shapes, "predictor")
    if (proj[0], proj[1], proj[3]) != (pred[0], pred[1], pred[3]) or proj[2] != pred[2]:
        raise ValueError(f"projector (layers, hidden, out, bias) = {proj} and predictor = {pred} "
                         "differ; the project's BYOL builds both from one HeadsConfig.")
    if "classifier/w" not in shapes:
        raise KeyError("no 'classifier/w' in the tree: DeepMind's BYOL params include the online "
                       "linear classifier.")
    feat, num_classes = (int(d) for d in shapes["classifier/w"])
    if feat != resnet_cfg.feature_dim:
        raise ValueError(f"classifier/w reads {feat} features but the backbone gives "
                         f"{resnet_cfg.feature_dim}: the classifier must read the backbone feature.")
    return ByolLayout(resnet_cfg, proj[1], proj[2], proj[0], proj[3], num_classes, encoder_prefix)


def heads_config(layout: ByolLayout) -> models.HeadsConfig:
    """models.HeadsConfig for the layout, with the hidden Linear bias when the tree has one.

    Raises NotImplementedError, naming the fix, when the project's HeadsConfig cannot express a
    hidden bias (DeepMind's MLP has one).
    """
    kw = dict(hidden_dim=layout.hidden_dim, out_dim=layout.out_dim, num_layers=layout.num_layers,
              probe_input="backbone")
    fields = {f.name for f in dataclasses.fields(models.HeadsConfig)}
    if layout.hidden_bias:
        if "use_hidden_bias" not in fields:
            raise NotImplementedError(
                "the tree's MLPs have a hidden Linear bias ('projector/linear/b'), as DeepMind's "
                "MLP does, but common.models.HeadsConfig has no use_hidden_bias field, so the "
                "project's BYOL model cannot hold it. Fix: add HeadsConfig.use_hidden_bias and pass "
                "it to heads.MLP in OnlineTargetMethod._mlp and in BYOL's predictor.")
        kw["use_hidden_bias"] = True
    elif "use_hidden_bias" in fields:
        kw["use_hidden_bias"] = False
    return models.HeadsConfig(**kw)


def build_byol(layout: ByolLayout, base_ema: float = 0.996, total_steps: int = 1,
               byol_loss_weight: float = 1.0):
    """A `byol.model.BYOL` that can hold the layout's tree (variables freshly initialised)."""
    target = models.TargetConfig(base_ema=base_ema, total_steps=total_steps)
    return byol_model.BYOL(layout.resnet, heads_config(layout), target, layout.num_classes,
                           byol_loss_weight=byol_loss_weight, use_predictor=True)


def parse_param_tree(path: str) -> dict[str, dict[str, tuple]]:
    """Reads a parameter-tree listing (tools/golden/byol_r50_param_tree.txt): lines
    'param <module> <leaf> <shape> ...' and 'state <module> <leaf> <shape> <dtype>'.
    Returns {'params': {key: shape}, 'state': {key: shape}}."""
    out = {"params": {}, "state": {}}
    with open(path) as f:
        for line in f:
            parts = line.split(maxsplit=3)
            if len(parts) < 4 or parts[0] not in ("param", "state"):
                continue
            rest = parts[3]
            shape_txt = rest[:rest.index(")") + 1]
            shape = tuple(int(d) for d in shape_txt.strip("()").replace(" ", "").split(",") if d)
            out["params" if parts[0] == "param" else "state"][f"{parts[1]}/{parts[2]}"] = shape
    if not out["params"]:
        raise ValueError(f"{path} has no 'param <module> <leaf> <shape>' lines.")
    return out


def num_params(shapes: Mapping[str, tuple]) -> int:
    """Total number of scalars in a {key: shape} dict."""
    return int(sum(math.prod(s) for s in shapes.values()))


# ------------------------------------------------------------------------------------------------
# DeepMind's parameter files -> trees, a FeatureModel, or a project checkpoint (`convert`).

# The reference's checkpointer pickles {'experiment_state': _ByolExperimentState(...), 'step',
# 'rng'}; the named tuple's fields in their order (a pickle stores only the values).
EXPERIMENT_STATE_FIELDS = ("online_params", "target_params", "online_state", "target_state",
                           "opt_state")
TREE_ALIASES = {"params": "params", "online_params": "params", "state": "state",
                "online_state": "state", "target_params": "target_params",
                "target_state": "target_state"}
_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                            "bool", "str", "bytes", "bytearray", "slice", "range", "object"})
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric", "numpy.dtypes")
_CONVERT_HINT = ("re-save the trees as numpy in an environment with jax and haiku: "
                 "python -c \"import dill, jax, numpy as np; d = dill.load(open('IN.pkl', 'rb')); "
                 "s = d['experiment_state']; np.savez('OUT.npz', **{f'{t}/{m}/{l}': "
                 "np.asarray(v) for t in ('online_params', 'online_state', 'target_params', "
                 "'target_state') for m, ls in getattr(s, t).items() for l, v in ls.items()})\"")


class HaikuFileError(ValueError):
    """A parameter file that cannot be read as DeepMind BYOL trees (the message says why and what
    to do)."""


class _Foreign:
    """Stands in for an object of a package that is not installed here (haiku, jax, the reference's
    own modules): records its constructor arguments, state and items, runs none of its code."""
    origin = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.values = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.values.append(value)

    def extend(self, values):
        self.values.extend(values)


class _Unpickler(pickle.Unpickler):
    """Resolves only plain containers and numpy arrays to real classes; every other class or
    function a pickle names becomes a `_Foreign` stand-in, so no code from the file runs."""

    def find_class(self, module, name):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module in _NUMPY_MODULES and name in ("_reconstruct", "ndarray", "dtype", "scalar")) \
                or (module == "numpy.dtypes" and name.endswith("DType")) \
                or (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode"),
                                      ("copyreg", "_reconstructor")):
            return super().find_class(module, name)
        return type(name, (_Foreign,), {"origin": f"{module}.{name}"})


def _foreign_array(obj: _Foreign):
    """The numpy array inside a pickled jax array, or None. jax pickles an array as
    (reconstruct, (numpy's reduce function, its args, its state, ...)) or around a numpy array."""
    args = obj.args
    if len(args) >= 3 and callable(args[0]) and isinstance(args[1], tuple):
        try:
            value = args[0](*args[1])
            if isinstance(value, np.ndarray):
                value.__setstate__(args[2])
                return value
        except Exception:  # not numpy's reduce triple; try the plain forms below
            pass
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    return arrays[0] if len(arrays) == 1 else None


def _plain(obj):
    """Pickled object -> nested dicts / lists of numpy arrays; `_Foreign` objects that hold nothing
    readable stay as they are (they fail later only if a tree needs them)."""
    if isinstance(obj, (np.ndarray, np.generic, int, float, str, bytes)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {f: _plain(getattr(obj, f)) for f in obj._fields}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, _Foreign):
        if obj.origin.endswith("ExperimentState") and len(obj.args) == len(EXPERIMENT_STATE_FIELDS):
            return {f: _plain(v) for f, v in zip(EXPERIMENT_STATE_FIELDS, obj.args)}
        array = _foreign_array(obj)
        if array is not None:
            return array
        if obj.items:
            return _plain(obj.items)
        found = [a for a in (*obj.args, obj.state) if isinstance(a, Mapping)]
        if len(found) == 1:
            return _plain(found[0])
    return obj


def _check_tree(name: str, tree, path: str) -> dict[str, np.ndarray]:
    if not isinstance(tree, Mapping):
        raise HaikuFileError(f"{path}: tree {name!r} is a {getattr(tree, 'origin', type(tree))} "
                             f"object this reader cannot open without its package; {_CONVERT_HINT}")
    flat = {}
    for key, value in flatten_objects(tree).items():
        if not isinstance(value, (np.ndarray, np.generic)):
            raise HaikuFileError(f"{path}: {name}/{key} is a {getattr(value, 'origin', type(value))} "
                                 f"object, not a numpy array; {_CONVERT_HINT}")
        flat[key] = np.asarray(value)
    return flat


def flatten_objects(tree: Mapping) -> dict:
    """Like `flatten`, without converting leaves (they are checked by the caller)."""
    out = {}
    for module, leaves in tree.items():
        if isinstance(leaves, Mapping):
            out.update({f"{module}/{leaf}": v for leaf, v in leaves.items()})
        else:
            out[module] = leaves
    return out


def read_trees(path: str) -> dict[str, dict[str, np.ndarray]]:
    """DeepMind BYOL trees from a parameter file -> {tree name: flat {'module/leaf': array}}.

    Tree names are TREES ('params', 'state', 'target_params', 'target_state'); the reference's
    spellings 'online_params' / 'online_state' are accepted too. Files:
      .pkl / .pickle: what the reference's checkpointer writes, {'experiment_state':
        (online_params, target_params, online_state, target_state, opt_state), 'step', 'rng'}, or a
        dict holding the trees by name. Read without haiku, jax or the reference's code (their
        classes are replaced by inert stand-ins); jax arrays are read when they wrap numpy data.
      .npz: keys '<tree>/<module>/<leaf>', or bare '<module>/<leaf>' (BN state entries go to
        'state', the rest to 'params').
    Raises HaikuFileError naming the problem and the fix.
    """
    if not os.path.isfile(path):
        raise HaikuFileError(f"{path}: no such file; pass the .pkl DeepMind's BYOL wrote or an .npz "
                             "of its trees.")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise HaikuFileError(f"{path}: not an .npz of plain arrays ({exc}).") from exc
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            head, _, rest = key.partition("/")
            if head in TREE_ALIASES and rest:
                out.setdefault(TREE_ALIASES[head], {})[rest] = value
            else:
                out.setdefault("state" if is_state_key(key) else "params", {})[key] = value
        return out
    try:
        with open(path, "rb") as f:
            raw = _Unpickler(f).load()
    except Exception as exc:
        raise HaikuFileError(f"{path}: not a pickle this reader can open ({type(exc).__name__}: "
                             f"{exc}); pass a .pkl written by DeepMind's BYOL or an .npz of its "
                             "trees.") from exc
    data = _plain(raw)
    if isinstance(data, Mapping) and "experiment_state" in data:
        data = data["experiment_state"]
    if not isinstance(data, Mapping) or not any(k in TREE_ALIASES for k in data):
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise HaikuFileError(f"{path}: no BYOL trees found (top level: {found}); expected "
                             "'experiment_state' or the trees 'online_params', 'online_state', "
                             "'target_params', 'target_state'.")
    return {TREE_ALIASES[k]: _check_tree(k, v, path) for k, v in data.items() if k in TREE_ALIASES}


def _load_resnet(resnet, params: Mapping, state: Mapping, prefix: str) -> None:
    """Assigns a bare haiku ResNet's params and BN state to `resnet` (every entry required)."""
    vmap = resnet_lib.haiku_param_map(resnet, prefix=prefix)
    tree = {**params, **state}
    missing = [k for k in vmap if k not in tree]
    extra = [k for k in tree if k not in vmap]
    if missing or extra:
        raise HaikuFileError(f"the ResNet tree does not match the layout read from its shapes: "
                             f"missing {missing[:3]}, unexpected {extra[:3]}.")
    values = [(var, _value_for(key, tree[key], var)) for key, var in vmap.items()]
    for var, value in values:
        var.assign(value)


def load_feature_model(path: str, image_size: int = 224):
    """The networks of a DeepMind BYOL parameter file as a `common.interop.features.FeatureModel`.

    path: see `read_trees`. The architecture is read from the tree's shapes (ResNet depth, width,
      blocks; projector/predictor sizes; classes). A full BYOL tree gives the online encoder,
      projector and classifier (the online linear probe on the backbone feature), and the target
      encoder and projector when the file has the target trees; a bare haiku ResNet tree
      ('res_net50/~/...' only) gives the encoder alone. BN statistics ('state') are required: the
      networks run in inference mode.
    image_size: the side inputs are resized to by callers that resize (BYOL trains at 224).
    Inputs are normalised with ImageNet's mean and std, as DeepMind's BYOL does.
    """
    from common.data import augment
    from common.interop import features

    trees = read_trees(path)
    if "params" not in trees or "state" not in trees:
        raise HaikuFileError(f"{path}: needs the online parameters and BN state ('online_params' and "
                             f"'online_state'), found {sorted(trees)}.")
    params = trees["params"]
    shapes = {k: v.shape for k, v in params.items()}
    common_kw = dict(image_size=image_size, normalize=augment.normalize, source="haiku")
    if "projector/linear/w" not in params:
        prefix = encoder_prefix_of(shapes)
        cfg = resnet_config_from_shapes(shapes, prefix)
        encoder = resnet_lib.ResNet(cfg, name="encoder")
        _load_resnet(encoder, params, trees["state"], prefix)
        return features.FeatureModel(encoder=encoder, description=(
            f"DeepMind haiku ResNet {prefix[:-3]} from {path} (no heads)"), **common_kw)
    layout = layout_from_shapes(shapes)
    model = build_byol(layout)
    try:
        load(model, trees, encoder_prefix=layout.encoder_prefix)
    except KeyError as exc:
        raise HaikuFileError(f"{path}: {exc.args[0]}") from exc
    has_target = "target_params" in trees and "target_state" in trees
    return features.FeatureModel(
        encoder=model.encoder, projector=model.projector,
        target_encoder=model.target_encoder if has_target else None,
        target_projector=model.target_projector if has_target else None,
        classifier=model.probe, classifier_input="backbone",
        description=f"DeepMind BYOL {layout.encoder_prefix[:-3]} from {path}", **common_kw)


def convert(path: str, model_dir: str, image_size: int = 224, preset: str = "byol_1000epochs",
            argv: list[str] | None = None, print_fn=print, **flag_overrides) -> str:
    """Writes a DeepMind BYOL parameter file as a run of this project's BYOL trainer.

    <model_dir>/ckpt-0 holds the trainer's whole checkpoint (model with the online and target
    networks, predictor and probe; a fresh optimizer at step 0; zeroed metric sums) and
    <model_dir>/config.json the configuration that rebuilds exactly this model: `preset` with the
    tree's architecture (--resnet_depth, --width_multiplier, --resnet_padding=same,
    --bn_semantics=haiku, --mlp_hidden_bias, head sizes, --probe_input=backbone) and
    `flag_overrides` (flag name -> value: dataset, data_dir, batch sizes, ...). So
    `byol/train.py --model_dir=<model_dir>` (with that configuration) continues training from the
    parameters, and tools/evaluate.py and common.interop.loading read it as any run.

    The file needs the online trees; without target trees the target starts as a copy of the
    online networks (BYOL's target is an average of them). model_dir must not exist yet: the run is
    written to a temporary sibling folder and renamed, so a failure leaves nothing behind.
    Returns the checkpoint's path. Raises HaikuFileError (bad file, a layout the trainer's flags
    cannot express) or ValueError (bad flags).
    """
    from byol import configs
    from common.cli import job, settings
    from common.data import datasets as data_lib
    from common.training import optim, schedules
    from common.training import trainer as trainer_lib

    if os.path.exists(model_dir):
        raise HaikuFileError(f"--model_dir={model_dir} already exists; pass a new folder (the "
                             "conversion never writes into an existing run).")
    if preset not in configs.PRESETS:
        raise ValueError(f"--config={preset}: choose one of {sorted(configs.PRESETS)}.")
    trees = read_trees(path)
    if "params" not in trees or "state" not in trees:
        raise HaikuFileError(f"{path}: needs 'online_params' and 'online_state', found {sorted(trees)}.")
    if "target_params" not in trees or "target_state" not in trees:
        print_fn(f"{path} has no target trees: the target starts as a copy of the online networks.")
        trees["target_params"] = {k: v for k, v in trees["params"].items()
                                  if k.split("/", 1)[0] not in ("predictor", "classifier")}
        trees["target_state"] = {k: v for k, v in trees["state"].items()
                                 if not k.startswith("predictor/")}
    layout = layout_from_shapes({k: v.shape for k, v in trees["params"].items()})
    r = layout.resnet
    if image_size <= 32:
        raise HaikuFileError(f"--image_size={image_size}: the trainers use the CIFAR stem at 32 px "
                             "and below, but the tree has haiku's 7x7/2 stem; pass --image_size >= 33.")
    depth = _STANDARD_DEPTHS.get((tuple(r.blocks), r.is_bottleneck))
    kw = dict(resnet_depth=depth or 50, width_multiplier=r.stem_width / 64, resnet_padding="same",
              bn_semantics="haiku", mlp_hidden_bias=layout.hidden_bias,
              num_proj_layers=layout.num_layers, proj_head_hidden_dim=layout.hidden_dim,
              proj_out_dim=layout.out_dim, probe_input="backbone", proj_head_output_bn=False,
              use_projector=True, image_size=image_size, model_dir=model_dir)
    kw.update(flag_overrides)
    try:
        cfg = settings.with_overrides(configs.PRESETS[preset], **kw)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(str(exc.args[0] if exc.args else exc)) from exc
    errors, _ = settings.problems(cfg)
    if errors:
        raise ValueError(" ".join(errors))
    built = job.resnet_config(cfg.model, image_size)
    if depth is None or (built.blocks, built.group_channels, built.stem_width, built.is_bottleneck) \
            != (r.blocks, r.group_channels, r.stem_width, r.is_bottleneck):
        raise HaikuFileError(
            f"{path}: its ResNet (blocks {r.blocks}, channels {r.channels_per_group}, stem "
            f"{r.stem_width}) is not a layout --resnet_depth and --width_multiplier express, so no "
            "trainer run can hold it; use it through tools.haiku_params.load_feature_model or "
            "tools/export_model.py instead.")
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        o = cfg.optim
        train_cfg = trainer_lib.TrainConfig(
            model_dir=tmp, train_steps=1, train_batch_size=cfg.run.train_batch_size,
            eval_batch_size=cfg.run.eval_batch_size, steps_per_loop=1, checkpoint_steps=1,
            keep_checkpoint_max=cfg.run.keep_checkpoint_max,
            lr=schedules.LRConfig(base_lr=o.learning_rate, batch_size=cfg.run.train_batch_size,
                                  warmup_steps=0, total_steps=1),
            optim=optim.OptimConfig(name=o.optimizer, momentum=o.momentum,
                                    weight_decay=o.weight_decay, eta=o.lars_eta,
                                    lars_form=o.lars_form, exclude_probe=o.exclude_probe_from_lars))
        # The trainer's own object graph (model, optimizer, metric sums), so that a resumed run
        # finds every object it expects; nothing is trained here.
        trainer = trainer_lib.Pretrainer(
            lambda num_classes: build_byol(layout), train_cfg,
            data_lib.DataConfig(image_size=image_size), None, tf.distribute.get_strategy(),
            dataset_fn=lambda ctx, start_step: None, num_classes=layout.num_classes,
            print_fn=lambda *a, **k: None)
        ignored = load(trainer.method, trees, encoder_prefix=layout.encoder_prefix)
        saved = trainer.manager.save(checkpoint_number=0)
        job.write_config(tmp, "byol", preset, cfg, list(argv if argv is not None else [
            "tools/haiku_params.py", "convert", f"--params={path}"]))
        os.rename(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    skipped = sum(len(v) for v in ignored.values())
    print_fn(f"converted {path} -> {model_dir} ({layout.encoder_prefix[:-3]}, "
             f"{layout.num_classes} classes, image size {image_size}); {skipped} entries of the "
             "reference's target predictor/classifier have no counterpart and were left out.")
    return os.path.join(model_dir, os.path.basename(saved))


def main(argv=None) -> None:
    """`python tools/haiku_params.py convert --params=FILE --model_dir=NEW [--image_size=224]
    [--config=byol_1000epochs] [--<trainer flag>=VALUE ...]`: see `convert`. Bad input: one line
    on stderr, exit status 2, nothing written."""
    import argparse
    import sys

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="tools/haiku_params.py", description="DeepMind BYOL parameter file -> a BYOL run of "
        "this project (checkpoint + config.json). Extra --name=value pairs are BYOL trainer flags "
        "stored in the run's configuration (e.g. --dataset=imagenet2012 --data_dir=...).")
    parser.add_argument("command", choices=("convert",))
    parser.add_argument("--params", required=True, help="the .pkl DeepMind's BYOL wrote, or an "
                        ".npz of its trees ('<tree>/<module>/<leaf>' keys)")
    parser.add_argument("--model_dir", required=True, help="the new run's folder (must not exist)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--config", default="byol_1000epochs", help="the BYOL preset the run's "
                        "other settings come from")
    args, rest = parser.parse_known_args(argv[1:])
    from byol import configs
    from common.cli import flags as flags_lib

    preset = args.config if args.config in configs.PRESETS else configs.DEFAULT
    try:
        overrides = flags_lib.parse_overrides(rest, configs.PRESETS, preset, "byol")
    except flags_lib.FlagError as e:
        _die(str(e))
    try:
        convert(args.params, args.model_dir, args.image_size, args.config, argv=argv, **overrides)
    except (HaikuFileError, ValueError, KeyError) as exc:
        _die(str(exc.args[0] if exc.args else exc))


def _die(message: str) -> None:
    import sys
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
