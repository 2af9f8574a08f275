"""Tests of common.evaluation.linear_protocol: the SGD protocol reaches scipy's L-BFGS optimum of the
same L2-regularised logistic regression, two replicas equal one device on the same global batches,
the schedule is the hand formula and the first steps are hand-computed, and the default data path
runs on Fashion-MNIST."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.data import augment
from common.data import datasets as data
from common.evaluation import linear_eval
from common.evaluation import linear_protocol as lp


def _problem(seed=0, n=256, n_test=100, d=5, f=6, c=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 1.5
    def draw(m):
        y = rng.integers(0, c, m).astype(np.int32)
        return (centres[y] + rng.normal(size=(m, d))).astype(np.float32), y
    x, y = draw(n)
    xt, yt = draw(n_test)
    a = (rng.normal(size=(d, f)) / np.sqrt(d)).astype(np.float32)
    return x, y, xt, yt, a


def _encoder(a):
    """A known linear 'backbone': features = x A, so the head sees x A exactly."""
    def encode(images, training):
        assert training is False
        return tf.matmul(images, a)
    return encode


def _train_fn(x, y, batch, steps, shuffle_seed=0):
    """Per-replica slices of fixed global batches: global batch i = rows perm_i[:batch]; a
    pipeline feeding R replicas yields its R slices of each global batch in turn."""
    rng = np.random.default_rng(shuffle_seed)
    idx = np.stack([rng.permutation(len(x))[:batch] for _ in range(steps)])
    def make(ctx):
        r = ctx.num_replicas_in_sync
        b = batch // r
        xs = x[idx].reshape(steps * r, b, -1)
        ys = y[idx].reshape(steps * r, b)
        return tf.data.Dataset.from_tensor_slices({"image": xs, "label": ys})
    return make


def _eval_fn(x, y, batch):
    pad = -len(x) % batch
    xs = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
    ys = np.concatenate([y, np.zeros(pad, y.dtype)])
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    def make(ctx):
        r = ctx.num_replicas_in_sync
        b = batch // r
        return tf.data.Dataset.from_tensor_slices(
            {"image": xs.reshape(-1, b, x.shape[1]), "label": ys.reshape(-1, b),
             "mask": mask.reshape(-1, b)})
    return make


def _weights(head):
    return np.concatenate([head.linear.w.numpy(), head.linear.b.numpy()[None]], axis=0)


def _objective(w, feats, y, l2):
    xb = np.concatenate([feats, np.ones((len(feats), 1))], axis=1).astype(np.float64)
    logits = xb @ w
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + 0.5 * l2 * (w[:-1] ** 2).sum()


def test_schedule_is_the_cosine_hand_formula_and_defaults_are_the_papers():
    cfg = lp.LinearProtocolConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.base_lr, cfg.weight_decay, cfg.momentum,
            cfg.nesterov) == (90, 4096, 0.1, 0.0, 0.9, True)
    assert cfg.peak_lr == pytest.approx(1.6)
    assert lp.total_steps(cfg, 1281167) == 90 * 1281167 // 4096 == 28150
    for k in (0, 1, 777, 14075, 28149, 28150, 30000):
        want = 1.6 * 0.5 * (1 + math.cos(math.pi * min(k, 28150) / 28150))
        assert float(lp.learning_rate(tf.constant(k), cfg, 28150)) == pytest.approx(want, abs=1e-6)


def test_first_steps_match_hand_computed_nesterov_updates():
    # Zero-initialised head: the first gradient is F^T (1/C - onehot) / B; two Nesterov steps at
    # lr_0 = peak and lr_1 = peak * (1 + cos(pi / 3)) / 2 of a 3-step schedule.
    x, y, _, _, a = _problem(1, n=32)
    cfg = lp.LinearProtocolConfig(batch_size=32, base_lr=0.4, weight_decay=0.01, train_steps=3,
                                  steps_per_loop=1)
    protocol = lp.LinearProtocol(_encoder(a), tf.distribute.get_strategy(), cfg, 3, feature_dim=6)
    make = _train_fn(x, y, 32, 3)
    w, mu = np.zeros((7, 3)), np.zeros((7, 3))
    rows = make(tf.distribute.InputContext())
    batches = [b for b in rows.take(2)]
    it = iter(tf.distribute.get_strategy().distribute_datasets_from_function(make))
    for k, batch in enumerate(batches):
        fb = np.concatenate([batch["image"].numpy() @ a, np.ones((32, 1))], axis=1)
        logits = fb @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = fb.T @ (p - np.eye(3)[batch["label"].numpy()]) / 32
        g[:-1] += 0.01 * w[:-1]  # decay on the kernel, not the bias
        lr = 0.4 * 32 / 256 * 0.5 * (1 + math.cos(math.pi * k / 3))
        mu = 0.9 * mu + g
        w = w - lr * (g + 0.9 * mu)
        protocol._loop(it, tf.constant(1), 3)
        np.testing.assert_allclose(_weights(protocol.head), w, rtol=1e-5, atol=1e-7)


def test_sgd_protocol_reaches_the_logistic_regression_optimum():
    x, y, xt, yt, a = _problem(2)
    l2 = 0.01
    cfg = lp.LinearProtocolConfig(epochs=500, batch_size=256, base_lr=0.5, weight_decay=l2)
    result = lp.train_linear(_encoder(a), tf.distribute.get_strategy(), None, None, cfg, 3,
                             feature_dim=6, train_dataset_fn=_train_fn(x, y, 256, 500),
                             eval_dataset_fn=_eval_fn(xt, yt, 64), num_train_examples=256)
    assert (result["steps"], result["epochs"], result["num_examples"]) == (500, 500.0, 100)
    feats = (x @ a).astype(np.float64)
    w_opt = linear_eval.fit_logistic_regression(feats, y, 3, l2, max_iter=2000)
    xt_feats = np.concatenate([xt @ a, np.ones((100, 1))], axis=1)
    opt_acc = np.mean(np.argmax(xt_feats @ w_opt, 1) == yt)
    assert result["top_1"] == pytest.approx(opt_acc, abs=1e-9)
    # The reported loss (mean cross-entropy of the last steps) is the optimum's data term.
    data_term = _objective(w_opt, feats, y, l2) - 0.5 * l2 * (w_opt[:-1] ** 2).sum()
    assert result["loss"] == pytest.approx(data_term, abs=2e-3)


def test_head_weights_converge_to_the_optimum_and_eval_counts_masked_rows_once():
    x, y, xt, yt, a = _problem(3)
    l2 = 0.01
    cfg = lp.LinearProtocolConfig(batch_size=256, base_lr=0.5, weight_decay=l2, train_steps=500)
    protocol = lp.LinearProtocol(_encoder(a), tf.distribute.get_strategy(), cfg, 3, feature_dim=6)
    protocol.train(_train_fn(x, y, 256, 500), 500)
    feats = (x @ a).astype(np.float64)
    w_opt = linear_eval.fit_logistic_regression(feats, y, 3, l2, max_iter=2000)
    w = _weights(protocol.head).astype(np.float64)
    # Softmax logits are defined up to a per-row constant on the bias; centre both.
    center = lambda m: m - m.mean(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(center(w), center(w_opt), atol=5e-3)
    assert _objective(w, feats, y, l2) == pytest.approx(_objective(w_opt, feats, y, l2), abs=1e-5)
    result = protocol.evaluate(_eval_fn(xt, yt, 64))  # 100 rows + 28 padding
    logits = np.concatenate([xt @ a, np.ones((100, 1))], axis=1) @ w
    order = np.argsort(-logits, 1, kind="stable")
    assert result["num_examples"] == 100
    assert result["top_1"] == pytest.approx(np.mean(order[:, 0] == yt))
    assert result["top_5"] == 1.0  # three classes


def test_two_replicas_equal_one_device_on_the_same_global_batches():
    x, y, xt, yt, a = _problem(4, n=96, n_test=50)
    cfg = lp.LinearProtocolConfig(batch_size=16, base_lr=0.8, weight_decay=1e-3, train_steps=6,
                                  steps_per_loop=4, zero_init_head=False)
    out = {}
    for name, strategy in (("one", tf.distribute.get_strategy()),
                           ("two", testing.two_replica_strategy())):
        tf.random.set_seed(0)  # the head's random initialisation
        protocol = lp.LinearProtocol(_encoder(a), strategy, cfg, 3, feature_dim=6)
        loss = protocol.train(_train_fn(x, y, 16, 6, shuffle_seed=5), 6)
        out[name] = (_weights(protocol.head), loss, protocol.evaluate(_eval_fn(xt, yt, 16)))
    np.testing.assert_allclose(out["two"][0], out["one"][0], rtol=1e-5, atol=1e-6)
    assert out["two"][1] == pytest.approx(out["one"][1], rel=1e-5)
    assert out["two"][2]["num_examples"] == out["one"][2]["num_examples"] == 50
    assert out["two"][2]["top_1"] == out["one"][2]["top_1"]
    assert out["two"][2]["eval_loss"] == pytest.approx(out["one"][2]["eval_loss"], rel=1e-5)


@pytest.mark.skipif(not os.path.isfile(os.path.join(data.fashion_mnist_dir(),
                                                    "t10k-labels-idx1-ubyte.gz")),
                    reason="Fashion-MNIST IDX files missing")
def test_default_pipelines_run_on_a_subset_through_two_replicas():
    cfg_data = data.DataConfig(train_split="train[:200]", eval_split="test[:30]", image_size=16,
                               train_indices=list(range(0, 200, 5)))
    aug = augment.simclr_config(16)
    encoder = lambda images, training: tf.reduce_mean(images, axis=[1, 2])  # noqa: E731
    cfg = lp.LinearProtocolConfig(epochs=2, batch_size=8, eval_batch_size=8, base_lr=0.1)
    result = lp.train_linear(encoder, testing.two_replica_strategy(), cfg_data, aug, cfg, 10,
                             feature_dim=3)
    assert result["steps"] == 2 * 40 // 8 == 10 and result["epochs"] == 2.0
    assert result["num_examples"] == 30 and 0.0 <= result["top_1"] <= result["top_5"] <= 1.0
    assert np.isfinite(result["loss"])
