"""The original release's checkpoints: read them, infer the architecture from the stored shapes,
import them into this project's modules with a report, and build a `FeatureModel`.

The release's `run.py` saves `tf.train.Checkpoint(model=..., global_step=..., optimizer=...)`
(fine-tuning: `finetune_global_step`, `finetune_optimizer`) with a `tf.train.CheckpointManager`,
so every variable is stored under its object path plus '/.ATTRIBUTES/VARIABLE_VALUE', optimizer
slots under '<variable path>/.OPTIMIZER_SLOT/<optimizer>/<slot>/...'. The model's attributes:

  _resnet            the online ResNet (SimCLR TF2 layout, see `resnet.release_checkpoint_map`)
  _projection_head   the projection MLP, 'linear_layers/{i}/dense/kernel' + 'bn_relu/bn/*'
  supervised_head    the linear head, 'linear_layer/dense/{kernel,bias}'; it reads the projection
                     output (the release's ft_proj_selector=-1) or the backbone (0)
  _target_resnet, _target_head     the EMA target's ResNet and projection head (when trained so)
  _projector         the online predictor: a projection-shaped MLP ('linear_layers/0,1') or a
                     stochastic head ('linear_layers/0,2,3')
  _target_projector  a projection-shaped MLP on the target's projection (b(z|y)'s mean network)

A method says which of its modules corresponds to which attribute (`Method.release_modules()`),
and every module maps its own variables (`release_checkpoint_map(prefix)`), so nothing here names
an algorithm.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from common.interop import features as features_lib
from common.training import checkpoints
from common.networks import heads as heads_lib
from common.networks import layers
from common.networks import resnet as resnet_lib

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT = "/.OPTIMIZER_SLOT/"
_COUNTERS = ("global_step", "finetune_global_step", "save_counter")
# The classifier is optional in an import: a head sized for another dataset or reading another
# input is left at its initialisation (and reported) instead of refusing the whole checkpoint.
_OPTIONAL = frozenset({"supervised_head"})
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_INV_STD = np.float32(1) / np.array([0.229, 0.224, 0.225], np.float32)
_USUAL_SK_RATIO = 0.0625  # the selective-kernel ratio of the published SK networks
OVERRIDES = ("resnet_depth", "width_multiplier", "cifar_stem", "sk_ratio", "se_ratio",
             "image_size", "normalize")


class ReleaseCheckpointError(ValueError):
    """A release checkpoint that cannot be read or cannot match the model, with the fix."""


def resolve(path: str) -> str:
    """A ckpt-N prefix from a prefix or a directory holding a `checkpoint` state file."""
    try:
        return checkpoints.resolve(path)
    except checkpoints.CheckpointError as e:
        raise ReleaseCheckpointError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class ReleaseCheckpoint:
    """What a release checkpoint holds.

    path: the ckpt-N prefix. variables: model object path (without the suffix) -> shape, for
    every model variable. slots: number of optimizer slot arrays. counters: global_step /
    finetune_global_step / save_counter values present. variant: 'pretrain' or 'finetune'
    (which step counter the release wrote). other: remaining keys (optimizer hyper-parameters).
    """
    path: str
    variables: dict
    slots: int
    counters: dict
    variant: str
    other: tuple

    def has(self, attr: str) -> bool:
        """Whether the model attribute `attr` (e.g. '_target_resnet') holds any variable."""
        return any(k.startswith(f"model/{attr}/") for k in self.variables)

    def under(self, attr: str) -> dict:
        """{path relative to model/<attr>/: shape}."""
        prefix = f"model/{attr}/"
        return {k[len(prefix):]: s for k, s in self.variables.items() if k.startswith(prefix)}

    @property
    def step(self) -> int:
        return int(self.counters.get("finetune_global_step", self.counters.get("global_step", 0)))


def _list(path: str) -> dict:
    return dict(tf.train.list_variables(path))


def is_release_checkpoint(path: str) -> bool:
    """True when the checkpoint at `path` (prefix or directory) is in the release's layout (its
    model keeps the backbone at 'model/_resnet')."""
    try:
        keys = _list(resolve(path))
    except (ReleaseCheckpointError, tf.errors.OpError, ValueError):
        return False
    return any(k.startswith("model/_resnet/") for k in keys)


def read(path: str) -> ReleaseCheckpoint:
    """Lists a release checkpoint's keys and reads its counters."""
    path = resolve(path)
    shapes = _list(path)
    if not any(k.startswith("model/_resnet/") for k in shapes):
        raise ReleaseCheckpointError(
            f"{path} is not a checkpoint of the original release (no 'model/_resnet/' keys); this "
            "project's own checkpoints are read from their run's config.json.")
    reader = tf.train.load_checkpoint(path)
    variables, counters, other, slots = {}, {}, [], 0
    for key, shape in shapes.items():
        if _SLOT in key:
            slots += 1
        elif key.startswith("model/") and key.endswith(SUFFIX):
            variables[key[:-len(SUFFIX)]] = list(shape)
        elif key.endswith(SUFFIX) and key[:-len(SUFFIX)] in _COUNTERS:
            counters[key[:-len(SUFFIX)]] = int(reader.get_tensor(key))
        elif key != "_CHECKPOINTABLE_OBJECT_GRAPH":
            other.append(key)
    variant = "finetune" if "finetune_global_step" in counters or any(
        k.startswith("finetune_optimizer/") for k in other) else "pretrain"
    return ReleaseCheckpoint(path=path, variables=variables, slots=slots, counters=counters,
                             variant=variant, other=tuple(sorted(other)))


# ------------------------------------------------------------------------------ architecture

@dataclasses.dataclass(frozen=True)
class ResNetLayout:
    """A ResNet inferred from a checkpoint: its config, and whether `resnet_depth` and
    `width_multiplier` alone (this project's flags) rebuild it."""
    config: resnet_lib.ResNetConfig
    expressible: bool

    def flags(self) -> str:
        """The trainers' flags that build this ResNet ('' when they cannot express it)."""
        if not self.expressible:
            return ""
        c = self.config
        out = f"--resnet_depth={c.depth} --width_multiplier={c.width_multiplier:g}"
        out += f" --sk_ratio={c.sk_ratio:g}" if c.sk_ratio > 0 else ""
        out += f" --se_ratio={c.se_ratio:g}" if c.se_ratio > 0 else ""
        return out + (" with --image_size <= 32" if c.cifar_stem else " with --image_size > 32")

    def describe(self) -> str:
        c = self.config
        depth = f"ResNet-{c.depth}" if c.blocks_per_group is None else (
            f"ResNet with blocks {c.blocks} ({'bottleneck' if c.is_bottleneck else 'basic'})")
        extras = [f"sk_ratio {c.sk_ratio:g}"] * (c.sk_ratio > 0) + [f"se_ratio {c.se_ratio:g}"] * (c.se_ratio > 0)
        return (f"{depth}, width {c.width_multiplier:g} (stem {c.stem_width}, groups "
                f"{[o for _, o in c.group_channels]}), {'CIFAR' if c.cifar_stem else 'ImageNet'} stem"
                + "".join(f", {e}" for e in extras))


def _count_blocks(shapes: dict, attr: str) -> tuple:
    blocks = []
    for g in range(4):
        idx = {int(m.group(1)) for k in shapes
               for m in [re.match(rf"block_groups/{g}/layers/(\d+)/", k)] if m}
        if not idx:
            raise ReleaseCheckpointError(f"model/{attr} has no block group {g + 1}: not a ResNet of "
                                         "the release's layout.")
        blocks.append(max(idx) + 1)
    return tuple(blocks)


def _infer_ratio(shapes: dict, attr: str, inner: list, layer: str, flag: str, preferred: tuple,
                 width: Callable) -> float:
    """The ratio r with width(f, r) == the stored output width of every '<layer>/kernel' (a 1x1
    conv kernel [1, 1, in, width]) in block group g (inner width inner[g]); candidates in order:
    `preferred`, then width / f of each group."""
    widths = []
    for k, shape in shapes.items():
        m = re.match(rf"block_groups/(\d+)/layers/\d+/.*\b{layer}/kernel$", k)
        if m:
            widths.append((inner[int(m.group(1))], shape[-1]))
    candidates = list(preferred) + [w / f for f, w in sorted(set(widths))]
    for r in candidates:
        if all(width(f, r) == w for f, w in widths):
            return float(r)
    f, w = next((f, w) for f, w in widths if width(f, candidates[0]) != w)
    raise ReleaseCheckpointError(
        f"model/{attr}: no single {flag} gives every block its stored '{layer}' width (e.g. {w} "
        f"for inner width {f}); pass --{flag} with the value the checkpoint was trained with.")


def infer_resnet(ckpt: ReleaseCheckpoint, attr: str = "_resnet", resnet_depth: int | None = None,
                 width_multiplier: float | None = None, cifar_stem: bool | None = None,
                 sk_ratio: float | None = None, se_ratio: float | None = None,
                 image_size: int | None = None) -> ResNetLayout:
    """The ResNetConfig of `model/<attr>` from its shapes; any argument given wins over the
    inference (the import then refuses if the checkpoint does not fit it).

    Depth: blocks per group and block type (bottleneck keys 'conv_relu_dropblock_layers');
    width: the first group's inner width / 64 (absolute channel counts when the groups do not
    follow one multiplier); stem: a 3x3 first conv = CIFAR stem, 7x7 = ImageNet stem, three 3x3
    convs = ResNet-D stem. SimCLRv2's options: selective kernels (sk_ratio > 0: keys 'conv2d_0',
    the ResNet-D stem or average-pool shortcuts) and squeeze-excitation (se_ratio > 0: keys
    'se_reduce'). Their widths are max(int(f * sk_ratio), 32) and max(1, int(f * se_ratio)) for a
    block of inner width f, so a ratio is read back as the first of (SimCLRv2's value, width / f
    of each group) that gives every block its stored width; the floor of 32 often hides
    sk_ratio (every r with int(f * r) <= 32 in all groups builds the same network), and
    SimCLRv2's 0.0625 is taken then. No ratio fitting every block: ReleaseCheckpointError naming the flag that fixes it.
    BN: the release's (Keras semantics, momentum 0.9, eps 1e-5).
    """
    del image_size  # the stem is read from the shapes; image_size only sizes inputs
    s = ckpt.under(attr)
    if not s:
        raise ReleaseCheckpointError(f"{ckpt.path} has no model/{attr}.")
    stem_key = "initial_conv_relu_max_pool/0/conv2d/kernel"
    resnet_d_stem = "initial_conv_relu_max_pool/4/conv2d/kernel" in s
    if stem_key not in s:
        raise ReleaseCheckpointError(f"model/{attr} has no stem conv ({stem_key}).")
    stem_width = s["initial_conv_relu_max_pool/4/conv2d/kernel" if resnet_d_stem else stem_key][3]
    inferred_cifar = not resnet_d_stem and s[stem_key][0] == 3
    blocks = _count_blocks(s, attr)
    bottleneck = "block_groups/0/layers/0/conv_relu_dropblock_layers/0/conv2d/kernel" in s
    seq = "conv_relu_dropblock_layers" if bottleneck else "conv2d_bn_layers"
    inner = []
    for g in range(4):
        key = f"block_groups/{g}/layers/0/{seq}/0/conv2d/kernel"
        if key not in s:
            raise ReleaseCheckpointError(f"model/{attr} has no {key}: not a ResNet of the release's "
                                         "layout.")
        inner.append(s[key][3])
    selective = resnet_d_stem or any(
        re.search(r"/(conv2d_fixed_padding|conv2d_0)/|(projection|shortcut)_layers/[12]/conv2d/", k)
        for k in s)
    if sk_ratio is None and selective:
        sk_ratio = _infer_ratio(s, attr, inner, "conv2d_0", "sk_ratio", (_USUAL_SK_RATIO,),
                                lambda f, r: max(int(f * r), resnet_lib._SK_MIN_DIM))
    if se_ratio is None and any(k.endswith("se_reduce/kernel") for k in s):
        se_ratio = _infer_ratio(s, attr, inner, "se_reduce", "se_ratio", (0.25,),
                                lambda f, r: max(1, int(f * r)))
    depth = next((d for d, (b, bn) in resnet_lib._DEPTHS.items() if b == blocks and bn == bottleneck),
                 None)
    expansion = 4 if bottleneck else 1
    kw = dict(cifar_stem=inferred_cifar if cifar_stem is None else cifar_stem,
              sk_ratio=sk_ratio or 0.0, se_ratio=se_ratio or 0.0)
    if resnet_depth is not None:
        depth_kw = dict(depth=resnet_depth)
    elif depth is not None:
        depth_kw = dict(depth=depth)
    else:
        depth_kw = dict(depth=50 if bottleneck else 18, blocks_per_group=blocks, bottleneck=bottleneck)
    wm = inner[0] / 64.0 if width_multiplier is None else width_multiplier
    follows = (all(resnet_lib._scaled(b, wm) == f for b, f in zip(resnet_lib._BASE_FILTERS, inner))
               and resnet_lib._scaled(64, wm) == stem_width)
    if width_multiplier is None and not follows:
        kw.update(channels_per_group=tuple(f * expansion for f in inner), stem_channels=stem_width)
    cfg = resnet_lib.resnet_config(image_size=224, width_multiplier=wm, **depth_kw, **kw)
    expressible = (width_multiplier is not None or follows) and "blocks_per_group" not in depth_kw
    return ResNetLayout(config=cfg, expressible=expressible)


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    """A release head: kind 'mlp' (ProjectionHead: num_layers Dense layers, BN + ReLU after the
    hidden ones, output BN when output_bn) or 'stochastic' (layers 0, 2, 3); in/hidden/out dims."""
    kind: str
    in_dim: int
    hidden_dim: int
    out_dim: int
    num_layers: int
    output_bn: bool
    hidden_bias: bool


def infer_head(ckpt: ReleaseCheckpoint, attr: str) -> HeadLayout | None:
    """The layout of the head at model/<attr>, or None when the checkpoint has none."""
    s = ckpt.under(attr)
    kernels = {int(m.group(1)): shape for k, shape in s.items()
               for m in [re.fullmatch(r"linear_layers/(\d+)/dense/kernel", k)] if m}
    if not kernels:
        return None
    idx = sorted(kernels)
    last = idx[-1]
    if idx == list(range(len(idx))):
        kind = "mlp"
    elif idx == [0, 2, 3]:
        kind = "stochastic"
    else:
        raise ReleaseCheckpointError(f"model/{attr} has Dense layers {idx}, a head layout this "
                                     "project does not know.")
    hidden_bias = any(f"linear_layers/{i}/dense/bias" in s for i in idx[:-1])
    return HeadLayout(kind=kind, in_dim=kernels[0][0], hidden_dim=kernels[0][1],
                      out_dim=kernels[last][1], num_layers=len(idx),
                      output_bn=kind == "mlp" and f"linear_layers/{last}/bn_relu/bn/gamma" in s,
                      hidden_bias=hidden_bias)


def build_mlp(layout: HeadLayout, bn: layers.BNConfig, name: str) -> heads_lib.MLP:
    """This project's MLP for a release projection head (hidden layers with BN, no bias)."""
    if layout.kind != "mlp" or layout.hidden_bias:
        raise ReleaseCheckpointError(
            f"the release head for {name} has {'a stochastic layout' if layout.kind != 'mlp' else 'hidden layers with a bias and no BN (projector_mid_bn=False)'}, "
            "which this project's projection MLP does not build.")
    return heads_lib.MLP(layout.in_dim, layout.hidden_dim, layout.out_dim,
                         num_layers=layout.num_layers, bn=bn, output_bn=layout.output_bn, name=name)


# ------------------------------------------------------------------------------------ import

@dataclasses.dataclass
class ImportReport:
    """What an import did.

    loaded: 'module <- model/<attr> (n arrays)' lines. missing: what the project's model has that
    the checkpoint lacks (modules left at their initialisation, with the reason). unused: model
    arrays of the checkpoint that were not used, per attribute. expected_unused: optimizer slots
    and counters, summarised (never imported: a run starts its own optimizer).
    """
    checkpoint: str
    loaded: list
    missing: list
    unused: list
    expected_unused: str

    def lines(self) -> list[str]:
        out = [f"imported {self.checkpoint} (the original release's format)"]
        out += [f"  loaded: {x}" for x in self.loaded]
        out += [f"  not in the checkpoint: {x}" for x in self.missing] or [
            "  not in the checkpoint: nothing"]
        out += [f"  in the checkpoint, not used: {x}" for x in self.unused] or [
            "  in the checkpoint, not used: nothing"]
        out.append(f"  not imported, as expected: {self.expected_unused}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _module_variables(module: tf.Module) -> list:
    return list(module.variables)


def _fits(stored: list, wanted: list) -> bool:
    """Same shape, or a 1x1 convolution kernel [1, 1, in, out] for a Dense matrix [in, out] (the
    release's squeeze-excite and selective-kernel attention layers are 1x1 convs on pooled
    features; the project's are Dense layers, the same map)."""
    return list(stored) == wanted or (len(wanted) == 2 and list(stored) == [1, 1] + wanted)


def import_modules(ckpt: ReleaseCheckpoint, modules: dict, architecture: str = "") -> ImportReport:
    """Assigns release arrays to project modules and reports.

    modules: {name: (module, release attribute)}; each module maps itself with
      `module.release_checkpoint_map('model/<attr>/')`.
    A module whose attribute the checkpoint lacks keeps its initialisation (reported as missing);
    one the checkpoint holds must match it key for key and shape for shape (a 1x1 conv kernel
    [1, 1, in, out] fills a Dense matrix [in, out]), or the import refuses
    (ReleaseCheckpointError naming the first mismatching variable and both shapes) and assigns
    nothing. The classifier (`supervised_head`) is the exception: on a shape mismatch it is left
    out and reported.
    """
    hint = f" The checkpoint holds {architecture}." if architecture else ""
    plans, missing = [], []
    for name, (module, attr) in modules.items():
        pmap = module.release_checkpoint_map(f"model/{attr}/")
        present = [k for k in pmap if k in ckpt.variables]
        if not present:
            missing.append(f"{name} (the checkpoint has no model/{attr}; it keeps its "
                           "initialisation)")
            continue
        absent = [k for k in pmap if k not in ckpt.variables]
        if absent:
            raise ReleaseCheckpointError(
                f"{name} does not match model/{attr}: the checkpoint has no {absent[0]!r} "
                f"({len(absent)} of {len(pmap)} arrays missing).{hint} Pass the architecture it "
                "was trained with.")
        bad = [(k, ckpt.variables[k], v.shape.as_list()) for k, v in pmap.items()
               if not _fits(ckpt.variables[k], v.shape.as_list())]
        if bad:
            k, stored, wanted = bad[0]
            if attr in _OPTIONAL:
                missing.append(f"{name} (model/{attr} is {stored} in the checkpoint, {wanted} here: "
                               "another input or class count; it keeps its initialisation)")
                continue
            raise ReleaseCheckpointError(
                f"{name} does not match model/{attr}: {k!r} has shape {stored} in the checkpoint "
                f"but {wanted} in this model ({len(bad)} mismatching arrays).{hint} Pass the "
                "architecture it was trained with.")
        covered = {id(v) for v in pmap.values()}
        uncovered = [v.name for v in _module_variables(module) if id(v) not in covered]
        if uncovered:
            missing.append(f"{name}: {len(uncovered)} variables with no release counterpart "
                           f"(e.g. {uncovered[0]}); they keep their initial values")
        plans.append((name, attr, pmap))
    reader = tf.train.load_checkpoint(ckpt.path)
    used, loaded = set(), []
    for name, attr, pmap in plans:
        for key, var in pmap.items():
            var.assign(np.reshape(reader.get_tensor(key + SUFFIX), var.shape))
        used.update(pmap)
        loaded.append(f"{name} <- model/{attr} ({len(pmap)} arrays)")
    left: dict = {}
    for key in ckpt.variables:
        if key not in used:
            attr = key.split("/")[1]
            left[attr] = left.get(attr, 0) + 1
    unused = [f"model/{attr} ({n} arrays)" for attr, n in sorted(left.items())]
    counters = ", ".join(f"{k}={v}" for k, v in sorted(ckpt.counters.items()))
    expected = f"{ckpt.slots} optimizer slot arrays" + (f", {counters}" if counters else "")
    if ckpt.other:
        expected += f", {len(ckpt.other)} other optimizer arrays"
    return ImportReport(checkpoint=ckpt.path, loaded=loaded, missing=missing, unused=unused,
                        expected_unused=expected)


def import_into_method(method, path: str, only: tuple | None = None,
                       print_fn: Callable | None = print) -> ImportReport:
    """Imports the release checkpoint at `path` into `method` through `method.release_modules()`
    (restricted to the module names in `only`), printing the report with print_fn."""
    ckpt = read(path)
    wanted = method.release_modules()
    if only is not None:
        wanted = {k: v for k, v in wanted.items() if k in only}
    modules = {name: (getattr(method, name), attr) for name, attr in wanted.items()
               if getattr(method, name, None) is not None}
    # The method's own config decides the import; the inferred layout only words a refusal (and a
    # ratio the shapes cannot pin down must not stop a method that was given it).
    try:
        layout = infer_resnet(ckpt)
        arch = layout.describe() + (f" (the trainers' {layout.flags()})" if layout.flags() else "")
    except ReleaseCheckpointError:
        arch = ""
    report = import_modules(ckpt, modules, arch)
    if print_fn is not None:
        print_fn(str(report), flush=True)
    return report


# ----------------------------------------------------------------------------- feature model

def normalize(images: tf.Tensor) -> tf.Tensor:
    """The release's evaluation input transform of a [0, 1] batch [N, H, W, 3] (its default
    'byol' batch augmentation at eval): clip to [0, 1], then (x - ImageNet mean) * (1 / std),
    the float32 reciprocal multiplication its graph computes."""
    x = tf.clip_by_value(images, 0.0, 1.0)
    return (x - tf.constant(_IMAGENET_MEAN)) * tf.constant(_IMAGENET_INV_STD)


def _clip(images: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(images, 0.0, 1.0)


def check_overrides(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ReleaseCheckpointError(f"unknown architecture setting(s) {unknown}; a release "
                                     f"checkpoint takes {', '.join(OVERRIDES)}.")


def load(path: str, print_fn: Callable | None = None, **overrides):
    """(FeatureModel, ImportReport) of the release checkpoint at `path`.

    overrides: resnet_depth, width_multiplier, cifar_stem, sk_ratio, se_ratio (win over the
    inference), image_size (default 32 with a CIFAR stem, else 224), normalize (False for a
    checkpoint trained with the release's 'simclr' batch augmentation, which did not normalise).
    The classifier is the supervised head, on the projection when its input width is the
    projection's (the release's ft_proj_selector=-1), else on the backbone.
    """
    check_overrides(overrides)
    ckpt = read(path)
    arch = {k: overrides.get(k) for k in ("resnet_depth", "width_multiplier", "cifar_stem",
                                          "sk_ratio", "se_ratio")}
    layout = infer_resnet(ckpt, **arch)
    cfg = layout.config
    encoder = resnet_lib.ResNet(cfg, name="encoder")
    modules = {"encoder": (encoder, "_resnet")}
    projector = target_encoder = target_projector = classifier = None
    head = infer_head(ckpt, "_projection_head")
    if head is not None:
        projector = build_mlp(dataclasses.replace(head, in_dim=encoder.feature_dim), cfg.bn, "projector")
        modules["projector"] = (projector, "_projection_head")
    if ckpt.has("_target_resnet"):
        target_encoder = resnet_lib.ResNet(cfg, name="target_encoder")
        modules["target_encoder"] = (target_encoder, "_target_resnet")
        target_head = infer_head(ckpt, "_target_head")
        if target_head is not None:
            target_projector = build_mlp(dataclasses.replace(target_head, in_dim=encoder.feature_dim),
                                         cfg.bn, "target_projector")
            modules["target_projector"] = (target_projector, "_target_head")
    classifier_input = "backbone"
    sup = ckpt.variables.get("model/supervised_head/linear_layer/dense/kernel")
    if sup is not None:
        if projector is not None and sup[0] == projector.out_dim:
            classifier_input = "projection"
        elif sup[0] != encoder.feature_dim:
            sup = None  # reads a hidden layer of the head (ft_proj_selector > 0): left out
        if sup is not None:
            classifier = heads_lib.LinearHead(sup[0], sup[1], name="classifier")
            modules["classifier"] = (classifier, "supervised_head")
    stored = layout
    if any(v is not None for v in arch.values()):
        try:
            stored = infer_resnet(ckpt)
        except ReleaseCheckpointError:  # a ratio only the override fixes: describe what was built
            pass
    report = import_modules(ckpt, modules, stored.describe())
    if print_fn is not None:
        print_fn(str(report), flush=True)
    image_size = overrides.get("image_size") or (32 if cfg.cifar_stem else 224)
    norm = normalize if overrides.get("normalize", True) else _clip
    parts = [layout.describe()]
    if projector is not None:
        parts.append(f"projection {projector.hidden_dim}-{projector.out_dim}")
    if target_encoder is not None:
        parts.append("EMA target")
    if classifier is not None:
        parts.append(f"supervised head on the {classifier_input} ({classifier.num_classes} classes)")
    model = features_lib.FeatureModel(
        image_size=image_size, normalize=norm, encoder=encoder, projector=projector,
        target_encoder=target_encoder, target_projector=target_projector, classifier=classifier,
        classifier_input=classifier_input, source="release",
        description=f"release {ckpt.variant} checkpoint {ckpt.path} at step {ckpt.step}: "
                    + ", ".join(parts))
    return model, report
