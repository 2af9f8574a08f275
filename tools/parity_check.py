"""Parity of the project's TensorFlow code with DeepMind's BYOL JAX reference, on stored outputs.

    python tools/parity_check.py [--golden PATH] [--groups a,b,...] [--verbose]

Runs the project's own code (common.*, byol.*) on the inputs stored in a golden file with the schema
of tools/golden/byol_golden_manifest.txt and compares the results with the reference's outputs
stored next to them. Groups (BYOL_JAX_REFERENCE.md, section 10):

  a  l2-normalisation, regression loss and its gradient, symmetric BYOL loss, softmax cross-entropy
  b  learning-rate and target-EMA schedules (inside tf.function, int32 steps)
  c  two LARS steps per variant (DeepMind form): buffers, parameters, updates, the filter mask
  d  augmentation ops with fixed factors, fixed-order jitter, blur; the per-view decisions
     regenerated from the stored JAX key (tools/jax_prng.py) and the pipeline replayed from them
  e  haiku ResNet-18/50 forward in training then eval mode, weights rebuilt from their names
  f  two complete BYOL training steps through common.trainer.Pretrainer

Prints one row per group (arrays compared, max absolute and relative error, tolerance, result)
and exits with status 1 if any group fails (2 on bad usage). `--verbose` lists every array: compared
(with its errors), used as input, or skipped with the reason. Nothing is keyed to the shipped
values: shapes, steps, hyper-parameters and layouts are read from the file.

Tolerances (float32 on CPU; justification in tools/PARITY.md): a-d rtol 1e-5 with atol 1e-6 (tau:
4 ulp); e atol 1e-4 (ResNet-18) and 5e-3 (ResNet-50); f rtol 1e-4 of each array's scale for
gradients, LARS buffers, parameters and BN state (1e-3 for steps chained after the first, which
carry the first step's rounding: group f measures and prints how far one-ulp changes of its inputs
move the project's own chained results, 3.3e-4 at step 2 on the shipped file); integers, booleans
and counters exactly.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
import traceback
import types
import zlib
from typing import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/parity_check.py` from anywhere
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

DEFAULT_GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"
GROUPS = ("a", "b", "c", "d", "e", "f")
# Each group imports the project modules it exercises itself, so that a module that fails to
# import fails its own group (reported with the traceback) instead of the whole check.


# ------------------------------------------------------------------------------------------------
# Tolerances and array comparison
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tol:
    """The bound on |got - want|, element by element.

    element-wise (default): |got - want| <= a + rtol * |want|. With rtol > 0 the absolute part is
      a = min(atol, rtol * max|want|): atol only relaxes elements that are near zero *relative to
      their array*, so an array whose values are all small (a LARS update of 1e-3) is still held
      to the relative bound. With rtol = 0, a = atol.
    normwise: |got - want| <= atol + rtol * max|want| (the error relative to the array's scale;
      right for sums such as gradients, whose small elements are differences of large terms).
    exact: equality.
    """
    rtol: float = 0.0
    atol: float = 0.0
    exact: bool = False
    normwise: bool = False
    label: str = ""

    def bound(self, want: np.ndarray) -> np.ndarray:
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 0.0
        if self.normwise:
            return np.full(want.shape, self.atol + self.rtol * scale)
        a = min(self.atol, self.rtol * scale) if self.rtol > 0 else self.atol
        return a + self.rtol * np.abs(np.where(np.isfinite(want), want, 0.0))

    def __str__(self) -> str:
        if self.label:
            return self.label
        if self.exact:
            return "exact"
        parts = [f"{name} {value:g}" for name, value in (("rtol", self.rtol), ("atol", self.atol)) if value]
        return (" ".join(parts) or "exact") + (" normwise" if self.normwise else "")


EXACT = Tol(exact=True)
TOL_AD = Tol(rtol=1e-5, atol=1e-6)        # groups a-d: float32 ops, a few ulp apart
# tau: 4 float32 ulps of a value in [0.5, 1). The EMA uses 1 - tau, so a relative 1e-5 would be
# too loose: it would not see tau evaluated one step late (7e-6 at step 150 of group f).
TOL_TAU = Tol(atol=2.5e-7)
TOL_R18 = Tol(atol=1e-4)                  # group e: f32 vs f64 differ by 3e-5 (eval) for ResNet-18
TOL_R50 = Tol(atol=5e-3)                  # group e: f32 vs f64 differ by 1.4e-3 (eval) for ResNet-50
TOL_F = Tol(rtol=1e-4, normwise=True)     # group f: gradients, buffers, parameters, BN state
TOL_F_CHAINED = Tol(rtol=1e-3, normwise=True)  # group f, steps after the first run in a row
TOL_F_LOG = Tol(rtol=1e-5, atol=1e-6)     # group f: scalar logs (loss, learning rate, accuracies)
TOL_F_LOG_CHAINED = Tol(rtol=1e-4, atol=1e-6)  # group f, losses of steps after the first in a row
# Group f arrays whose stored values are below this fraction of their tree's largest value are
# rounding noise of a mathematically zero quantity (the gradient of a Linear bias followed by BN),
# see `_zero_or_normwise`.
NUMERICAL_ZERO = 1e-6


@dataclasses.dataclass
class Row:
    """One comparison: a stored array against the project's value."""
    key: str
    max_abs: float
    max_rel: float
    used: float  # max over elements of |got - want| / bound (see Tol): > 1 fails
    tol: Tol
    ok: bool
    note: str = ""
    got: np.ndarray | None = dataclasses.field(default=None, repr=False)


def compare(got, want, tol: Tol) -> tuple[float, float, float, bool, str]:
    """(max_abs, max_rel, fraction of tolerance used, ok, note) for got vs want.

    Shapes must agree up to singleton axes (haiku's (1, 1, 1, C) BN vectors vs the project's (C,)).
    max_rel is normwise: max|got - want| / max|want|. Pass/fail is element-wise (see `Tol`).
    """
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        if [d for d in got.shape if d != 1] != [d for d in want.shape if d != 1]:
            return math.nan, math.nan, math.inf, False, f"shape {got.shape} vs stored {want.shape}"
        got = got.reshape(want.shape)
    if want.size == 0:
        return 0.0, 0.0, 0.0, True, ""
    if tol.exact or want.dtype.kind in "biuU":
        if want.dtype.kind == "U":
            ok = bool(np.array_equal(got, want))
            return (0.0 if ok else math.inf), 0.0, (0.0 if ok else math.inf), ok, ""
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_abs = float(diff.max())
        return max_abs, 0.0, (0.0 if max_abs == 0 else math.inf), max_abs == 0, ""
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    finite = np.isfinite(w)
    if not np.array_equal(np.isfinite(g), finite):
        return math.inf, math.inf, math.inf, False, "non-finite values differ"
    w0 = np.where(finite, w, 0.0)
    diff = np.where(finite, np.abs(g - w0), 0.0)
    bound = tol.bound(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = float(np.max(np.where(bound > 0, diff / bound, np.where(diff > 0, np.inf, 0.0))))
    scale = float(np.max(np.abs(w0)))
    max_abs = float(diff.max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.nan)
    return max_abs, max_rel, used, used <= 1.0, ""


# ------------------------------------------------------------------------------------------------
# The golden file and the per-group bookkeeping
# ------------------------------------------------------------------------------------------------

class Golden:
    """The arrays of a golden npz, plus its manifest descriptions and float64 ResNet file if present.

    The manifest (`<stem>_manifest.txt`) is the file's schema: one line 'key<TAB>shape<TAB>dtype<TAB>
    description' per array. The few constants recorded only there (fixed jitter factors, blur sigmas
    of the 224 px taps, the LR batch size of group b) are read from it.
    """

    def __init__(self, path, manifest=None, f64=None):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"golden file {self.path} not found; pass --golden PATH to a file "
                                    "with the schema of tools/golden/byol_golden_manifest.txt.")
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                self.arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, pickled objects, truncated files
            raise ValueError(f"cannot read {self.path} as an .npz of plain arrays ({exc}); pass the "
                             "golden file written by the reference run.") from exc
        stem = self.path.with_suffix("")
        manifest = pathlib.Path(manifest) if manifest else pathlib.Path(f"{stem}_manifest.txt")
        self.manifest_path = manifest if manifest.is_file() else None
        self.descriptions = {}
        if self.manifest_path:
            for line in self.manifest_path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 4:
                    self.descriptions[parts[0]] = parts[3]
        f64 = pathlib.Path(f64) if f64 else pathlib.Path(f"{stem}_resnet_f64.npz")
        self.f64 = {}
        self.f64_path = f64 if f64.is_file() else None
        if self.f64_path:
            with np.load(f64, allow_pickle=False) as npz:
                self.f64 = {k: npz[k] for k in npz.files}

    def __getitem__(self, key):
        return self.arrays[key]

    def __contains__(self, key):
        return key in self.arrays

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.arrays if k.startswith(prefix))

    def tree(self, prefix: str) -> dict[str, np.ndarray]:
        """{rest: array} for every key '<prefix><rest>' (prefix ends with '/')."""
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def describe(self, key: str) -> str | None:
        return self.descriptions.get(key)

    def with_arrays(self, arrays: dict[str, np.ndarray]) -> "Golden":
        """A copy with some arrays replaced; the manifest and the float64 file are shared."""
        other = copy.copy(self)
        other.arrays = {**self.arrays, **arrays}
        return other


class GroupRun:
    """Bookkeeping of one group: comparisons, inputs, skipped arrays, notes, error."""

    def __init__(self, golden: Golden, name: str, title: str):
        self.golden = golden
        self.name = name
        self.title = title
        self.rows: list[Row] = []
        self.extra_rows: list[Row] = []  # comparisons with arrays outside the main file (f64)
        self.inputs: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.error: str | None = None
        self.traceback = ""
        self.seconds = 0.0
        self.float32_spread: dict[int, float] = {}  # group f: see _float32_spread

    def input(self, key: str) -> np.ndarray:
        """The stored array `key`, recorded as used as input."""
        if key not in self.golden:
            raise KeyError(f"{key} is missing from {self.golden.path}; the file does not follow the "
                           "schema of tools/golden/byol_golden_manifest.txt.")
        self.inputs.add(key)
        return self.golden[key]

    def check(self, key: str, got, tol: Tol, note: str = "") -> Row:
        """Compares the project's value `got` with the stored array `key`."""
        if key not in self.golden:
            raise KeyError(f"{key} is missing from {self.golden.path}.")
        got = _np(got)
        max_abs, max_rel, used, ok, why = compare(got, self.golden[key], tol)
        if tol.label.startswith("numerical zero"):
            max_rel = math.nan  # the stored values are rounding noise: no relative error to speak of
        row = Row(key, max_abs, max_rel, used, tol, ok, "; ".join(s for s in (note, why) if s),
                  np.asarray(got))
        self.rows.append(row)
        return row

    def check_extra(self, label: str, got, want, tol: Tol, note: str = "") -> Row:
        """A comparison with an array that is not in the main file (the float64 ResNet file)."""
        max_abs, max_rel, used, ok, why = compare(np.asarray(got), want, tol)
        row = Row(label, max_abs, max_rel, used, tol, ok, "; ".join(s for s in (note, why) if s))
        self.extra_rows.append(row)
        return row

    def skip(self, key: str, reason: str) -> None:
        self.skipped[key] = reason

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def compared(self) -> set[str]:
        return {r.key for r in self.rows}

    def finish(self) -> None:
        """Accounts for every array of the group: unreached ones are listed as skipped."""
        seen = self.compared | self.inputs | set(self.skipped)
        for key in self.golden.keys(f"{self.name}/"):
            if key not in seen:
                self.skipped[key] = ("not reached: the group stopped with an error" if self.error
                                     else "not part of the known schema; nothing compares it")

    @property
    def ok(self) -> bool:
        return (self.error is None and bool(self.rows) and all(r.ok for r in self.rows)
                and all(r.ok for r in self.extra_rows))


def _np(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _number(token: str) -> float:
    """'p0.25' -> 0.25, 'm0.3' -> -0.3, '1.3' -> 1.3 (the golden file's key spelling)."""
    if token.startswith("p"):
        return float(token[1:])
    if token.startswith("m"):
        return -float(token[1:])
    return float(token)


# ------------------------------------------------------------------------------------------------
# Group a: losses
# ------------------------------------------------------------------------------------------------

def group_a(run: GroupRun) -> None:
    from byol import losses as byol_losses
    from common.losses import terms as common_losses
    from common.training import method as method_lib

    x = tf.constant(run.input("a/x"))
    y = tf.constant(run.input("a/y"))
    run.check("a/l2n_x", common_losses.l2_normalize(x), TOL_AD, "common.losses.l2_normalize")
    run.check("a/reg_loss", byol_losses.regression_loss(x, y), TOL_AD, "byol.losses.regression_loss")
    with tf.GradientTape() as tape:
        tape.watch(x)
        mean_loss = tf.reduce_mean(byol_losses.regression_loss(x, y))
    run.check("a/grad_mean_reg_loss_wrt_x", tape.gradient(mean_loss, x), TOL_AD,
              "tf.GradientTape through byol.losses.regression_loss")

    p1, p2, z1, z2 = (tf.constant(run.input(f"a/{k}")) for k in ("p1", "p2", "z1", "z2"))
    loss, metrics = byol_losses.byol_loss(p1, p2, z1, z2)
    run.check("a/byol_sym_loss", loss, TOL_AD, "byol.losses.byol_loss (weight 1)")
    run.check("a/byol_sym_loss", metrics["byol_loss"], TOL_AD, "byol_loss metric 'byol_loss'")
    run.check("a/byol_sym_loss",
              tf.reduce_mean(common_losses.symmetric_regression_loss(p1, p2, z1, z2)), TOL_AD,
              "mean of common.losses.symmetric_regression_loss")

    logits = tf.constant(run.input("a/logits"))
    labels = tf.constant(run.input("a/labels"))
    # The project's cross-entropy is the one its online probe trains with (Method.probe_loss);
    # an identity probe feeds it the stored logits.
    identity_probe = types.SimpleNamespace(probe=lambda features: features)
    xent, _ = method_lib.Method.probe_loss(identity_probe, logits, labels)
    run.check("a/softmax_xent_mean", xent, TOL_AD, "common.method.Method.probe_loss")


# ------------------------------------------------------------------------------------------------
# Group b: schedules
# ------------------------------------------------------------------------------------------------

def _lr_batch_size(golden: Golden, tag: str, total: int, warmup: int) -> tuple[int, str]:
    """The batch size group b's schedule was scaled with, and where it was found.

    The manifest records it ('batch 4096'); without a manifest it is the batch B for which the
    reference's ImageNet step formulas give the stored (T, warmup) for the tag's epochs.
    """
    from common.training import schedules

    m = re.search(r"batch (\d+)", golden.describe(f"b/lr_{tag}") or "")
    if m:
        return int(m.group(1)), "the manifest"
    e = re.match(r"^e(\d+)$", tag)
    if e is None:
        raise ValueError(f"cannot tell the LR batch size of b/lr_{tag}: no manifest and the tag is "
                         "not 'e<epochs>'.")
    epochs = int(e.group(1))
    n = schedules.IMAGENET_TRAIN_EXAMPLES
    lo, hi = n * epochs // (total + 1), n * epochs // max(total, 1) + 1
    found = [b for b in range(max(lo, 1), hi + 1) if schedules.imagenet_steps(epochs, b) == (total, warmup)]
    if len(found) != 1:
        raise ValueError(f"cannot tell the LR batch size of b/lr_{tag}: candidates {found}.")
    return found[0], "the ImageNet step formulas (no manifest)"


def group_b(run: GroupRun) -> None:
    from common.training import schedules

    g = run.golden
    steps = run.input("b/steps")
    tags = sorted(k[len("b/config_"):] for k in g.keys("b/config_"))
    if not tags:
        raise KeyError("no 'b/config_<tag>' arrays in the file.")
    for tag in tags:
        total, warmup, base_lr, base_ema, _ = run.input(f"b/config_{tag}").tolist()
        total, warmup = int(total), int(warmup)
        batch, source = _lr_batch_size(g, tag, total, warmup)
        cfg = schedules.LRConfig(base_lr=base_lr, batch_size=batch, warmup_steps=warmup,
                                 total_steps=total)
        # As in training: a compiled function of an int32 step tensor.
        lr_fn = tf.function(lambda s, c=cfg: schedules.learning_rate(s, c))
        tau_fn = tf.function(lambda s, e=base_ema, t=total: schedules.target_ema_tau(s, e, t))
        lr = np.array([lr_fn(tf.constant(s, tf.int32)).numpy() for s in steps])
        tau = np.array([tau_fn(tf.constant(s, tf.int32)).numpy() for s in steps])
        label = f"T {total}, warmup {warmup}, base lr {base_lr:g} x {batch}/256 (batch from {source})"
        for key, got, what, tol in (
                (f"b/lr_{tag}", lr, "schedules.learning_rate", TOL_AD),
                (f"b/tau_{tag}", tau, f"schedules.target_ema_tau (base {base_ema:g})", TOL_TAU)):
            run.check(key, got, tol, f"{what}, {label}")
            if f"{key}_f64" in g:
                run.check(f"{key}_f64", got, tol, f"{what} vs the float64 formula")


# ------------------------------------------------------------------------------------------------
# Group c: LARS
# ------------------------------------------------------------------------------------------------

def _tf_name(haiku_key: str) -> str:
    """A TF variable name for a haiku key: drop the '~' path components ('net/~/conv/w' -> 'net/conv/w')."""
    return "/".join(p for p in haiku_key.split("/") if p != "~")


def group_c(run: GroupRun) -> None:
    from common.training import optim

    g = run.golden
    params0 = {k: run.input(f"c/params0/{k}") for k in sorted(g.tree("c/params0/"))}
    names = list(params0)
    got_mask = np.array([not optim.exclude_bias_and_norm(k) for k in names])
    for k, m in zip(names, got_mask):
        run.check(f"c/filter_mask/{k}", np.bool_(m), EXACT, "not optim.exclude_bias_and_norm(haiku name)")
    variants = sorted(k.split("/")[1] for k in g.keys("c/") if re.match(r"^c/[^/]+/hparams$", k))
    if not variants:
        raise KeyError("no 'c/<variant>/hparams' arrays in the file.")
    for v in variants:
        hp = run.input(f"c/{v}/hparams")
        wd, eta, momentum = (float(x) for x in hp[:3])
        num_steps = len({k.split("/")[2] for k in g.keys(f"c/{v}/mu")})
        lrs = [float(x) for x in hp[3:3 + num_steps]]
        if len(lrs) != num_steps:
            raise ValueError(f"c/{v}/hparams has {len(hp) - 3} learning rates for {num_steps} steps.")
        variables = [tf.Variable(params0[k], name=_tf_name(f"c_{v}/{k}")) for k in names]
        # The trainer's path: masks from the variable names with the default exclusion rule.
        opt = optim.LARS(variables, momentum=momentum, weight_decay=wd, eta=eta, form="deepmind")
        for k, dm, am in zip(names, opt.decay_mask, opt.adapt_mask):
            if dm != am:
                raise AssertionError(f"LARS decay and adaptation masks differ for {k}.")
            run.check(f"c/filter_mask/{k}", np.bool_(dm), EXACT,
                      f"LARS mask of variable '{_tf_name(f'c_{v}/{k}')}' ({v})")
        for step in range(1, num_steps + 1):
            grads = [tf.constant(run.input(f"c/grads{step}/{k}")) for k in names]
            lr = lrs[step - 1]
            opt.apply_gradients(grads, lr)
            for k, var, mu in zip(names, variables, opt.momentum):
                run.check(f"c/{v}/mu{step}/{k}", mu.numpy(), TOL_AD, f"LARS momentum slot, step {step}")
                run.check(f"c/{v}/params{step}/{k}", var.numpy(), TOL_AD, f"parameter after step {step}")
                # The update the optimizer subtracted: lr * momentum, in the variable's dtype.
                upd = -(tf.cast(tf.constant(lr), var.dtype) * mu)
                run.check(f"c/{v}/updates{step}/{k}", upd, TOL_AD, f"-lr * momentum slot, lr {lr:g}")


# ------------------------------------------------------------------------------------------------
# Group d: augmentations
# ------------------------------------------------------------------------------------------------

_SINGLE_OP = re.compile(r"^d/(brightness|contrast|saturation|hue)_([pm]?[0-9.]+)$")
_BLUR = re.compile(r"^d/blur(\d+)_sigma([0-9.]+)$")
_TAPS = re.compile(r"^d/blur(\d+)_taps$")
_PP = re.compile(r"^d/pp_view(\d+)_out$")


def _per_image(fn: Callable, images: np.ndarray) -> np.ndarray:
    return np.stack([_np(fn(tf.constant(x))) for x in images])


def _manifest_number(golden: Golden, key: str, pattern: str) -> float | None:
    text = golden.describe(key) or ""
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def group_d(run: GroupRun) -> None:
    from common.data import augment as A

    g = run.golden
    images = run.input("d/images")
    clip = lambda t: tf.clip_by_value(t, 0.0, 1.0)  # noqa: E731
    ops = {"brightness": A.adjust_brightness, "contrast": A.adjust_contrast,
           "saturation": A.adjust_saturation, "hue": A.adjust_hue}
    for key in g.keys("d/"):
        m = _SINGLE_OP.match(key)
        if m:
            op, factor = ops[m.group(1)], _number(m.group(2))
            n = g[key].shape[0]
            run.check(key, _per_image(lambda x: clip(op(x, factor)), images[:n]), TOL_AD,
                      f"clip(augment.adjust_{m.group(1)}(x, {factor:g}))")
        m = _BLUR.match(key)
        if m:
            height, sigma = int(m.group(1)), float(m.group(2))
            n = g[key].shape[0]
            if images.shape[1] != height:
                raise ValueError(f"{key} is a {height} px blur but d/images are {images.shape[1]} px.")
            run.check(key, _per_image(lambda x: A.gaussian_blur(x, sigma, A.blur_kernel_size(height)),
                                      images[:n]), TOL_AD,
                      f"augment.gaussian_blur(sigma {sigma:g}, kernel {A.blur_kernel_size(height):g})")
    for key in ("d/grayscale", "d/solarize"):
        if key in g:
            fn = A.to_grayscale if key == "d/grayscale" else A.solarize
            run.check(key, _per_image(fn, images[:g[key].shape[0]]), TOL_AD, f"augment.{fn.__name__}")
    if "d/hsv" in g:
        hsv = A.rgb_to_hsv(tf.constant(images[0]))
        run.check("d/hsv", hsv, TOL_AD, "augment.rgb_to_hsv(images[0])")
        run.check("d/hsv_roundtrip", A.hsv_to_rgb(hsv), TOL_AD, "augment.hsv_to_rgb(rgb_to_hsv(images[0]))")

    if "d/jitter_fixed" in g:
        order = run.input("d/jitter_order")
        desc = g.describe("d/jitter_fixed") or ""
        m = re.search(r"b=([-+0-9.]+)\s+c=([-+0-9.]+)\s+s=([-+0-9.]+)\s+h=([-+0-9.]+)", desc)
        if m is None:
            reason = ("the fixed jitter factors are recorded only in the manifest's description "
                      "('b=... c=... s=... h=...'), which was not found")
            run.skip("d/jitter_fixed", reason)
            run.skip("d/jitter_fixed_gray", reason)
        else:
            b, c, s, h = (float(v) for v in m.groups())
            jitter = lambda x: A.color_jitter(x, order, b, c, s, h)  # noqa: E731
            n = g["d/jitter_fixed"].shape[0]
            label = f"augment.color_jitter(order {order.tolist()}, b {b:g}, c {c:g}, s {s:g}, h {h:g})"
            run.check("d/jitter_fixed", _per_image(lambda x: clip(jitter(x)), images[:n]), TOL_AD, label)
            run.check("d/jitter_fixed_gray",
                      _per_image(lambda x: clip(A.to_grayscale(jitter(x))), images[:n]), TOL_AD,
                      label + " + to_grayscale + clip")

    for key in g.keys("d/"):
        m = _TAPS.match(key)
        if not m:
            continue
        height = int(m.group(1))
        desc = g.describe(key) or ""
        sig = re.search(r"sigma in \[([^\]]*)\]", desc)
        if sig is None:
            run.skip(key, "the sigmas of the taps are recorded only in the manifest ('sigma in "
                          "[...]'), which was not found")
            continue
        sigmas = [float(v) for v in sig.group(1).split(",")]
        taps = np.stack([_np(A.blur_taps(s, A.blur_kernel_size(height))) for s in sigmas])
        run.check(key, taps, TOL_AD, f"augment.blur_taps(sigma in {sigmas}, kernel {height / 10:g})")

    # The full per-view pipeline. The views take consecutive slices of d/images (view 1 first), as
    # the reference's call did. Their per-image decisions are regenerated from the stored key with
    # a numpy threefry (tools/jax_prng.py) and compared with the recorded ones; the pipeline then
    # replays the regenerated decisions, so the stored outputs are reached from the key alone.
    views = sorted(int(_PP.match(k).group(1)) for k in g.keys("d/") if _PP.match(k))
    drawn = _decisions_from_key(run, [g[f"d/pp_view{v}_decisions"].shape[0] for v in views],
                                image_size=images.shape[1]) if views else None
    start = 0
    worst = 0.0
    for i, v in enumerate(views):
        key = f"d/pp_view{v}_decisions"
        if drawn is None:
            rows = run.input(key)
            source = "the recorded decisions"
        else:
            rows = drawn[i]
            run.check(key, rows, TOL_AD, "tools.jax_prng.byol_postprocess_decisions(d/pp_key) with "
                                         "augment.byol_config()'s probabilities and ranges")
            source = "the decisions regenerated from d/pp_key"
        out_key = f"d/pp_view{v}_out"
        n = rows.shape[0]
        replay = np.stack([_np(A.postprocess_from_decisions(tf.constant(images[start + j]), rows[j]))
                           for j in range(n)])
        run.check(out_key, replay, TOL_AD, f"augment.postprocess_from_decisions on "
                                           f"d/images[{start}:{start + n}], {source}")
        worst = max(worst, float(np.max(np.abs(replay.astype(np.float64) - g[out_key]))))
        start += n
    if "d/pp_replay_maxabsdiff" in g:
        run.check("d/pp_replay_maxabsdiff", np.float64(worst), Tol(atol=TOL_AD.atol),
                  "max |replay - stored output| of the project's replay (the reference's own replay "
                  "is the stored value)")


def _decisions_from_key(run: GroupRun, batch_sizes: list[int], image_size: int):
    """The reference's per-image decisions for each view, regenerated from `d/pp_key`; None (with
    `d/pp_key` listed as skipped) when the file has no key or does not say which threefry layout
    made it."""
    from common.data import augment as A
    from tools import jax_prng

    g = run.golden
    if "d/pp_key" not in g:
        return None
    try:
        meta = json.loads(str(g["meta_json"])) if "meta_json" in g else {}
        partitionable = jax_prng.partitionable_from_meta(meta)
    except ValueError as exc:
        run.skip("d/pp_key", f"the key's stream cannot be regenerated: {exc} The pipeline is "
                             "replayed from the recorded decisions instead.")
        return None
    key = run.input("d/pp_key")
    run.note(f"d/pp_key: threefry2x32 in {'partitionable' if partitionable else 'original'} layout "
             "(meta_json), reference key tree of augmentations.postprocess")
    return jax_prng.byol_postprocess_decisions(key, batch_sizes, A.byol_config(image_size),
                                               jax_prng.ThreefryPRNG(partitionable))


# ------------------------------------------------------------------------------------------------
# Group e: haiku ResNet forward
# ------------------------------------------------------------------------------------------------

def golden_weight(key: str, shape) -> np.ndarray:
    """Group e's weight for haiku key '<module>/<param>': an rng seeded with crc32 of the key;
    w ~ N(0, 2 / fan_in) with fan_in = prod(shape[:-1]), BN scale ~ U[0.5, 1.5), offset ~ U[-0.2, 0.2);
    float32. Draws fill the array in C order, so haiku's (1, 1, 1, C) and our (C,) get the same values."""
    r = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rsplit("/", 1)[1]
    shape = tuple(shape)
    if leaf == "w":
        value = r.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf == "scale":
        value = r.uniform(0.5, 1.5, shape)
    elif leaf == "offset":
        value = r.uniform(-0.2, 0.2, shape)
    else:
        raise ValueError(f"no weight rule for haiku parameter {key!r} (expected w, scale or offset).")
    return value.astype(np.float32)


def group_e(run: GroupRun) -> None:
    from common.data import augment as A
    from common.networks import layers
    from common.networks import resnet as resnet_lib
    from tools import haiku_params

    g = run.golden
    tags = sorted({m.group(1) for k in g.keys("e/")
                   for m in [re.match(r"^e/([a-z0-9]+)_train_embedding$", k)] if m})
    if not tags:
        raise KeyError("no 'e/<tag>_train_embedding' arrays in the file.")
    calib = tf.constant(A.normalize(tf.constant(run.input("e/calib_images"))))
    test = tf.constant(A.normalize(tf.constant(run.input("e/test_images"))))
    for tag in tags:
        state_prefix = f"e/{tag}_state1/"
        state_keys = sorted(g.tree(state_prefix))
        prefix = haiku_params.encoder_prefix_of(state_keys)
        m = re.match(r"^res_net(\d+)/~/$", prefix)
        if m is None:
            raise ValueError(f"group e's {tag} state uses prefix {prefix!r}; expected 'res_net<depth>/~/'.")
        depth = int(m.group(1))
        tol = TOL_R50 if depth >= 50 else TOL_R18
        stem = g[f"{state_prefix}{prefix}initial_batchnorm/~/mean_ema/average"].shape[-1]
        cfg = resnet_lib.deepmind_resnet18(depth=depth, width_multiplier=stem / 64)
        net = resnet_lib.ResNet(cfg, name=f"golden_{tag}")
        pmap = resnet_lib.haiku_param_map(net, prefix=prefix)
        counters = {v.ref(): v for k, v in pmap.items() if k.endswith("/counter")}
        if f"e/{tag}_init_state_counter_example" in g:
            init = {int(v.numpy()) for v in counters.values()}
            run.check(f"e/{tag}_init_state_counter_example", init.pop() if len(init) == 1 else -1,
                      EXACT, "BN counter of the freshly built network")
        for key, var in pmap.items():
            if not haiku_params.is_state_key(key):
                var.assign(golden_weight(key, var.shape.as_list()))
        if f"e/{tag}_num_params" in g:
            run.check(f"e/{tag}_num_params", layers.count_params(net), EXACT, "layers.count_params")
        train = net(calib, training=True)
        run.check(f"e/{tag}_train_embedding", train, tol,
                  f"ResNet-{depth} x{cfg.width_multiplier:g}, training mode")
        for rest in state_keys:
            if rest not in pmap:
                raise KeyError(f"{state_prefix}{rest} has no variable in the project's ResNet-{depth}.")
            run.check(state_prefix + rest, pmap[rest].numpy(), tol, "BN EMA average after one call")
        after = {int(v.numpy()) for v in counters.values()}
        if f"e/{tag}_counter1" in g:
            run.check(f"e/{tag}_counter1", after.pop() if len(after) == 1 else -1, EXACT,
                      f"every BN counter ({len(counters)} BNs) after one training call")
        evaluated = net(test, training=False)
        run.check(f"e/{tag}_eval_embedding", evaluated, tol, "eval mode with the updated state")
        run.check(f"e/{tag}_eval_embedding_calib", net(calib, training=False), tol,
                  "eval mode on the calibration images")
        for name, got in (("train_embedding", train), ("eval_embedding", evaluated)):
            key64 = f"e64/{tag}_{name}"
            if key64 in g.f64:
                run.check_extra(f"{key64} (float64 file)", got.numpy(), g.f64[key64], tol,
                                "the same network in float64")
        del net


# ------------------------------------------------------------------------------------------------
# Group f: two BYOL training steps through the project's trainer
# ------------------------------------------------------------------------------------------------

# The reference's log names -> the project's metric names (common.trainer / byol.model).
LOG_METRICS = {"loss": "loss", "repr_loss": "byol_loss", "classif_loss": "probe_loss",
               "top1_accuracy": "probe_acc", "tau": "tau", "learning_rate": "learning_rate"}


class _Recorder:
    """Records what the trainer hands the optimizer, the probe and the loss, changing nothing.

    The trainer's step runs as is; `apply_gradients` (optimizer), `probe_loss` and `target`
    (method) are wrapped on the instances to keep the gradients and learning rate, the probe's
    logits (for top-5 accuracy, which the project does not log) and the target projections.
    """

    def __init__(self, optimizer, method):
        self.grads = None
        self.lr = None
        self.logits = None
        self.targets = []
        apply, probe_loss, target = optimizer.apply_gradients, method.probe_loss, method.target

        def recording_apply(grads, lr):
            self.grads = [tf.identity(g) for g in grads]
            self.lr = tf.identity(lr)
            return apply(grads, lr)

        def recording_probe_loss(features, labels):
            self.logits = method.probe(tf.stop_gradient(features))
            return probe_loss(features, labels)

        def recording_target(images):
            out = target(images)
            self.targets.append(tf.identity(out))
            return out

        optimizer.apply_gradients = recording_apply
        method.probe_loss = recording_probe_loss
        method.target = recording_target


def _zero_or_normwise(tree: dict[str, np.ndarray], key: str, tol: Tol) -> tuple[Tol, str]:
    """`tol`, or for an array that is rounding noise in the reference (every |value| below
    NUMERICAL_ZERO x the largest value of its tree, e.g. the gradient of a Linear bias followed by
    BN, which is exactly zero in exact arithmetic) an absolute bound at that noise level."""
    scale = max(float(np.max(np.abs(v))) for v in tree.values() if v.dtype.kind == "f" and v.size)
    if float(np.max(np.abs(tree[key]))) < NUMERICAL_ZERO * scale:
        return Tol(atol=NUMERICAL_ZERO * scale, label=f"numerical zero (atol {NUMERICAL_ZERO:g} x tree)"), (
            f"numerically zero: all |x| < {NUMERICAL_ZERO:g} x the tree's largest value {scale:.3g}")
    return tol, ""


class _TargetExtras:
    """DeepMind's target network also holds a predictor and a classifier: it runs the predictor in
    training mode on the target projections (updating its BN state) and averages both into its
    target parameters, although the loss reads neither. The project has no such target modules.
    To compare those stored arrays, this keeps copies built from the project's own modules
    (common.heads.MLP, common.heads.LinearHead), runs the predictor copy on the target projections
    the project computed, and averages the copies with common.ema.ema_update and the project's tau.
    """

    def __init__(self, method, maps, trees, ignored):
        from common.networks import heads

        self.keys = {name: list(ignored.get(name, [])) for name in ("target_params", "target_state")}
        unknown = [k for keys in self.keys.values() for k in keys
                   if k.split("/", 1)[0] not in ("predictor", "classifier")]
        if unknown:
            raise KeyError(f"target entries without a counterpart: {unknown[:3]}")
        self.predictor = self.classifier = None
        self.vars: dict[str, tf.Variable] = {}
        if any(k.startswith("predictor/") for keys in self.keys.values() for k in keys):
            p = method.predictor
            self.predictor = heads.MLP(
                p.in_dim, p.hidden_dim, p.out_dim, num_layers=p.num_layers, bn=method.encoder.cfg.bn,
                use_hidden_bias=p.linears[0].b is not None, name="reference_target_predictor")
            self.vars.update(self.predictor.haiku_param_map("predictor/"))
        if any(k.startswith("classifier/") for k in self.keys["target_params"]):
            probe = method.probe
            self.classifier = heads.LinearHead(probe.in_dim, probe.num_classes,
                                               name="reference_target_classifier")
            self.vars.update({"classifier/w": self.classifier.linear.w,
                              "classifier/b": self.classifier.linear.b})
        for name in ("target_params", "target_state"):
            for key in self.keys[name]:
                if key not in self.vars:
                    raise KeyError(f"{name} entry {key} has no variable in the emulated target heads.")
                var = self.vars[key]
                var.assign(np.reshape(trees[name][key], var.shape).astype(var.dtype.as_numpy_dtype))
        self.online = [maps.params[k] for k in self.keys["target_params"]]
        self.targets = [self.vars[k] for k in self.keys["target_params"]]

    def step(self, projections, tau) -> None:
        """The reference's order: forward passes with the step's starting target parameters, then
        the EMA towards the updated online parameters."""
        from common.training import ema as ema_lib

        if self.predictor is not None:
            for z in projections:
                self.predictor(z, training=True)
        if self.targets:
            ema_lib.ema_update(self.targets, self.online, tau)


def _stored_state(g: Golden, index: int) -> dict[str, dict[str, np.ndarray]]:
    """The four stored haiku trees after step `index` (0 = the initial state)."""
    return {name: g.tree(f"f/{prefix}{index}/") for name, prefix in (
        ("params", "online_params"), ("state", "online_state"),
        ("target_params", "target_params"), ("target_state", "target_state"))}


def group_f(run: GroupRun) -> None:
    """Two phases. 'chained': every stored step in a row from the stored initial state, as
    training runs; 'restarted': each step k >= 2 again from the stored state after step k-1 (with
    the stored LARS buffers). Step 1 and the restarted steps are held to TOL_F. Chained steps after
    the first carry the earlier steps' float32 rounding, which this ill-conditioned net (batch 8,
    BN over 1x1 maps) amplifies about tenfold into the gradients (see PARITY.md), so they are held
    to TOL_F_CHAINED."""
    from common.data import augment as A
    from tools import haiku_params

    g = run.golden
    hp = run.input("f/hparams").tolist()
    if len(hp) != 8:
        raise ValueError(f"f/hparams has {len(hp)} entries; expected [batch_size_for_lr_scaling, "
                         "max_steps, warmup_steps, base_lr, base_target_ema, weight_decay, eta, momentum].")
    steps = [int(s) for s in run.input("f/global_steps")]
    for key in g.keys("f/"):
        if re.match(r"^f/(online|target)_(params|state)0/", key):
            run.input(key)
    initial = _stored_state(g, 0)
    layout = haiku_params.layout_from_shapes({k: v.shape for k, v in initial["params"].items()})
    view1, view2 = run.input("f/view1"), run.input("f/view2")
    labels = run.input("f/labels")
    # The reference normalises inside its forward pass; the project's input pipeline does it last.
    batch = {"view1": A.normalize(tf.constant(view1)), "view2": A.normalize(tf.constant(view2)),
             "label": tf.constant(labels)}
    run.note(f"layout read from f/online_params0: encoder {layout.encoder_prefix} blocks "
             f"{layout.resnet.blocks} channels {layout.resnet.channels_per_group} stem "
             f"{layout.resnet.stem_width}; MLPs {layout.num_layers} layers, hidden {layout.hidden_dim}, "
             f"out {layout.out_dim}, hidden bias {layout.hidden_bias}; {layout.num_classes} classes; "
             f"batch {view1.shape[0]} x {view1.shape[1]} px; steps {steps}")
    _run_byol_steps(run, hp, layout, batch, steps, start=0, count=len(steps), phase="chained")
    for k in range(2, len(steps) + 1):
        _run_byol_steps(run, hp, layout, batch, steps, start=k - 1, count=1, phase="restarted")
    worst: dict[str, float] = {}
    for r in run.rows:
        m = _F_TREE.match(r.key)
        if m and r.tol.normwise and not math.isnan(r.max_rel):
            label = f"step {m.group(2)} {r.note.split(':')[0]}"
            worst[label] = max(worst.get(label, 0.0), r.max_rel)
    run.note("largest normwise relative error of gradients, LARS buffers, parameters and BN state: "
             + "; ".join(f"{k}: {v:.1e}" for k, v in sorted(worst.items())))
    run.float32_spread = _float32_spread(run, hp, layout, steps)
    spread = run.float32_spread
    later = max((v for k, v in spread.items() if k > 1), default=0.0)
    run.note("float32 spread of the project's own chained steps when the stored views and/or "
             "initial parameters move by at most one ulp (normwise relative, same arrays): "
             + "; ".join(f"step {k}: {v:.1e}" for k, v in sorted(spread.items()))
             + (f". Chained steps after the first are held to {TOL_F_CHAINED}: rounding alone "
                f"moves them by more than {TOL_F}." if later > TOL_F.rtol else
                f". It stays below {TOL_F} here, so {TOL_F_CHAINED} for the chained steps "
                f"after the first is looser than this file needs."))


_F_TREE = re.compile(r"^f/(grads|mu|online_params|target_params|online_state|target_state)(\d+)/")


def _float32_spread(run: GroupRun, hp, layout, steps) -> dict[int, float]:
    """How far float32 rounding alone moves the project's chained results. The chained steps run
    again three times, with the stored views, the stored initial online/target parameters, or both
    moved by at most one ulp (a fixed random half of the elements, each up or down), and each run's
    arrays are compared with the unmoved run's as the reference is (max |a - b| / max |stored|,
    numerically-zero arrays left out). Returns {step: largest value over arrays and runs}. Nothing
    is compared with the reference here."""
    from common.data import augment as A

    g = run.golden
    ours = {r.key: r.got for r in run.rows if r.note.startswith("chained")}
    spread: dict[int, float] = {}
    for variant, moved in enumerate((("views",), ("params",), ("views", "params"))):
        rng = np.random.default_rng(variant)

        def nudge(x: np.ndarray) -> np.ndarray:
            if x.dtype != np.float32:
                return x
            direction = np.where(rng.random(x.shape) < 0.5, np.float32(np.inf), np.float32(-np.inf))
            changed = np.nextafter(x, direction.astype(np.float32))
            return np.where(rng.random(x.shape) < 0.5, changed, x).astype(np.float32)

        shadow_golden = g.with_arrays({
            key: nudge(g[key]) for key in g.keys("f/")
            if ("views" in moved and key in ("f/view1", "f/view2"))
            or ("params" in moved and re.match(r"^f/(online|target)_params0/", key))})
        shadow = GroupRun(shadow_golden, "f", "float32 spread")
        batch = {"view1": A.normalize(tf.constant(shadow_golden["f/view1"])),
                 "view2": A.normalize(tf.constant(shadow_golden["f/view2"])),
                 "label": tf.constant(g["f/labels"])}
        _run_byol_steps(shadow, hp, layout, batch, steps, start=0, count=len(steps), phase="chained")
        for r in shadow.rows:
            m = _F_TREE.match(r.key)
            if not (m and r.tol.normwise and r.key in ours):
                continue
            scale = float(np.max(np.abs(g[r.key])))
            if scale > 0:
                diff = np.abs(r.got.astype(np.float64) - np.reshape(ours[r.key], r.got.shape))
                step = int(m.group(2))
                spread[step] = max(spread.get(step, 0.0), float(diff.max()) / scale)
    return spread


def _run_byol_steps(run: GroupRun, hp, layout, batch, steps, start: int, count: int, phase: str) -> None:
    """Builds the project's Pretrainer, loads the stored state after step `start`, runs `count`
    training steps through Pretrainer.run_steps and compares everything stored for them."""
    from common.data import datasets as data_lib
    from common.training import optim
    from common.training import schedules
    from common.training import trainer as trainer_lib
    from tools import haiku_params

    g = run.golden
    lr_batch, total, warmup, base_lr, base_ema, wd, eta, momentum = hp
    size = int(batch["view1"].shape[0])
    # Nothing is saved: the directory only satisfies TrainConfig and the checkpoint manager.
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = trainer_lib.TrainConfig(
            model_dir=model_dir, train_steps=steps[-1] + 1, train_batch_size=size,
            eval_batch_size=size, steps_per_loop=1, checkpoint_steps=steps[-1] + 1,
            lr=schedules.LRConfig(base_lr=base_lr, batch_size=int(lr_batch), warmup_steps=int(warmup),
                                  total_steps=int(total)),
            optim=optim.OptimConfig(name="lars", momentum=momentum, weight_decay=wd, eta=eta,
                                    lars_form="deepmind"))
        trainer = trainer_lib.Pretrainer(
            lambda num_classes: haiku_params.build_byol(layout, base_ema=base_ema, total_steps=int(total)),
            cfg, data_lib.DataConfig(image_size=int(batch["view1"].shape[1])), None,
            tf.distribute.get_strategy(),
            dataset_fn=lambda ctx: tf.data.Dataset.from_tensors(batch).repeat(),
            num_classes=layout.num_classes, print_fn=lambda *a, **k: None)
    method = trainer.method
    trees = _stored_state(g, start)
    ignored = haiku_params.load(method, trees, encoder_prefix=layout.encoder_prefix)
    maps = haiku_params.byol_maps(method, layout.encoder_prefix)
    slots = haiku_params.optimizer_slot_map(trainer.optimizer, maps)
    if start > 0:
        for key, slot in slots.items():
            slot.assign(np.reshape(g[f"f/mu{start}/{key}"], slot.shape))
    key_of = {v.ref(): k for k, v in maps.params.items()}
    optimized = trainer.optimizer.variables_to_update
    extras = _TargetExtras(method, maps, trees, ignored)
    if phase == "chained" and (extras.keys["target_params"] or extras.keys["target_state"]):
        run.note("the reference's target also has a predictor and a classifier that the loss never "
                 "reads (the project has neither); their stored parameters and BN state are "
                 "compared with copies built from common.heads.MLP / LinearHead: the predictor copy "
                 "runs in training mode on the project's target projections, and both are averaged "
                 "with common.ema.ema_update and the project's tau")
    recorder = _Recorder(trainer.optimizer, method)

    for k in range(start + 1, start + count + 1):
        tol_main = TOL_F if (k == 1 or phase == "restarted") else TOL_F_CHAINED
        label = f"{phase} from stored step {start}" if phase == "restarted" else phase
        trainer.optimizer.iterations.assign(steps[k - 1])
        trainer.metrics.reset()
        recorder.targets = []
        trainer.run_steps(1, [batch])
        logged = trainer.metrics.result()
        extras.step(recorder.targets, tf.constant(logged["tau"], tf.float32))

        def check_tree(prefix, values, what):
            stored = g.tree(prefix)
            for key, got in values.items():
                if key.endswith("/counter"):
                    run.check(prefix + key, got, EXACT, f"{label}: {what}")
                    continue
                tol, why = _zero_or_normwise(stored, key, tol_main)
                run.check(prefix + key, got, tol, "; ".join(s for s in (f"{label}: {what}", why) if s))

        check_tree(f"f/grads{k}/", {key_of[v.ref()]: gr.numpy()
                                    for v, gr in zip(optimized, recorder.grads)},
                   "gradient the trainer passed to LARS")
        check_tree(f"f/mu{k}/", {key: slot.numpy() for key, slot in slots.items()}, "LARS momentum slot")
        for name, prefix in (("params", f"f/online_params{k}/"), ("state", f"f/online_state{k}/"),
                             ("target_params", f"f/target_params{k}/"),
                             ("target_state", f"f/target_state{k}/")):
            check_tree(prefix, {key: var.numpy() for key, var in maps.tree(name).items()},
                       f"model {name}")
            check_tree(prefix, {key: extras.vars[key].numpy() for key in extras.keys.get(name, [])},
                       "reference-only target module, emulated (see note)")
        for ref_name, ours in LOG_METRICS.items():
            key = f"f/logs{k}/{ref_name}"
            if key in g:
                if ref_name == "tau":
                    tol = TOL_TAU
                elif ref_name.endswith("loss") and tol_main is TOL_F_CHAINED:
                    tol = TOL_F_LOG_CHAINED
                else:
                    tol = TOL_F_LOG
                run.check(key, np.float32(logged[ours]), tol, f"{label}: trainer metric '{ours}'")
        if f"f/logs{k}/top5_accuracy" in g:
            top = min(5, int(recorder.logits.shape[-1]))
            top5 = tf.reduce_mean(tf.cast(tf.nn.in_top_k(tf.cast(batch["label"], tf.int32),
                                                         recorder.logits, top), tf.float32))
            run.check(f"f/logs{k}/top5_accuracy", top5, TOL_F_LOG,
                      f"{label}: top-5 of the project's probe logits inside the training step")
        if float(recorder.lr) != np.float32(logged["learning_rate"]):
            raise AssertionError("the logged learning rate differs from the one given to LARS.")


# ------------------------------------------------------------------------------------------------
# Running the groups and reporting
# ------------------------------------------------------------------------------------------------

GROUP_FUNCTIONS = {
    "a": ("losses", group_a),
    "b": ("schedules", group_b),
    "c": ("LARS", group_c),
    "d": ("augmentations", group_d),
    "e": ("ResNet forward", group_e),
    "f": ("BYOL training steps", group_f),
}


def run_group(golden: Golden, name: str) -> GroupRun:
    """Runs one group; an exception in the project's code fails the group (with its traceback)."""
    title, fn = GROUP_FUNCTIONS[name]
    run = GroupRun(golden, name, title)
    start = time.perf_counter()
    try:
        fn(run)
    except Exception as exc:  # a crash in the project's code is a failed group, not a crashed tool
        run.error = f"{type(exc).__name__}: {exc}"
        run.traceback = "".join(traceback.format_exception(exc)).rstrip()
    run.finish()
    run.seconds = time.perf_counter() - start
    return run


def select_groups(golden: Golden, groups: str | None) -> list[str]:
    """The groups to run: the comma-separated `groups`, or every group present in the file."""
    if not groups:
        return [g for g in GROUPS if golden.keys(f"{g}/")]
    chosen = [s.strip() for s in groups.split(",") if s.strip()]
    bad = [s for s in chosen if s not in GROUPS]
    if bad:
        raise ValueError(f"unknown group(s) {bad}; choose from {','.join(GROUPS)}.")
    return chosen


def run_checks(golden: Golden, groups: list[str]) -> list[GroupRun]:
    """Runs the selected groups; a group without arrays in the file fails."""
    runs = []
    for name in groups:
        if not golden.keys(f"{name}/"):
            run = GroupRun(golden, name, GROUP_FUNCTIONS[name][0])
            run.error = f"the file has no '{name}/' arrays"
            runs.append(run)
            continue
        runs.append(run_group(golden, name))
    return runs


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.2e}"


def _max(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else math.nan


def report(golden: Golden, runs: list[GroupRun], verbose: bool, out=None) -> bool:
    """Prints the summary table, failures, notes (and with `verbose` every array); returns True
    when every group passed."""
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"golden file: {golden.path} ({len(golden.arrays)} arrays)")
    if "meta_json" in golden:
        p(f"reference:   {golden['meta_json']} (meta_json)")
    p(f"manifest:    {golden.manifest_path or 'not found'}")
    p(f"float64 ResNet file: {golden.f64_path or 'not found'}")
    p("")
    header = (f"{'group':<22} {'arrays':>6} {'inputs':>6} {'skipped':>7} {'max abs err':>11} "
              f"{'max rel err':>11} {'tol used':>8}  {'result':<13} tolerances")
    p(header)
    p("-" * (len(header) + 30))
    all_ok = True
    for run in runs:
        rows = run.rows + run.extra_rows
        tols = "; ".join(dict.fromkeys(str(r.tol) for r in rows)) or "-"
        status = "PASS" if run.ok else "FAIL"
        all_ok &= run.ok
        p(f"{run.name + ' ' + run.title:<22} {len(run.compared):>6} {len(run.inputs):>6} "
          f"{len(run.skipped):>7} {_fmt(_max(r.max_abs for r in rows)):>11} "
          f"{_fmt(_max(r.max_rel for r in rows)):>11} {_fmt(_max(r.used for r in rows)):>8}  "
          f"{status + f' ({run.seconds:.1f}s)':<13} {tols}")
    p("")
    p("max rel err = max |ours - stored| / max |stored| per array; tol used = the largest "
      "error / bound ratio (> 1 fails).")
    for run in runs:
        failed = [r for r in run.rows + run.extra_rows if not r.ok]
        if run.error:
            p(f"[{run.name}] ERROR {run.error}")
            if verbose and run.traceback:
                p(run.traceback)
        if failed:
            p(f"[{run.name}] {len(failed)} comparisons FAILED:")
            for r in failed[:50] if not verbose else failed:
                p(f"    {r.key}: max abs {_fmt(r.max_abs)}, max rel {_fmt(r.max_rel)}, "
                  f"{_fmt(r.used)} x tolerance ({r.tol}) [{r.note}]")
            if len(failed) > 50 and not verbose:
                p(f"    ... and {len(failed) - 50} more (--verbose lists all)")
        for text in run.notes:
            p(f"[{run.name}] note: {text}")
        if run.skipped and not verbose:
            p(f"[{run.name}] {len(run.skipped)} arrays skipped (--verbose lists them with the reason)")
    if verbose:
        for run in runs:
            p("")
            p(f"===== group {run.name}: {run.title} =====")
            for r in run.rows + run.extra_rows:
                p(f"  {'ok  ' if r.ok else 'FAIL'} {r.key}: max abs {_fmt(r.max_abs)}, max rel "
                  f"{_fmt(r.max_rel)}, {_fmt(r.used)} x tol ({r.tol}) [{r.note}]")
            for key in sorted(run.inputs):
                p(f"  used as input: {key}")
            for key, reason in sorted(run.skipped.items()):
                p(f"  SKIPPED {key}: {reason}")
    n_all = len(golden.arrays)
    outside = [k for k in golden.arrays if k.split("/", 1)[0] not in GROUPS]
    selected = {r.name for r in runs}
    not_selected = sum(1 for k in golden.arrays if k.split("/", 1)[0] in set(GROUPS) - selected)
    p("")
    p(f"{n_all} arrays in the file: {sum(len(r.compared) for r in runs)} compared, "
      f"{sum(len(r.inputs) for r in runs) + len(outside)} used as input "
      f"(incl. {', '.join(outside) or 'nothing'} outside the groups), "
      f"{sum(len(r.skipped) for r in runs)} skipped, {not_selected} in groups not selected.")
    p("PARITY OK" if all_ok else "PARITY FAILED")
    return all_ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", default=str(DEFAULT_GOLDEN),
                        help="golden npz with the schema of tools/golden/byol_golden_manifest.txt")
    parser.add_argument("--groups", default=None,
                        help="comma-separated subset of a,b,c,d,e,f (default: every group in the file)")
    parser.add_argument("--manifest", default=None, help="default: <golden stem>_manifest.txt")
    parser.add_argument("--golden-f64", default=None, help="default: <golden stem>_resnet_f64.npz")
    parser.add_argument("--verbose", action="store_true",
                        help="list every array: compared (with its errors), input, or skipped")
    args = parser.parse_args(argv)
    try:
        golden = Golden(args.golden, args.manifest, args.golden_f64)
        groups = select_groups(golden, args.groups)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = run_checks(golden, groups)
    return 0 if report(golden, runs, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
