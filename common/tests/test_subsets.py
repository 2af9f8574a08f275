"""Tests of common.evaluation.subsets and of DataConfig.train_indices in the training pipelines:
class balance against hand counts, the seeded order against a pure-Python SplitMix64, nesting,
the file-name mapping, Fashion-MNIST's 1% subset, and pipelines that stream only (and all of) the
subset, resumably and over several input pipelines."""
import os

import numpy as np
import pytest
import tensorflow as tf

from common.data import augment
from common.data import datasets as data
from common.evaluation import subsets

_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(data.fashion_mnist_dir(), f)) for f in _FILES),
    reason="Fashion-MNIST IDX files missing: apt-get install dataset-fashion-mnist")

_M = (1 << 64) - 1


def _py_mix(x):
    x &= _M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M
    return x ^ (x >> 31)


def _py_subset(labels, fraction, seed):
    """Oracle in Python integers: per class, the round-half-up share of the smallest keys."""
    base = _py_mix(seed)
    key = [_py_mix(base + 0x9E3779B97F4A7C15 * (i + 1)) for i in range(len(labels))]
    out = []
    for c in sorted(set(labels)):
        members = sorted((key[i], i) for i in range(len(labels)) if labels[i] == c)
        m = min(len(members), max(1, int(fraction * len(members) + 0.5)))
        out += [i for _, i in members[:m]]
    return sorted(out)


def _labels():
    # Class sizes 100, 250, 7, 1, 35 (class 5 absent), interleaved.
    labels = np.repeat([0, 1, 2, 3, 4], [100, 250, 7, 1, 35])
    return np.random.default_rng(0).permutation(labels)


def test_class_counts_are_the_rounded_share_with_at_least_one():
    labels = _labels()
    for fraction, want in ((0.1, [10, 25, 1, 1, 4]), (0.01, [1, 3, 1, 1, 1]),  # 2.5 -> 3
                           (0.5, [50, 125, 4, 1, 18]), (1.0, [100, 250, 7, 1, 35])):
        idx = subsets.balanced_subset(labels, fraction, seed=3)
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=5), want)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique
        assert idx.min() >= 0 and idx.max() < len(labels)


def test_seeded_order_matches_a_pure_python_splitmix_oracle():
    labels = _labels()
    for seed in (0, 1, 12345, 2**40 + 7):
        np.testing.assert_array_equal(subsets.balanced_subset(labels, 0.1, seed),
                                      _py_subset(list(labels), 0.1, seed))


def test_deterministic_nested_and_seed_dependent():
    labels = _labels()
    a, b = subsets.balanced_subset(labels, 0.1, 7), subsets.balanced_subset(labels, 0.1, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, subsets.balanced_subset(labels, 0.1, 8))
    small = subsets.balanced_subset(labels, 0.01, 7)
    assert set(small) < set(a) < set(subsets.balanced_subset(labels, 0.5, 7))
    with pytest.raises(ValueError, match="fraction"):
        subsets.balanced_subset(labels, 0.0, 7)


@needs_fashion_mnist
def test_one_percent_of_fashion_mnist_train_is_600_with_60_per_class():
    cfg = data.DataConfig()
    labels = subsets.split_labels(cfg)
    np.testing.assert_array_equal(labels, data.load_fashion_mnist("train")[1])
    idx = subsets.balanced_subset(labels, 0.01, seed=0)
    assert len(idx) == 600 and len(np.unique(idx)) == 600
    np.testing.assert_array_equal(np.bincount(labels[idx]), [60] * 10)
    assert idx.min() >= 0 and idx.max() < 60000
    assert len(subsets.balanced_subset(labels, 0.1, seed=0)) == 6000


def test_subset_file_and_file_name_mapping(tmp_path):
    path = tmp_path / "1percent.txt"
    path.write_text("n01440764_10026.JPEG\n  n01443537_2.JPEG \n\nn01440764_7.JPEG\n")
    names = subsets.read_subset_file(str(path))
    assert names == ["n01440764_10026.JPEG", "n01443537_2.JPEG", "n01440764_7.JPEG"]
    split = [b"n01443537_9.JPEG", b"n01440764_7.JPEG", b"n01440764_10026.JPEG", b"x.JPEG",
             b"n01443537_2.JPEG"]
    np.testing.assert_array_equal(subsets.indices_for_file_names(names, split), [1, 2, 4])
    with pytest.raises(ValueError, match="not in the split"):
        subsets.indices_for_file_names(names + ["missing.JPEG"], split)
    (tmp_path / "dup.txt").write_text("a.JPEG\na.JPEG\n")
    with pytest.raises(ValueError, match="more than once"):
        subsets.read_subset_file(str(tmp_path / "dup.txt"))


def test_train_indices_are_normalised_and_checked():
    cfg = data.DataConfig(train_indices=np.array([5, 1, 3]))
    assert cfg.train_indices == (1, 3, 5) and data.train_examples(cfg) == 3
    assert subsets.with_subset(data.DataConfig(), [4, 2]).train_indices == (2, 4)
    for bad in ([1, 1], [-1, 2], [], [0.5], [[1, 2]]):
        with pytest.raises(data.DataError):
            data.DataConfig(train_indices=bad)


def _raw_rows(split_images, idx):
    return split_images[idx, :, :, 0].astype(np.float64)


def _match(images, raw):
    """Index into raw [M, 28, 28] of each image [n, 28, 28, 3] (unaugmented, x 255)."""
    rows = images[..., 0].astype(np.float64) * 255.0
    dist = np.abs(rows[:, None] - raw[None]).max(axis=(2, 3))
    match = dist.argmin(axis=1)
    assert np.all(dist[np.arange(len(rows)), match] < 1e-3)
    return match


@needs_fashion_mnist
def test_pipeline_streams_exactly_the_subset_each_epoch_and_resumes():
    images, labels = data.load_fashion_mnist("train")
    idx = subsets.balanced_subset(labels[:400], 0.06, seed=1)  # 24 of train[:400]
    assert len(idx) == 24
    cfg = data.DataConfig(train_split="train[:400]", image_size=28, shuffle_buffer=24,
                          train_indices=idx)
    aug = augment.simclr_config(28)
    it = iter(data.linear_train_dataset(cfg, aug, 8, augment=False))
    batches = [next(it) for _ in range(6)]  # two epochs of 24
    for epoch in (batches[:3], batches[3:]):
        got = np.concatenate([b["image"].numpy() for b in epoch])
        match = _match(got, _raw_rows(images, idx))
        assert sorted(match) == list(range(24))  # every subset example once, nothing else
        np.testing.assert_array_equal(np.concatenate([b["label"].numpy() for b in epoch]),
                                      labels[idx][match])
    # Augmented stream: a run started at step 4 continues the uninterrupted one exactly.
    full = iter(data.linear_train_dataset(cfg, aug, 8))
    full = [next(full) for _ in range(6)]
    resumed = iter(data.linear_train_dataset(cfg, aug, 8, start_step=4))
    for want in full[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"].numpy(), want["image"].numpy())
        np.testing.assert_array_equal(got["label"].numpy(), want["label"].numpy())


def test_split_positions_of_pipeline_shares_of_a_sum_of_splits():
    source = data._open_source(data.DataConfig())
    # Each part is divided on its own: train[:10] -> [0,5), [5,10); test[:6] -> [0,3), [3,6).
    np.testing.assert_array_equal(data._split_positions(source, "train[:10]+test[:6]", 0, 2),
                                  [0, 1, 2, 3, 4, 10, 11, 12])
    np.testing.assert_array_equal(data._split_positions(source, "train[:10]+test[:6]", 1, 2),
                                  [5, 6, 7, 8, 9, 13, 14, 15])


@needs_fashion_mnist
def test_two_input_pipelines_together_stream_the_subset():
    images, labels = data.load_fashion_mnist("train")
    test_images, _ = data.load_fashion_mnist("test")
    split = "train[:40]+test[:20]"
    pool = np.concatenate([images[:40], test_images[:20]])
    idx = np.array([0, 3, 17, 22, 25, 39, 40, 45, 52, 59])
    cfg = data.DataConfig(train_split=split, image_size=28, shuffle_buffer=10, train_indices=idx)
    aug = augment.simclr_config(28)
    seen = []
    for i in (0, 1):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                         num_replicas_in_sync=2)
        # Pipeline 0 holds train[0:20], test[0:10]: subset rows 0, 3, 17, 40, 45 (five).
        batch = next(iter(data.linear_train_dataset(cfg, aug, 10, ctx, augment=False)))
        seen += list(idx[_match(batch["image"].numpy(), _raw_rows(pool, idx))])
    assert sorted(seen) == sorted(idx)
    with pytest.raises(data.DataError, match="has 60 examples"):
        next(iter(data.linear_train_dataset(
            data.DataConfig(train_split=split, image_size=28, train_indices=[60]), aug, 2)))
