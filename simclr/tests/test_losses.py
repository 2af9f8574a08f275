"""simclr.losses.contrastive_loss against a float64 numpy NT-Xent, one device and two replicas."""
import numpy as np
import pytest
import tensorflow as tf

from common import testing
from simclr import losses


def np_l2n(x):
    return x / np.sqrt(np.maximum(np.sum(x * x, -1, keepdims=True), 1e-12))


def np_log_softmax(logits):
    m = logits.max(1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))


def np_direction(anchor, same, other, temperature, double_batch):
    """CE of row i's positive (column i of anchor.other^T) and the logits it ran over."""
    n = anchor.shape[0]
    logits = anchor @ other.T / temperature
    if double_batch:
        aa = anchor @ same.T / temperature
        # The self-similarity is dropped outright (no large negative constant).
        aa = np.stack([np.delete(aa[i], i) for i in range(n)])
        logits = np.concatenate([logits, aa], 1)
    log_p = np_log_softmax(logits)
    return -log_p[np.arange(n), np.arange(n)], logits


def np_ntxent(hidden, temperature=0.1, double_batch=True, bidirectional=True):
    h = np_l2n(hidden.astype(np.float64))
    h1, h2 = np.split(h, 2)
    n = h1.shape[0]
    bound = np.log(2 * n - 1) if double_batch else np.log(n)
    ce_a, logits_a = np_direction(h1, h1, h2, temperature, double_batch)
    loss = ce_a.copy()
    metrics = {"i_y_zx": bound - ce_a.mean()}
    if bidirectional:
        ce_b, _ = np_direction(h2, h2, h1, temperature, double_batch)
        loss += ce_b
        metrics["i_x_zy"] = bound - ce_b.mean()
    metrics["contrast_acc"] = np.mean(np.argmax(logits_a, 1) == np.arange(n))
    p = np.exp(np_log_softmax(logits_a))
    metrics["contrast_entropy"] = np.mean(-np.sum(p * np.log(p), 1))
    return loss.mean(), metrics


def make_hidden(b=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, d))
    # View 2 close to view 1 so the accuracy is neither 0 nor 1 trivially.
    y = x + 0.8 * rng.standard_normal((b, d))
    return np.concatenate([x, y]).astype(np.float32)


@pytest.mark.parametrize("double_batch", [True, False])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_matches_numpy(double_batch, bidirectional):
    hidden = make_hidden()
    loss, metrics = losses.contrastive_loss(
        tf.constant(hidden), 0.1, double_batch_trick=double_batch, bidirectional=bidirectional)
    want_loss, want_metrics = np_ntxent(hidden, 0.1, double_batch, bidirectional)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=2e-5)
    assert set(metrics) == set(want_metrics)
    for k, v in want_metrics.items():
        assert metrics[k].shape == ()
        np.testing.assert_allclose(metrics[k].numpy(), v, rtol=2e-5, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 2.0])
def test_temperature(temperature):
    hidden = make_hidden(seed=1)
    loss, _ = losses.contrastive_loss(hidden, temperature=temperature)
    np.testing.assert_allclose(loss.numpy(), np_ntxent(hidden, temperature)[0], rtol=2e-5)


def test_hand_derived_two_orthogonal_pairs():
    # Views identical, rows orthogonal: logits_ab = I / T, so each row's CE = log(1 + exp(-1/T)).
    # With the double batch the extra candidate scores 0 too: log(1 + 2 exp(-1/T)).
    t = 0.25
    hidden = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float64) * 3.0
    single, _ = losses.contrastive_loss(hidden, t, double_batch_trick=False, bidirectional=False)
    np.testing.assert_allclose(single.numpy(), np.log1p(np.exp(-1 / t)), rtol=1e-12)
    both, metrics = losses.contrastive_loss(hidden, t)
    np.testing.assert_allclose(both.numpy(), 2 * np.log1p(2 * np.exp(-1 / t)), rtol=1e-12)
    np.testing.assert_allclose(metrics["contrast_acc"].numpy(), 1.0)


def test_gradient_matches_finite_differences():
    hidden = make_hidden(b=3, d=4, seed=2).astype(np.float64)
    h = tf.constant(hidden)
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss, _ = losses.contrastive_loss(h, 0.3)
    grad = tape.gradient(loss, h).numpy()
    eps = 1e-6
    fd = np.zeros_like(hidden)
    for idx in np.ndindex(hidden.shape):
        plus, minus = hidden.copy(), hidden.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (np_ntxent(plus, 0.3)[0] - np_ntxent(minus, 0.3)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        losses.contrastive_loss(tf.zeros([5, 3]))
    with pytest.raises(ValueError, match="rank 2"):
        losses.contrastive_loss(tf.zeros([4]))
    with pytest.raises(ValueError, match="temperature"):
        losses.contrastive_loss(tf.ones([4, 3]), temperature=0.0)


def test_two_replicas_equal_one_device():
    """Each replica holds its quarter of each view; mean loss and summed gradients match one device."""
    strategy = testing.two_replica_strategy()
    n_rep, b_local, k, d = 2, 3, 4, 5
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((n_rep * b_local, k)).astype(np.float32)
    x2 = (x1 + 0.7 * rng.standard_normal(x1.shape)).astype(np.float32)
    w0 = rng.standard_normal((k, d)).astype(np.float32)
    rows = [np.concatenate([x1[r * b_local:(r + 1) * b_local], x2[r * b_local:(r + 1) * b_local]])
            for r in range(n_rep)]

    # One device on the global batch.
    w = tf.Variable(w0)
    global_in = tf.constant(np.concatenate([x1, x2]))
    with tf.GradientTape() as tape:
        tape.watch(global_in)
        loss, metrics = losses.contrastive_loss(tf.matmul(global_in, w))
    g_w, g_in = tape.gradient(loss, [w, global_in])
    want_loss, _ = np_ntxent(np.concatenate([x1, x2]) @ w0)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=2e-5)

    with strategy.scope():
        w_mirrored = tf.Variable(w0)

    def replica_fn(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            rep_loss, rep_metrics = losses.contrastive_loss(
                tf.matmul(inputs, w_mirrored), strategy=strategy)
            scaled = rep_loss / strategy.num_replicas_in_sync
        rep_gw, rep_gin = tape.gradient(scaled, [w_mirrored, inputs])
        return rep_loss, rep_metrics, rep_gw, rep_gin

    @tf.function
    def step(dist_inputs):
        return strategy.run(replica_fn, args=(dist_inputs,))

    dist_inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(rows[ctx.replica_id_in_sync_group]))
    rep_loss, rep_metrics, rep_gw, rep_gin = step(dist_inputs)
    mean = tf.distribute.ReduceOp.MEAN
    np.testing.assert_allclose(
        strategy.reduce(mean, rep_loss, axis=None).numpy(), loss.numpy(), rtol=1e-5)
    for key in metrics:
        np.testing.assert_allclose(strategy.reduce(mean, rep_metrics[key], axis=None).numpy(),
                                   metrics[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(
        strategy.reduce(tf.distribute.ReduceOp.SUM, rep_gw, axis=None).numpy(), g_w.numpy(),
        rtol=1e-4, atol=1e-6)
    # Replica r's input gradient must be the global gradient's rows of its own examples.
    local_gin = strategy.experimental_local_results(rep_gin)
    g_in = g_in.numpy()
    n = n_rep * b_local
    for r in range(n_rep):
        want = np.concatenate([g_in[r * b_local:(r + 1) * b_local],
                               g_in[n + r * b_local:n + (r + 1) * b_local]])
        np.testing.assert_allclose(local_gin[r].numpy(), want, rtol=1e-4, atol=1e-6)
