"""The generic pretraining loop, online-probe evaluation and the eval-as-checkpoints-appear job.

The trainer is the same for every algorithm: it takes a `common.method.Method` factory and plain
config objects. State that must survive a restart (model, optimizer slots and step, the metric
accumulators) lives in one `tf.train.Checkpoint`; every random number (data order, augmentations,
vMF samples) is a stateless function of (seed, position or step, replica), so a resumed run rebuilds
the input pipeline at the restored step and continues the very same streams.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import tensorflow as tf

from common.data import augment as augment_lib
from common.training import checkpoints
from common.data import datasets as data_lib
from common.training import distribute
from common.training import optim as optim_lib
from common.training import precision as precision_lib
from common.training import reporting
from common.training import schedules


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long, how big, where, and how often: everything the loop itself needs.

    Attributes:
      model_dir: checkpoints, TensorBoard summaries and result files go here.
      train_steps: optimizer steps in the whole run (resolved from epochs by the caller).
      train_batch_size: global batch (all replicas).
      eval_batch_size: global batch for evaluation.
      steps_per_loop: steps run inside one tf.function call between reports.
      checkpoint_steps: save every this many steps (and always at the end).
      keep_checkpoint_max: checkpoints kept on disk.
      lr: the learning-rate schedule.
      optim: the optimizer.
      seed: the run's seed; data order, augmentations and vMF samples derive from it.
      eval_timeout_secs: the eval job gives up waiting for a new checkpoint after this long.
      jit_compile: compile the training step with XLA (faster on CPU and TPU; samples drawn by
        stateless random ops then differ from the non-XLA ones for the same seed).
      precision: 'float32', 'bfloat16' or 'float16': the networks' compute dtype in the training
        step (common.training.precision; variables, losses and optimizer stay float32; float16
        adds dynamic loss scaling, whose skipped steps are not non-finite failures).
      on_nonfinite: a NaN or Inf in the loss, a metric, a gradient or a variable after the update:
        'stop' raises NonFiniteError naming the step and the first offending value, before any
        checkpoint of that state; 'skip' undoes the step (weights, optimizer slots, BN statistics,
        metric sums; the step counter and the input stream still advance) and counts it.
    """
    model_dir: str
    train_steps: int
    train_batch_size: int
    eval_batch_size: int = 256
    steps_per_loop: int = 100
    checkpoint_steps: int = 1000
    keep_checkpoint_max: int = 5
    lr: schedules.LRConfig = None
    optim: optim_lib.OptimConfig = optim_lib.OptimConfig()
    seed: int = 0
    eval_timeout_secs: float = 3600.0
    jit_compile: bool = False
    precision: str = "float32"
    on_nonfinite: str = "stop"

    def __post_init__(self):
        precision_lib.check(self.precision)
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        for name in ("train_steps", "train_batch_size", "eval_batch_size", "steps_per_loop",
                     "checkpoint_steps", "keep_checkpoint_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr is None:
            raise ValueError("TrainConfig.lr (a schedules.LRConfig) is required")


class NonFiniteError(RuntimeError):
    """Training produced a NaN or Inf; the message names the step and the first offending value."""


def step_seed(seed: int, step: tf.Tensor) -> tf.Tensor:
    """A stateless seed [2] unique to (run seed, step, replica)."""
    base = tf.constant([seed, 0x5EED], tf.int32)
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int32))
    return tf.random.experimental.stateless_fold_in(s, distribute.replica_id())


class Pretrainer:
    """Builds the method, optimizer, data and checkpoint for one run, then trains it.

    Args:
      method_fn: `num_classes -> Method`, called inside the strategy's scope.
      cfg: the loop's TrainConfig.
      data_cfg, aug_cfg: the training data and its augmentation.
      strategy: a tf.distribute strategy (common.distribute.get_strategy()).
      dataset_fn: `(input_context, start_step) -> tf.data.Dataset` of per-replica batches that
        starts where step `start_step` of an uninterrupted run would; the two-view pretraining
        pipeline by default.
      num_classes: overrides the dataset's class count (tests with synthetic data).
      print_fn: where progress lines go.
    """

    def __init__(self, method_fn: Callable, cfg: TrainConfig, data_cfg: data_lib.DataConfig,
                 aug_cfg: augment_lib.AugmentConfig, strategy: tf.distribute.Strategy,
                 dataset_fn: Callable | None = None, num_classes: int | None = None,
                 print_fn=print):
        self.cfg = cfg
        self.data_cfg = data_cfg
        self.aug_cfg = aug_cfg
        self.strategy = strategy
        self.print_fn = print_fn
        n = strategy.num_replicas_in_sync
        if cfg.train_batch_size % n:
            raise ValueError(f"train_batch_size={cfg.train_batch_size} is not divisible by the "
                             f"{n} replicas; pass a multiple of {n}.")
        if num_classes is None:
            num_classes = data_lib.dataset_info(data_cfg).num_classes
        self.num_classes = num_classes
        with strategy.scope():
            self.method = method_fn(num_classes)
            self.variables = self.method.optimized_variables()
            self.optimizer = optim_lib.build_optimizer(
                cfg.optim.name, self.variables, cfg.optim,
                excluded_from_adaptation=(
                    self.method.probe.trainable_variables
                    if cfg.optim.exclude_probe or cfg.optim.lars_form == "release" else ()))
            self.metrics = reporting.MetricAccumulator(
                tuple(self.method.metric_names) + ("loss", "learning_rate"))
            self.loss_scale = (precision_lib.LossScale() if cfg.precision == "float16" else None)
        if dataset_fn is None:
            dataset_fn = lambda ctx, start_step: data_lib.pretrain_dataset(  # noqa: E731
                data_cfg, aug_cfg, cfg.train_batch_size, ctx, start_step=start_step)
        self._dataset_fn = dataset_fn
        self._iterator = None
        # The input pipeline is not in the checkpoint: every example's position in the stream,
        # hence its shuffle order and augmentation seeds, is a function of the step, so a resumed
        # run rebuilds the pipeline at the restored step (`iterator`).
        self.checkpoint = tf.train.Checkpoint(model=self.method, optimizer=self.optimizer,
                                              metrics=self.metrics)
        if self.loss_scale is not None:
            self.checkpoint.loss_scale = self.loss_scale
        self.manager = checkpoints.CheckpointKeeper(
            self.checkpoint, cfg.model_dir, cfg.keep_checkpoint_max, print_fn=print_fn)
        self._init_guards()
        self._step_fn = (tf.function(self._train_step, jit_compile=True) if cfg.jit_compile
                         else self._train_step)
        self._loop = tf.function(self._run_steps)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    @property
    def iterator(self):
        """The distributed input iterator, positioned at the current step when first used."""
        if self._iterator is None:
            start = self.step
            dataset = self.strategy.distribute_datasets_from_function(
                lambda ctx: self._dataset_fn(ctx, start))
            self._iterator = iter(dataset)
        return self._iterator

    def use_dataset(self, dataset_fn: Callable) -> None:
        """Feeds the following steps from `dataset_fn` ((input_context, start_step) -> per-replica
        batches) instead of the current pipeline (tools/benchmark.py: a cached batch, then the
        real pipeline, through the same traced loop)."""
        self._dataset_fn = dataset_fn
        self._iterator = None

    def _train_step(self, batch):
        # The step before this update, as a value: the optimizer increments its counter, and the
        # LR, beta and tau of this update all belong to the step it started from.
        step = self.optimizer.iterations.read_value()
        seed = step_seed(self.cfg.seed, step)
        with tf.GradientTape() as tape:
            with precision_lib.policy(self.cfg.precision):
                loss, metrics = self.method.loss(batch, step, seed)
            # Each replica's loss is a mean over its own rows; dividing by the replica count and
            # summing the gradients gives the gradient of the global-batch mean.
            scaled = loss / tf.cast(distribute.num_replicas(), loss.dtype)
            if self.loss_scale is not None:
                scaled = self.loss_scale.scale_loss(scaled)
        grads = tape.gradient(scaled, self.variables)
        missing = [v.name for v, g in zip(self.variables, grads) if g is None]
        if missing:
            raise ValueError(f"No gradient reaches {missing}: they are listed as optimized but "
                             "do not influence the loss.")
        grads = distribute.all_reduce_sum(grads)
        lr = schedules.learning_rate(step, self.cfg.lr)
        skip = None
        if self.loss_scale is not None:
            grads, finite = self.loss_scale.unscale(grads)
            self.loss_scale.update(finite)
            skip = tf.logical_not(finite)
            # An overflow under loss scaling is expected and skipped, not a non-finite failure.
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        self.optimizer.apply_gradients(grads, lr, skip=skip)
        extra = self.method.after_update(step)
        metrics = dict(metrics)
        metrics.update(extra)
        metrics["loss"] = loss
        metrics["learning_rate"] = lr
        self.metrics.update(metrics)
        return self._nonfinite_flags(metrics, grads)

    def _run_steps(self, iterator, num_steps):
        for _ in tf.range(num_steps):
            if self._stop_requested.read_value():
                break
            backup = self._snapshot()
            bad = self.strategy.run(self._step_fn, args=(next(iterator),))
            if not self._after_step(bad, backup):
                break

    # -- Fault guards: non-finite values and SIGTERM. The checks run inside the compiled loop and
    # -- write a few host-side variables that the host reads once per loop, never per step.

    def _init_guards(self):
        # Plain variables outside the strategy and outside the checkpoint.
        self._stop_requested = tf.Variable(False, trainable=False, name="stop_requested")
        self._bad_step = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="bad_step")
        self._bad_item = tf.Variable(-1, trainable=False, name="bad_item")
        self._skipped = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="skipped")
        self._check_names = ()
        self._skipped_reported = 0
        self.preempted = False
        iterations = self.optimizer.iterations.ref()
        # What a skipped step puts back: the model (weights, BN statistics, EMA target), the
        # optimizer's slots and the metric sums. The step counter is left to advance, because the
        # input position is the step.
        self._undo_vars = ([] if self.cfg.on_nonfinite != "skip" else
                           list(self.method.variables)
                           + [v for v in self.optimizer.variables if v.ref() != iterations]
                           + list(self.metrics.variables))

    def _nonfinite_flags(self, metrics: dict, grads) -> tf.Tensor:
        """float32 [K] (replica context): 1 where the loss, a metric, a gradient or a variable
        after the update holds a NaN or Inf, else 0, in the order of `self._check_names`.

        Each tensor is reduced to its sum and the K sums are tested with one is_finite: a NaN or
        Inf anywhere makes the sum non-finite (a finite tensor whose float32 sum overflows,
        |sum| > 3.4e38, also counts, and has no business in a training step either)."""
        items = [("loss", metrics["loss"])]
        items += [(f"metric {k}", metrics[k]) for k in sorted(metrics) if k != "loss"]
        items += [(f"gradient of {v.name}", g) for v, g in zip(self.variables, grads)]
        items += [(f"variable {v.name}", v) for v in self.method.variables]
        self._check_names = tuple(name for name, _ in items)
        sums = tf.stack([tf.cast(tf.reduce_sum(x), tf.float32) for _, x in items])
        return tf.cast(tf.logical_not(tf.math.is_finite(sums)), tf.float32)

    def _snapshot(self):
        """The values a skipped step restores (cross-replica context; none with 'stop')."""
        return [v.read_value() for v in self._undo_vars]

    def _after_step(self, bad, backup):
        """Cross-replica, after one step: records the first bad step ('stop') or undoes the step
        and counts it ('skip'). Returns False when the loop must stop."""
        bad = tf.add_n(self.strategy.experimental_local_results(bad))
        ok = tf.reduce_all(tf.equal(bad, 0.0))
        if self.cfg.on_nonfinite == "skip":
            for v, b in zip(self._undo_vars, backup):
                v.assign(tf.where(ok, v.read_value(), b))
            self._skipped.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
            return True
        first = tf.logical_and(tf.logical_not(ok), self._bad_step < 0)
        self._bad_step.assign(tf.where(first, self.optimizer.iterations.read_value(),
                                       self._bad_step))
        self._bad_item.assign(tf.where(
            first, tf.cast(tf.argmax(bad), tf.int32), self._bad_item))
        return ok

    def check_finite(self) -> None:
        """Raises NonFiniteError when a step since the last check produced a NaN or Inf (host)."""
        step = int(self._bad_step.numpy())
        if step < 0:
            return
        name = self._check_names[int(self._bad_item.numpy())]
        last = self.manager.latest_checkpoint
        kept = (f"the last checkpoint, {os.path.basename(last)}, is from before it" if last
                else "no checkpoint was written")
        raise NonFiniteError(
            f"Non-finite value (NaN or Inf) at step {step}: {name} is the first one; training "
            f"stopped and {kept}. Lower --learning_rate, check the input data, or pass "
            "--on_nonfinite=skip to skip such steps.")

    def _guard_scalars(self) -> dict:
        """Summaries of the guards: `nonfinite_skipped`, steps skipped so far (with 'skip'), and
        `data/skipped_images`, distinct bad images the process's input pipelines dropped so far
        (with on_bad_image='skip'; a host-side count, read once per report)."""
        out = {}
        if getattr(self.data_cfg, "on_bad_image", "stop") == "skip":  # data_cfg may be None
            out["data/skipped_images"] = data_lib.skipped_images()
        if self.cfg.on_nonfinite != "skip":
            return out
        skipped = self.skipped_steps
        if skipped > self._skipped_reported:
            self.print_fn(f"warning: skipped {skipped - self._skipped_reported} step(s) with a NaN "
                          f"or Inf (--on_nonfinite=skip); {skipped} so far in this process.",
                          flush=True)
            self._skipped_reported = skipped
        out["nonfinite_skipped"] = skipped
        return out

    def _preempted_at(self, step: int) -> None:
        self.preempted = True
        self.print_fn(f"SIGTERM received: stopped at step {step} of {self.cfg.train_steps} with "
                      f"checkpoint {self.manager.latest_checkpoint}; run the same command again "
                      "to resume from it.", flush=True)

    @property
    def skipped_steps(self) -> int:
        """Steps undone by --on_nonfinite=skip in this process."""
        return int(self._skipped.numpy())

    def _watch_sigterm(self):
        """Context manager: while training, SIGTERM sets `_stop_requested`, which the compiled loop
        reads before each step, so the run stops at the next step boundary even in the middle of a
        long loop. A Python handler alone would only run once the loop returns; the signal's byte
        on signal.set_wakeup_fd wakes a thread that sets the variable at once."""
        import contextlib
        import signal
        import threading

        @contextlib.contextmanager
        def watch():
            if threading.current_thread() is not threading.main_thread():
                yield  # signal handlers can only be installed from the main thread
                return
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)

            def handler(signum, frame):
                del signum, frame
                self._stop_requested.assign(True)

            def wake():
                while True:
                    data = os.read(read_fd, 16)
                    if not data:
                        return
                    if signal.SIGTERM in data:
                        self._stop_requested.assign(True)

            previous = signal.signal(signal.SIGTERM, handler)
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            thread = threading.Thread(target=wake, daemon=True, name="sigterm-watch")
            thread.start()
            try:
                yield
            finally:
                signal.set_wakeup_fd(previous_fd)
                signal.signal(signal.SIGTERM, previous)
                os.close(write_fd)
                thread.join(timeout=5)
                os.close(read_fd)
        return watch()

    def run_steps(self, num_steps: int, batches=None) -> None:
        """Runs `num_steps` optimizer steps (no checkpoint, no report; metrics accumulate).

        batches: None draws from the input pipeline, positioned at the current step; otherwise a
          sequence of `num_steps` batches ({'view1', 'view2', 'label'}, or per-replica values of
          them), each fed to one step in order, eagerly (tools that replay stored batches).
        """
        if batches is None:
            if num_steps > 0:
                self._loop(self.iterator, tf.constant(num_steps, tf.int32))
                self.check_finite()
            return
        batches = list(batches)
        if len(batches) != num_steps:
            raise ValueError(f"run_steps({num_steps}) got {len(batches)} batches; pass one per step.")
        for batch in batches:
            backup = self._snapshot()
            self._after_step(self.strategy.run(self._step_fn, args=(batch,)), backup)
        self.check_finite()

    def restore(self) -> int:
        """Resumes from the newest intact checkpoint in model_dir, if any; returns the step.

        Restores once per Pretrainer (the job restores before writing anything, then train()
        continues from there); later calls only return the step."""
        if getattr(self, "_restored", False):
            return self.step
        self._restored = True
        path = self.manager.restore_latest()
        if path:
            self._iterator = None  # rebuilt at the restored step
            self.print_fn(f"Resumed from {path} at step {self.step}.")
        return self.step

    def train(self, hooks=()) -> dict:
        """Trains to cfg.train_steps, checkpointing and reporting; returns the last metrics.

        hooks: (every_steps, fn) pairs; fn(step, writer) runs after every multiple of every_steps
          (a monitor such as a kNN evaluation, written to the train summaries), outside the step.

        SIGTERM stops the run at the next step boundary with a checkpoint of that step and sets
        `self.preempted`; a NaN or Inf raises NonFiniteError (cfg.on_nonfinite='stop') before any
        checkpoint of that state is written.
        """
        with self._watch_sigterm():
            return self._train(hooks)

    def _train(self, hooks) -> dict:
        cfg = self.cfg
        start = self.restore()
        writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "train"))
        progress = reporting.Progress(cfg.train_steps, cfg.train_batch_size, writer, start,
                                      keys=self.method.progress_keys, print_fn=self.print_fn)
        last = {}
        step = start
        if step >= cfg.train_steps:
            self.print_fn(f"Already trained: step {step} >= train_steps {cfg.train_steps}.")
        while step < cfg.train_steps:
            boundaries = [cfg.checkpoint_steps] + [every for every, _ in hooks]
            n = min([cfg.steps_per_loop, cfg.train_steps - step]
                    + [(step // b + 1) * b - step for b in boundaries])
            if step == start:
                # The first call traces (and with XLA compiles) the loop and starts the input
                # pipeline: run one step alone, say how long it took, and start the rate clock
                # after it, so rates and ETA describe steady-state steps only.
                t0 = time.perf_counter()
                self.run_steps(1)
                self.print_fn(f"start-up (graph tracing, compilation, input pipeline and step "
                              f"{start + 1}): {time.perf_counter() - t0:.1f}s, excluded from the "
                              f"rates and ETA", flush=True)
                progress.restart(start + 1)
                n -= 1
            self.run_steps(n)
            step = self.step
            last = progress.report(step, self.metrics.result(), self._guard_scalars())
            self.metrics.reset()
            for every, fn in hooks:
                if step % every == 0:
                    fn(step, writer)
            if step % cfg.checkpoint_steps == 0 or step >= cfg.train_steps:
                self.manager.save(checkpoint_number=step)
            elif self._stop_requested.numpy():
                self.manager.save(checkpoint_number=step)
            if self._stop_requested.numpy():
                self._preempted_at(step)
                break
        writer.close()
        return last


def evaluate_probe(method, strategy: tf.distribute.Strategy, data_cfg: data_lib.DataConfig,
                   aug_cfg: augment_lib.AugmentConfig, split: str, batch_size: int) -> dict:
    """Top-1/top-5 accuracy of the method's linear probe on `split` (every example once).

    The probe reads `method.features(images, training=False)`, i.e. BN in inference mode.
    """
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.eval_dataset(data_cfg, aug_cfg, split, batch_size, ctx))

    def replica_fn(batch):
        logits = method.probe(method.features(batch["image"], training=False))
        labels = tf.cast(batch["label"], tf.int32)
        mask = tf.cast(batch["mask"], tf.float32)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        k = tf.minimum(5, tf.shape(logits)[-1])
        top5 = tf.cast(tf.nn.in_top_k(labels, logits, k), tf.float32)
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        sums = tf.stack([tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask),
                         tf.reduce_sum(xent * mask), tf.reduce_sum(mask)])
        return distribute.all_reduce_sum(tf.cast(sums, tf.float64))

    @tf.function
    def run(batch):
        return strategy.experimental_local_results(strategy.run(replica_fn, args=(batch,)))[0]

    total = tf.zeros([4], tf.float64)
    for batch in dataset:
        total += run(batch)
    top1, top5, xent, count = total.numpy().tolist()
    if count == 0:
        raise ValueError(f"split {split!r} is empty")
    return {"label_top_1_accuracy": top1 / count, "label_top_5_accuracy": top5 / count,
            "probe_loss": xent / count, "num_examples": int(count)}


def eval_checkpoints(method_fn: Callable, cfg: TrainConfig, data_cfg: data_lib.DataConfig,
                     aug_cfg: augment_lib.AugmentConfig, strategy: tf.distribute.Strategy,
                     split: str, once: bool = False, print_fn=print) -> dict:
    """Evaluates checkpoints in cfg.model_dir as they appear; exits after the final one.

    With `once`, evaluates only the newest checkpoint (train_then_eval). Writes
    `result_<step>.json` for each and `result.json` for the newest, atomically, and eval summaries.
    """
    info = data_lib.dataset_info(data_cfg)
    with strategy.scope():
        method = method_fn(info.num_classes)
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
    # The optimizer's step counter is saved as optimizer/iterations; read just that and the model.
    ckpt = tf.train.Checkpoint(model=method, optimizer=tf.train.Checkpoint(iterations=step))
    writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "eval"))
    result = {}
    if once:
        latest = tf.train.latest_checkpoint(cfg.model_dir)
        if latest is None:
            raise checkpoints.CheckpointError(f"No checkpoint in {cfg.model_dir} to evaluate.")
        paths = [latest]
    else:
        paths = tf.train.checkpoints_iterator(cfg.model_dir, min_interval_secs=1,
                                              timeout=cfg.eval_timeout_secs)
    for path in paths:
        try:
            ckpt.restore(path).expect_partial()
        except Exception as e:  # noqa: BLE001 -- deleted (NotFound), rewritten (DataLoss, IndexError)
            # The training job prunes and rewrites checkpoints while this job reads them: one that
            # vanished or changed under the reader is skipped; the next one is awaited.
            print_fn(f"warning: skipping checkpoint {path}: it was deleted or rewritten while "
                     f"being read ({checkpoints.first_line(e)}); waiting for the next one.",
                     flush=True)
            continue
        s = int(step.numpy())
        t0 = time.perf_counter()
        result = evaluate_probe(method, strategy, data_cfg, aug_cfg, split, cfg.eval_batch_size)
        result["global_step"] = s
        result["checkpoint"] = path
        print_fn(f"eval step {s}: top-1 {result['label_top_1_accuracy']:.4f} "
                 f"top-5 {result['label_top_5_accuracy']:.4f} on {result['num_examples']} "
                 f"{split} examples ({time.perf_counter() - t0:.0f}s)", flush=True)
        with writer.as_default(step=s):
            for k in ("label_top_1_accuracy", "label_top_5_accuracy", "probe_loss"):
                tf.summary.scalar(f"eval/{k}", result[k])
        writer.flush()
        checkpoints.write_json(os.path.join(cfg.model_dir, f"result_{s}.json"), result)
        checkpoints.write_json(os.path.join(cfg.model_dir, "result.json"), result)
        if s >= cfg.train_steps:
            break
    else:
        if not once:
            print_fn(f"No new checkpoint for {cfg.eval_timeout_secs:.0f}s; stopping.", flush=True)
    return result
