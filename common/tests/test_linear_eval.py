"""Offline linear evaluation: the objective's gradient, the optimum, and the protocol end to end."""
import numpy as np

from common.evaluation import linear_eval


def _data(n=600, f=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, f))
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(0, 1, (n, f))
    return x, y


def test_gradient_matches_finite_differences():
    x, y = _data(n=50)
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    onehot = np.eye(3)[y]
    w = np.random.default_rng(1).normal(0, 0.1, xb.shape[1] * 3)
    _, g = linear_eval._loss_and_grad(w, xb, onehot, 0.01)
    eps = 1e-6
    num = np.array([(linear_eval._loss_and_grad(w + eps * e, xb, onehot, 0.01)[0]
                     - linear_eval._loss_and_grad(w - eps * e, xb, onehot, 0.01)[0]) / (2 * eps)
                    for e in np.eye(len(w))])
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_loss_is_softmax_cross_entropy_plus_l2_without_bias():
    x, y = _data(n=20)
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.random.default_rng(2).normal(0, 0.5, (xb.shape[1], 3))
    logits = xb @ w
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.5 * 0.1 * (w[:-1] ** 2).sum()
    loss, _ = linear_eval._loss_and_grad(w.ravel(), xb, np.eye(3)[y], 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_fit_reaches_a_stationary_point():
    x, y = _data()
    w = linear_eval.fit_logistic_regression(x, y, 3, l2=1e-2)
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    _, g = linear_eval._loss_and_grad(w.ravel(), xb, np.eye(3)[y], 1e-2)
    assert np.abs(g).max() < 1e-4


def test_probe_separates_separable_classes_and_fails_on_noise():
    x, y = _data(n=1000)
    r = linear_eval.linear_probe(x[:800], y[:800], x[800:], y[800:], 3)
    assert r["test_accuracy"] > 0.95
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(1000, 5))
    r = linear_eval.linear_probe(noise[:800], y[:800], noise[800:], y[800:], 3)
    assert r["test_accuracy"] < 0.5  # chance is 1/3: labels carry no signal here


def _newton_optimum(xb, y, k, l2, iters=60):
    """The exact minimiser of the same objective by Newton's method in float64 (the oracle):
    H = mean_i kron(x_i x_i^T, diag(p_i) - p_i p_i^T) + l2 (bias row unpenalised). H is singular
    along a shift of every class's bias by the same amount (the softmax ignores it), so the step
    is the least-squares one."""
    n, f1 = xb.shape
    onehot = np.eye(k)[y]
    mask = np.ones((f1, k))
    mask[-1] = 0.0
    w = np.zeros((f1, k))
    for _ in range(iters):
        logits = xb @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = xb.T @ (p - onehot) / n + l2 * mask * w
        h = np.zeros((f1 * k, f1 * k))
        for i in range(n):
            h += np.kron(np.outer(xb[i], xb[i]), np.diag(p[i]) - np.outer(p[i], p[i]))
        h = h / n + l2 * np.diag(mask.ravel())
        w = w - np.linalg.lstsq(h, grad.ravel(), rcond=None)[0].reshape(f1, k)
    return w


def test_whitening_is_an_invertible_change_of_variables():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    p, p_inv = linear_eval.whitening(x)
    np.testing.assert_allclose(p @ p_inv, np.eye(5), atol=1e-10)
    z = x @ p[:4, :4]  # whitened features: identity second moment
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(4), atol=1e-10)
    # Constant (dead) and duplicated features keep P finite and invertible.
    dead = np.concatenate([x, np.zeros((500, 1)), x[:, :1]], axis=1)
    p, p_inv = linear_eval.whitening(dead)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p @ p_inv, np.eye(7), atol=1e-8)


def test_fit_reaches_the_newton_optimum_on_collinear_features():
    """Nearly collinear and dead features, as an encoder's are: the whitened L-BFGS fit lands on
    the float64 Newton minimiser of the same objective."""
    rng = np.random.default_rng(6)
    x, y = _data(n=400, f=3, k=3, seed=7)
    x = np.concatenate([x, x[:, :1] + 1e-3 * rng.normal(size=(400, 1)), np.zeros((400, 1))], 1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    want = _newton_optimum(xb, y, 3, l2=1e-3)
    got = linear_eval.fit_logistic_regression(x, y, 3, l2=1e-3, max_iter=500)
    onehot = np.eye(3)[y]
    f_got = linear_eval._loss_and_grad(got.ravel(), xb, onehot, 1e-3)[0]
    f_want = linear_eval._loss_and_grad(want.ravel(), xb, onehot, 1e-3)[0]
    assert 0 <= f_got - f_want < 1e-7 * f_want
    for w in (got, want):
        w[-1] -= w[-1].mean()  # the bias is defined up to a shift common to every class
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
