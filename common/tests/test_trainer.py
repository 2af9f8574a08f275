"""The generic trainer: exact resume, replicas equal one device, metric means, clear failures."""
import numpy as np
import pytest
import tensorflow as tf

from common.training import checkpoints
from common.data import datasets as data_lib
from common.training import optim as optim_lib
from common.training import schedules
from common import testing
from common.training import trainer as trainer_lib

IMAGE = 16


def _config(model_dir, steps, total=6, batch=8):
    return trainer_lib.TrainConfig(
        model_dir=model_dir, train_steps=steps, train_batch_size=batch, eval_batch_size=batch,
        steps_per_loop=2, checkpoint_steps=2,
        lr=schedules.LRConfig(base_lr=1.0, batch_size=batch, warmup_steps=2, total_steps=total),
        optim=optim_lib.OptimConfig(name="lars", weight_decay=1e-4))


def _pretrainer(model_dir, steps, strategy=None, dataset_fn=None, batch=8):
    return trainer_lib.Pretrainer(
        testing.ToyContrastive, _config(model_dir, steps, batch=batch), data_lib.DataConfig(), None,
        strategy or tf.distribute.get_strategy(),
        dataset_fn=dataset_fn or testing.synthetic_dataset_fn(batch, IMAGE, 4),
        num_classes=4, print_fn=lambda *a, **k: None)


def _state(tr):
    return [v.numpy() for v in tr.method.variables] + [v.numpy() for v in tr.optimizer.variables]


def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    tf.random.set_seed(1)
    straight = _pretrainer(str(tmp_path / "a"), 6)
    straight.train()
    tf.random.set_seed(1)  # same initial weights for the interrupted run
    first = _pretrainer(str(tmp_path / "b"), 4)
    first.train()
    del first
    tf.random.set_seed(99)  # a resumed process starts from other random weights: restore must win
    resumed = _pretrainer(str(tmp_path / "b"), 6)
    assert resumed.restore() == 4
    resumed.train()
    assert resumed.step == straight.step == 6
    for a, b in zip(_state(straight), _state(resumed)):
        np.testing.assert_array_equal(a, b)


def test_restore_refuses_another_models_checkpoint(tmp_path):
    tr = _pretrainer(str(tmp_path), 2)
    tr.train()

    class Other(testing.ToyContrastive):
        def __init__(self, n):
            super().__init__(n)
            self.extra = tf.Variable(tf.zeros([3]))

    other = trainer_lib.Pretrainer(Other, _config(str(tmp_path), 4), data_lib.DataConfig(), None,
                                   tf.distribute.get_strategy(),
                                   dataset_fn=testing.synthetic_dataset_fn(8, IMAGE, 4),
                                   num_classes=4, print_fn=lambda *a, **k: None)
    with pytest.raises(checkpoints.CheckpointError, match="does not match"):
        other.restore()


def _global_batches(batch, steps):
    rng = np.random.default_rng(0)
    return [{"view1": rng.normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32),
             "view2": rng.normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32),
             "label": rng.integers(0, 4, batch).astype(np.int32)} for _ in range(steps)]


def _sharded_fn(batches, global_batch):
    """Per-replica slices of the given global batches: replica r gets rows [r*b, (r+1)*b)."""
    def make(ctx, start_step):
        assert start_step == 0
        b = ctx.get_per_replica_batch_size(global_batch)
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * per_pipeline
        # A pipeline feeding several replicas hands them consecutive batches in replica order.
        rows = [{k: g[k][r * b:(r + 1) * b] for k in g}
                for g in batches for r in range(first, first + per_pipeline)]
        return tf.data.Dataset.from_tensor_slices(
            {k: np.stack([x[k] for x in rows]) for k in rows[0]})
    return make


def test_two_replicas_equal_one_device_on_the_same_global_batch(tmp_path):
    batches = _global_batches(8, 2)
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest.py should provide two logical CPU devices"
    results = []
    for k, strategy in enumerate([tf.distribute.OneDeviceStrategy("/cpu:0"),
                                  testing.two_replica_strategy()]):
        tf.random.set_seed(3)
        tr = _pretrainer(str(tmp_path / str(k)), 2, strategy, _sharded_fn(batches, 8))
        tr.run_steps(2)
        results.append((_state(tr), tr.metrics.result()))
    (s1, m1), (s2, m2) = results
    for a, b in zip(s1, s2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The replica-mean of per-replica means equals the global mean for equal shards.
    expected_row_mean = np.mean([g["view1"].mean() for g in batches])
    assert abs(m1["row_mean"] - expected_row_mean) < 1e-5
    assert abs(m2["row_mean"] - expected_row_mean) < 1e-5
    assert abs(m1["ssl"] - m2["ssl"]) < 1e-4 * max(1.0, abs(m1["ssl"]))


def test_batch_not_divisible_by_replicas_is_refused(tmp_path):
    cpus = tf.config.list_logical_devices("CPU")
    strategy = testing.two_replica_strategy()
    with pytest.raises(ValueError, match="divisible"):
        _pretrainer(str(tmp_path), 2, strategy, batch=7)


def test_step_seed_differs_by_step_and_replica_and_is_stable():
    a = trainer_lib.step_seed(0, tf.constant(5, tf.int64)).numpy()
    b = trainer_lib.step_seed(0, tf.constant(6, tf.int64)).numpy()
    c = trainer_lib.step_seed(1, tf.constant(5, tf.int64)).numpy()
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    np.testing.assert_array_equal(a, trainer_lib.step_seed(0, tf.constant(5, tf.int64)).numpy())


def test_write_json_is_atomic_and_readable(tmp_path):
    path = tmp_path / "r" / "result.json"
    checkpoints.write_json(str(path), {"a": 1})
    checkpoints.write_json(str(path), {"a": 2})
    import json
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


@pytest.mark.parametrize("exclude_probe,form,probe_adapted", [
    (False, "deepmind", True), (True, "deepmind", False), (False, "release", False),
    (True, "release", False)])
def test_probe_is_handed_to_the_optimizer_as_the_release_head(tmp_path, exclude_probe, form,
                                                              probe_adapted):
    """exclude_probe (and always the release's LARS form) keeps the trust ratio off the probe,
    while its kernel keeps weight decay; nothing else changes."""
    import dataclasses
    cfg = testing.tiny_train_config(str(tmp_path))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
        cfg.optim, exclude_probe=exclude_probe, lars_form=form))
    tr = trainer_lib.Pretrainer(testing.ToyContrastive, cfg, data_lib.DataConfig(image_size=IMAGE),
                                None, tf.distribute.get_strategy(),
                                dataset_fn=testing.synthetic_dataset_fn(8), num_classes=4,
                                print_fn=lambda *a, **k: None)
    opt = tr.optimizer
    probe = {v.ref(): v for v in tr.method.probe.trainable_variables}
    assert len(probe) == 2
    for var, decay, adapt in zip(opt.variables_to_update, opt.decay_mask, opt.adapt_mask):
        leaf = var.name.split("/")[-1].split(":")[0]
        bias_or_norm = leaf in ("b", "scale", "offset")
        assert decay == (not bias_or_norm), var.name
        if var.ref() in probe:
            assert adapt == (probe_adapted and leaf == "w"), var.name
        else:
            assert adapt == (not bias_or_norm), var.name
