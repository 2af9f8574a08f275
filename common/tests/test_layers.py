"""Conv2D, Dense and BatchNorm against float64 numpy oracles (and MirroredStrategy for sync BN)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from common.networks import layers
from common.training import distribute
from common import testing


def np_conv2d(x, w, stride, pads):
    """Cross-correlation of x [B,H,W,C] with w [k,k,C,O] after zero padding pads=((t,b),(l,r))."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    w = np.asarray(w, np.float64)
    k = w.shape[0]
    ho = (x.shape[1] - k) // stride + 1
    wo = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            out += patch @ w[i, j]
    return out


def tf_same_pads(size, k, s):
    """TF 'SAME' padding as documented: total = max((ceil(n/s)-1)*s + k - n, 0), total//2 first."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return (total // 2, total - total // 2)


def oracle_pads(padding, size, k, s):
    if padding == "fixed" and s > 1:
        return ((k - 1) // 2, k - 1 - (k - 1) // 2)
    return tf_same_pads(size, k, s)


@pytest.mark.parametrize("padding", ["fixed", "same"])
@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (1, 2), (3, 2), (7, 2)])
@pytest.mark.parametrize("size", [8, 9])
def test_conv_matches_numpy_oracle(padding, k, stride, size):
    rng = np.random.default_rng(k * 100 + stride * 10 + size)
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    conv = layers.Conv2D(3, 4, k, stride, padding=padding)
    p = oracle_pads(padding, size, k, stride)
    want = np_conv2d(x, conv.w.numpy(), stride, (p, p))
    got = conv(tf.constant(x)).numpy()
    assert got.shape == (2, math.ceil(size / stride), math.ceil(size / stride), 4)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_fixed_and_same_padding_differ_only_for_even_strided_inputs():
    # Hand-derived: k=3, s=2, H=8: SAME pads (0, 1), fixed pads (1, 1); H=9: both (1, 1).
    assert tf_same_pads(8, 3, 2) == (0, 1) and tf_same_pads(9, 3, 2) == (1, 1)
    assert tf_same_pads(8, 7, 2) == (2, 3)
    rng = np.random.default_rng(0)
    fixed = layers.Conv2D(2, 2, 3, 2, padding="fixed")
    same = layers.Conv2D(2, 2, 3, 2, padding="same")
    same.w.assign(fixed.w)
    even = tf.constant(rng.standard_normal((1, 8, 8, 2)), tf.float32)
    odd = tf.constant(rng.standard_normal((1, 9, 9, 2)), tf.float32)
    assert np.abs(fixed(even).numpy() - same(even).numpy()).max() > 1e-2
    np.testing.assert_allclose(fixed(odd).numpy(), same(odd).numpy(), atol=1e-6)


def test_conv_variables_and_errors():
    with tf.name_scope("net"):
        conv = layers.Conv2D(3, 5, 3, name="conv_1")
    assert [v.name for v in conv.variables] == ["net/conv_1/w:0"]
    assert conv.w.shape == (3, 3, 3, 5)
    assert conv.w.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    with pytest.raises(ValueError, match="padding"):
        layers.Conv2D(3, 5, 3, padding="valid")
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        conv(tf.zeros([1, 4, 4, 2]))


@pytest.mark.parametrize("name,realised", [("haiku", 0.87962566), ("keras", 1.0)])
def test_fan_in_truncated_normal_std(name, realised):
    tf.random.set_seed(1)
    shape = (3, 3, 64, 256)
    w = layers.initializer(name)(shape, tf.float32).numpy().astype(np.float64)
    fan_in = 3 * 3 * 64
    nominal = 1 / math.sqrt(fan_in) / (1.0 if name == "haiku" else 0.87962566103423978)
    # A normal truncated at +-2 sd has std 0.8796 sd (scipy.stats.truncnorm(-2, 2).std()).
    assert abs(w.std() / (realised / math.sqrt(fan_in)) - 1) < 0.01
    assert np.abs(w).max() <= 2 * nominal * (1 + 1e-6)


def test_dense_matches_numpy_and_names():
    rng = np.random.default_rng(3)
    with tf.name_scope("head"):
        dense = layers.Dense(5, 3, name="linear_0")
        nobias = layers.Dense(5, 3, use_bias=False, name="linear_1")
    dense.b.assign(rng.standard_normal(3).astype(np.float32))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    want = x.astype(np.float64) @ dense.w.numpy() + dense.b.numpy()
    np.testing.assert_allclose(dense(tf.constant(x)).numpy(), want, atol=1e-5)
    assert sorted(v.name for v in dense.variables) == ["head/linear_0/b:0", "head/linear_0/w:0"]
    assert [v.name for v in nobias.variables] == ["head/linear_1/w:0"]
    np.testing.assert_allclose(nobias(tf.constant(x)).numpy(), x @ nobias.w.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- batch norm oracles

def np_bn(x, mean, var, scale, offset, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * scale + offset


def np_batch_stats(x):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    return x.mean(axes), x.var(axes)  # two-pass, biased


class NpKerasEMA:
    def __init__(self, c, m):
        self.m, self.mean, self.var = m, np.zeros(c), np.ones(c)

    def update(self, mean, var):
        self.mean = self.m * self.mean + (1 - self.m) * mean
        self.var = self.m * self.var + (1 - self.m) * var


class NpHaikuEMA:
    def __init__(self, c, m):
        self.m, self.counter = m, 0
        self.mean_hidden, self.var_hidden = np.zeros(c), np.zeros(c)

    def update(self, mean, var):
        self.counter += 1
        self.mean_hidden = self.m * self.mean_hidden + (1 - self.m) * mean
        self.var_hidden = self.m * self.var_hidden + (1 - self.m) * var
        debias = 1 - self.m ** self.counter
        self.mean, self.var = self.mean_hidden / debias, self.var_hidden / debias


def _random_affine(bn, rng):
    bn.scale.assign(rng.uniform(0.5, 1.5, bn.channels).astype(np.float32))
    bn.offset.assign(rng.uniform(-0.5, 0.5, bn.channels).astype(np.float32))


@pytest.mark.parametrize("semantics", ["keras", "haiku"])
def test_bn_three_updates_and_eval_match_numpy(semantics):
    rng = np.random.default_rng(7)
    c, m = 5, 0.8
    bn = layers.BatchNorm(c, momentum=m, semantics=semantics)
    _random_affine(bn, rng)
    ema = (NpKerasEMA if semantics == "keras" else NpHaikuEMA)(c, m)
    for step in range(3):
        x = (rng.standard_normal((4, 3, 3, c)) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c))
        x = x.astype(np.float32)
        mean, var = np_batch_stats(x)
        y = bn(tf.constant(x), training=True).numpy()
        np.testing.assert_allclose(y, np_bn(x, mean, var, bn.scale.numpy(), bn.offset.numpy()),
                                   atol=2e-5)
        ema.update(mean, var)
        np.testing.assert_allclose(bn.moving_mean.numpy(), ema.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.moving_variance.numpy(), ema.var, rtol=1e-5, atol=1e-6)
        if semantics == "haiku":
            assert int(bn.counter.numpy()) == step + 1
            np.testing.assert_allclose(bn.mean_hidden.numpy(), ema.mean_hidden, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(bn.var_hidden.numpy(), ema.var_hidden, rtol=1e-5, atol=1e-6)
    if semantics == "haiku":
        # Zero-debiasing: after the first update, the average is the batch statistic itself.
        first = layers.BatchNorm(c, momentum=m, semantics="haiku")
        first(tf.constant(x), training=True)
        np.testing.assert_allclose(first.moving_variance.numpy(), var, rtol=1e-5)
    x_eval = rng.standard_normal((3, c)).astype(np.float32)
    before = (bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy())
    y = bn(tf.constant(x_eval), training=False).numpy()
    np.testing.assert_allclose(y, np_bn(x_eval, ema.mean, ema.var, bn.scale.numpy(), bn.offset.numpy()),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), before[1])


def test_bn_initial_state_and_variables():
    with tf.name_scope("online"):
        keras = layers.BatchNorm(3, semantics="keras", scale_init=0.0, name="batchnorm_2")
        haiku = layers.BatchNorm(3, semantics="haiku")
    names = {v.name: v for v in keras.variables}
    assert set(names) == {f"online/batchnorm_2/{n}:0" for n in
                          ("scale", "offset", "moving_mean", "moving_variance")}
    assert sorted(v.name for v in keras.trainable_variables) == [
        "online/batchnorm_2/offset:0", "online/batchnorm_2/scale:0"]
    np.testing.assert_array_equal(keras.scale.numpy(), 0.0)
    np.testing.assert_array_equal(keras.moving_variance.numpy(), 1.0)
    assert all(v.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA for v in keras.variables)
    assert sorted(v.name.split("/")[-1] for v in haiku.variables) == sorted(
        f"{n}:0" for n in ("scale", "offset", "mean_hidden", "mean_average", "var_hidden",
                           "var_average", "counter"))
    assert haiku.counter.dtype == tf.int32 and int(haiku.counter.numpy()) == 0
    np.testing.assert_array_equal(haiku.moving_variance.numpy(), 0.0)
    assert len(haiku.trainable_variables) == 2
    nocenter = layers.BatchNorm(3, center=False, scale=False)
    assert nocenter.trainable_variables == ()


def test_bn_bad_arguments():
    with pytest.raises(ValueError, match="must contain 'batchnorm'"):
        layers.BatchNorm(3, name="bn")
    with pytest.raises(ValueError, match="semantics"):
        layers.BatchNorm(3, semantics="torch")
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        layers.BatchNorm(3)(tf.zeros([2, 4]), training=True)


def test_bn_bfloat16_computes_statistics_in_float32():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((8, 4)) * 3 + 100).astype(np.float32)
    x16 = tf.cast(tf.constant(x), tf.bfloat16)
    xr = tf.cast(x16, tf.float64).numpy()  # the values the layer actually sees
    bn = layers.BatchNorm(4, momentum=0.0)
    y = bn(x16, training=True)
    assert y.dtype == tf.bfloat16
    mean, var = np_batch_stats(xr)
    # bf16 arithmetic would lose the variance of values near 100 entirely (8 mantissa bits).
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-3)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), np_bn(xr, mean, var, 1, 0), atol=0.05)


def np_bn_input_grad(x, g, scale, eps=1e-5):
    """d/dx of sum(g * BN(x)) with batch statistics (x [N, C])."""
    n = x.shape[0]
    mean, var = x.mean(0), x.var(0)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    return scale * inv / n * (n * g - g.sum(0) - xhat * (g * xhat).sum(0))


def test_bn_gradient_matches_analytic_formula():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    g = rng.standard_normal((6, 3)).astype(np.float32)
    bn = layers.BatchNorm(3)
    _random_affine(bn, rng)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(bn(xt, training=True) * g)
    got = tape.gradient(loss, xt).numpy()
    want = np_bn_input_grad(x.astype(np.float64), g.astype(np.float64), bn.scale.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("semantics", ["keras", "haiku"])
def test_sync_bn_on_two_replicas_equals_one_device_full_batch(semantics):
    strategy = testing.two_replica_strategy()
    rng = np.random.default_rng(9)
    c = 4
    x = rng.standard_normal((8, 2, 2, c)).astype(np.float32)
    x[4:] = x[4:] * 3 + 1  # the two halves have very different statistics
    g = rng.standard_normal(x.shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)

    def run_steps(xs, gs, call):
        outs, grads = [], []
        for _ in range(2):
            y, dx = call(xs, gs)
            outs.append(y)
            grads.append(dx)
        return outs, grads

    single = layers.BatchNorm(c, semantics=semantics)
    single.scale.assign(scale)

    def step_single(xs, gs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = single(xs, training=True)
            loss = tf.reduce_sum(y * gs)
        return y, tape.gradient(loss, xs)

    want_y, want_dx = run_steps(tf.constant(x), tf.constant(g), step_single)

    with strategy.scope():
        synced = layers.BatchNorm(c, semantics=semantics, sync=True)
        synced.scale.assign(scale)

    def halves(arr):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(arr[4 * ctx.replica_id_in_sync_group:4 * (ctx.replica_id_in_sync_group + 1)]))

    @tf.function
    def step_synced(xs, gs):
        def fn(xr, gr):
            with tf.GradientTape() as tape:
                tape.watch(xr)
                y = synced(xr, training=True)
                loss = tf.reduce_sum(y * gr)
            return y, tape.gradient(loss, xr)
        y, dx = strategy.run(fn, args=(xs, gs))
        return y, dx

    got_y, got_dx = run_steps(halves(x), halves(g), step_synced)
    for gy, wy, gdx, wdx in zip(got_y, want_y, got_dx, want_dx):
        np.testing.assert_allclose(np.concatenate(strategy.experimental_local_results(gy)), wy.numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(np.concatenate(strategy.experimental_local_results(gdx)), wdx.numpy(),
                                   atol=1e-5)
    for var in (synced.moving_mean, synced.moving_variance):
        for local in strategy.experimental_local_results(var):
            want = single.moving_mean if var is synced.moving_mean else single.moving_variance
            np.testing.assert_allclose(local.numpy(), want.numpy(), atol=1e-5)
    # Per-replica statistics would differ by far more than the tolerance above.
    assert np.abs(np_batch_stats(x[:4])[1] - np_batch_stats(x)[1]).max() > 0.5


def test_assign_from_haiku_reshapes_and_checks():
    bn = layers.BatchNorm(3, semantics="haiku")
    entries = bn.haiku_entries("net/~/batchnorm")
    assert set(entries) == {
        "net/~/batchnorm/scale", "net/~/batchnorm/offset",
        *[f"net/~/batchnorm/~/{s}_ema/{p}" for s in ("mean", "var") for p in ("hidden", "average", "counter")]}
    arrays = {k: np.full((1, 1, 1, 3), 0.25, np.float32) for k in entries if not k.endswith("counter")}
    arrays["net/~/batchnorm/~/mean_ema/counter"] = np.int32(4)
    arrays["net/~/batchnorm/~/var_ema/counter"] = np.int32(4)
    assert layers.assign_from_haiku(entries, arrays) == []
    np.testing.assert_array_equal(bn.scale.numpy(), [0.25] * 3)
    assert int(bn.counter.numpy()) == 4
    with pytest.raises(ValueError, match="incompatible"):
        layers.assign_from_haiku({"x/scale": bn.scale}, {"x/scale": np.zeros((1, 4))})
    with pytest.raises(KeyError, match="missing"):
        layers.assign_from_haiku(entries, {})


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5, 7)])
@pytest.mark.parametrize("scale, center", [(True, True), (False, True), (True, False)])
def test_bn_inference_matches_numpy_fused_and_plain(shape, scale, center):
    """Inference uses the moving statistics only; float32 goes through the fused kernel, bfloat16
    through the plain formula: both equal (x - mean) * scale / sqrt(var + eps) + offset."""
    rng = np.random.default_rng(3)
    c = shape[-1]
    bn = layers.BatchNorm(c, epsilon=1e-3, scale=scale, center=center, semantics="keras")
    mean, var = rng.uniform(-1, 1, c), rng.uniform(0.2, 3, c)
    bn.moving_mean.assign(mean.astype(np.float32))
    bn.moving_variance.assign(var.astype(np.float32))
    g = rng.uniform(0.5, 2, c) if scale else np.ones(c)
    b = rng.uniform(-1, 1, c) if center else np.zeros(c)
    if scale:
        bn.scale.assign(g.astype(np.float32))
    if center:
        bn.offset.assign(b.astype(np.float32))
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    want = (x.astype(np.float64) - mean) * g / np.sqrt(var + 1e-3) + b
    xt = tf.constant(x)
    weights = rng.standard_normal(shape).astype(np.float32)
    with tf.GradientTape() as tape:  # frozen-BN fine-tuning differentiates inference mode
        tape.watch(xt)
        y = bn(xt, training=False)
        loss = tf.reduce_sum(y * weights)
    assert y.dtype == tf.float32
    np.testing.assert_allclose(y.numpy(), want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), weights * g / np.sqrt(var + 1e-3),
                               rtol=2e-6, atol=2e-6)
    y16 = bn(tf.constant(x, tf.bfloat16), training=False)
    assert y16.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y16, tf.float32).numpy(), want, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("semantics", ["keras", "haiku"])
def test_unsynced_bn_on_two_replicas_normalises_locally_and_averages_the_statistics(semantics):
    """sync=False on two replicas: each replica normalises with its own batch statistics; the
    moving statistics follow the replica average of the per-replica (mean, biased variance), the
    same on both replicas (tf.keras 2's ON_READ/MEAN moving statistics, read as the replica mean)."""
    strategy = testing.two_replica_strategy()
    rng = np.random.default_rng(11)
    c, m = 3, 0.8
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    offset = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    with strategy.scope():
        bn = layers.BatchNorm(c, momentum=m, semantics=semantics, sync=False)
        bn.scale.assign(scale)
        bn.offset.assign(offset)

    @tf.function
    def step(xs):
        return strategy.run(lambda xr: bn(xr, training=True), args=(xs,))

    ema = (NpKerasEMA if semantics == "keras" else NpHaikuEMA)(c, m)
    for k in range(2):
        x = rng.standard_normal((8, 2, 2, c)).astype(np.float32)
        x[4:] = x[4:] * 3 + 2  # replica 1's half: very different statistics
        halves = [x[:4], x[4:]]
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx, h=halves: tf.constant(h[ctx.replica_id_in_sync_group]))
        ys = strategy.experimental_local_results(step(xs))
        stats = [np_batch_stats(h) for h in halves]
        for y, h, (mean, var) in zip(ys, halves, stats):
            np.testing.assert_allclose(y.numpy(), np_bn(h.astype(np.float64), mean, var, scale, offset),
                                       atol=2e-5)
        ema.update((stats[0][0] + stats[1][0]) / 2, (stats[0][1] + stats[1][1]) / 2)
        for var, want in ((bn.moving_mean, ema.mean), (bn.moving_variance, ema.var)):
            for local in strategy.experimental_local_results(var):
                np.testing.assert_allclose(local.numpy(), want, rtol=1e-5, atol=1e-6)
    # The mean of per-replica variances is not the pooled variance, nor replica 0's.
    pooled = np_batch_stats(x)[1]
    assert np.abs(pooled - (stats[0][1] + stats[1][1]) / 2).min() > 0.5
    assert np.abs(stats[0][1] - stats[1][1]).min() > 1.0


# ------------------------------------------------------------------ kernel initialiser moments

def check_init_moments(w, name, fan_in):
    """Sample moments of kernel `w` against the initializer `name`'s stated distribution.

    'haiku': TruncNormal(0, s) cut at +-2s, s = 1/sqrt(fan_in), realised std s * truncnorm(-2,2).std();
    'keras': the same with s = 1/sqrt(fan_in)/truncnorm(-2,2).std(), realised std 1/sqrt(fan_in);
    'normal': N(0, 0.01^2), no truncation (about 4.55% of draws beyond 2 sd).
    Tolerances are 5 standard errors for n = w.size draws: the mean's SE is std/sqrt(n), the
    sample std's relative SE is at most sqrt(1/(2n)) (the normal's; the truncated normal has lighter
    tails), a tail fraction's SE is sqrt(p(1-p)/n).
    """
    from scipy import stats
    w = np.asarray(w, np.float64).ravel()
    n = w.size
    trunc_std = stats.truncnorm(-2, 2).std()
    if name == "haiku":
        s, realised = 1 / math.sqrt(fan_in), trunc_std / math.sqrt(fan_in)
    elif name == "keras":
        s, realised = 1 / math.sqrt(fan_in) / trunc_std, 1 / math.sqrt(fan_in)
    else:
        s = realised = 0.01
    assert abs(w.mean()) < 5 * realised / math.sqrt(n), (name, w.mean())
    assert abs(w.std() / realised - 1) < 5 * math.sqrt(1 / (2 * n)), (name, w.std(), realised)
    tail = np.mean(np.abs(w) > 2 * s)
    if name == "normal":
        p = 2 * stats.norm.sf(2)
        assert abs(tail - p) < 5 * math.sqrt(p * (1 - p) / n), (name, tail)
    else:
        assert tail == 0.0 and np.abs(w).max() <= 2 * s * (1 + 1e-6), (name, np.abs(w).max(), s)


@pytest.mark.parametrize("name", ["haiku", "keras", "normal"])
def test_dense_initializers_match_their_distributions(name):
    tf.random.set_seed(5)
    dense = layers.Dense(300, 200, kernel_init=layers.initializer(name))
    check_init_moments(dense.w.numpy(), name, 300)
    # The three differ by far more than the tolerances: the check tells them apart.
    for other in {"haiku", "keras", "normal"} - {name}:
        with pytest.raises(AssertionError):
            check_init_moments(dense.w.numpy(), other, 300)
