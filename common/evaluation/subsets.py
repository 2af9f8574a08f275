"""Few-label subsets for semi-supervised fine-tuning (1% and 10% of the labels).

Two sources of subsets, both giving example indices: positions 0..N-1 in a split's file order
(`common.data.datasets.read_in_file_order`), which `DataConfig.train_indices` takes so that the
training pipelines stream only those examples (`with_subset`):

  * `balanced_subset`: deterministic class-balanced subsets of any split from a seed. Class c with
    n_c examples contributes m_c = max(1, floor(fraction * n_c + 1/2)) examples (at most n_c): the
    first m_c of the class's examples ordered by a seeded 64-bit hash of (seed, index) (a seeded
    permutation that needs no random-number library, so it is the same on every numpy version).
    Subsets of one seed are NESTED: a smaller fraction takes a prefix of the same per-class
    orders, so the 1% subset lies inside the 10% subset. Different seeds give different subsets.
  * The published ImageNet subset files of the SimCLR release (1percent.txt, 10percent.txt: one
    image file name per line, e.g. 'n01440764_10026.JPEG'): `read_subset_file` reads them and
    `indices_for_file_names` maps the names to indices through the split's 'file_name' feature
    (`split_file_names`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import datasets

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 [n] (wrapping arithmetic): a bijection that scrambles bits.

    z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
    z ^ (z >> 31).
    """
    z = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def example_keys(num_examples: int, seed: int) -> np.ndarray:
    """uint64 [N]: key_i = mix64(mix64(seed) + golden * (i + 1)); sorting by key is the seeded
    permutation `balanced_subset` draws from (golden = 0x9E3779B97F4A7C15)."""
    base = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    i = np.arange(1, num_examples + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix64(base + i * np.uint64(0x9E3779B97F4A7C15))


def per_class_count(n_c: int, fraction: float) -> int:
    """m_c = min(n_c, max(1, floor(fraction * n_c + 1/2))): examples class c contributes."""
    return min(int(n_c), max(1, int(np.floor(fraction * n_c + 0.5))))


def balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of a class-balanced subset of the examples with `labels` [N] (ints).

    Each class present in `labels` contributes `per_class_count(n_c, fraction)` examples: those
    with the smallest `example_keys(N, seed)` among its members (ties, impossible in practice,
    to the smaller index). Deterministic in (labels, fraction, seed); nested in the fraction for a
    fixed seed. fraction must lie in (0, 1].
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}.")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}.")
    keys = example_keys(labels.size, seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[np.lexsort((members, keys[members]))]
        chosen.append(order[:per_class_count(members.size, fraction)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def read_subset_file(path: str) -> list[str]:
    """Image file names listed in a subset file, one per line, in file order (surrounding
    whitespace and blank lines ignored), e.g. the SimCLR release's 1percent.txt. Raises
    ValueError on a repeated name or an empty file."""
    with tf.io.gfile.GFile(path, "r") as f:
        names = [line.strip() for line in f]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path} lists no file name.")
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{path} lists {n!r} more than once.")
        seen.add(n)
    return names


def indices_for_file_names(names: Sequence[str], split_names: Sequence) -> np.ndarray:
    """Sorted int64 indices i with split_names[i] in `names`.

    split_names: the split's file names in file order (str or bytes; `split_file_names`). Every
    name of `names` must occur exactly once there; ValueError names the first missing ones.
    """
    split_names = [n.decode() if isinstance(n, bytes) else str(n) for n in split_names]
    where = {}
    for i, n in enumerate(split_names):
        if n in where:
            raise ValueError(f"The split holds file name {n!r} twice (indices {where[n]}, {i}).")
        where[n] = i
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(f"{len(missing)} of {len(names)} subset file names are not in the split, "
                         f"e.g. {missing[:3]}; is the subset file for this dataset and split?")
    return np.sort(np.array([where[n] for n in names], np.int64))


def _tfds_feature(cfg: datasets.DataConfig, split: str, key: str) -> np.ndarray:
    """One feature of every example of a TFDS split in file order, images left undecoded."""
    builder = tfds.builder(cfg.dataset, data_dir=cfg.data_dir)
    if key not in builder.info.features:
        raise datasets.DataError(f"{cfg.dataset} has no {key!r} feature (it has "
                                 f"{list(builder.info.features)}).")
    decoders = {"image": tfds.decode.SkipDecoding()} if "image" in builder.info.features else None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1,
                                                        try_autocache=False))
    ds = ds.map(lambda ex: ex[key]).batch(8192)
    return np.concatenate([b.numpy() for b in ds])


def split_labels(cfg: datasets.DataConfig, split: str | None = None) -> np.ndarray:
    """int64 [N]: the labels of `split` (None: cfg.train_split) in file order."""
    split = cfg.train_split if split is None else split
    if datasets.dataset_info(cfg).source == "tfds":
        return _tfds_feature(cfg, split, "label").astype(np.int64)
    ds = datasets.read_in_file_order(cfg, split).map(lambda image, label: label).batch(65536)
    return np.concatenate([b.numpy() for b in ds]).astype(np.int64)


def split_file_names(cfg: datasets.DataConfig, split: str | None = None) -> np.ndarray:
    """str [N]: the 'file_name' feature of a TFDS `split` (None: cfg.train_split) in file order
    (imagenet2012 has one), the order `indices_for_file_names` and train_indices use."""
    split = cfg.train_split if split is None else split
    return np.array([n.decode() for n in _tfds_feature(cfg, split, "file_name")])


def with_subset(cfg: datasets.DataConfig, indices) -> datasets.DataConfig:
    """cfg with train_indices = indices: its training pipelines stream only those examples."""
    return dataclasses.replace(cfg, train_indices=indices)
