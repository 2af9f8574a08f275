"""Groups a (losses), b (schedules) and c (LARS): single float32 ops and short chains, held to a few
ulp (tolerances.TOL_AD; tau to tolerances.TOL_TAU)."""
from __future__ import annotations

import re
import types

import numpy as np
import tensorflow as tf

from tools.parity.golden import Golden
from tools.parity.records import GroupRun
from tools.parity.tolerances import EXACT, TOL_AD, TOL_TAU

# Each group imports the project modules it exercises itself, so that a module that fails to
# import fails its own group (reported with the traceback) instead of the whole check.


def group_a(run: GroupRun) -> None:
    from byol import losses as byol_losses
    from common.losses import terms as common_losses
    from common.training import method as method_lib

    x = tf.constant(run.input("a/x"))
    y = tf.constant(run.input("a/y"))
    run.check("a/l2n_x", common_losses.l2_normalize(x), TOL_AD, "common.losses.terms.l2_normalize")
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
              "mean of common.losses.terms.symmetric_regression_loss")

    logits = tf.constant(run.input("a/logits"))
    labels = tf.constant(run.input("a/labels"))
    # The project's cross-entropy is the one its online probe trains with (Method.probe_loss);
    # an identity probe feeds it the stored logits.
    identity_probe = types.SimpleNamespace(probe=lambda features: features)
    xent, _ = method_lib.Method.probe_loss(identity_probe, logits, labels)
    run.check("a/softmax_xent_mean", xent, TOL_AD, "common.training.method.Method.probe_loss")


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
