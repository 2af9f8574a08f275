"""Small building blocks for tests of the trainers: a tiny ResNet and synthetic batches.

Library code; kept tiny so every package's tests can train a few steps on a CPU in seconds.
"""
from __future__ import annotations

import functools

import tensorflow as tf

from common.data import datasets as data_lib
from common.training import distribute
from common.networks import heads as heads_lib
from common.training import method as method_lib
from common.training import models
from common.training import optim as optim_lib
from common.networks import resnet as resnet_lib
from common.training import schedules
from common.training import trainer as trainer_lib


@functools.lru_cache(maxsize=None)
def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy over the two logical CPUs of conftest.py, shared by every test.

    Several MirroredStrategy objects in one process hand out the same collective instance keys,
    and TensorFlow then mixes up their all-reduces ("Shape mismatch in the collective instance");
    sharing one strategy keeps the keys unique.
    """
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        raise RuntimeError("two logical CPU devices are needed; conftest.py creates them before "
                           "TensorFlow initialises")
    return tf.distribute.MirroredStrategy([c.name for c in cpus[:2]])


def tiny_resnet(image_size: int = 16, semantics: str = "keras") -> resnet_lib.ResNetConfig:
    """ResNet-18 layout at 1/16 width (4..32 channels), CIFAR stem."""
    cfg = resnet_lib.resnet_config(18, 0.0625, image_size)
    bn = cfg.bn.__class__(momentum=0.9, epsilon=1e-5, semantics=semantics, sync=True)
    return resnet_lib.ResNetConfig(**{**cfg.__dict__, "bn": bn})


class ToyContrastive(method_lib.Method):
    """Tiny encoder; an InfoNCE over globally gathered embeddings (so the step uses BN sync and
    cross-replica concatenation)."""

    metric_names = ("ssl", "probe_loss", "probe_acc", "row_mean")

    def __init__(self, num_classes):
        super().__init__(name="toy")
        self.encoder = resnet_lib.ResNet(tiny_resnet(16), name="encoder")
        self.probe = heads_lib.LinearHead(self.encoder.feature_dim, num_classes)

    def optimized_variables(self):
        return list(self.encoder.trainable_variables) + list(self.probe.trainable_variables)

    def loss(self, batch, step, seed):
        del step, seed
        z1 = tf.math.l2_normalize(self.encoder(batch["view1"], training=True), -1)
        z2 = tf.math.l2_normalize(self.encoder(batch["view2"], training=True), -1)
        z2_all = distribute.cross_replica_concat(z2)
        b = tf.shape(z1)[0]
        labels = distribute.replica_id() * b + tf.range(b)
        logits = tf.matmul(z1, z2_all, transpose_b=True) / 0.5
        ssl = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        probe_loss, probe_metrics = self.probe_loss(self.encoder(batch["view1"], training=False),
                                                    batch["label"])
        return ssl + probe_loss, dict(probe_metrics, ssl=ssl,
                                      row_mean=tf.reduce_mean(batch["view1"]))


def tiny_heads() -> models.HeadsConfig:
    return models.HeadsConfig(hidden_dim=16, out_dim=8, num_layers=2)


def synthetic_dataset_fn(global_batch_size: int = 8, image_size: int = 16, num_classes: int = 4,
                         seed: int = 0):
    """`(input_context, start_step) -> Dataset` of endless random batches {'view1','view2','label'}.

    Batch i of pipeline r is a stateless function of (i, r, seed), so reruns see the same data.
    """

    def make(ctx, start_step=0):
        b = ctx.get_per_replica_batch_size(global_batch_size) if ctx else global_batch_size
        rid = ctx.input_pipeline_id if ctx else 0
        per_step = (ctx.num_replicas_in_sync // ctx.num_input_pipelines) if ctx else 1

        def element(i):
            s = tf.stack([tf.cast(i, tf.int32), seed * 1000 + rid])
            shape = [b, image_size, image_size, 3]
            return {"view1": tf.random.stateless_normal(shape, s),
                    "view2": tf.random.stateless_normal(shape, s + [0, 7]),
                    "label": tf.random.stateless_uniform([b], s + [0, 9], 0, num_classes, tf.int32)}
        return tf.data.Dataset.range(start_step * per_step, 1 << 30).map(element)
    return make


def tiny_train_config(model_dir: str, steps: int = 3, batch: int = 8) -> trainer_lib.TrainConfig:
    return trainer_lib.TrainConfig(
        model_dir=model_dir, train_steps=steps, train_batch_size=batch, eval_batch_size=batch,
        steps_per_loop=1, checkpoint_steps=steps,
        lr=schedules.LRConfig(base_lr=0.5, batch_size=batch, warmup_steps=1, total_steps=steps),
        optim=optim_lib.OptimConfig(name="lars", weight_decay=1e-4), seed=0)


def tiny_pretrainer(method_fn, model_dir: str, steps: int = 3, batch: int = 8,
                    strategy=None, image_size: int = 16, num_classes: int = 4, print_fn=print):
    """A Pretrainer on synthetic batches (no dataset files needed)."""
    strategy = strategy or tf.distribute.get_strategy()
    cfg = tiny_train_config(model_dir, steps, batch)
    make = synthetic_dataset_fn(batch, image_size, num_classes)
    return trainer_lib.Pretrainer(method_fn, cfg, data_lib.DataConfig(image_size=image_size), None,
                                  strategy, dataset_fn=make, num_classes=num_classes,
                                  print_fn=print_fn)


def _xla_flag(xla: bool | None) -> list:
    """The --jit_compile flag put before a test's own flags (which may override it): tests train
    without XLA unless they say otherwise (None: the preset's default, XLA for the small-scale
    presets), because compiling every tiny run's step would add 10-25 s to each."""
    return [] if xla is None else [f"--jit_compile={xla}"]


def run_train_py(package: str, *flags: str, timeout: int = 600, xla: bool | None = False):
    """Runs `python <package>/train.py flags...` as a user would; returns the CompletedProcess.

    stdout and stderr are merged into `.stdout` (text). `xla`: see `_xla_flag`.
    """
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(root, package, "train.py"),
                           *_xla_flag(xla), *flags],
                          cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def run_job(spec, *argv: str, xla: bool | None = False) -> tuple:
    """`common.cli.job.main` of the TrainerSpec `spec` on the flags argv, in-process (no TF import
    per run); returns (exit status, stderr, stdout), status 0 when the job returns. `xla`: see
    `_xla_flag`."""
    import contextlib
    import io

    from absl import flags

    from common.cli import flags as flags_lib
    from common.cli import job
    argv = (*_xla_flag(xla), *argv)
    fv = flags.FlagValues()
    flags_lib.define(fv, spec.presets, spec.default_preset)
    fv(["train.py", *argv])
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            job.main(spec, fv, ["train.py", *argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue(), out.getvalue()


def train_resume_eval(package: str, model_dir: str, *extra: str,
                      xla: bool | None = False) -> dict:
    """The life of a small run: 2 steps, a resumed run to 4 steps with evaluation, then the eval
    job, which must find the final checkpoint and exit. Returns the parsed result.json and logs.
    `xla`: see `_xla_flag`."""
    import json
    import os
    small = ["--train_batch_size=16", "--eval_batch_size=250", "--eval_split=test[:500]",
             "--checkpoint_steps=2", "--train_summary_steps=1", f"--model_dir={model_dir}", *extra]
    first = run_train_py(package, "--train_steps=2", "--mode=train", *small, xla=xla)
    assert first.returncode == 0, first.stdout[-4000:]
    assert os.path.exists(os.path.join(model_dir, "ckpt-2.index")), first.stdout[-2000:]
    second = run_train_py(package, "--train_steps=4", "--mode=train_then_eval", *small, xla=xla)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "Resumed from" in second.stdout and "at step 2" in second.stdout, second.stdout[-2000:]
    assert os.path.exists(os.path.join(model_dir, "ckpt-4.index"))
    third = run_train_py(package, "--train_steps=4", "--mode=eval", "--eval_timeout=30", *small,
                         xla=xla)
    assert third.returncode == 0, third.stdout[-4000:]
    assert "eval step 4" in third.stdout, third.stdout[-2000:]
    # Python-side INFO logging (absl's format, e.g. a line per checkpoint save) stays off.
    import re
    for log in (first.stdout, second.stdout, third.stdout):
        info = re.findall(r"^I\d{4} [\d:.]+ +\d+ \S+\.py:\d+\].*$", log, flags=re.M)
        assert not info, info[:3]
    with open(os.path.join(model_dir, "result.json")) as f:
        result = json.load(f)
    return {"result": result, "logs": (first.stdout, second.stdout, third.stdout)}


def check_small_run(package: str, tmp_path, xla: bool | None = False) -> None:
    """train_resume_eval plus the checks every trainer must pass: step, examples, accuracies in
    range, config.json and TensorBoard events written. `xla`: see `_xla_flag`."""
    import os
    run = os.path.join(str(tmp_path), "run")
    result = train_resume_eval(package, run, xla=xla)["result"]
    assert result["global_step"] == 4
    assert result["num_examples"] == 500
    assert 0.0 <= result["label_top_1_accuracy"] <= result["label_top_5_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(run, "config.json"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(run, "train")))


# The paper's ImageNet recipe as the release's scripts launch it, written out by hand as the oracle
# of every algorithm's preset test: ResNet-50, batch 4096, LARS, 10 warm-up epochs, cosine decay,
# the release's head initialisation.
PAPER_IMAGENET = dict(dataset="imagenet2012", resnet_depth=50, width_multiplier=1.0,
                      image_size=224, train_batch_size=4096, optimizer="lars", warmup_epochs=10.0,
                      learning_rate_scaling="linear", learning_rate_schedule="cosine",
                      train_steps=0, mlp_init="release")


def flat_config(cfg) -> dict:
    """{flag: value} of a configuration tree."""
    from common.cli import settings
    return {leaf.flag: settings.get_path(cfg, leaf.path) for leaf in settings.leaves(cfg)}


def check_presets(configs_module, paper: dict) -> None:
    """Every preset passes the checks; each paper preset has PAPER_IMAGENET and its own `paper`
    values; the default is the small Fashion-MNIST run."""
    from common.cli import settings
    for name, cfg in configs_module.PRESETS.items():
        assert settings.problems(cfg)[0] == [], name
    for name, own in paper.items():
        flat = flat_config(configs_module.PRESETS[name])
        for key, value in {**PAPER_IMAGENET, **own}.items():
            assert flat[key] == value, (name, key, flat[key], value)
    small = flat_config(configs_module.PRESETS[configs_module.DEFAULT])
    assert small["dataset"] == "fashion_mnist" and small["train_steps"] == 840
    assert small["resnet_depth"] == 18 and small["width_multiplier"] == 0.25
    assert small["jit_compile"] is True  # XLA: faster on CPUs for every algorithm (DECISIONS 30)


def record_calls(monkeypatch, owner, attr: str) -> list:
    """Replaces owner.attr by a recorder that calls through; returns the list of recorded calls,
    each the call's arguments by parameter name (defaults applied). For wiring tests: which
    network output reached which input of a loss."""
    import inspect
    fn = getattr(owner, attr)
    sig = inspect.signature(fn)
    calls = []

    def recorder(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return fn(*args, **kwargs)
    monkeypatch.setattr(owner, attr, recorder)
    return calls


def distinct_views(n: int = 4, size: int = 16, seed: int = 0) -> dict:
    """A batch {'view1', 'view2', 'label'} whose two views have nothing in common (different
    draws, scales and offsets), so a test can tell which view reached which input."""
    import numpy as np
    rng = np.random.default_rng(seed)
    v1 = rng.standard_normal((n, size, size, 3))
    v2 = 3.0 * rng.standard_normal((n, size, size, 3)) + 1.0
    return {"view1": tf.constant(v1, tf.float32), "view2": tf.constant(v2, tf.float32),
            "label": tf.constant([2, 0, 3, 1][:n], tf.int32)}
