"""Corrupt images in a TFDS dataset (undecodable bytes, a wrong shape), `--on_bad_image`: 'stop'
names the example and the job exits 2 with that one line; 'skip' drops the example, names it in a
warning and counts it, and the good examples come out unchanged.

The dataset is built here, offline: a tiny TFDS builder writes random 16x16 RGB images into
tmp_path, then chosen records of its files are overwritten, one with bytes that are no image and
one with a valid PNG of another shape. The oracle is the pixels written and the indices corrupted.
"""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common import testing
from common.data import augment as augment_lib
from common.data import datasets as data_lib

pytestmark = pytest.mark.faults

SIZE, CLASSES = 16, 3
N = {"train": 10, "test": 6}
# split -> {record index: defect}; the records are the split's examples in file order.
DEFECTS = {"train": {2: "bytes", 5: "shape"}, "test": {3: "bytes", 4: "bytes"}}
GARBAGE = b"\x89PNG\r\n\x1a\n these bytes are no image"


def _images(split):
    rng = np.random.default_rng({"train": 1, "test": 2}[split])
    images = rng.integers(0, 256, (N[split], SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(N[split]) % CLASSES
    return images, labels


class BadImagesTiny(tfds.core.GeneratorBasedBuilder):
    """16x16 RGB images with 3 classes (TFDS writes them in an order of its own)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(SIZE, SIZE, 3)),
                "label": tfds.features.ClassLabel(num_classes=CLASSES)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in N}

    def _generate_examples(self, split):
        images, labels = _images(split)
        for i in range(N[split]):
            yield i, {"image": images[i], "label": int(labels[i])}


# split -> for each record of its file, in file order, the index of the generated image it holds.
FILE_ORDER = {}


def _corrupt(data_dir):
    """Finds which generated image each record holds (FILE_ORDER), then overwrites the DEFECTS
    records' image bytes in the prepared files."""
    builder = tfds.builder("bad_images_tiny", data_dir=data_dir)
    for split, defects in DEFECTS.items():
        (path,) = builder.info.splits[split].filepaths
        records = [tf.train.Example.FromString(r.numpy())
                   for r in tf.data.TFRecordDataset(str(path))]
        assert len(records) == N[split]
        images, _ = _images(split)
        FILE_ORDER[split] = [
            int(np.flatnonzero([np.array_equal(tf.io.decode_png(
                r.features.feature["image"].bytes_list.value[0]).numpy(), x) for x in images])[0])
            for r in records]
        assert sorted(FILE_ORDER[split]) == list(range(N[split]))
        for index, defect in defects.items():
            value = (GARBAGE if defect == "bytes" else
                     tf.io.encode_png(np.zeros([SIZE - 4, SIZE, 3], np.uint8)).numpy())
            image = records[index].features.feature["image"].bytes_list
            del image.value[:]
            image.value.append(value)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in records:
                writer.write(record.SerializeToString())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    BadImagesTiny(data_dir=path).download_and_prepare()
    _corrupt(path)
    return path


def _cfg(data_dir, mode, **kw):
    return data_lib.DataConfig(dataset="bad_images_tiny", data_dir=data_dir, image_size=SIZE,
                               on_bad_image=mode, **kw)


@pytest.fixture
def fresh_log(monkeypatch):
    """A process whose input pipelines have met no bad image yet."""
    monkeypatch.setattr(data_lib, "_BAD_IMAGES", data_lib._BadImageLog())


def _good(split):
    """The images and labels written, in file order, without the corrupted records."""
    images, labels = _images(split)
    keep = [g for r, g in enumerate(FILE_ORDER[split]) if r not in DEFECTS[split]]
    return images[keep], labels[keep]


@pytest.mark.parametrize("group", [32, 3])  # 3: a bad image ends a decoding group
def test_skip_mode_yields_the_good_images_unchanged_and_counts_the_bad(data_dir, group,
                                                                       monkeypatch, capsys,
                                                                       fresh_log):
    monkeypatch.setattr(data_lib, "_DECODE_GROUP", group)
    got = list(data_lib.read_in_file_order(_cfg(data_dir, "skip"), "train").as_numpy_iterator())
    images, labels = _good("train")
    assert len(got) == len(images)
    np.testing.assert_array_equal(np.stack([g[0] for g in got]), images)
    np.testing.assert_array_equal([g[1] for g in got], labels)
    assert data_lib.skipped_images() == 2
    out = capsys.readouterr().out
    assert ("warning: skipped bad image in bad_images_tiny split 'train', example 2 "
            "(bad_images_tiny-train.tfrecord-00000-of-00001, record 2): undecodable bytes") in out
    assert ("bad image in bad_images_tiny split 'train', example 5 "
            "(bad_images_tiny-train.tfrecord-00000-of-00001, record 5): shape [12, 16, 3], "
            "expected [16, 16, 3]") in out


def test_stop_mode_names_the_first_bad_example(data_dir):
    with pytest.raises(Exception) as e:
        list(data_lib.read_in_file_order(_cfg(data_dir, "stop"), "train").as_numpy_iterator())
    assert data_lib.bad_image_message(e.value) == (
        "Bad image in bad_images_tiny split 'train', example 2 "
        "(bad_images_tiny-train.tfrecord-00000-of-00001, record 2): undecodable bytes. Pass "
        "--on_bad_image=skip to skip and count such images, or repair or rebuild the dataset.")
    # A slice past the undecodable record reaches the wrongly shaped one.
    with pytest.raises(Exception) as e:
        list(data_lib.read_in_file_order(_cfg(data_dir, "stop"), "train[3:]").as_numpy_iterator())
    assert "example 5 (bad_images_tiny-train.tfrecord-00000-of-00001, record 5): shape " \
           "[12, 16, 3], expected [16, 16, 3]." in data_lib.bad_image_message(e.value)


def test_a_split_over_several_files_names_each_bad_example_by_its_file_and_record(
        data_dir, capsys, fresh_log):
    # train[:50%]+test spans two files: the examples carry TFDS's ids instead of a record count.
    got = list(data_lib.read_in_file_order(_cfg(data_dir, "skip"), "train[:50%]+test")
               .as_numpy_iterator())
    train, _ = _images("train")
    test, _ = _images("test")
    expected = [train[FILE_ORDER["train"][r]] for r in (0, 1, 3, 4)] + \
        [test[FILE_ORDER["test"][r]] for r in (0, 1, 2, 5)]
    np.testing.assert_array_equal(np.stack([g[0] for g in got]), np.stack(expected))
    assert data_lib.skipped_images() == 3
    out = capsys.readouterr().out
    for split, i in (("train", 2), ("test", 3), ("test", 4)):
        assert (f"bad image in bad_images_tiny split '{split}', example {i} "
                f"(bad_images_tiny-{split}.tfrecord-00000-of-00001, record {i}): undecodable "
                "bytes") in out


def test_a_bad_record_in_a_later_shard_is_named_by_its_index_in_the_whole_split(
        tmp_path, capsys, fresh_log):
    # The same dataset written as two shards per split; the record corrupted is the second of the
    # second train shard, so its index in the split is the first shard's length + 1.
    path = str(tmp_path / "sharded")
    BadImagesTiny(data_dir=path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2))
    shards = sorted(tfds.builder("bad_images_tiny", data_dir=path).info.splits["train"].filepaths)
    assert len(shards) == 2
    records = [[r.numpy() for r in tf.data.TFRecordDataset(str(f))] for f in shards]
    first = len(records[0])  # counted in the file itself, not taken from TFDS's metadata
    bad = tf.train.Example.FromString(records[1][1])
    del bad.features.feature["image"].bytes_list.value[:]
    bad.features.feature["image"].bytes_list.value.append(GARBAGE)
    records[1][1] = bad.SerializeToString()
    with tf.io.TFRecordWriter(str(shards[1])) as writer:
        for r in records[1]:
            writer.write(r)
    where = (f"bad_images_tiny split 'train', example {first + 1} "
             f"({os.path.basename(shards[1])}, record 1): undecodable bytes")
    with pytest.raises(Exception) as e:
        list(data_lib.read_in_file_order(_cfg(path, "stop"), "train").as_numpy_iterator())
    assert f"Bad image in {where}." in data_lib.bad_image_message(e.value)
    got = list(data_lib.read_in_file_order(_cfg(path, "skip"), "train").as_numpy_iterator())
    assert len(got) == N["train"] - 1 and data_lib.skipped_images() == 1
    assert f"warning: skipped bad image in {where}" in capsys.readouterr().out


def test_a_subset_selects_by_index_before_bad_images_are_dropped(data_dir):
    aug = augment_lib.simclr_config(SIZE)
    cfg = _cfg(data_dir, "skip", train_indices=(1, 2, 3, 5, 7))
    # 2 and 5 are bad: an epoch of the subset is 1, 3 and 7, whatever was dropped before them.
    batch = next(iter(data_lib.linear_train_dataset(cfg, aug, 3, augment=False)))
    got = np.round(batch["image"].numpy() * 255.0).astype(np.uint8)
    images, _ = _images("train")
    expected = images[[FILE_ORDER["train"][i] for i in (1, 3, 7)]]
    assert sorted(x.tobytes() for x in got) == sorted(x.tobytes() for x in expected)


def test_skip_mode_training_stream_holds_each_good_image_once_per_epoch_and_resumes_exactly(
        data_dir):
    aug = augment_lib.simclr_config(SIZE)
    cfg = _cfg(data_dir, "skip", shuffle_buffer=4)
    plain = [b["image"] for b in data_lib.linear_train_dataset(
        cfg, aug, 4, augment=False).take(4).as_numpy_iterator()]
    # 8 good images = 2 batches per epoch; each epoch is a permutation of them (scaled to [0, 1]).
    images, _ = _good("train")
    expected = sorted(x.tobytes() for x in images)
    for epoch in (plain[:2], plain[2:]):
        got = np.round(np.concatenate(epoch) * 255.0).astype(np.uint8)
        assert sorted(x.tobytes() for x in got) == expected
    # Augmented: a stream started at step 3 continues the uninterrupted one bit for bit.
    whole = list(data_lib.linear_train_dataset(cfg, aug, 4).take(5).as_numpy_iterator())
    resumed = list(data_lib.linear_train_dataset(cfg, aug, 4, start_step=3).take(2)
                   .as_numpy_iterator())
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_pads_in_place_of_the_dropped_images(data_dir):
    aug = augment_lib.simclr_config(SIZE)
    cfg = _cfg(data_dir, "skip")
    batches = [b for b in data_lib.eval_dataset(cfg, aug, "test", 4).as_numpy_iterator()]
    # 6 examples -> 2 batches of 4 whatever was dropped; 4 real rows, then padding.
    assert len(batches) == data_lib.eval_steps(cfg, "test", 4) == 2
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 4 + [0] * 4)
    images, labels = _good("test")
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:4], labels)
    got = np.round(np.concatenate([b["image"] for b in batches])[:4] * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(got, images)


def test_the_debian_reader_refuses_images_of_another_size(tmp_path, monkeypatch):
    import gzip
    import struct

    def write(name, magic, shape, payload):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(struct.pack(f">I{len(shape)}I", magic, *shape) + bytes(payload))
    for prefix in ("train", "t10k"):
        write(f"{prefix}-images-idx3-ubyte.gz", 0x803, (2, 27, 28), [0] * (2 * 27 * 28))
        write(f"{prefix}-labels-idx1-ubyte.gz", 0x801, (2,), [0, 1])
    monkeypatch.setenv(data_lib.FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(data_lib.DataError,
                       match=r"train-images-idx3-ubyte.gz holds images of 27x28 pixels; "
                             r"Fashion-MNIST's are 28x28"):
        data_lib.dataset_info(data_lib.DataConfig())


# -------------------------------------------------------------------------------------------------
# Through the job: exit status, the one line, the count and its summary.
# -------------------------------------------------------------------------------------------------

class _Pool(tf.Module):
    """A backbone that traces in no time: the images' mean colour [B, 3] times W [3, 4]."""

    feature_dim = 4

    def __init__(self):
        super().__init__(name="encoder")
        self.w = tf.Variable(tf.eye(3, 4), name="w")

    def __call__(self, x, training=False):
        del training
        return tf.matmul(tf.reduce_mean(x, [1, 2]), self.w)


def _spec():
    from common.cli import job, presets
    from common.networks import heads
    from common.training import method

    class Tiny(method.Method):
        metric_names = ("probe_loss", "probe_acc")

        def __init__(self, num_classes):
            super().__init__(name="tiny")
            self.encoder = _Pool()
            self.probe = heads.LinearHead(_Pool.feature_dim, num_classes)

        def optimized_variables(self):
            return [self.encoder.w] + list(self.probe.trainable_variables)

        def loss(self, batch, step, seed):
            z1, z2 = self.encoder(batch["view1"]), self.encoder(batch["view2"])
            probe_loss, metrics = self.probe_loss(z1, batch["label"])
            return tf.reduce_mean(tf.square(z1 - z2)) + probe_loss, metrics

    @dataclasses.dataclass(frozen=True)
    class NoSettings:
        pass

    preset = presets.small_scale(
        NoSettings(), dataset="bad_images_tiny", train_split="train", eval_split="test",
        train_steps=2, train_batch_size=4, eval_batch_size=4, checkpoint_steps=2,
        train_summary_steps=1, image_size=SIZE, width_multiplier=0.0625, proj_head_hidden_dim=16,
        proj_out_dim=8, mode="train_then_eval")
    return job.TrainerSpec(name="toy", presets={"toy": preset}, default_preset="toy",
                           build_method=lambda cfg, parts, n: Tiny(n))


def _run_job(*argv):
    return testing.run_job(_spec(), *argv)


def _scalars(events_dir, tag):
    """{step: value} of a scalar summary in the event files of `events_dir`."""
    seen = {}
    for path in tf.io.gfile.glob(str(events_dir / "events*")):
        for e in tf.compat.v1.train.summary_iterator(path):
            for v in e.summary.value:
                if v.tag == tag:
                    seen[e.step] = float(tf.make_ndarray(v.tensor))
    return seen


def test_the_job_stops_with_exit_2_and_the_example_or_skips_and_counts(data_dir, tmp_path,
                                                                        fresh_log):
    run = tmp_path / "run"
    code, err, out = _run_job(f"--data_dir={data_dir}", f"--model_dir={run}")
    assert code == 2, err + out[-2000:]
    assert err == ("error: Bad image in bad_images_tiny split 'train', example 2 "
                   "(bad_images_tiny-train.tfrecord-00000-of-00001, record 2): undecodable bytes. "
                   "Pass --on_bad_image=skip to skip and count such images, or repair or rebuild "
                   "the dataset.\n")
    assert not [f for f in os.listdir(run) if f.startswith("ckpt-")]  # no checkpoint after it

    # The same model_dir continues with --on_bad_image=skip: the 2 bad training images and the
    # 2 bad test images are named once each, counted, and written to TensorBoard.
    code, err, out = _run_job(f"--data_dir={data_dir}", f"--model_dir={run}",
                              "--on_bad_image=skip")
    assert code == 0, err + out[-2000:]
    assert out.count("warning: skipped bad image in bad_images_tiny split 'train'") == 2
    for i in (3, 4):
        assert out.count(f"warning: skipped bad image in bad_images_tiny split 'test', example {i} "
                         f"(bad_images_tiny-test.tfrecord-00000-of-00001, record {i}): undecodable "
                         "bytes") == 1
    assert "probe on test:" in out
    assert out.rstrip().endswith("skipped 4 bad image(s) of the dataset (--on_bad_image=skip).")
    assert (run / "ckpt-2.index").exists()
    # The training pipeline's shuffle buffer (200) holds the whole split: both bad training
    # images are met before the first step.
    assert _scalars(run / "train", "data/skipped_images") == {1: 2.0, 2: 2.0}
