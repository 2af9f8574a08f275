"""Input pipelines: two augmented views for pretraining, padded batches for evaluation, and
(optionally augmented) labelled batches for linear evaluation and fine-tuning.

Two sources feed the same pipelines:
  * 'debian': the default dataset `fashion_mnist` (with `data_dir=None`) is read directly from the
    IDX files of Debian's package `dataset-fashion-mnist` into memory (60k train / 10k test, 28x28x1
    uint8). Nothing is downloaded or built: TFDS's own `fashion_mnist` refuses these repacked
    archives unless told to register new checksums, then takes ~15 s and a writable data_dir.
  * 'tfds': any TFDS image-classification dataset with an `image` and a ClassLabel `label` feature
    (cifar10, imagenet2012, ...), prepared on first use.
Both sources accept TFDS split syntax ('train', 'train[:10%]', 'test[:1000]', 'train[:50%]+test')
and shard a split over input pipelines in contiguous example ranges (`tfds.even_splits`: the first
`N mod n` pipelines get one example more).

Bad images (TFDS source): the pipelines decode the stored PNG/JPEG bytes themselves and check
each image's shape against the one the dataset declares. `DataConfig.on_bad_image` says what an
undecodable or wrongly shaped image does: 'stop' raises BadImageError naming the dataset, split,
example index and the reason; 'skip' drops the example, prints a warning naming it (the first
BAD_IMAGE_WARNINGS of a process) and counts it (`skipped_images()`). A dropped example never gets
a stream position (the examples are dropped as they are read, before shuffling and numbering), so
the stream stays a pure function of the configuration and resumption stays exact. The Debian
source is checked whole when its files are read.

Determinism and exact resumption: the training pipelines shuffle with a fixed seed, repeat, then
number the examples of the stream with `.enumerate()`; every example's augmentation seed is a
stateless function of (cfg.seed, input pipeline id, position in the stream, view). So a stream is a
pure function of its configuration, and an iterator saved with `tf.train.Checkpoint` resumes on
exactly the batch it would have produced next. (tf.data's shuffle also folds in the global seed set
by `tf.random.set_seed`, so runs that set one must set the same one.)
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import gzip
import math
import os
import re
import struct
import threading
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import augment as aug_lib

#: Where Debian's package `dataset-fashion-mnist` installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Environment variable that overrides DEBIAN_FASHION_MNIST_DIR (tests, other installs).
FASHION_MNIST_DIR_ENV = "FASHION_MNIST_DIR"
#: The embedded default dataset's name.
FASHION_MNIST = "fashion_mnist"
FASHION_MNIST_NUM_CLASSES = 10
_FASHION_MNIST_SHAPE = (28, 28, 1)
# split -> (images file, labels file), the names of the original release kept by Debian.
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX magic numbers: two zero bytes, the element type (0x08 = uint8), the number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_SPLIT_SYNTAX_HELP = ("Splits use TFDS syntax: 'train', 'train[:10%]', 'train[:1000]', "
                      "'train[1000:]', 'train[:50%]+test'.")


class DataError(ValueError):
    """The dataset, split or files asked for cannot be read; the message says how to fix it."""


class BadImageError(DataError):
    """An image of the dataset cannot be decoded or has the wrong shape (on_bad_image='stop');
    the one-line message names the dataset, split, example index and the reason."""


#: What an undecodable or wrongly shaped image does (DataConfig.on_bad_image).
BAD_IMAGE_MODES = ("stop", "skip")
#: Skipped images a process names in a warning line; later ones are only counted.
BAD_IMAGE_WARNINGS = 20


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data to read and how to stream it.

    Attributes:
      dataset: TFDS dataset name; 'fashion_mnist' with data_dir=None reads Debian's files.
      data_dir: TFDS data directory (None: TFDS's default, ~/tensorflow_datasets).
      train_split, eval_split: TFDS split strings (slices allowed).
      image_size: side S of the square images the pipelines emit (must equal the AugmentConfig's).
      cache: keep the decoded training examples in memory after the first epoch (TFDS source; the
        Debian source is in memory already). A saved iterator then carries the cache with it.
      shuffle_buffer: examples in the shuffle buffer; None = per-replica batch x 50 when
        image_size <= 32, else x 10 (the release's choice).
      seed: seed of the shuffle order and of every augmentation.
      num_parallel_calls: parallelism of the augmentation map.
      train_indices: None (every example) or the examples of `train_split` the training pipelines
        (`pretrain_dataset`, `linear_train_dataset`) use, as positions 0..N-1 in the split's file
        order (`read_in_file_order`); e.g. a few-label subset from common.evaluation.subsets.
        Stored as a sorted tuple of unique ints (a list or numpy array is converted); left out
        of the repr.
      on_bad_image: an image that cannot be decoded or has another shape than the dataset
        declares: 'stop' raises BadImageError (naming the example) when the pipeline reaches it;
        'skip' drops it as it is read, warns and counts it (`skipped_images()`).
    """
    dataset: str = FASHION_MNIST
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int = 32
    cache: bool = False
    shuffle_buffer: int | None = None
    seed: int = 0
    num_parallel_calls: int = tf.data.AUTOTUNE
    train_indices: tuple | None = dataclasses.field(default=None, repr=False)
    on_bad_image: str = "stop"

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise DataError(f"DataConfig.dataset must be a dataset name, got {self.dataset!r}.")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise DataError(
                f"DataConfig.image_size must be a positive int, got {self.image_size!r}.")
        if self.shuffle_buffer is not None and (
                not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1):
            raise DataError("DataConfig.shuffle_buffer must be None (automatic) or a positive int, "
                            f"got {self.shuffle_buffer!r}.")
        if not isinstance(self.seed, int):
            raise DataError(f"DataConfig.seed must be an int, got {self.seed!r}.")
        if self.on_bad_image not in BAD_IMAGE_MODES:
            raise DataError(f"DataConfig.on_bad_image must be one of {BAD_IMAGE_MODES}, got "
                            f"{self.on_bad_image!r}.")
        if self.train_indices is not None:
            object.__setattr__(self, "train_indices", _normalise_indices(self.train_indices))


def _normalise_indices(indices) -> tuple:
    """A sorted tuple of unique non-negative Python ints; DataError on anything else."""
    arr = np.asarray(indices)
    integral = arr.ndim == 1 and (np.issubdtype(arr.dtype, np.integer) or (
        arr.dtype == object and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                    for i in arr)))
    if arr.size == 0 or not integral:
        raise DataError("DataConfig.train_indices must be None or a non-empty 1-D sequence of "
                        f"example indices (ints), got {type(indices).__name__} of shape "
                        f"{arr.shape} and dtype {arr.dtype}.")
    arr = np.sort(arr.astype(np.int64))
    if arr[0] < 0:
        raise DataError(f"DataConfig.train_indices holds the negative index {int(arr[0])}.")
    if np.any(arr[1:] == arr[:-1]):
        dup = int(arr[1:][arr[1:] == arr[:-1]][0])
        raise DataError(f"DataConfig.train_indices holds index {dup} more than once.")
    return tuple(int(i) for i in arr)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds.

    Attributes:
      name: dataset name.
      num_classes: number of label values (labels are 0..num_classes-1).
      num_examples: split name -> number of examples ({} when TFDS does not know them yet).
      image_shape: (H, W, C) of the stored images; None for sizes that vary between images.
      source: 'debian' (Fashion-MNIST IDX files) or 'tfds'.
    """
    name: str
    num_classes: int
    num_examples: Mapping[str, int]
    image_shape: tuple
    source: str


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST from Debian's IDX files.
# --------------------------------------------------------------------------------------------------

def fashion_mnist_dir() -> str:
    """The directory holding the Fashion-MNIST IDX files: $FASHION_MNIST_DIR, else Debian's."""
    return os.environ.get(FASHION_MNIST_DIR_ENV) or DEBIAN_FASHION_MNIST_DIR


def _missing_files_error(directory: str, missing: list[str]) -> DataError:
    return DataError(
        f"Fashion-MNIST files not found in {directory}: missing {', '.join(missing)}. "
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
        f"${FASHION_MNIST_DIR_ENV} at a directory holding "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, or pass --data_dir to read the TFDS "
        "build of fashion_mnist instead.")


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Decodes one gzipped IDX file of uint8 elements.

    Layout: a big-endian uint32 magic 0x000008DD (08 = uint8 elements, DD = number of dimensions),
    DD big-endian uint32 sizes, then prod(sizes) bytes in C order. Returns the uint8 array of that
    shape, e.g. [N, 28, 28] for images (magic 0x803) or [N] for labels (magic 0x801).
    Raises DataError when the file is not gzip, the magic differs, or the payload size is wrong.
    """
    fix = "reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)."
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _missing_files_error(os.path.dirname(path), [os.path.basename(path)]) from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}); {fix}") from e
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes); {fix}")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DataError(f"{path} has IDX magic number {magic:#010x}, expected "
                        f"{expected_magic:#010x} (uint8 with {expected_magic & 0xFF} dimensions); "
                        f"{fix}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} ends inside its IDX header; {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its IDX header "
                        f"{shape} needs {expected - header}; {fix}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_fashion_mnist_cached(directory: str, split: str, stamp: tuple):
    del stamp  # part of the cache key only: a changed file is read again
    images_file, labels_file = _FASHION_MNIST_FILES[split]
    images = read_idx(os.path.join(directory, images_file), _IDX_IMAGES_MAGIC)
    labels = read_idx(os.path.join(directory, labels_file), _IDX_LABELS_MAGIC)
    if images.shape[1:] != _FASHION_MNIST_SHAPE[:2]:
        raise DataError(f"{os.path.join(directory, images_file)} holds images of "
                        f"{images.shape[1]}x{images.shape[2]} pixels; Fashion-MNIST's are "
                        f"{_FASHION_MNIST_SHAPE[0]}x{_FASHION_MNIST_SHAPE[1]}. Reinstall "
                        "dataset-fashion-mnist (`apt-get install --reinstall "
                        "dataset-fashion-mnist`).")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_file} holds {images.shape[0]} images but {labels_file} holds "
                        f"{labels.shape[0]} labels in {directory}; reinstall dataset-fashion-mnist "
                        "(`apt-get install --reinstall dataset-fashion-mnist`).")
    if labels.size and labels.max() >= FASHION_MNIST_NUM_CLASSES:
        raise DataError(f"{labels_file} in {directory} holds label {int(labels.max())}; "
                        f"Fashion-MNIST labels are 0..{FASHION_MNIST_NUM_CLASSES - 1}. Reinstall "
                        "dataset-fashion-mnist.")
    images = images[..., None]
    images.flags.writeable = False
    labels = labels.astype(np.int32)
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads one whole Fashion-MNIST split ('train' or 'test') from the IDX files.

    Returns images [N, 28, 28, 1] uint8 and labels [N] int32 in 0..9 (read-only arrays, cached
    while the files are unchanged), in file order. Raises DataError naming the missing package or
    the corrupt file.
    """
    if split not in _FASHION_MNIST_FILES:
        raise DataError(f"Fashion-MNIST has splits {sorted(_FASHION_MNIST_FILES)}, not {split!r}.")
    directory = directory or fashion_mnist_dir()
    paths = [os.path.join(directory, name) for name in _FASHION_MNIST_FILES[split]]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise _missing_files_error(directory, missing)
    stamp = tuple((os.path.getmtime(p), os.path.getsize(p)) for p in paths)
    return _load_fashion_mnist_cached(os.path.abspath(directory), split, stamp)


def _resolve_split(split: str, index: int, count: int,
                   split_infos: Mapping, dataset: str) -> list:
    """Absolute instructions (splitname, from_, to) of pipeline `index`'s share of `split`."""
    try:
        return tfds.even_splits(split, count)[index].to_absolute(split_infos)
    except (ValueError, KeyError, AssertionError, TypeError) as e:
        available = ", ".join(f"{name} ({info.num_examples})" for name, info in split_infos.items())
        raise DataError(f"Bad split {split!r} for {dataset}: {str(e).rstrip('.')}. "
                        f"Available splits: {available}. "
                        f"{_SPLIT_SYNTAX_HELP} Pass it with --train_split / --eval_split.") from e


class _DebianSource:
    """Fashion-MNIST from the IDX files, held in memory."""

    source = "debian"

    def __init__(self):
        self.directory = fashion_mnist_dir()
        self._splits = {name: load_fashion_mnist(name, self.directory)
                        for name in _FASHION_MNIST_FILES}
        self._split_infos = {
            name: tfds.core.SplitInfo(name=name, shard_lengths=[int(labels.shape[0])], num_bytes=0)
            for name, (_, labels) in self._splits.items()}
        self.info = DatasetInfo(
            name=FASHION_MNIST, num_classes=FASHION_MNIST_NUM_CLASSES,
            num_examples={name: int(labels.shape[0]) for name, (_, labels) in self._splits.items()},
            image_shape=tuple(self._splits["train"][0].shape[1:]), source=self.source)

    def _indices(self, split: str, index: int, count: int) -> list[tuple[str, int, int]]:
        out = []
        for instr in _resolve_split(split, index, count, self._split_infos, FASHION_MNIST):
            n = self.info.num_examples[instr.splitname]
            start = instr.from_ or 0
            stop = n if instr.to is None else instr.to
            out.append((instr.splitname, start, stop))
        return out

    def num_examples(self, split: str, index: int, count: int) -> int:
        return sum(stop - start for _, start, stop in self._indices(split, index, count))

    def read(self, split: str, index: int, count: int, shuffle_files: bool, seed: int,
             cache: bool) -> tf.data.Dataset:
        del shuffle_files, seed, cache  # one in-memory "file"; shuffling happens downstream
        parts = self._indices(split, index, count)
        images = np.concatenate([self._splits[name][0][a:b] for name, a, b in parts])
        labels = np.concatenate([self._splits[name][1][a:b] for name, a, b in parts])
        return tf.data.Dataset.from_tensor_slices((images, labels))


# --------------------------------------------------------------------------------------------------
# TFDS datasets.
# --------------------------------------------------------------------------------------------------

def _tfds_builder(name: str, data_dir: str | None):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        names = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"Unknown dataset {name!r}.{hint} Pass --dataset=fashion_mnist (embedded, offline) or "
            "the name of a TFDS image-classification dataset such as cifar10, cifar100 or "
            "imagenet2012 (list: tfds.list_builders()).") from e


class _BadImageLog:
    """The bad images a process has met: raises BadImageError in 'stop' mode; in 'skip' mode
    counts each distinct example once (a later epoch meets it again) and names the first
    BAD_IMAGE_WARNINGS in a warning line. Called from the input pipelines (from tf.data's threads,
    hence the lock) only when an image is bad."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = set()

    @property
    def skipped(self) -> int:
        return len(self._seen)

    def report(self, mode: str, where: str, reason: str) -> None:
        message = f"Bad image in {where}: {reason}."
        if mode == "stop":
            raise BadImageError(
                f"{message} Pass --on_bad_image=skip to skip and count such images, or repair "
                "or rebuild the dataset.")
        with self._lock:
            if where in self._seen:
                return
            self._seen.add(where)
            n = len(self._seen)
        if n <= BAD_IMAGE_WARNINGS:
            print(f"warning: skipped {message[0].lower()}{message[1:-1]} "
                  f"(--on_bad_image=skip; {n} skipped so far).", flush=True)
        if n == BAD_IMAGE_WARNINGS:
            print(f"warning: {BAD_IMAGE_WARNINGS} bad images named; later ones are counted, not "
                  "named.", flush=True)


_BAD_IMAGES = _BadImageLog()


def skipped_images() -> int:
    """Distinct bad images the input pipelines of this process have dropped so far
    (on_bad_image='skip'), each counted once however often it is read (every epoch, every
    evaluation pass). Counted when read: the training pipeline reads ahead of the step by its
    shuffle buffer and prefetching."""
    return _BAD_IMAGES.skipped


_BAD_IMAGE_MESSAGE = re.compile(r"Bad image in [^\n]*? Pass --on_bad_image=skip[^\n]*? dataset\.")


def bad_image_message(error: BaseException) -> str | None:
    """The one-line BadImageError message inside an error raised by an input pipeline (tf.data
    hands the exception on as a tf.errors.OpError carrying its text), else None."""
    if isinstance(error, BadImageError):
        return str(error)
    m = _BAD_IMAGE_MESSAGE.search(str(error))
    return m.group(0) if m else None


# Raw examples are decoded in groups of this many: each group's nested dataset (which lets one
# undecodable image drop out without failing the pipeline) then costs little per example.
_DECODE_GROUP = 32


class _TfdsSource:
    """A TFDS image-classification dataset, prepared on first use."""

    source = "tfds"

    def __init__(self, name: str, data_dir: str | None, on_bad_image: str = "stop"):
        self.on_bad_image = on_bad_image
        self.builder = _tfds_builder(name, data_dir)
        features = self.builder.info.features
        keys = list(features.keys()) if hasattr(features, "keys") else []
        if not ("image" in keys and "label" in keys
                and isinstance(features["image"], tfds.features.Image)
                and isinstance(features["label"], tfds.features.ClassLabel)):
            raise DataError(
                f"{name!r} is not an image-classification dataset: it needs an 'image' Image "
                f"feature and a 'label' ClassLabel feature, and has {keys}. Pass an "
                "image-classification dataset (fashion_mnist, cifar10, imagenet2012, ...) with "
                "--dataset.")
        image_shape = tuple(features["image"].shape)
        if image_shape[-1] not in (1, 3, None):
            raise DataError(f"{name!r} images have {image_shape[-1]} channels; the augmentations "
                            "take 1 (grayscale) or 3 (RGB) channels.")
        self._prepare(name)
        info = self.builder.info
        self.info = DatasetInfo(
            name=name, num_classes=int(features["label"].num_classes),
            num_examples={s: int(v.num_examples) for s, v in info.splits.items()},
            image_shape=image_shape, source=self.source)

    def _prepare(self, name: str):
        if self.builder.is_prepared():
            return
        where = self.builder.data_dir
        try:
            self.builder.download_and_prepare()
        except Exception as e:  # network, disk: no finer classes are shared by every downloader
            if "Manual directory" in str(e):
                # TFDS's message names the manual directory it looked in and what to put there.
                raise DataError(
                    f"{name!r} must be downloaded by hand. {e} Alternatively pass --data_dir=DIR "
                    f"with the files in DIR/downloads/manual, or a DIR where {name} is already "
                    "prepared.") from e
            raise DataError(
                f"Could not download and prepare {name!r} into {where}: {type(e).__name__}: {e}. "
                f"On a machine without network, build it elsewhere (`tfds build {name}`) and pass "
                "--data_dir=DIR pointing at the copied data directory, or use "
                "--dataset=fashion_mnist without --data_dir (embedded, offline).") from e

    def _split_arg(self, split: str, index: int, count: int):
        subsplit = tfds.even_splits(split, count)[index]
        if self.info.num_examples:  # validate early, with the list of splits
            _resolve_split(split, index, count, self.builder.info.splits, self.info.name)
        return subsplit

    def num_examples(self, split: str, index: int, count: int) -> int:
        if self.info.num_examples:
            instrs = _resolve_split(split, index, count, self.builder.info.splits, self.info.name)
            sizes = self.info.num_examples
            return sum((sizes[i.splitname] if i.to is None else i.to) - (i.from_ or 0)
                       for i in instrs)
        # Split sizes unknown (e.g. mocked TFDS): count what the reader declares.
        n = int(self.raw(split, index, count, False, 0)[0].cardinality())
        if n < 0:
            raise DataError(f"TFDS does not know how many examples {self.info.name} {split!r} "
                            "holds; prepare the dataset (`tfds build`) so that its split sizes "
                            "are recorded.")
        return n

    def raw(self, split: str, index: int, count: int, shuffle_files: bool, seed: int,
            file_order: bool = False) -> tuple[tf.data.Dataset, str | None]:
        """Pipeline `index` of `count`'s share of `split`, undecoded: (dataset of (key, encoded
        image bytes, label int32), file). With `file_order`, the shard files front to back.

        A share within one file (every split of datasets up to a shard's size, ~1 GB) is read
        in that file's order, so key = the record's index in `file` (int64, counted here); else
        key = TFDS's tfds_id string '<file>__<record>' and file = None (TFDS's ids cost ~0.2 ms
        of reading per example, which the one-file case saves)."""
        split_arg = self._split_arg(split, index, count)
        try:
            files = self.builder.info.splits[split_arg].file_instructions
        except Exception:  # noqa: BLE001 -- split sizes unknown (e.g. mocked TFDS): use the ids
            files = []
        one_file = len(files) == 1
        options = dict(try_autocache=False, add_tfds_id=not one_file)
        read_config = (tfds.ReadConfig(interleave_cycle_length=1, **options) if file_order else
                       tfds.ReadConfig(shuffle_seed=seed, **options))
        ds = self.builder.as_dataset(split=split_arg, shuffle_files=shuffle_files,
                                     read_config=read_config,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        if one_file:
            ds = ds.enumerate(start=files[0].skip)
            return ds.map(lambda i, ex: (i, ex["image"], tf.cast(ex["label"], tf.int32))), \
                os.path.basename(files[0].filename)
        return ds.map(lambda ex: (ex["tfds_id"], ex["image"], tf.cast(ex["label"], tf.int32))), None

    def decode(self, raw: tf.data.Dataset, file: str | None = None) -> tf.data.Dataset:
        """(image, label int32) of the (key, encoded image, label) examples of `raw` (keys and
        `file` as `raw` returns them), in order, each image decoded as TFDS decodes it
        (tf.io.decode_image with the declared channels and dtype) and checked against the
        declared shape (height, width, channels where declared; 1 or 3 channels where not). A
        bad image stops the pipeline with BadImageError or is dropped and counted, as
        self.on_bad_image says."""
        feature = self.builder.info.features["image"]
        declared = tuple(feature.shape)
        channels = declared[-1] or 0
        dtype = tf.dtypes.as_dtype(feature.np_dtype)
        mode = self.on_bad_image

        def decode_one(j, encoded):
            image = tf.io.decode_image(encoded, channels=channels, dtype=dtype,
                                       expand_animations=False)  # always [h, w, c]
            shape = tf.shape(image, out_type=tf.int64)
            ok = tf.constant(True)
            for axis, size in enumerate(declared):
                if size is not None:
                    ok = tf.logical_and(ok, tf.equal(shape[axis], size))
            if not channels:
                ok = tf.logical_and(ok, tf.logical_or(tf.equal(shape[2], 1), tf.equal(shape[2], 3)))
            return j, image, ok

        def report(undecodable, wrong, shape):
            """Reports the keys `undecodable` [u] and `wrong` [w] (w <= 1; its image's shape
            [3]); runs only when one is non-empty and returns 0, on which the stream depends."""
            def call(undecodable, wrong, shape):
                reason = f"shape {[int(d) for d in shape]}, expected {_expected_shape(declared)}"
                for keys, why in ((undecodable, "undecodable bytes"), (wrong, reason)):
                    for key in keys:  # 'stop' raises at the first
                        tfds_id = f"{file}__{int(key)}" if file is not None else key
                        _BAD_IMAGES.report(mode, self._describe(tfds_id), why)
                return np.int64(0)
            return tf.numpy_function(call, [undecodable, wrong, shape], tf.int64, stateful=True)

        def group(keys, encoded, labels):
            n = tf.shape(keys, out_type=tf.int64)[0]
            # ignore_errors drops an image whose bytes do not decode; the scan finds the gap in
            # the group positions j and reports the dropped ones, the sentinel j = n ends it.
            good = tf.data.Dataset.from_tensor_slices((tf.range(n), encoded)).map(
                decode_one).ignore_errors()
            sentinel = tf.data.Dataset.from_tensors(
                (n, tf.zeros([0, 0, max(channels, 1)], dtype), tf.constant(True)))

            def check(expected, element):
                j, image, shape_ok = element
                example = j < n
                wrong = tf.logical_and(example, tf.logical_not(shape_ok))
                # One branch per element, taken only when something is bad.
                reported = tf.cond(
                    tf.logical_or(j > expected, wrong),
                    lambda: report(keys[expected:j], keys[j:j + tf.cast(wrong, tf.int64)],
                                   tf.shape(image, out_type=tf.int64)),
                    lambda: tf.constant(0, tf.int64))
                keep = tf.logical_and(tf.logical_and(example, shape_ok), tf.equal(reported, 0))
                return j + 1, (j, image, keep)

            out = good.concatenate(sentinel).scan(tf.constant(0, tf.int64), check)
            out = out.filter(lambda j, image, keep: keep)
            return out.map(lambda j, image, keep: (image, tf.gather(labels, j)))

        # block_length >= group size and deterministic: the groups' examples come out in order.
        return raw.batch(_DECODE_GROUP).interleave(
            group, cycle_length=tf.data.AUTOTUNE, block_length=_DECODE_GROUP,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _describe(self, tfds_id: bytes) -> str:
        """'<dataset> split '<split>', example <i> (<file>, record <r>)' of a tfds_id
        ('<file>__<r>'); i is the example's index in the whole split in file order."""
        tfds_id = tfds_id.decode() if isinstance(tfds_id, bytes) else str(tfds_id)
        file, _, record = tfds_id.rpartition("__")
        if not hasattr(self, "_shard_offsets"):
            offsets = {}
            for split_name, info in self.builder.info.splits.items():
                start = 0
                for filename, length in zip(info.filenames, info.shard_lengths):
                    offsets[filename] = (split_name, start)
                    start += int(length)
            self._shard_offsets = offsets
        if file in self._shard_offsets and record.isdigit():
            split_name, start = self._shard_offsets[file]
            return (f"{self.info.name} split '{split_name}', example {start + int(record)} "
                    f"({file}, record {record})")
        return f"{self.info.name} example {tfds_id}"

    def read(self, split: str, index: int, count: int, shuffle_files: bool, seed: int,
             cache: bool) -> tf.data.Dataset:
        ds = self.decode(*self.raw(split, index, count, shuffle_files, seed))
        return ds.cache() if cache else ds


def _expected_shape(declared: tuple) -> str:
    dims = ", ".join("any" if d is None else str(d) for d in declared[:2])
    return f"[{dims}, {declared[2]}]" if declared[2] else f"[{dims}] with 1 or 3 channels"


def _open_source(cfg: DataConfig):
    if cfg.dataset == FASHION_MNIST and cfg.data_dir is None:
        return _DebianSource()
    return _TfdsSource(cfg.dataset, cfg.data_dir, cfg.on_bad_image)


def is_prepared(cfg: DataConfig) -> bool:
    """True when `cfg.dataset` can be read without downloading or preparing anything."""
    if cfg.dataset == FASHION_MNIST and cfg.data_dir is None:
        return all(os.path.exists(os.path.join(fashion_mnist_dir(), f))
                   for files in _FASHION_MNIST_FILES.values() for f in files)
    return _tfds_builder(cfg.dataset, cfg.data_dir).is_prepared()


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Name, number of classes, split sizes, image shape and source of `cfg.dataset`."""
    return _open_source(cfg).info


def num_examples(cfg: DataConfig, split: str | None = None) -> int:
    """Examples in `split` (None: cfg.train_split), slices resolved: 'train[:10%]' of
    Fashion-MNIST -> 6000, 'train[:50%]+test' -> 40000. (DatasetInfo.num_examples only holds the
    whole splits.)"""
    split = cfg.train_split if split is None else split
    return _open_source(cfg).num_examples(split, 0, 1)


# --------------------------------------------------------------------------------------------------
# Pipelines.
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Layout:
    batch: int  # per-replica batch b
    num_pipelines: int
    pipeline_id: int
    replicas_per_pipeline: int


def _layout(global_batch_size: int, input_context: tf.distribute.InputContext | None) -> _Layout:
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise DataError(f"The global batch size must be a positive int, got {global_batch_size!r}.")
    if input_context is None:
        return _Layout(global_batch_size, 1, 0, 1)
    replicas = input_context.num_replicas_in_sync
    pipelines = input_context.num_input_pipelines
    if global_batch_size % replicas:
        raise DataError(f"The global batch size {global_batch_size} is not divisible by the "
                        f"{replicas} replicas in sync; pass a batch size that is a multiple of "
                        f"{replicas}.")
    if replicas % pipelines:
        raise DataError(f"{replicas} replicas cannot be split evenly over {pipelines} input "
                        "pipelines; use a replica count that is a multiple of the worker count.")
    return _Layout(input_context.get_per_replica_batch_size(global_batch_size), pipelines,
                   input_context.input_pipeline_id, replicas // pipelines)


def _check_sizes(cfg: DataConfig, aug_cfg: aug_lib.AugmentConfig):
    if aug_cfg.image_size != cfg.image_size:
        raise DataError(f"DataConfig.image_size={cfg.image_size} but AugmentConfig.image_size="
                        f"{aug_cfg.image_size}; build both from the same --image_size.")


def _shuffle_buffer(cfg: DataConfig, per_replica_batch: int) -> int:
    if cfg.shuffle_buffer is not None:
        return cfg.shuffle_buffer
    return per_replica_batch * (50 if cfg.image_size <= 32 else 10)


def _stream_seed(cfg: DataConfig, pipeline_id: int) -> tf.Tensor:
    """int64 [2] base seed of one input pipeline's augmentations."""
    base = tf.constant([cfg.seed, 0x5EED], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.constant(pipeline_id, tf.int64))


def example_seed(base: tf.Tensor, position: tf.Tensor, view: int) -> tf.Tensor:
    """int64 [2] stateless seed of one view of the example at `position` of a stream.

    seed = fold_in(fold_in(base, position), view), with `base` from (cfg.seed, pipeline id).
    """
    seed = tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))
    return tf.random.experimental.stateless_fold_in(seed, tf.constant(view, tf.int64))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # the seeds make each element deterministic; keep their order too
    return options


def _split_infos(source) -> Mapping:
    if isinstance(source, _DebianSource):
        return source._split_infos
    return source.builder.info.splits


def read_in_file_order(cfg: DataConfig, split: str | None = None, index: int = 0,
                       count: int = 1) -> tf.data.Dataset:
    """(image, label int32) of input pipeline `index` of `count`'s share of `split` (None:
    cfg.train_split) in file order: the order that defines example indices (`train_indices`).

    Debian Fashion-MNIST: the IDX files' order. TFDS: the split's shard files in order, each read
    front to back (no file shuffling, interleave cycle length 1), i.e. the order of
    `builder.as_dataset(split, shuffle_files=False,
    read_config=tfds.ReadConfig(interleave_cycle_length=1))` and of its 'file_name' feature.
    With cfg.on_bad_image='skip' a bad image's example is left out, so the examples after it come
    one place earlier than their index.
    """
    split = cfg.train_split if split is None else split
    return _read_in_file_order(_open_source(cfg), split, index, count)


def _read_in_file_order(source, split: str, index: int, count: int,
                        keep: np.ndarray | None = None) -> tf.data.Dataset:
    """With `keep` (bool [n], one per example of the share in file order), only the examples it
    marks; selected by their position before any is decoded, so a bad image dropped along the way
    shifts no other example's position."""
    debian = isinstance(source, _DebianSource)
    ds, file = ((source.read(split, index, count, shuffle_files=False, seed=0, cache=False), None)
                if debian else
                source.raw(split, index, count, shuffle_files=False, seed=0, file_order=True))
    if keep is not None:
        keep = tf.constant(keep)
        ds = ds.enumerate().filter(lambda i, example: tf.gather(keep, i))
        ds = ds.map(lambda i, example: example)
    return ds if debian else source.decode(ds, file)


def _split_positions(source, split: str, index: int, count: int) -> np.ndarray:
    """int64 [n]: for each example of pipeline `index` of `count`'s share of `split`, in read
    order, its index in the whole split (0..N-1 over the split's parts in file order).

    Pipeline shares of a sum of splits ('train[:50%]+test') are not contiguous in the whole split
    (each part is divided separately), hence this map rather than an offset.
    """
    infos = _split_infos(source)
    name = getattr(source.info, "name", "?")

    def pieces(i, n):
        out = []
        for instr in _resolve_split(split, i, n, infos, name):
            size = int(infos[instr.splitname].num_examples)
            out.append((instr.splitname, instr.from_ or 0, size if instr.to is None else instr.to))
        return out

    whole, offset, starts = pieces(0, 1), 0, []
    for _, a, b in whole:
        starts.append(offset)
        offset += b - a
    out = []
    for part, a, b in pieces(index, count):
        for (wpart, wa, wb), start in zip(whole, starts):
            if wpart == part and wa <= a and b <= wb:
                out.append(np.arange(start + a - wa, start + b - wa, dtype=np.int64))
                break
        else:
            raise DataError(f"Cannot place examples {a}..{b} of {part!r} inside split {split!r}.")
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def train_examples(cfg: DataConfig) -> int:
    """Examples one epoch of the training pipelines visits: len(cfg.train_indices) when set,
    else num_examples(cfg) (the whole train_split)."""
    if cfg.train_indices is not None:
        return len(cfg.train_indices)
    return num_examples(cfg)


def _subset_examples(cfg: DataConfig, source, layout: _Layout) -> tf.data.Dataset:
    """(image, label) of the examples of cfg.train_indices in this pipeline's share, file order.

    The whole share is read and filtered before decoding (only the subset's images are decoded;
    cfg.cache keeps the decoded subset).
    """
    wanted = np.asarray(cfg.train_indices, np.int64)
    total = source.num_examples(cfg.train_split, 0, 1)
    if wanted[-1] >= total:
        raise DataError(f"DataConfig.train_indices holds index {int(wanted[-1])} but split "
                        f"{cfg.train_split!r} of {source.info.name} has {total} examples.")
    positions = _split_positions(source, cfg.train_split, layout.pipeline_id, layout.num_pipelines)
    keep = np.isin(positions, wanted)
    if not keep.any():
        raise DataError(f"Input pipeline {layout.pipeline_id} of {layout.num_pipelines} gets no "
                        f"example of DataConfig.train_indices ({len(wanted)} indices of split "
                        f"{cfg.train_split!r}); use a larger subset or fewer workers.")
    ds = _read_in_file_order(source, cfg.train_split, layout.pipeline_id, layout.num_pipelines,
                             keep=keep)
    return ds.cache() if cfg.cache else ds


def _training_stream(cfg: DataConfig, source, layout: _Layout,
                     start_step: int = 0) -> tf.data.Dataset:
    """(position int64, (image, label int32)) over the shuffled, repeated training split.

    With `start_step`, the stream starts where it would be after that many training steps of an
    uninterrupted run (each step takes one per-replica batch for every replica this pipeline
    feeds): the skipped elements are only shuffled, never decoded or augmented, and positions keep
    counting from the start, so the seeds of every later example are those of the uninterrupted run.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if source.num_examples(cfg.train_split, layout.pipeline_id, layout.num_pipelines) == 0:
        raise DataError(f"Input pipeline {layout.pipeline_id} of {layout.num_pipelines} gets no "
                        f"example of split {cfg.train_split!r} of {source.info.name}; use a larger "
                        "split or fewer workers.")
    shuffle_seed = cfg.seed * 1000003 + layout.pipeline_id
    if cfg.train_indices is not None:  # a subset: read in file order, keep the listed examples
        ds = _subset_examples(cfg, source, layout)
    else:
        ds = source.read(cfg.train_split, layout.pipeline_id, layout.num_pipelines,
                         shuffle_files=True, seed=shuffle_seed, cache=cfg.cache)
    ds = ds.shuffle(_shuffle_buffer(cfg, layout.batch), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate()
    if start_step:
        ds = ds.skip(start_step * layout.batch * layout.replicas_per_pipeline)
    return ds


def pretrain_dataset(cfg: DataConfig, aug_cfg: aug_lib.AugmentConfig, global_batch_size: int,
                     input_context: tf.distribute.InputContext | None = None,
                     start_step: int = 0) -> tf.data.Dataset:
    """Infinite stream of pretraining batches of two independently augmented views.

    Yields {'view1': [b, S, S, 3] float32, 'view2': [b, S, S, 3] float32, 'label': [b] int32} with
    b = global_batch_size / num_replicas_in_sync and S = cfg.image_size. Example k of this input
    pipeline's stream gets view v = aug_lib.pretrain_view(image, seed_{k,v}, aug_cfg, v) with
    seed_{k,v} = example_seed(base(cfg.seed, pipeline id), k, v).
    """
    _check_sizes(cfg, aug_cfg)
    layout = _layout(global_batch_size, input_context)
    source = _open_source(cfg)
    base = _stream_seed(cfg, layout.pipeline_id)
    size = cfg.image_size

    def two_views(position, example):
        image, label = example
        views = [tf.ensure_shape(
            aug_lib.pretrain_view(image, example_seed(base, position, v), aug_cfg, v),
            [size, size, 3]) for v in (0, 1)]
        return {"view1": views[0], "view2": views[1], "label": label}

    ds = _training_stream(cfg, source, layout, start_step)
    ds = ds.map(two_views, num_parallel_calls=cfg.num_parallel_calls)
    ds = ds.batch(layout.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options())


def linear_train_dataset(cfg: DataConfig, aug_cfg: aug_lib.AugmentConfig, global_batch_size: int,
                         input_context: tf.distribute.InputContext | None = None,
                         augment: bool = True, start_step: int = 0) -> tf.data.Dataset:
    """Infinite shuffled stream of labelled batches for linear evaluation and fine-tuning.

    Yields {'image': [b, S, S, 3] float32, 'label': [b] int32}. With `augment`, image =
    aug_lib.linear_train_view(x, seed_k, aug_cfg) (the release's fine-tuning preprocessing: random
    crop, resize, flip, no colour ops) with seed_k = example_seed(base, k, 0); without, image =
    aug_lib.eval_preprocess(x, aug_cfg) (centre crop unless S <= 32, resize).
    """
    _check_sizes(cfg, aug_cfg)
    layout = _layout(global_batch_size, input_context)
    source = _open_source(cfg)
    base = _stream_seed(cfg, layout.pipeline_id)
    size = cfg.image_size

    def preprocess(position, example):
        image, label = example
        if augment:
            out = aug_lib.linear_train_view(image, example_seed(base, position, 0), aug_cfg)
        else:
            out = aug_lib.eval_preprocess(image, aug_cfg)
        return {"image": tf.ensure_shape(out, [size, size, 3]), "label": label}

    ds = _training_stream(cfg, source, layout, start_step)
    ds = ds.map(preprocess, num_parallel_calls=cfg.num_parallel_calls)
    ds = ds.batch(layout.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options())


def _eval_batches(source, split: str, layout: _Layout) -> int:
    """Batches one input pipeline yields: a multiple of the replicas it feeds."""
    # Pipeline 0 holds the most examples (even_splits hands the remainder to the first pipelines).
    largest = source.num_examples(split, 0, layout.num_pipelines)
    steps = -(-largest // layout.batch)
    r = layout.replicas_per_pipeline
    return -(-steps // r) * r


def eval_steps(cfg: DataConfig, split: str | None, global_batch_size: int,
               input_context: tf.distribute.InputContext | None = None) -> int:
    """Steps of one evaluation pass over `split` (None: cfg.eval_split): the number of batches
    every replica receives from `eval_dataset` (distributed or not).

    steps = ceil(ceil(N / n) / (b r)) for N examples, n input pipelines, per-replica batch b and
    r = num_replicas_in_sync / n replicas per pipeline; each pipeline yields steps x r batches.
    """
    layout = _layout(global_batch_size, input_context)
    split = cfg.eval_split if split is None else split
    return _eval_batches(_open_source(cfg), split, layout) // layout.replicas_per_pipeline


def eval_dataset(cfg: DataConfig, aug_cfg: aug_lib.AugmentConfig, split: str | None,
                 global_batch_size: int,
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """One pass over `split` (None: cfg.eval_split) in full-size batches, file order, no shuffle.

    Yields {'image': [b, S, S, 3] float32, 'label': [b] int32, 'mask': [b] float32}, eval_steps()
    batches per replica. image = aug_lib.eval_preprocess(x, aug_cfg); mask is 1 on real examples
    and 0 on the zero padding that fills the last batches, so sum(mask) over all replicas = N
    (N minus the images dropped with cfg.on_bad_image='skip').
    """
    _check_sizes(cfg, aug_cfg)
    layout = _layout(global_batch_size, input_context)
    split = cfg.eval_split if split is None else split
    source = _open_source(cfg)
    batches = _eval_batches(source, split, layout)
    size = cfg.image_size

    def preprocess(image, label):
        image = tf.ensure_shape(aug_lib.eval_preprocess(image, aug_cfg), [size, size, 3])
        return {"image": image, "label": label, "mask": tf.constant(1.0, tf.float32)}

    # Padding up to the fixed number of batches; with on_bad_image='skip' the images dropped
    # leave more of it (the split's size counts them).
    padding = tf.data.Dataset.from_tensors({
        "image": tf.zeros([size, size, 3], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(0.0, tf.float32)}).repeat()
    ds = source.read(split, layout.pipeline_id, layout.num_pipelines, shuffle_files=False,
                     seed=cfg.seed, cache=False)
    ds = ds.map(preprocess, num_parallel_calls=cfg.num_parallel_calls).concatenate(padding)
    ds = ds.take(batches * layout.batch)
    ds = ds.batch(layout.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options())


def distribute(strategy: tf.distribute.Strategy,
               dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    """strategy.distribute_datasets_from_function(dataset_fn): one pipeline per worker, each
    called with its InputContext, e.g. `lambda ctx: pretrain_dataset(cfg, aug, B, ctx)`."""
    return strategy.distribute_datasets_from_function(dataset_fn)
