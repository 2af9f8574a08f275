"""Offline linear evaluation: the objective's gradient, the optimum, and the protocol end to end."""
import numpy as np

from common import linear_eval


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
