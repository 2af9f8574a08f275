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
"""
from __future__ import annotations

import dataclasses
import math
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
