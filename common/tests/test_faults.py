"""Fault injection, in-process: damaged checkpoints, a full disk, NaN and Inf, SIGTERM, an eval job
whose checkpoints vanish, and bad input through the job's command line (`pytest -m faults common`).

Each test injects the fault and checks the outcome against what it must be independently of the
code under test: the weights the uninterrupted run held at that step (captured in memory, not
read back through the keeper), the files on disk, the exit status and the message.
"""
import errno
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.data import augment as augment_lib
from common.data import datasets as data_lib
from common.training import checkpoints
from common.training import optim as optim_lib
from common.training import schedules
from common.training import trainer as trainer_lib

pytestmark = pytest.mark.faults

IMAGE, BATCH, CLASSES = 16, 8, 10


def _cfg(model_dir, steps, every=2, per_loop=4, keep=5, on_nonfinite="stop", base_lr=0.5):
    return trainer_lib.TrainConfig(
        model_dir=str(model_dir), train_steps=steps, train_batch_size=BATCH, eval_batch_size=BATCH,
        steps_per_loop=per_loop, checkpoint_steps=every, keep_checkpoint_max=keep,
        lr=schedules.LRConfig(base_lr=base_lr, batch_size=BATCH, warmup_steps=1,
                              total_steps=steps),
        optim=optim_lib.OptimConfig(name="lars", weight_decay=1e-4), on_nonfinite=on_nonfinite)


class _WithStatistic(testing.ToyContrastive):
    """A model state that enters neither the loss nor a gradient (like a running statistic only
    read at evaluation), NaN from the start: only the check of the variables can find it."""

    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.statistic = tf.Variable(np.nan, trainable=False, name="statistic")


def _trainer(cfg, dataset_fn=None, log=None, seed=1, method=testing.ToyContrastive):
    tf.random.set_seed(seed)  # the same initial weights for every run of a test
    return trainer_lib.Pretrainer(
        method, cfg, data_lib.DataConfig(image_size=IMAGE), None,
        tf.distribute.get_strategy(),
        dataset_fn=dataset_fn or testing.synthetic_dataset_fn(BATCH, IMAGE, 4),
        num_classes=CLASSES,
        print_fn=(lambda *a, **k: log.append(" ".join(map(str, a)))) if log is not None
        else (lambda *a, **k: None))


def _state(tr):
    """Every value a resume must reproduce: the model (weights, BN statistics) and the optimizer
    (slots and step)."""
    return [v.numpy() for v in tr.method.variables] + [v.numpy() for v in tr.optimizer.variables]


def _assert_state_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _poisoned(step_index, value=np.nan):
    """The synthetic stream with view 1 of step `step_index`'s batch filled with `value`."""
    base = testing.synthetic_dataset_fn(BATCH, IMAGE, 4)

    def make(ctx, start_step=0):
        def poison(i, batch):
            bad = tf.equal(i + start_step, step_index)
            batch = dict(batch)
            batch["view1"] = tf.where(bad, tf.fill(tf.shape(batch["view1"]), value),
                                      batch["view1"])
            return batch
        return base(ctx, start_step).enumerate().map(poison)
    return make


def _listing(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _state_file(directory):
    return open(os.path.join(directory, "checkpoint")).read()


# -- 1. Checkpoints: verified at start-up, the newest intact one used, never a half-written one.

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run of 4 steps with ckpt-2 and ckpt-4, and the in-memory state at steps 2 and 4."""
    run = tmp_path_factory.mktemp("pristine")
    tr = _trainer(_cfg(run, 4))
    states = {}
    tr.train(hooks=[(2, lambda step, writer: states.__setitem__(step, _state(tr)))])
    assert sorted(states) == [2, 4]
    return run, states


def _damage(run, kind):
    data = os.path.join(run, "ckpt-4.data-00000-of-00001")
    index = os.path.join(run, "ckpt-4.index")
    if kind == "missing_shard":
        os.remove(data)
        return 2, "ckpt-4.data-00000-of-00001"
    if kind == "truncated_data":
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.truncate(size // 2)
        return 2, "ckpt-4.data-00000-of-00001"
    if kind == "damaged_index":
        with open(index, "r+b") as f:
            f.seek(os.path.getsize(index) // 2)
            f.write(b"\xff" * 16)
        return 2, "ckpt-4.index"
    if kind == "state_points_at_nothing":
        with open(os.path.join(run, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "ckpt-6"\nall_model_checkpoint_paths: "ckpt-6"\n')
        return 4, "ckpt-6.index"
    if kind == "garbage_state_file":
        with open(os.path.join(run, "checkpoint"), "w") as f:
            f.write("model_checkpoint_path: {{{ not a proto\n")
        return 4, "checkpoint cannot be parsed"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing_shard", "truncated_data", "damaged_index",
                                  "state_points_at_nothing", "garbage_state_file"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_newest_intact_one_resumed(
        pristine, tmp_path, kind):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    expected_step, named = _damage(str(run), kind)
    log = []
    tr = _trainer(_cfg(run, 4), log=log, seed=99)  # other initial weights: the restore must win
    assert tr.restore() == expected_step
    warnings = [line for line in log if line.startswith("warning:")]
    assert len(warnings) == 1 and named in warnings[0], log
    _assert_state_equal(_state(tr), pristine[1][expected_step])
    # Published state names only intact checkpoints; damaged files are set aside, not deleted.
    assert f'model_checkpoint_path: "ckpt-{expected_step}"' in _state_file(run)
    assert tf.train.latest_checkpoint(str(run)).endswith(f"ckpt-{expected_step}")
    if expected_step == 2:
        assert not (run / "ckpt-4.index").exists()
        assert any(f.endswith(".corrupt") for f in os.listdir(run))
    if kind == "truncated_data":
        # The run continues from there and writes ckpt-4 again, identical to the pristine one.
        tr.train()
        _assert_state_equal(_state(tr), pristine[1][4])
        checkpoints.verify(str(run / "ckpt-4"))


def test_a_save_that_fills_the_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path,
                                                                            monkeypatch):
    run = tmp_path / "run"
    first = _trainer(_cfg(run, 2, keep=1))
    first.train()
    saved = _state(first)
    tr = _trainer(_cfg(run, 4, keep=1), seed=99)
    real_write = tr.checkpoint.write

    def write_until_the_disk_fills(prefix, **kw):
        path = real_write(prefix, **kw)  # the data file is half-written when the disk fills
        data = path + ".data-00000-of-00001"
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", data)

    monkeypatch.setattr(tr.checkpoint, "write", write_until_the_disk_fills)
    with pytest.raises(checkpoints.CheckpointError) as e:
        tr.train()
    message = str(e.value)
    assert "ckpt-4" in message and "the disk is full" in message
    assert "ckpt-2 is intact" in message and "\n" not in message
    # Nothing of ckpt-4 is left; keep_checkpoint_max=1 did not delete ckpt-2, which still resumes.
    assert _listing(run) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "train"]
    checkpoints.verify(str(run / "ckpt-2"))
    again = _trainer(_cfg(run, 4, keep=1), seed=99)
    assert again.restore() == 2
    _assert_state_equal(_state(again), saved)
    # With space again, ckpt-4 is written and only then ckpt-2 pruned.
    monkeypatch.undo()
    tr.manager.save(checkpoint_number=4)
    assert [f for f in _listing(run) if f.startswith("ckpt")] == [
        "ckpt-4.data-00000-of-00001", "ckpt-4.index"]


# -- 2. Non-finite values.

@pytest.mark.parametrize("inject, step, first", [
    ("nan_batch", 3, "loss"),
    ("inf_learning_rate", 1, "metric learning_rate"),
    ("nan_statistic", 1, "variable"),
])
def test_a_nonfinite_value_stops_with_the_step_and_the_first_offender_and_no_checkpoint(
        tmp_path, inject, step, first):
    run = tmp_path / "run"
    cfg = _cfg(run, 4, base_lr=float("inf") if inject == "inf_learning_rate" else 0.5)
    tr = _trainer(cfg, dataset_fn=_poisoned(2) if inject == "nan_batch" else None,
                  method=_WithStatistic if inject == "nan_statistic" else testing.ToyContrastive)
    if inject == "nan_statistic":
        first = f"variable {tr.method.statistic.name}"
    with pytest.raises(trainer_lib.NonFiniteError) as e:
        tr.train()
    message = str(e.value)
    assert f"at step {step}: {first} is the first one" in message, message
    assert "--on_nonfinite=skip" in message and "\n" not in message
    # No checkpoint of the non-finite state: only those from before it.
    ckpts = sorted(f for f in _listing(run) if f.endswith(".index"))
    assert ckpts == (["ckpt-2.index"] if step == 3 else [])
    for f in ckpts:
        reader = tf.train.load_checkpoint(str(run / f[:-len(".index")]))
        for key in reader.get_variable_to_dtype_map():
            value = reader.get_tensor(key)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), key


def test_skip_mode_undoes_a_nonfinite_step_counts_it_and_trains_on(tmp_path):
    run = tmp_path / "run"
    log = []
    tr = _trainer(_cfg(run, 3, every=3, per_loop=1, on_nonfinite="skip"),
                  dataset_fn=_poisoned(1), log=log)
    states = {}
    tr.train(hooks=[(1, lambda step, writer: states.__setitem__(step, _state(tr)))])
    assert tr.step == 3 and tr.skipped_steps == 1
    iterations = [i for i, v in enumerate(tr.method.variables + tr.optimizer.variables)
                  if v is tr.optimizer.iterations]
    # Step 2 (the NaN batch) changed nothing but the step counter: weights, BN statistics
    # (which the NaN forward pass wrote) and optimizer slots are those after step 1.
    for i, (a, b) in enumerate(zip(states[1], states[2])):
        if i in iterations:
            assert (a, b) == (1, 2)
        else:
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(states[2], states[3]))
    assert all(np.all(np.isfinite(x)) for x in states[3])
    assert any("skipped 1 step(s)" in line for line in log), log
    # The count is in the summaries; checkpoint is finite.
    events = tf.io.gfile.glob(str(run / "train" / "events*"))
    seen = {}
    for e in tf.compat.v1.train.summary_iterator(events[0]):
        for v in e.summary.value:
            if v.tag == "nonfinite_skipped":
                seen[e.step] = float(tf.make_ndarray(v.tensor))
    assert seen == {1: 0.0, 2: 1.0, 3: 1.0}, seen
    checkpoints.verify(str(run / "ckpt-3"))


# -- 5. SIGTERM: a checkpoint at the next step boundary, exactly resumable.

def test_sigterm_checkpoints_at_the_next_step_and_the_resumed_run_is_exact(tmp_path):
    base = testing.synthetic_dataset_fn(BATCH, IMAGE, 4)

    def terminating(ctx, start_step=0):
        # The preemption notice arrives while the input pipeline produces batch 3, in the middle
        # of a loop of 8 compiled steps.
        def maybe_kill(i):
            if int(i) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return i

        def element(i, batch):
            i = tf.py_function(maybe_kill, [i], tf.int64)
            with tf.control_dependencies([i]):
                return {k: tf.identity(v) for k, v in batch.items()}
        return base(ctx, start_step).enumerate().map(element)

    log = []
    tr = _trainer(_cfg(tmp_path / "b", 8, every=8, per_loop=8), dataset_fn=terminating, log=log)
    tr.train()
    stopped = tr.step
    assert tr.preempted and 1 <= stopped < 8, (stopped, log)
    assert any(f"SIGTERM received: stopped at step {stopped}" in line for line in log), log
    checkpoints.verify(str(tmp_path / "b" / f"ckpt-{stopped}"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed again
    del tr

    straight = _trainer(_cfg(tmp_path / "a", 8, every=8, per_loop=8))
    straight.train()
    resumed = _trainer(_cfg(tmp_path / "b", 8, every=8, per_loop=8), seed=99)
    assert resumed.restore() == stopped
    resumed.train()
    assert not resumed.preempted and resumed.step == 8
    _assert_state_equal(_state(resumed), _state(straight))


# -- 6. The eval job: a checkpoint deleted or rewritten under it is skipped.

@pytest.mark.parametrize("fault", ["deleted", "rewritten"])
def test_eval_job_skips_a_checkpoint_deleted_or_rewritten_while_read(pristine, tmp_path,
                                                                      monkeypatch, fault):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    data = run / "ckpt-2.data-00000-of-00001"
    if fault == "deleted":  # the training job pruned it between the listing and the read
        for f in run.glob("ckpt-2.*"):
            f.unlink()
    else:  # the bytes changed under the reader: the stored checksums no longer match
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 2)
            f.write(b"\x7f" * 64)
    # The iterator hands out both checkpoints as the waiting job would have seen them appear.
    monkeypatch.setattr(tf.train, "checkpoints_iterator",
                        lambda *a, **k: iter([str(run / "ckpt-2"), str(run / "ckpt-4")]))
    log = []
    data_cfg = data_lib.DataConfig(image_size=IMAGE, eval_split="test[:16]")
    result = trainer_lib.eval_checkpoints(
        testing.ToyContrastive, _cfg(run, 4), data_cfg, augment_lib.byol_config(IMAGE),
        tf.distribute.get_strategy(), "test[:16]", print_fn=lambda *a, **k: log.append(a[0]))
    skipped = [line for line in log if line.startswith("warning: skipping checkpoint")]
    assert len(skipped) == 1 and "ckpt-2" in skipped[0], log
    assert result["global_step"] == 4 and result["num_examples"] == 16
    assert (run / "result_4.json").exists() and not (run / "result_2.json").exists()


# -- 3. Bad input through the job: exit status 2, the fix named, nothing written.


def _toy_spec():
    """A trainer built from common's blocks alone, composing the CEB and EMA-target settings."""
    import dataclasses

    from common.ceb.settings import CEBSettings
    from common.cli import job, presets
    from common.training import models

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        ceb: CEBSettings = CEBSettings()
        target: models.TargetSettings = models.TargetSettings()

    class Toy(models.SharedEncoderMethod):
        metric_names = ("probe_loss", "probe_acc")

        def ssl_loss(self, hidden, step, seed):
            return tf.reduce_mean(tf.square(hidden)), {}

    preset = presets.small_scale(
        ToyConfig(), train_steps=2, train_batch_size=16, train_split="train[:256]",
        eval_split="test[:100]", eval_batch_size=100, checkpoint_steps=2, train_summary_steps=1,
        image_size=16, width_multiplier=0.0625, proj_head_hidden_dim=16, proj_out_dim=8,
        mode="train")
    return job.TrainerSpec(name="toy", presets={"toy": preset}, default_preset="toy",
                           build_method=lambda cfg, parts, n: Toy(parts.resnet, parts.heads, n,
                                                                  name="toy"))


def _run_job(*argv):
    return testing.run_job(_toy_spec(), *argv)


@pytest.mark.parametrize("args, message", [
    (["--kappa_e=0"], "--kappa_e=0.0: a vMF concentration must be positive."),
    (["--ceb_beta=-1"], "--ceb_beta=-1.0: pass a value >= 0."),
    (["--ema_alpha=1.5"], "--ema_alpha=1.5: pass a rate in [0, 1]."),
    (["--cpu_replicas=2", "--train_batch_size=15"],
     "--train_batch_size=15 is not divisible by --cpu_replicas=2; pass a multiple of 2."),
    (["--image_size=4"], "--image_size=4: the ResNet downsamples by 8; pass --image_size >= 8."),
    (["--width_multiplier=0.005"], "rounds the 64-channel layers to 0 channels; pass a width"),
    (["--dataset=cifar1"], "Unknown dataset 'cifar1'. Did you mean cifar10"),
    (["--train_split=trian"], "Bad split 'trian' for fashion_mnist"),
    (["--data_dir=/nonexistent/tfds"], "--data_dir=/nonexistent/tfds does not exist; pass"),
])
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(tmp_path, args, message):
    run = tmp_path / "run"
    code, err, _ = _run_job(*args, f"--model_dir={run}")
    assert code == 2 and message in err, err
    assert err.startswith("error: ")
    assert not run.exists()


def test_a_read_only_model_dir_exits_2_before_writing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    if os.geteuid() == 0:
        # root writes through permission bits, so the kernel would let the probe succeed;
        # simulate the EACCES a read-only folder or mount gives everyone else.
        import tempfile
        real = tempfile.mkstemp

        def refuse(*a, dir=None, **k):
            if dir is not None and os.path.abspath(dir) == str(run):
                raise PermissionError(errno.EACCES, "Permission denied", dir)
            return real(*a, dir=dir, **k)
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        code, err, _ = _run_job(f"--model_dir={run}")
    finally:
        run.chmod(0o755)
    assert code == 2 and f"--model_dir={run} is not writable" in err, err
    assert "Permission denied" in err
    assert _listing(run) == []


def test_a_model_dir_of_another_architecture_exits_2_saying_what_differs(tmp_path):
    run = tmp_path / "run"
    code, err, out = _run_job(f"--model_dir={run}")
    assert code == 0, err + out[-2000:]
    before = {f: os.path.getmtime(run / f) for f in _listing(run)}
    assert "ckpt-2.index" in before
    # With its config.json: the differences are listed.
    code, err, _ = _run_job(f"--model_dir={run}", "--resnet_depth=34")
    assert code == 2 and "model.resnet_depth: 18 -> 34" in err, err
    # Without it (lost, or a run of an older release): the checkpoint itself does not match.
    os.remove(run / "config.json")
    del before["config.json"]
    code, err, _ = _run_job(f"--model_dir={run}", "--resnet_depth=34")
    assert code == 2 and "does not match this model" in err and "--model_dir" in err, err
    assert {f: os.path.getmtime(run / f) for f in _listing(run)} == before
