"""Tests of common.data: the Debian Fashion-MNIST source against a byte-offset decode of the IDX
files, the pipelines' shapes, padding, sharding, determinism and resumption, the TFDS path on mock
data, and the error messages."""
import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import augment
from common.data import datasets as data
from common.training import distribute
from common import testing

_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_DIR = data.fashion_mnist_dir()
needs_fashion_mnist = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(_DIR, f)) for f in _FILES),
    reason=f"Fashion-MNIST IDX files not in {_DIR}: apt-get install dataset-fashion-mnist")

# The most a normalised pixel can be below/above zero: (0 - max mean) / min std, (1 - min mean) /
# min std over the three channels (mean 0.485/0.456/0.406, std 0.229/0.224/0.225).
_NORM_LO, _NORM_HI = -0.485 / 0.229, (1 - 0.406) / 0.224


@pytest.fixture(scope="module")
def raw():
    """The four decompressed files, addressed by byte offsets in the test (the IDX layout: a
    16-byte header for images, 8 bytes for labels, then one byte per pixel/label)."""
    if not all(os.path.isfile(os.path.join(_DIR, f)) for f in _FILES):
        pytest.skip("Fashion-MNIST IDX files missing")
    out = {}
    for name in _FILES:
        with gzip.open(os.path.join(_DIR, name), "rb") as f:
            out[name] = f.read()
    return out


def _oracle(raw, split, i):
    prefix = "train" if split == "train" else "t10k"
    images, labels = raw[f"{prefix}-images-idx3-ubyte.gz"], raw[f"{prefix}-labels-idx1-ubyte.gz"]
    pixels = np.frombuffer(images[16 + 784 * i:16 + 784 * (i + 1)], np.uint8).reshape(28, 28)
    return pixels, labels[8 + i]


def _oracle_range(raw, split, start, stop):
    pix, lab = zip(*[_oracle(raw, split, i) for i in range(start, stop)])
    return np.stack(pix).astype(np.float64), np.array(lab)


def _collect(ds):
    batches = [tf.nest.map_structure(np.asarray, b) for b in ds]
    return batches, {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# -------------------------------------------------------------------------------------------------
# Debian Fashion-MNIST
# -------------------------------------------------------------------------------------------------

@needs_fashion_mnist
def test_fashion_mnist_counts_labels_and_pixels(raw):
    info = data.dataset_info(data.DataConfig())
    assert info == data.DatasetInfo(name="fashion_mnist", num_classes=10,
                                    num_examples={"train": 60000, "test": 10000},
                                    image_shape=(28, 28, 1), source="debian")
    for split, n in (("train[:10%]", 6000), ("test[:1000]", 1000), ("train[:50%]+test", 40000),
                     ("test[-10:]", 10)):
        assert data.num_examples(data.DataConfig(), split) == n
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data.load_fashion_mnist(split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        # Fashion-MNIST is balanced: every class 0..9 exactly n / 10 times.
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
        for i in (0, 1, 4321, n - 1):
            pixels, label = _oracle(raw, split, i)
            np.testing.assert_array_equal(images[i, :, :, 0], pixels)
            assert labels[i] == label


@needs_fashion_mnist
def test_eval_dataset_pads_last_batch_and_matches_files(raw):
    # S = 28 <= 32: no centre crop, and a 28 -> 28 bicubic resize samples the pixel centres
    # (identity); simclr_config does not normalise, so image = pixel / 255 on three channels.
    cfg = data.DataConfig(image_size=28)
    aug = augment.simclr_config(28)
    assert data.eval_steps(cfg, "test[:1000]", 96) == 11  # ceil(1000 / 96)
    batches, cat = _collect(data.eval_dataset(cfg, aug, "test[:1000]", 96))
    assert len(batches) == 11
    for b in batches:
        assert b["image"].shape == (96, 28, 28, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (96,) and b["label"].dtype == np.int32
        assert b["mask"].shape == (96,) and b["mask"].dtype == np.float32
    np.testing.assert_array_equal(batches[-1]["mask"], [1.0] * 40 + [0.0] * 56)  # 1000 - 10 * 96
    assert cat["mask"].sum() == 1000 and np.all(cat["mask"][:1000] == 1)
    pixels, labels = _oracle_range(raw, "test", 0, 1000)
    for c in range(3):
        np.testing.assert_allclose(cat["image"][:1000, :, :, c] * 255.0, pixels, atol=1e-3)
    np.testing.assert_array_equal(cat["label"][:1000], labels)
    assert np.all(cat["image"][1000:] == 0) and np.all(cat["label"][1000:] == 0)


@needs_fashion_mnist
def test_pretrain_batch_shapes_views_and_normalisation():
    cfg = data.DataConfig(train_split="train[:2000]", image_size=32)
    ds = data.pretrain_dataset(cfg, augment.byol_config(32), 16)
    batch = next(iter(ds))
    assert set(batch) == {"view1", "view2", "label"}
    for key in ("view1", "view2"):
        v = batch[key].numpy()
        assert v.shape == (16, 32, 32, 3) and v.dtype == np.float32
        assert np.all(np.isfinite(v))
        assert v.min() >= _NORM_LO - 1e-5 and v.max() <= _NORM_HI + 1e-5
        assert v.min() < 0  # normalised: black Fashion-MNIST background maps below zero
    assert batch["label"].dtype == tf.int32 and batch["label"].shape == (16,)
    assert set(batch["label"].numpy()) <= set(range(10))
    assert np.abs(batch["view1"].numpy() - batch["view2"].numpy()).max() > 0.5


@needs_fashion_mnist
def test_pretrain_is_deterministic_in_the_seed():
    aug = augment.byol_config(32)

    def first(seed):
        cfg = data.DataConfig(train_split="train[:1000]", seed=seed, shuffle_buffer=200)
        return tf.nest.map_structure(np.asarray, next(iter(data.pretrain_dataset(cfg, aug, 8))))

    a, b, c = first(0), first(0), first(1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["view1"], c["view1"])
    assert not np.array_equal(a["label"], c["label"])


@needs_fashion_mnist
def test_every_position_in_the_stream_gets_its_own_views(raw):
    # One example repeated: the 8 rows differ only through their per-position seeds, and the
    # stream of another cfg.seed only through its base seed.
    aug = augment.byol_config(32)
    batch = next(iter(data.pretrain_dataset(data.DataConfig(train_split="train[:1]"), aug, 8)))
    for key in ("view1", "view2"):
        v = batch[key].numpy().reshape(8, -1)
        gaps = np.abs(v[:, None] - v[None]).max(axis=2) + np.eye(8)
        assert gaps.min() > 1e-3, key
    np.testing.assert_array_equal(batch["label"].numpy(), [_oracle(raw, "train", 0)[1]] * 8)
    other = next(iter(data.pretrain_dataset(
        data.DataConfig(train_split="train[:1]", seed=1), aug, 8)))
    assert np.abs(other["view1"].numpy() - batch["view1"].numpy()).max(axis=(1, 2, 3)).min() > 1e-3


@needs_fashion_mnist
def test_an_input_pipeline_without_examples_is_rejected():
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                     num_replicas_in_sync=2)
    with pytest.raises(data.DataError, match="gets no example"):
        data.pretrain_dataset(data.DataConfig(train_split="train[:1]"), augment.byol_config(32),
                              8, ctx)


@needs_fashion_mnist
def test_pretrain_resumes_exactly_from_a_checkpointed_iterator(tmp_path):
    cfg = data.DataConfig(train_split="train[:300]", shuffle_buffer=100, seed=3)
    aug = augment.byol_config(32)
    it = iter(data.pretrain_dataset(cfg, aug, 8))
    first = next(it)
    next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
    expected = next(it)
    it2 = iter(data.pretrain_dataset(cfg, aug, 8))
    tf.train.Checkpoint(iterator=it2).read(path).assert_consumed()
    got = next(it2)
    for k in expected:
        np.testing.assert_array_equal(got[k].numpy(), expected[k].numpy())
    assert not np.array_equal(got["view1"].numpy(), first["view1"].numpy())


@needs_fashion_mnist
@pytest.mark.parametrize("replicas", [1, 2])
def test_pretrain_started_at_a_step_continues_the_uninterrupted_stream(replicas):
    # 300 examples, batch 8: step 40 of an uninterrupted run lies in the second epoch, so the
    # reshuffled epoch order and the position-derived seeds are both exercised.
    cfg = data.DataConfig(train_split="train[:300]", shuffle_buffer=100, seed=3)
    aug = augment.byol_config(32)
    ctx = tf.distribute.InputContext(1, 0, replicas)
    steps, per_step = 40, replicas
    it = iter(data.pretrain_dataset(cfg, aug, 8, ctx))
    for _ in range(steps * per_step):
        next(it)
    expected = [next(it) for _ in range(per_step)]
    got_it = iter(data.pretrain_dataset(cfg, aug, 8, ctx, start_step=steps))
    for want in expected:
        got = next(got_it)
        for k in want:
            np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())


@needs_fashion_mnist
def test_linear_train_dataset_shuffles_whole_epochs(raw):
    cfg = data.DataConfig(train_split="train[:64]", image_size=28, shuffle_buffer=64)
    aug = augment.simclr_config(28)
    pixels, labels = _oracle_range(raw, "train", 0, 64)
    it = iter(data.linear_train_dataset(cfg, aug, 32, augment=False))
    batches = [next(it) for _ in range(2)]
    rows = np.concatenate([b["image"].numpy()[..., 0] for b in batches]) * 255.0
    row_labels = np.concatenate([b["label"].numpy() for b in batches])
    # The first epoch (2 batches of 32) holds every example of train[:64] once, shuffled.
    dist = np.abs(rows[:, None] - pixels[None]).max(axis=(2, 3))
    match = dist.argmin(axis=1)
    assert np.all(dist[np.arange(64), match] < 1e-3)
    assert sorted(match) == list(range(64)) and list(match) != list(range(64))
    np.testing.assert_array_equal(row_labels, labels[match])
    batch = next(iter(data.linear_train_dataset(cfg, aug, 32, augment=True)))
    assert batch["image"].shape == (32, 28, 28, 3) and batch["label"].dtype == tf.int32
    image = batch["image"].numpy()
    assert np.all(np.isfinite(image)) and image.min() >= 0.0 and image.max() <= 1.0
    # Random crops: the images are not the unaugmented ones.
    assert np.abs(image[:, None, :, :, 0] * 255.0 - pixels[None]).max(axis=(2, 3)).min() > 1.0


@needs_fashion_mnist
def test_input_context_gives_per_replica_batches_and_disjoint_shards(raw):
    cfg = data.DataConfig(image_size=28)
    aug = augment.simclr_config(28)
    ctx = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                      num_replicas_in_sync=2) for i in (0, 1)]
    batch = next(iter(data.pretrain_dataset(
        data.DataConfig(train_split="train[:500]", image_size=28), aug, 16, ctx[1])))
    assert batch["view1"].shape == (8, 28, 28, 3) and batch["label"].shape == (8,)
    # 201 examples over 2 pipelines: [0, 101) and [101, 201); both yield ceil(101 / 8) = 13 batches.
    assert data.eval_steps(cfg, "test[:201]", 16, ctx[0]) == 13
    bounds = ((0, 101), (101, 201))
    for i in (0, 1):
        batches, cat = _collect(data.eval_dataset(cfg, aug, "test[:201]", 16, ctx[i]))
        assert len(batches) == 13 and all(b["image"].shape[0] == 8 for b in batches)
        start, stop = bounds[i]
        n = stop - start
        assert cat["mask"].sum() == n
        pixels, labels = _oracle_range(raw, "test", start, stop)
        np.testing.assert_allclose(cat["image"][:n, :, :, 0] * 255.0, pixels, atol=1e-3)
        np.testing.assert_array_equal(cat["label"][:n], labels)


@needs_fashion_mnist
def test_mirrored_eval_gives_every_replica_the_same_number_of_full_batches():
    strategy = testing.two_replica_strategy()
    cfg = data.DataConfig(image_size=28)
    aug = augment.simclr_config(28)
    dist = data.distribute(strategy, lambda ctx: data.eval_dataset(cfg, aug, "test[:100]", 16, ctx))
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    shapes, total = [], 0.0
    for batch in dist:
        masks = strategy.experimental_local_results(batch["mask"])
        shapes.append(tuple(m.shape[0] for m in masks))
        total += sum(float(tf.reduce_sum(m)) for m in masks)
    # One pipeline feeds both replicas: ceil(100 / 8) = 13 batches, padded to 14 -> 7 steps each.
    assert shapes == [(8, 8)] * 7 and total == 100
    assert data.eval_steps(cfg, "test[:100]", 16, ctx) == 7


@needs_fashion_mnist
def test_global_batch_must_divide_over_replicas():
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    with pytest.raises(data.DataError, match="not divisible by the 2 replicas"):
        data.pretrain_dataset(data.DataConfig(), augment.byol_config(32), 15, ctx)


@needs_fashion_mnist
@pytest.mark.parametrize("split", ["validation", "train[:70000]", "train[:abc]"])
def test_bad_split_names_the_available_splits(split):
    with pytest.raises(data.DataError, match=r"train \(60000\), test \(10000\)"):
        data.eval_dataset(data.DataConfig(), augment.byol_config(32), split, 8)


def test_image_size_mismatch_is_rejected():
    with pytest.raises(data.DataError, match="same --image_size"):
        data.pretrain_dataset(data.DataConfig(image_size=32), augment.byol_config(224), 8)


# -------------------------------------------------------------------------------------------------
# IDX validation on hand-made files
# -------------------------------------------------------------------------------------------------

def _write_idx(path, magic, dims, payload, compress=True):
    blob = (struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
            + np.asarray(payload).astype(np.uint8).tobytes())
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(blob)


def _write_set(directory, n_train=5, n_test=3):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", 0x803, (n, 28, 28),
                   np.arange(n * 784) % 256)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", 0x801, (n,), np.arange(n) % 10)


def test_fashion_mnist_dir_override_reads_small_files(tmp_path, monkeypatch):
    _write_set(tmp_path)
    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    info = data.dataset_info(data.DataConfig())
    assert info.num_examples == {"train": 5, "test": 3}
    images, labels = data.load_fashion_mnist("train")
    np.testing.assert_array_equal(images[1, 0, :3, 0], [784 % 256, 785 % 256, 786 % 256])
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])


def test_missing_fashion_mnist_dir_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.dataset_info(data.DataConfig())


@pytest.mark.parametrize("defect, message", [
    ("magic", "magic number 0x00000802"),
    ("truncated", "data bytes but its IDX header"),
    ("not_gzip", "not a readable gzip file"),
    ("count", "5 images but .* 4 labels"),
    ("label", "holds label 12"),
])
def test_corrupt_idx_files_are_rejected(tmp_path, monkeypatch, defect, message):
    _write_set(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    if defect == "magic":
        _write_idx(images, 0x802, (5, 28), np.zeros(140))
    elif defect == "truncated":
        _write_idx(images, 0x803, (5, 28, 28), np.zeros(5 * 784 - 1))
    elif defect == "not_gzip":
        _write_idx(images, 0x803, (5, 28, 28), np.zeros(5 * 784), compress=False)
    elif defect == "count":
        _write_idx(labels, 0x801, (4,), np.zeros(4))
    else:
        _write_idx(labels, 0x801, (5,), [0, 1, 12, 3, 4])
    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match=message):
        data.dataset_info(data.DataConfig())


# -------------------------------------------------------------------------------------------------
# TFDS
# -------------------------------------------------------------------------------------------------

def test_tfds_mock_cifar10_pretrain_eval_and_linear(tmp_path):
    cfg = data.DataConfig(dataset="cifar10", data_dir=str(tmp_path), image_size=32)
    aug = augment.byol_config(32)
    with tfds.testing.mock_data(num_examples=20):
        info = data.dataset_info(cfg)
        assert (info.name, info.num_classes, info.image_shape, info.source) == (
            "cifar10", 10, (32, 32, 3), "tfds")
        batch = next(iter(data.pretrain_dataset(cfg, aug, 8)))
        assert batch["view1"].shape == (8, 32, 32, 3) and batch["view2"].dtype == tf.float32
        assert batch["label"].dtype == tf.int32
        assert np.all(np.isfinite(batch["view1"].numpy()))
        assert not np.array_equal(batch["view1"].numpy(), batch["view2"].numpy())
        assert data.eval_steps(cfg, "test", 8) == 3
        batches, cat = _collect(data.eval_dataset(cfg, aug, "test", 8))
        assert len(batches) == 3 and cat["image"].shape == (24, 32, 32, 3)
        np.testing.assert_array_equal(cat["mask"], [1.0] * 20 + [0.0] * 4)
        assert set(cat["label"][:20]) <= set(range(10))
        lin = next(iter(data.linear_train_dataset(cfg, aug, 8)))
        assert lin["image"].shape == (8, 32, 32, 3) and lin["label"].dtype == tf.int32


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(data.DataError, match="Unknown dataset 'cifar_10'.*cifar10"):
        data.dataset_info(data.DataConfig(dataset="cifar_10"))


def test_non_image_classification_dataset_is_rejected(tmp_path):
    with pytest.raises(data.DataError, match="not an image-classification dataset"):
        data.dataset_info(data.DataConfig(dataset="imdb_reviews", data_dir=str(tmp_path)))


def test_manual_download_dataset_says_where_to_put_files(tmp_path):
    with pytest.raises(data.DataError, match=r"(?s)downloads/manual.*ILSVRC2012_img_train\.tar"):
        data.dataset_info(data.DataConfig(dataset="imagenet2012", data_dir=str(tmp_path)))
