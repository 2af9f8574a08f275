"""Group f: complete BYOL training steps through the project's trainer, replayed from the stored
state, and the verdict that separates a real difference from float32 ill-conditioning.

Three kinds of runs of `replay_steps`:
  chained    every stored step in a row from the stored initial state, as training runs;
  restarted  each step k >= 2 again from the stored state after step k-1 (LARS buffers included);
  spread     the chained steps again with the stored views and/or initial parameters moved by at
             most one ulp (`float32_spread`): how far float32 rounding alone moves each array.
Restarted comparisons are held to the strict bounds (tolerances.TOL_F, TOL_F_LOG, TOL_TAU). A
chained comparison is held to max(strict, SPREAD_FACTOR x its own spread)
(tolerances.chained_tolerance): where the spread-based bound is the larger, the comparison is
reported as ill-conditioned. The rule is per array, so an array that rounding does not move (a
parameter, whose step is small) stays strict even in an ill-conditioned step.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from typing import Callable

import numpy as np
import tensorflow as tf

from tools.parity.golden import Golden
from tools.parity.records import GroupRun
from tools.parity.tolerances import (EXACT, SPREAD_FACTOR, TOL_F, TOL_F_LOG, TOL_TAU, Tol,
                                     chained_tolerance, is_numerical_zero, zero_or_strict)

# The reference's log names -> the project's metric names (common.training.trainer / byol.model).
LOG_METRICS = {"loss": "loss", "repr_loss": "byol_loss", "classif_loss": "probe_loss",
               "top1_accuracy": "probe_acc", "tau": "tau", "learning_rate": "learning_rate"}

# Keys of the stored trees of group f, with the step index as group 2.
F_TREE = re.compile(r"^f/(grads|mu|online_params|target_params|online_state|target_state)(\d+)/")


@dataclasses.dataclass
class Observation:
    """The project's value for a stored array of group f, with the strict bound it is held to."""
    key: str
    got: np.ndarray
    strict: Tol
    note: str
    step: int


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

        def recording_apply(grads, lr, skip=None):
            self.grads = [tf.identity(g) for g in grads]
            self.lr = tf.identity(lr)
            return apply(grads, lr, skip=skip)

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


class _TargetExtras:
    """DeepMind's target network also holds a predictor and a classifier: it runs the predictor in
    training mode on the target projections (updating its BN state) and averages both into its
    target parameters, although the loss reads neither. The project has no such target modules.
    To compare those stored arrays, this keeps copies built from the project's own modules
    (common.networks.heads.MLP, common.networks.heads.LinearHead), runs the predictor copy on the
    target projections the project computed, and averages the copies with
    common.training.ema.ema_update and the project's tau.
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


def stored_state(g: Golden, index: int) -> dict[str, dict[str, np.ndarray]]:
    """The four stored haiku trees after step `index` (0 = the initial state)."""
    return {name: g.tree(f"f/{prefix}{index}/") for name, prefix in (
        ("params", "online_params"), ("state", "online_state"),
        ("target_params", "target_params"), ("target_state", "target_state"))}


def read_setup(run: GroupRun):
    """(hparams, global steps, layout, batch) of group f, recording the stored inputs as used."""
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
    initial = stored_state(g, 0)
    layout = haiku_params.layout_from_shapes({k: v.shape for k, v in initial["params"].items()})
    view1, view2 = run.input("f/view1"), run.input("f/view2")
    labels = run.input("f/labels")
    # The reference normalises inside its forward pass; the project's input pipeline does it last.
    batch = {"view1": A.normalize(tf.constant(view1)), "view2": A.normalize(tf.constant(view2)),
             "label": tf.constant(labels)}
    return hp, steps, layout, batch


def group_f(run: GroupRun) -> None:
    """Chained, restarted and spread runs (see the module's docstring), then the verdicts."""
    g = run.golden
    hp, steps, layout, batch = read_setup(run)
    run.note(f"layout read from f/online_params0: encoder {layout.encoder_prefix} blocks "
             f"{layout.resnet.blocks} channels {layout.resnet.channels_per_group} stem "
             f"{layout.resnet.stem_width}; MLPs {layout.num_layers} layers, hidden {layout.hidden_dim}, "
             f"out {layout.out_dim}, hidden bias {layout.hidden_bias}; {layout.num_classes} classes; "
             f"batch {batch['view1'].shape[0]} x {batch['view1'].shape[1]} px; steps {steps}")
    chained = replay_steps(g, hp, layout, batch, steps, start=0, count=len(steps), phase="chained",
                           on_note=run.note)
    restarted = [o for k in range(2, len(steps) + 1)
                 for o in replay_steps(g, hp, layout, batch, steps, start=k - 1, count=1,
                                       phase="restarted")]
    spread = float32_spread(g, hp, layout, steps, chained)
    for o in chained:
        run.check(o.key, o.got, chained_tolerance(o.strict, g[o.key], spread.get(o.key)), o.note)
    for o in restarted:
        run.check(o.key, o.got, o.strict, o.note)
    summarize(run, chained, spread)


def summarize(run: GroupRun, chained: list[Observation], spread: dict[str, float]) -> None:
    """Notes: the largest errors per step and phase, the float32 spread per step, and for each
    chained step with ill-conditioned comparisons the bound they were judged against."""
    worst: dict[str, float] = {}
    for r in run.rows:
        m = F_TREE.match(r.key)
        if m and r.tol.normwise and not math.isnan(r.max_rel):
            label = f"step {m.group(2)} {r.note.split(':')[0]}"
            worst[label] = max(worst.get(label, 0.0), r.max_rel)
    run.note("largest normwise relative error of gradients, LARS buffers, parameters and BN state: "
             + "; ".join(f"{k}: {v:.1e}" for k, v in sorted(worst.items())))
    step_of = {o.key: o.step for o in chained}
    per_step: dict[int, float] = {}
    for key, value in spread.items():
        per_step[step_of[key]] = max(per_step.get(step_of[key], 0.0), value)
    run.float32_spread = per_step
    run.note("float32 spread of the project's own chained steps when the stored views and/or initial "
             "parameters move by at most one ulp (largest normwise relative change of an array): "
             + "; ".join(f"step {k}: {v:.1e}" for k, v in sorted(per_step.items())))
    chained_rows = {r.key: r for r in run.rows if r.note.startswith("chained")}
    for step in sorted(per_step):
        rows = [r for key, r in chained_rows.items() if step_of.get(key) == step]
        ill = [r for r in rows if r.ill_conditioned]
        if not ill:
            continue
        x = max(r.spread for r in ill)
        run.note(f"chained step {step} is ill-conditioned: float32 rounding alone moves this step by "
                 f"{x:.1e}; judged against {SPREAD_FACTOR:g} x {x:.1e} = {SPREAD_FACTOR * x:.1e} "
                 f"({len(ill)} of its {len(rows)} comparisons, each against {SPREAD_FACTOR:g} x its own "
                 f"spread, the others strictly; largest error / spread "
                 f"{max(r.max_rel / r.spread for r in ill):.2f}). Restarted steps stay strict.")


def float32_spread(g: Golden, hp, layout, steps, base: list[Observation]) -> dict[str, float]:
    """How far float32 rounding alone moves the project's chained results, array by array.

    The chained steps run again three times, with the stored views, the stored initial
    online/target parameters, or both moved by at most one ulp (a fixed random half of the elements,
    each up or down), and each array is compared with `base` (the unmoved run) as the reference is:
    max |moved - base| / max |stored|. Returns {key: largest value over the three runs} for every
    floating-point array that is neither exact nor numerically zero. Nothing here reads the
    reference's outputs except for their scale."""
    from common.data import augment as A

    measured = {o.key: o for o in base
                if o.got.dtype.kind == "f" and not o.strict.exact and not is_numerical_zero(o.strict)}
    spread: dict[str, float] = {}
    for variant, moved in enumerate((("views",), ("params",), ("views", "params"))):
        shadow = g.with_arrays(nudged_inputs(g, moved, np.random.default_rng(variant)))
        batch = {"view1": A.normalize(tf.constant(shadow["f/view1"])),
                 "view2": A.normalize(tf.constant(shadow["f/view2"])),
                 "label": tf.constant(g["f/labels"])}
        for o in replay_steps(shadow, hp, layout, batch, steps, start=0, count=len(steps),
                              phase="chained"):
            ref = measured.get(o.key)
            if ref is None:
                continue
            scale = float(np.max(np.abs(g[o.key])))
            if scale > 0:
                diff = np.abs(o.got.astype(np.float64) - np.reshape(ref.got, o.got.shape))
                spread[o.key] = max(spread.get(o.key, 0.0), float(diff.max()) / scale)
    return spread


def nudged_inputs(g: Golden, moved, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The stored views ('views' in `moved`) and/or initial online and target parameters ('params')
    of group f with a random half of their float32 elements moved one ulp up or down."""
    def nudge(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32:
            return x
        direction = np.where(rng.random(x.shape) < 0.5, np.float32(np.inf), np.float32(-np.inf))
        changed = np.nextafter(x, direction.astype(np.float32))
        return np.where(rng.random(x.shape) < 0.5, changed, x).astype(np.float32)

    return {key: nudge(g[key]) for key in g.keys("f/")
            if ("views" in moved and key in ("f/view1", "f/view2"))
            or ("params" in moved and re.match(r"^f/(online|target)_params0/", key))}


def replay_steps(g: Golden, hp, layout, batch, steps, start: int, count: int, phase: str,
                 on_note: Callable[[str], None] | None = None) -> list[Observation]:
    """Builds the project's Pretrainer, loads the stored state after step `start`, runs `count`
    training steps through Pretrainer.run_steps and returns the project's value of every array
    stored for them, with the strict bound each is held to (nothing is compared here)."""
    from common.data import datasets as data_lib
    from common.training import optim
    from common.training import schedules
    from common.training import trainer as trainer_lib
    from tools import haiku_params

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
    trees = stored_state(g, start)
    ignored = haiku_params.load(method, trees, encoder_prefix=layout.encoder_prefix)
    maps = haiku_params.byol_maps(method, layout.encoder_prefix)
    slots = haiku_params.optimizer_slot_map(trainer.optimizer, maps)
    if start > 0:
        for key, slot in slots.items():
            slot.assign(np.reshape(g[f"f/mu{start}/{key}"], slot.shape))
    key_of = {v.ref(): k for k, v in maps.params.items()}
    optimized = trainer.optimizer.variables_to_update
    extras = _TargetExtras(method, maps, trees, ignored)
    if on_note and (extras.keys["target_params"] or extras.keys["target_state"]):
        on_note("the reference's target also has a predictor and a classifier that the loss never "
                "reads (the project has neither); their stored parameters and BN state are "
                "compared with copies built from common.networks.heads.MLP / LinearHead: the predictor copy "
                "runs in training mode on the project's target projections, and both are averaged "
                "with common.training.ema.ema_update and the project's tau")
    recorder = _Recorder(trainer.optimizer, method)
    label = f"{phase} from stored step {start}" if phase == "restarted" else phase
    out: list[Observation] = []

    for k in range(start + 1, start + count + 1):
        trainer.optimizer.iterations.assign(steps[k - 1])
        trainer.metrics.reset()
        recorder.targets = []
        trainer.run_steps(1, [batch])
        logged = trainer.metrics.result()
        extras.step(recorder.targets, tf.constant(logged["tau"], tf.float32))

        def observe_tree(prefix, values, what):
            stored = g.tree(prefix)
            for key, got in values.items():
                if key.endswith("/counter"):
                    out.append(Observation(prefix + key, np.asarray(got), EXACT, f"{label}: {what}", k))
                    continue
                tol, why = zero_or_strict(stored, key, TOL_F)
                out.append(Observation(prefix + key, np.asarray(got), tol,
                                       "; ".join(s for s in (f"{label}: {what}", why) if s), k))

        observe_tree(f"f/grads{k}/", {key_of[v.ref()]: gr.numpy()
                                      for v, gr in zip(optimized, recorder.grads)},
                     "gradient the trainer passed to LARS")
        observe_tree(f"f/mu{k}/", {key: slot.numpy() for key, slot in slots.items()}, "LARS momentum slot")
        for name, prefix in (("params", f"f/online_params{k}/"), ("state", f"f/online_state{k}/"),
                             ("target_params", f"f/target_params{k}/"),
                             ("target_state", f"f/target_state{k}/")):
            observe_tree(prefix, {key: var.numpy() for key, var in maps.tree(name).items()},
                         f"model {name}")
            observe_tree(prefix, {key: extras.vars[key].numpy() for key in extras.keys.get(name, [])},
                         "reference-only target module, emulated (see note)")
        for ref_name, ours in LOG_METRICS.items():
            key = f"f/logs{k}/{ref_name}"
            if key in g:
                out.append(Observation(key, np.asarray(np.float32(logged[ours])),
                                       TOL_TAU if ref_name == "tau" else TOL_F_LOG,
                                       f"{label}: trainer metric '{ours}'", k))
        if f"f/logs{k}/top5_accuracy" in g:
            top = min(5, int(recorder.logits.shape[-1]))
            top5 = tf.reduce_mean(tf.cast(tf.nn.in_top_k(tf.cast(batch["label"], tf.int32),
                                                         recorder.logits, top), tf.float32))
            out.append(Observation(f"f/logs{k}/top5_accuracy", top5.numpy(), TOL_F_LOG,
                                   f"{label}: top-5 of the project's probe logits inside the training step", k))
        if float(recorder.lr) != np.float32(logged["learning_rate"]):
            raise AssertionError("the logged learning rate differs from the one given to LARS.")
    return out
