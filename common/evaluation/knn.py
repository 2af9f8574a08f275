"""Weighted k-nearest-neighbour classification of frozen features (the instance-discrimination kNN).

Following Wu et al. 2018 ("Unsupervised feature learning via non-parametric instance
discrimination", the kNN monitor used since by most self-supervised papers), a query q is
classified by its k most similar training features under cosine similarity, each voting for its
own label with weight exp(s / T):

    s_i = <q / ||q||, x_i / ||x_i||>                    (cosine similarity to bank entry i)
    N_k(q) = the k indices i with the largest s_i       (ties: the smaller bank index first)
    score_c(q) = sum_{i in N_k(q)} [y_i = c] exp(s_i / T)
    prediction = argmax_c score_c(q)                    (ties: the smaller class index)

Defaults k = 200, T = 0.07 (Wu et al.'s values). When the bank holds fewer than k entries, every
entry votes: k is clamped to N (`effective_k`), and `knn_eval` reports the k actually used.

Memory: the bank [N, D] is visited in chunks of `bank_chunk` rows; each chunk's similarities
[Q, chunk] are merged into a running top-k [Q, k] (values and bank indices), so besides the bank
itself the working memory is O(Q * (chunk + k)), never O(Q * N). The merge keeps the running
entries (all from earlier chunks, hence smaller bank indices) before the chunk's, and
`tf.math.top_k` keeps the earlier of equal values, so the selected neighbours and their order do
not depend on the chunk size.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class KNNConfig:
    """k: neighbours that vote (clamped to the bank size); temperature: T of the vote weights
    exp(s / T); bank_chunk: bank rows compared with the queries at once (memory O(Q * chunk))."""
    k: int = 200
    temperature: float = 0.07
    bank_chunk: int = 65536

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"KNNConfig.k must be a positive int, got {self.k!r}.")
        if not self.temperature > 0:
            raise ValueError(f"KNNConfig.temperature must be > 0, got {self.temperature!r}.")
        if not isinstance(self.bank_chunk, int) or self.bank_chunk < 1:
            raise ValueError(f"KNNConfig.bank_chunk must be a positive int, got {self.bank_chunk!r}.")


def effective_k(k: int, bank_size: int) -> int:
    """min(k, N): the number of neighbours that vote in a bank of N entries."""
    if bank_size < 1:
        raise ValueError("The kNN bank is empty; it needs at least one training feature.")
    return min(int(k), int(bank_size))


def top_k_neighbours(query: tf.Tensor, bank: tf.Tensor, k: int,
                     bank_chunk: int = 65536) -> tuple[tf.Tensor, tf.Tensor]:
    """The k most cosine-similar bank rows of every query, streamed over the bank.

    query [Q, D], bank [N, D] (any scale; both are l2-normalised here), k <= N.
    Returns (similarities [Q, k] float32, descending; bank indices [Q, k] int32), ties broken by
    the smaller bank index, independently of `bank_chunk`.
    """
    n = int(bank.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must lie in [1, N={n}]; use effective_k(k, N).")
    q = tf.math.l2_normalize(tf.cast(query, tf.float32), axis=-1)
    num_queries = tf.shape(q)[0]
    best_sim = tf.zeros([num_queries, 0], tf.float32)
    best_idx = tf.zeros([num_queries, 0], tf.int32)
    for start in range(0, n, bank_chunk):
        chunk = tf.math.l2_normalize(tf.cast(bank[start:start + bank_chunk], tf.float32), axis=-1)
        sim = tf.matmul(q, chunk, transpose_b=True)  # [Q, c]
        idx = tf.broadcast_to(tf.range(start, start + int(chunk.shape[0]), dtype=tf.int32),
                              tf.shape(sim))
        # Running entries first: equal similarities keep the smaller bank index.
        cand_sim = tf.concat([best_sim, sim], axis=1)
        cand_idx = tf.concat([best_idx, idx], axis=1)
        keep = min(k, int(best_sim.shape[1]) + int(chunk.shape[0]))
        best_sim, pos = tf.math.top_k(cand_sim, k=keep, sorted=True)
        best_idx = tf.gather(cand_idx, pos, batch_dims=1)
    return best_sim, best_idx


def knn_predict(query: tf.Tensor, bank: tf.Tensor, bank_labels: tf.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.07, bank_chunk: int = 65536) -> tf.Tensor:
    """Class scores [Q, C] of the weighted kNN vote (module docstring).

    query [Q, D], bank [N, D] (l2-normalised here), bank_labels [N] ints in [0, C).
    score[q, c] = sum over the min(k, N) nearest bank rows i of q with label c of exp(s_qi / T).
    """
    k = effective_k(k, int(bank.shape[0]))
    sim, idx = top_k_neighbours(query, bank, k, bank_chunk)
    labels = tf.gather(tf.cast(bank_labels, tf.int32), idx)  # [Q, k]
    weights = tf.exp(sim / tf.constant(temperature, tf.float32))
    num_queries = tf.shape(sim)[0]
    flat = tf.range(num_queries)[:, None] * num_classes + labels  # [Q, k] cell of (q, label)
    scores = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(flat, [-1]),
                                          num_queries * num_classes)
    return tf.reshape(scores, [num_queries, num_classes])


def top_k_correct(scores: tf.Tensor, labels: tf.Tensor, k: int) -> tf.Tensor:
    """bool [Q]: labels [Q] is among the k highest of scores [Q, C] (k clamped to C; equal scores
    rank the smaller class index first, as tf.math.top_k and argmax do)."""
    k = min(int(k), int(scores.shape[-1]))
    top = tf.math.top_k(scores, k=k, sorted=True).indices
    return tf.reduce_any(tf.equal(top, tf.cast(labels, tf.int32)[:, None]), axis=-1)


def extract_features(encode_fn, dataset) -> tuple[tf.Tensor, tf.Tensor]:
    """l2-normalised features [N, D] float32 and labels [N] int32 of every real example.

    dataset yields {'image', 'label'} or {'image', 'label', 'mask'} batches; rows with mask 0 (the
    padding of the last evaluation batch) are dropped. encode_fn(images) -> [B, D] must run the
    encoder in inference mode (e.g. `lambda x: encoder(x, training=False)`).
    """
    fn = tf.function(encode_fn)
    feats, labels = [], []
    for batch in dataset:
        f = tf.math.l2_normalize(tf.cast(fn(batch["image"]), tf.float32), axis=-1)
        y = tf.cast(batch["label"], tf.int32)
        if "mask" in batch:
            keep = tf.cast(batch["mask"], tf.float32) > 0
            f, y = tf.boolean_mask(f, keep), tf.boolean_mask(y, keep)
        feats.append(f)
        labels.append(y)
    if not feats:
        raise ValueError("The dataset yielded no batch.")
    return tf.concat(feats, 0), tf.concat(labels, 0)


def knn_eval(encode_fn, train_dataset, test_dataset, num_classes: int,
             cfg: KNNConfig = KNNConfig()) -> dict:
    """kNN top-1/top-5 accuracy of an encoder: the bank is `train_dataset`'s features, the queries
    `test_dataset`'s, classified one test batch at a time (datasets as in `extract_features`).

    Returns {'top_1', 'top_5', 'k' (the k used: min(cfg.k, num_train)), 'temperature',
    'num_train', 'num_test'}.
    """
    bank, bank_labels = extract_features(encode_fn, train_dataset)
    n = int(bank.shape[0])
    k = effective_k(cfg.k, n)
    predict = tf.function(lambda q: knn_predict(q, bank, bank_labels, num_classes, k,
                                                cfg.temperature, cfg.bank_chunk))
    fn = tf.function(encode_fn)
    correct = np.zeros(2, np.int64)
    count = 0
    for batch in test_dataset:
        q = fn(batch["image"])
        y = tf.cast(batch["label"], tf.int32)
        if "mask" in batch:
            keep = tf.cast(batch["mask"], tf.float32) > 0
            q, y = tf.boolean_mask(q, keep), tf.boolean_mask(y, keep)
        if int(tf.shape(y)[0]) == 0:
            continue
        scores = predict(q)
        correct += [int(tf.reduce_sum(tf.cast(top_k_correct(scores, y, t), tf.int64)))
                    for t in (1, 5)]
        count += int(tf.shape(y)[0])
    if count == 0:
        raise ValueError("The test dataset holds no real example.")
    return {"top_1": correct[0] / count, "top_5": correct[1] / count, "k": k,
            "temperature": float(cfg.temperature), "num_train": n, "num_test": count}
