"""Tests of common.evaluation.knn against a numpy brute force: the full similarity matrix, a stable
argsort (ties to the smaller bank index), and the weighted votes exp(s / T) summed per class."""
import numpy as np
import pytest
import tensorflow as tf

from common.evaluation import knn


def _brute_force(query, bank, labels, num_classes, k, temperature):
    """float64 oracle: (scores [Q, C], neighbour indices [Q, k])."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ b.astype(np.float64).T
    k = min(k, len(bank))
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(query), num_classes))
    for r in range(len(query)):
        for i in order[r]:
            scores[r, labels[i]] += np.exp(sim[r, i] / temperature)
    return scores, order


def _data(seed, q=7, n=53, d=5, c=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(q, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32),
            rng.integers(0, c, n).astype(np.int32))


@pytest.mark.parametrize("chunk", [1, 7, 53, 64, 1000])  # 7 does not divide N = 53; 53 does
@pytest.mark.parametrize("k", [1, 10, 53])
def test_scores_match_brute_force_for_any_chunk(chunk, k):
    query, bank, labels = _data(0)
    want, order = _brute_force(query, bank, labels, 4, k, 0.07)
    got = knn.knn_predict(query, bank, labels, 4, k=k, temperature=0.07, bank_chunk=chunk).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-4)
    _, idx = knn.top_k_neighbours(query, bank, k, chunk)
    np.testing.assert_array_equal(idx.numpy(), order)


def test_defaults_are_k_200_and_temperature_0_07():
    query, bank, labels = _data(1, n=300)
    want, _ = _brute_force(query, bank, labels, 4, 200, 0.07)
    np.testing.assert_allclose(knn.knn_predict(query, bank, labels, 4).numpy(), want, rtol=2e-4)
    assert (knn.KNNConfig().k, knn.KNNConfig().temperature) == (200, 0.07)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_ties_go_to_the_smaller_bank_index_whatever_the_chunk(chunk):
    # Bank rows 0..5 are the same two directions, three copies each: every similarity is tied.
    bank = np.array([[1, 0], [0, 1], [2, 0], [0, 3], [1, 0], [0, 1]], np.float32)
    labels = np.array([0, 1, 2, 3, 4, 5], np.int32)
    query = np.array([[1, 0], [0, 1]], np.float32)
    _, idx = knn.top_k_neighbours(query, bank, 2, chunk)
    np.testing.assert_array_equal(idx.numpy(), [[0, 2], [1, 3]])
    scores = knn.knn_predict(query, bank, labels, 6, k=2, bank_chunk=chunk).numpy()
    e = np.exp(1 / 0.07)
    np.testing.assert_allclose(scores, [[e, 0, e, 0, 0, 0], [0, e, 0, e, 0, 0]], rtol=1e-5)


def test_k_larger_than_the_bank_uses_every_entry():
    query, bank, labels = _data(2, n=9)
    want, _ = _brute_force(query, bank, labels, 4, 9, 0.5)
    got = knn.knn_predict(query, bank, labels, 4, k=200, temperature=0.5, bank_chunk=4).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert knn.effective_k(200, 9) == 9
    with pytest.raises(ValueError, match="empty"):
        knn.effective_k(5, 0)


def test_hand_computed_vote():
    # Query along x; neighbours at angles 0 (label 1), 60 deg (label 0), 90 deg (label 1); k=2.
    bank = np.array([[3, 0], [0.5, np.sqrt(3) / 2], [0, 1]], np.float32)
    scores = knn.knn_predict(np.array([[2.0, 0.0]], np.float32), bank, np.array([1, 0, 1]), 2,
                             k=2, temperature=0.5).numpy()
    np.testing.assert_allclose(scores, [[np.exp(0.5 / 0.5), np.exp(1 / 0.5)]], rtol=1e-6)


def test_top_k_correct_against_stable_argsort():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(50, 8)).astype(np.float32)  # many ties
    labels = rng.integers(0, 8, 50)
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 5, 20):
        want = np.array([labels[r] in order[r, :k] for r in range(50)])
        np.testing.assert_array_equal(knn.top_k_correct(scores, labels, k).numpy(), want)


def test_knn_eval_drops_padding_and_matches_brute_force_accuracy():
    rng = np.random.default_rng(4)
    c, d = 5, 6
    centres = rng.normal(size=(c, d)) * 2
    def make(n, with_mask):
        y = rng.integers(0, c, n).astype(np.int32)
        x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
        mask = np.ones(n, np.float32)
        if with_mask:  # three rows of padding with a misleading label
            x = np.concatenate([x, np.zeros((3, d), np.float32)])
            y = np.concatenate([y, np.zeros(3, np.int32)])
            mask = np.concatenate([mask, np.zeros(3, np.float32)])
        ds = {"image": x, "label": y}
        if with_mask:
            ds["mask"] = mask
        return x[:n], y[:n], tf.data.Dataset.from_tensor_slices(ds).batch(16)
    trx, try_, train_ds = make(90, False)
    tex, tey, test_ds = make(37, True)
    w = rng.normal(size=(d, d)).astype(np.float32)
    encode = lambda x: tf.matmul(x, w)  # noqa: E731
    result = knn.knn_eval(encode, train_ds, test_ds, c, knn.KNNConfig(k=20, temperature=0.1,
                                                                     bank_chunk=32))
    scores, _ = _brute_force(tex @ w, trx @ w, try_, c, 20, 0.1)
    order = np.argsort(-scores, axis=1, kind="stable")
    assert result["top_1"] == pytest.approx(np.mean(order[:, 0] == tey))
    assert result["top_5"] == pytest.approx(np.mean([tey[r] in order[r, :5] for r in range(37)]))
    assert (result["k"], result["temperature"], result["num_train"], result["num_test"]) == (
        20, 0.1, 90, 37)
    assert 0.5 < result["top_1"] <= result["top_5"] == 1.0  # 5 classes: top-5 is everything
