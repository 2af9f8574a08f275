"""Features of any supported checkpoint on a batch of images or a TFDS split.

  python tools/extract_features.py --checkpoint=PREFIX --images=X.npy --output=F.npz
  python tools/extract_features.py --checkpoint=runs/x --dataset=cifar10 --split=test --output=F.npz

--checkpoint: this project's checkpoints (a ckpt-N prefix or a model_dir, with the run's
config.json), the original release's (architecture read from the stored shapes; --resnet_depth,
--width_multiplier, --sk_ratio, --se_ratio override it) or DeepMind's BYOL parameters (a .pkl or
.npz file, read by tools.haiku_params). --images: float [N, H, W, 3] in [0, 1], the batch the
input pipeline delivers (decoded, cropped and resized to the model's image size); the model's own
input transform (ImageNet mean/std where it has one) is applied here. --dataset/--split: a TFDS
split (or the built-in fashion_mnist) preprocessed as for evaluation (centre crop above 32 px,
resize to --image_size), labels included. Every network runs in inference mode.

Output (.npz): 'backbone' [N, D]; 'projection' [N, d] when the checkpoint has a projection head;
'target_backbone', 'target_projection' with an EMA target; 'logits' [N, K] with a classifier
(the online probe or the release's supervised head); 'labels' [N] for a dataset.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

_HAIKU_SUFFIXES = (".pkl", ".pickle", ".npz")


def is_haiku_file(path: str) -> bool:
    """DeepMind's parameter files are single .pkl/.npz files; TF checkpoints are prefixes or
    directories."""
    return os.path.isfile(path) and path.endswith(_HAIKU_SUFFIXES)


def load_model(checkpoint: str, print_fn=None, **overrides):
    """The FeatureModel of any supported checkpoint (see the module docstring). overrides: image_size
    and, for release checkpoints, resnet_depth, width_multiplier, sk_ratio, se_ratio."""
    if is_haiku_file(checkpoint):
        from tools import haiku_params
        arch = sorted(k for k in overrides if k != "image_size")
        if arch:
            raise ValueError(f"{arch}: DeepMind parameter files carry their architecture in their "
                             "shapes; only --image_size applies to them.")
        kw = {"image_size": overrides["image_size"]} if overrides.get("image_size") else {}
        return haiku_params.load_feature_model(checkpoint, **kw)
    from common.interop import loading
    return loading.load_feature_model(checkpoint, print_fn=print_fn, **overrides)


def extract_features(model, images=None, dataset=None, batch_size: int = 256) -> dict:
    """{'backbone', 'projection', 'target_backbone', 'target_projection', 'logits' (those the
    model has), and 'labels' for a dataset: numpy arrays with N rows}.

    model: a common.interop.features.FeatureModel.
    images: float [N, H, W, 3] in [0, 1] (numpy), run in slices of `batch_size`.
    dataset: instead, an iterable of {'image' [b, S, S, 3] in [0, 1], 'label' [b], 'mask' [b]}
      batches (rows with mask 0 are padding and are dropped), e.g. `dataset_batches`.
    One traced forward pass (batch dimension left free), so memory stays that of one batch.
    """
    import tensorflow as tf
    if (images is None) == (dataset is None):
        raise ValueError("pass either images or dataset.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    forward = tf.function(model.outputs, reduce_retracing=True)
    chunks: dict = {}

    def add(out: dict, keep=None):
        for key, value in out.items():
            value = np.asarray(value)
            chunks.setdefault(key, []).append(value if keep is None else value[keep])

    if images is not None:
        for start in range(0, len(images), batch_size):
            batch = tf.constant(np.asarray(images[start:start + batch_size], np.float32))
            add({k: v.numpy() for k, v in forward(batch).items()})
    else:
        for batch in dataset:
            keep = np.asarray(batch["mask"]) > 0
            out = {k: v.numpy() for k, v in forward(tf.convert_to_tensor(batch["image"])).items()}
            out["labels"] = np.asarray(batch["label"]).astype(np.int64)
            add(out, keep)
    if not chunks:
        raise ValueError("no images to extract features from.")
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def dataset_batches(name: str, split: str, image_size: int, batch_size: int = 256,
                    data_dir: str | None = None):
    """Evaluation batches of a TFDS split (or the built-in fashion_mnist) in [0, 1], not yet
    normalised: {'image', 'label', 'mask'} (see common.data.datasets.eval_dataset)."""
    import dataclasses

    from common.data import augment as augment_lib
    from common.data import datasets
    data = datasets.DataConfig(dataset=name, data_dir=data_dir, eval_split=split,
                               image_size=image_size)
    aug = dataclasses.replace(augment_lib.byol_config(image_size), normalize=False)
    return datasets.eval_dataset(data, aug, split, batch_size)


def save_npz(path: str, arrays: dict) -> None:
    """Writes the arrays to `path` through a temporary file and a rename (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _read_images(path: str) -> np.ndarray:
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        _die(f"--images={path}: cannot read it as a .npy array ({e}).")
    if isinstance(x, np.lib.npyio.NpzFile):
        _die(f"--images={path} is an .npz archive; save the batch with numpy.save as one .npy array.")
    if x.ndim != 4 or x.shape[-1] != 3:
        _die(f"--images={path} has shape {list(x.shape)}; pass [N, H, W, 3].")
    if not np.issubdtype(x.dtype, np.floating):
        _die(f"--images={path} is {x.dtype}; pass floats in [0, 1] (e.g. uint8 / 255).")
    if len(x) and (x.min() < 0 or x.max() > 1):
        _die(f"--images={path} holds values in [{x.min():.3g}, {x.max():.3g}]; pass floats in "
             "[0, 1], before any mean/std normalisation (the model applies its own).")
    return x.astype(np.float32)


def main(argv) -> None:
    from absl import flags
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        _die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not FLAGS.checkpoint or not FLAGS.output:
        _die("--checkpoint and --output are required.")
    if (FLAGS.images is None) == (FLAGS.dataset is None):
        _die("pass either --images=X.npy or --dataset=NAME (with --split).")
    if not FLAGS.output.endswith(".npz"):
        _die(f"--output={FLAGS.output}: name an .npz file.")
    images = _read_images(FLAGS.images) if FLAGS.images else None
    overrides = {k: FLAGS[k].value for k in ("resnet_depth", "width_multiplier", "sk_ratio",
                                             "se_ratio", "image_size") if FLAGS[k].present}
    from common.data import datasets
    try:
        model = load_model(FLAGS.checkpoint, print_fn=print, **overrides)
        print(f"loaded {model.description}", flush=True)
        if images is not None:
            if images.shape[1] != model.image_size or images.shape[2] != model.image_size:
                print(f"note: images are {images.shape[1]}x{images.shape[2]}; the checkpoint's "
                      f"image size is {model.image_size}.", flush=True)
            out = extract_features(model, images=images, batch_size=FLAGS.batch_size)
        else:
            batches = dataset_batches(FLAGS.dataset, FLAGS.split, model.image_size,
                                      FLAGS.batch_size, FLAGS.data_dir)
            out = extract_features(model, dataset=batches, batch_size=FLAGS.batch_size)
    except (ValueError, KeyError, datasets.DataError) as e:
        _die(str(e.args[0] if e.args else e))
    save_npz(FLAGS.output, out)
    print(f"wrote {FLAGS.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()),
          flush=True)


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("checkpoint", None, "A checkpoint of this project (ckpt-N prefix or "
                        "model_dir), of the original release, or a DeepMind BYOL .pkl/.npz file.")
    flags.DEFINE_string("images", None, ".npy of float [N, H, W, 3] in [0, 1].")
    flags.DEFINE_string("dataset", None, "TFDS dataset name (fashion_mnist is built in).")
    flags.DEFINE_string("split", "test", "Split of --dataset (TFDS syntax, e.g. test[:1000]).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory.")
    flags.DEFINE_string("output", None, "The .npz to write.")
    flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
    flags.DEFINE_integer("image_size", None, "Image side for --dataset (default: the "
                         "checkpoint's; release checkpoints: 32 with a CIFAR stem, else 224).")
    flags.DEFINE_integer("resnet_depth", None, "Release checkpoints: force the ResNet depth.")
    flags.DEFINE_float("width_multiplier", None, "Release checkpoints: force the width.")
    flags.DEFINE_float("sk_ratio", None, "Release checkpoints: force the selective-kernel ratio.")
    flags.DEFINE_float("se_ratio", None, "Release checkpoints: force the squeeze-excitation ratio.")


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
