"""common.training.optim against DeepMind's LARS (golden group c), the reference's parameter mask and
float64 numpy re-derivations of the release LARS, SGD momentum and Adam."""
import os

import numpy as np
import pytest
import tensorflow as tf

from common.training import optim
from common import testing

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "golden")
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(GOLDEN_DIR, "byol_golden.npz")) as z:
        return {k: z[k] for k in z.files if k.startswith("c/")}


def leaf_keys(golden):
    """Haiku leaf paths '<module>/<param>' of the group-c tree, e.g. 'net/~/linear/b'."""
    return sorted(k[len("c/params0/"):] for k in golden if k.startswith("c/params0/"))


def tf_name(haiku_path):
    """'net/~/batchnorm/scale' -> 'net/batchnorm/scale', the module path our TF modules produce."""
    return haiku_path.replace("/~/", "/")


def make_variables(golden, keys):
    return [tf.Variable(golden[f"c/params0/{k}"], name=tf_name(k)) for k in keys]


# ---------------------------------------------------------------------------------------------
# exclusion rules
# ---------------------------------------------------------------------------------------------
def test_exclude_bias_and_norm_matches_golden_filter_mask(golden):
    for k in leaf_keys(golden):
        want_included = bool(golden[f"c/filter_mask/{k}"])
        assert (not optim.exclude_bias_and_norm(tf_name(k))) == want_included, k
        assert (not optim.exclude_bias_and_norm(k)) == want_included, k
        assert (not optim.exclude_bias_and_norm(tf_name(k) + ":0")) == want_included, k


def test_exclude_bias_and_norm_matches_reference_resnet50_tree():
    n_included = n_excluded = 0
    with open(os.path.join(GOLDEN_DIR, "byol_r50_param_tree.txt")) as f:
        for line in f:
            if not line.startswith("param "):
                continue
            fields = line.split()
            module, param, flag = fields[1], fields[2], fields[-1]
            want_included = flag == "wd_lars=True"
            assert (not optim.exclude_bias_and_norm(f"{tf_name(module)}/{param}:0")) == want_included
            n_included += want_included
            n_excluded += not want_included
    assert (n_included, n_excluded) == (58, 113)


def test_release_patterns():
    # Batch norm and biases only: the optimizer knows no module names (the probe is handed over
    # as variables, target networks are never given to it).
    excluded = ["resnet/block_0/batchnorm_1/scale:0", "resnet/initial_batchnorm/offset:0",
                "projector/linear/b:0", "probe/b:0", "head/bias:0"]
    included = ["resnet/block_0/conv_1/w:0", "projector/linear/w:0", "predictor/linear_1/w:0",
                "resnet/initial_conv/w:0", "probe/w:0", "target_encoder/conv/w:0",
                "online_ema/w:0"]
    spec = optim._excluder(optim.RELEASE_EXCLUDE_PATTERNS, "test")
    for name in excluded:
        assert spec(name), name
    for name in included:
        assert not spec(name), name


# ---------------------------------------------------------------------------------------------
# DeepMind LARS: golden group c
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["real", "big"])
@pytest.mark.parametrize("use_mask", [True, False])
def test_lars_deepmind_matches_golden(golden, variant, use_mask):
    keys = leaf_keys(golden)
    wd, eta, momentum, lr1, lr2 = (float(x) for x in golden[f"c/{variant}/hparams"])
    variables = make_variables(golden, keys)
    mask = [bool(golden[f"c/filter_mask/{k}"]) for k in keys] if use_mask else None
    opt = optim.LARS(variables, momentum=momentum, weight_decay=wd, eta=eta, include_mask=mask)
    assert opt.decay_mask == opt.adapt_mask == [bool(golden[f"c/filter_mask/{k}"]) for k in keys]

    @tf.function
    def step(grads, lr):
        opt.apply_gradients(grads, lr)

    for i, lr in [(1, lr1), (2, lr2)]:
        step([tf.constant(golden[f"c/grads{i}/{k}"]) for k in keys], tf.constant(lr, tf.float32))
        for j, k in enumerate(keys):
            np.testing.assert_allclose(opt.momentum[j].numpy(), golden[f"c/{variant}/mu{i}/{k}"],
                                       rtol=RTOL, atol=ATOL, err_msg=f"mu{i} {k}")
            np.testing.assert_allclose(variables[j].numpy(), golden[f"c/{variant}/params{i}/{k}"],
                                       rtol=RTOL, atol=ATOL, err_msg=f"params{i} {k}")
    assert int(opt.iterations.numpy()) == 2


def test_build_optimizer_lars_matches_golden_eagerly(golden):
    keys = leaf_keys(golden)
    wd, eta, momentum, lr1, _ = (float(x) for x in golden["c/big/hparams"])
    variables = make_variables(golden, keys)
    opt = optim.build_optimizer(
        "lars", variables, optim.OptimConfig(momentum=momentum, weight_decay=wd, eta=eta))
    opt.apply_gradients([golden[f"c/grads1/{k}"] for k in keys], lr1)
    for j, k in enumerate(keys):
        np.testing.assert_allclose(variables[j].numpy(), golden[f"c/big/params1/{k}"],
                                   rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# float64 re-derivations
# ---------------------------------------------------------------------------------------------
def numpy_lars(params, grads_seq, lrs, mask, wd, eta, m, form, adapt_mask=None):
    """LARS in float64; `mask` says who gets weight decay, `adapt_mask` (default: mask) who gets
    the trust ratio."""
    adapt_mask = mask if adapt_mask is None else adapt_mask
    p = [x.astype(np.float64) for x in params]
    buf = [np.zeros_like(x) for x in p]
    for grads, lr in zip(grads_seq, lrs):
        for i, g in enumerate(grads):
            g = g.astype(np.float64) + (wd * p[i] if mask[i] else 0.0)
            pn, gn = np.linalg.norm(p[i]), np.linalg.norm(g)
            tr = eta * pn / gn if (adapt_mask[i] and pn > 0 and gn > 0) else 1.0
            if form == "deepmind":
                buf[i] = m * buf[i] + tr * g
                p[i] = p[i] - lr * buf[i]
            else:
                buf[i] = m * buf[i] + lr * tr * g
                p[i] = p[i] - buf[i]
    return p, buf


def random_problem(seed, n_steps):
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 2, 4), (4, 3), (3,), (1, 1, 1, 3), (5, 3)]
    names = ["net/conv/w", "net/linear/w", "net/linear/b", "net/batchnorm/scale", "net/zero/w"]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params[-1][:] = 0.0  # the ||p|| = 0 branch
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n_steps)]
    return names, params, grads


@pytest.mark.parametrize("form", ["release", "deepmind"])
def test_lars_forms_against_float64(form):
    names, params, grads = random_problem(0, 3)
    lrs = [0.5, 0.3, 0.1]  # a changing lr is where the two forms differ
    variables = [tf.Variable(p, name=n) for p, n in zip(params, names)]
    opt = optim.build_optimizer("lars", variables, optim.OptimConfig(
        weight_decay=0.1, eta=0.02, momentum=0.9, lars_form=form),
        exclude_from_weight_decay=optim.exclude_bias_and_norm,
        exclude_from_adaptation=optim.exclude_bias_and_norm)
    for g, lr in zip(grads, lrs):
        opt.apply_gradients(g, lr)
    mask = [True, True, False, False, True]
    want_p, want_buf = numpy_lars(params, grads, lrs, mask, 0.1, 0.02, 0.9, form)
    for j in range(len(names)):
        np.testing.assert_allclose(variables[j].numpy(), want_p[j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.momentum[j].numpy(), want_buf[j], rtol=1e-5, atol=1e-6)
    other = "deepmind" if form == "release" else "release"
    other_p, _ = numpy_lars(params, grads, lrs, mask, 0.1, 0.02, 0.9, other)
    assert np.abs(other_p[0] - want_p[0]).max() > 1e-3  # the test tells the forms apart


def test_build_optimizer_release_uses_release_patterns():
    names, params, _ = random_problem(1, 1)
    names = ["resnet/conv/w", "probe/w", "probe/b", "resnet/batchnorm/scale", "projector/linear/w"]
    opt = optim.build_optimizer("lars", [tf.Variable(p, name=n) for p, n in zip(params, names)],
                                optim.OptimConfig(lars_form="release"))
    assert opt.decay_mask == opt.adapt_mask == [True, True, False, False, True]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_against_float64(nesterov):
    names, params, grads = random_problem(2, 3)
    lrs = [0.4, 0.2, 0.1]
    wd, m = 0.05, 0.9
    variables = [tf.Variable(p, name=n) for p, n in zip(params, names)]
    opt = optim.build_optimizer("momentum" if nesterov else "sgd", variables,
                                optim.OptimConfig(momentum=m, weight_decay=wd, nesterov=nesterov))
    step = tf.function(opt.apply_gradients)
    for g, lr in zip(grads, lrs):
        step([tf.constant(x) for x in g], tf.constant(lr))
    mask = [True, True, False, False, True]
    p = [x.astype(np.float64) for x in params]
    buf = [np.zeros_like(x) for x in p]
    for g_list, lr in zip(grads, lrs):
        for i, g in enumerate(g_list):
            g = g.astype(np.float64) + (wd * p[i] if mask[i] else 0.0)
            buf[i] = m * buf[i] + g
            p[i] = p[i] - lr * ((g + m * buf[i]) if nesterov else buf[i])
    for j in range(len(names)):
        np.testing.assert_allclose(variables[j].numpy(), p[j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.momentum[j].numpy(), buf[j], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_against_float64(wd):
    names, params, grads = random_problem(3, 3)
    lrs = [0.01, 0.02, 0.005]
    b1, b2, eps = 0.9, 0.99, 1e-6
    variables = [tf.Variable(p, name=n) for p, n in zip(params, names)]
    opt = optim.build_optimizer("adam", variables, optim.OptimConfig(
        adam_beta1=b1, adam_beta2=b2, adam_epsilon=eps, weight_decay=wd))
    for g, lr in zip(grads, lrs):
        opt.apply_gradients(g, lr)
    mask = [True, True, False, False, True]
    p = [x.astype(np.float64) for x in params]
    m1 = [np.zeros_like(x) for x in p]
    m2 = [np.zeros_like(x) for x in p]
    for t, (g_list, lr) in enumerate(zip(grads, lrs), start=1):
        for i, g in enumerate(g_list):
            g = g.astype(np.float64)
            m1[i] = b1 * m1[i] + (1 - b1) * g
            m2[i] = b2 * m2[i] + (1 - b2) * g * g
            upd = (m1[i] / (1 - b1**t)) / (np.sqrt(m2[i] / (1 - b2**t)) + eps)
            p[i] = p[i] - lr * (upd + (wd * p[i] if mask[i] else 0.0))
    for j in range(len(names)):
        np.testing.assert_allclose(variables[j].numpy(), p[j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.second_moment[j].numpy(), m2[j], rtol=1e-5, atol=1e-9)
    assert int(opt.iterations.numpy()) == 3


# ---------------------------------------------------------------------------------------------
# checkpointing, distribution, errors
# ---------------------------------------------------------------------------------------------
def test_slots_checkpoint_and_restore(tmp_path):
    names, params, grads = random_problem(4, 2)
    variables = [tf.Variable(p, name=n) for p, n in zip(params, names)]
    opt = optim.LARS(variables, weight_decay=0.1, eta=0.02)
    opt.apply_gradients(grads[0], 0.5)
    path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
    saved = [s.numpy() for s in opt.momentum]
    fresh = optim.LARS([tf.Variable(p) for p in params], weight_decay=0.1, eta=0.02)
    tf.train.Checkpoint(optimizer=fresh).restore(path).assert_consumed()
    for a, b in zip(fresh.momentum, saved):
        np.testing.assert_array_equal(a.numpy(), b)
    assert int(fresh.iterations.numpy()) == 1
    assert all(np.abs(s).max() > 0 for s in saved[:-1])


def test_mirrored_strategy_matches_single_device(golden):
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest.py must provide two logical CPUs"
    keys = leaf_keys(golden)
    wd, eta, momentum, lr1, lr2 = (float(x) for x in golden["c/big/hparams"])
    mask = [bool(golden[f"c/filter_mask/{k}"]) for k in keys]
    strategy = testing.two_replica_strategy()
    with strategy.scope():
        variables = make_variables(golden, keys)
        opt = optim.LARS(variables, momentum=momentum, weight_decay=wd, eta=eta, include_mask=mask)

    @tf.function
    def step(i, lr):
        def replica_fn():
            grads = [tf.constant(golden[f"c/grads{i}/{k}"]) for k in keys]
            opt.apply_gradients(grads, lr)
        strategy.run(replica_fn)

    step(1, tf.constant(lr1))
    step(2, tf.constant(lr2))
    for j, k in enumerate(keys):
        for component in strategy.experimental_local_results(variables[j]):
            np.testing.assert_allclose(component.numpy(), golden[f"c/big/params2/{k}"],
                                       rtol=RTOL, atol=ATOL)
        for component in strategy.experimental_local_results(opt.momentum[j]):
            np.testing.assert_allclose(component.numpy(), golden[f"c/big/mu2/{k}"],
                                       rtol=RTOL, atol=ATOL)
    assert [int(c.numpy()) for c in strategy.experimental_local_results(opt.iterations)] == [2, 2]


def test_bad_inputs_raise_clear_errors():
    v = [tf.Variable(tf.ones([2]), name="a/w"), tf.Variable(tf.ones([3]), name="a/b")]
    opt = optim.LARS(v)
    with pytest.raises(ValueError, match="gradient of variable a/w:0 is None"):
        opt.apply_gradients([None, tf.ones([3])], 0.1)
    with pytest.raises(ValueError, match="got 1 gradients for 2 variables"):
        opt.apply_gradients([tf.ones([2])], 0.1)
    with pytest.raises(ValueError, match="shape"):
        opt.apply_gradients([tf.ones([3]), tf.ones([3])], 0.1)
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'; choose one of"):
        optim.build_optimizer("rmsprop", v)
    with pytest.raises(ValueError, match="Unknown LARS form"):
        optim.LARS(v, form="keras")
    with pytest.raises(ValueError, match="include_mask has 1 entries for 2 variables"):
        optim.LARS(v, include_mask=[True])
    with pytest.raises(ValueError, match="appears twice"):
        optim.SGDMomentum([v[0], v[0]])


def _named(path, value):
    *scopes, leaf = path.split("/")
    if not scopes:
        return tf.Variable(value, name=leaf)
    with tf.name_scope(scopes[0]):
        return _named("/".join(scopes[1:] + [leaf]), value)


@pytest.mark.parametrize("form", ["deepmind", "release"])
def test_probe_excluded_from_adaptation_against_float64(form):
    """The probe as the release's supervised head, two LARS steps: its kernel gets plain momentum
    on g + wd W (the gradient of the release's wd/2 ||W||^2 term) with no trust ratio, its bias
    plain momentum on g (no decay, no trust ratio); every other variable as usual."""
    rng = np.random.default_rng(5)
    names = ["encoder/conv_0/w", "probe/linear/w", "probe/linear/b", "projector/batchnorm_0/scale",
             "projector/linear_0/w"]
    shapes = [(3, 3, 2, 4), (6, 3), (3,), (4,), (4, 5)]
    params = [rng.standard_normal(sh).astype(np.float32) for sh in shapes]
    grads = [[rng.standard_normal(sh).astype(np.float32) for sh in shapes] for _ in range(2)]
    lrs = [0.4, 0.2]
    wd, eta, m = 0.1, 0.02, 0.9
    vs = [_named(n, p) for n, p in zip(names, params)]
    opt = optim.build_optimizer(
        "lars", vs, optim.OptimConfig(weight_decay=wd, eta=eta, momentum=m, lars_form=form),
        excluded_from_adaptation=[vs[1], vs[2]])
    assert opt.decay_mask == [True, True, False, False, True]
    assert opt.adapt_mask == [True, False, False, False, True]
    for g, lr in zip(grads, lrs):
        opt.apply_gradients(g, lr)
    # Hand-written oracle for the probe: p1 = p0 - lr0 (g0 + wd p0) ... with v = m v + step.
    kernel, bias = params[1].astype(np.float64), params[2].astype(np.float64)
    vk = np.zeros_like(kernel)
    vb = np.zeros_like(bias)
    for g, lr in zip(grads, lrs):
        gk = g[1].astype(np.float64) + wd * kernel
        gb = g[2].astype(np.float64)
        if form == "deepmind":
            vk, vb = m * vk + gk, m * vb + gb
            kernel, bias = kernel - lr * vk, bias - lr * vb
        else:
            vk, vb = m * vk + lr * gk, m * vb + lr * gb
            kernel, bias = kernel - vk, bias - vb
    np.testing.assert_allclose(vs[1].numpy(), kernel, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vs[2].numpy(), bias, rtol=1e-6, atol=1e-6)
    want_p, want_buf = numpy_lars(params, grads, lrs, [True, True, False, False, True], wd, eta, m,
                                  form, adapt_mask=[True, False, False, False, True])
    for j in range(len(names)):
        np.testing.assert_allclose(vs[j].numpy(), want_p[j], rtol=1e-5, atol=1e-6, err_msg=names[j])
        np.testing.assert_allclose(opt.momentum[j].numpy(), want_buf[j], rtol=1e-5, atol=1e-6)
    # With the trust ratio the kernel would have moved by a different amount.
    adapted, _ = numpy_lars(params, grads, lrs, [True, True, False, False, True], wd, eta, m, form)
    assert np.abs(adapted[1] - kernel).max() > 1e-2


def test_excluded_from_adaptation_must_be_optimized_variables():
    vs = [tf.Variable(np.ones((2, 2), np.float32), name="a/w")]
    stranger = tf.Variable(np.ones((2, 2), np.float32), name="probe/w")
    for name in ("lars", "sgd", "adam"):
        with pytest.raises(ValueError, match="not among"):
            optim.build_optimizer(name, vs, optim.OptimConfig(), excluded_from_adaptation=[stranger])
    # The config flag alone changes nothing in the optimizer: the probe comes as variables.
    probe = _named("probe/linear/w", np.ones((2, 2), np.float32))
    opt = optim.build_optimizer("lars", [probe], optim.OptimConfig(exclude_probe=True))
    assert opt.decay_mask == opt.adapt_mask == [True]
