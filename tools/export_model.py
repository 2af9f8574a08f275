"""Export a checkpoint's inference networks as a SavedModel that needs only TensorFlow.

  python tools/export_model.py --checkpoint=runs/x --output=exports/x
  python tools/export_model.py --checkpoint=pretrain_res50x1.pkl --output=exports/byol_r50
  python tools/export_model.py --checkpoint=release/ckpt-1000 --output=exports/r --image_size=224

--checkpoint takes anything `common.interop.loading.load_feature_model` reads (this project's runs
and ckpt-N prefixes, the original release's checkpoints) and DeepMind BYOL parameter files (.pkl /
.npz, `tools.haiku_params.load_feature_model`). The SavedModel takes uint8 or float images of any
size and returns {'backbone', 'projection', 'logits'} (README, "SavedModel export";
common/interop/export.py). Bad input: one line on stderr, exit status 2, nothing written.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command's flags (defined only when run as a command, so that importing `export` from
    another program adds none)."""
    flags.DEFINE_string("checkpoint", None, "A run's model_dir or ckpt-N prefix, a release "
                        "checkpoint, or a DeepMind BYOL parameter file (.pkl / .npz).")
    flags.DEFINE_string("output", None, "The SavedModel's folder (replaced if it exists).")
    flags.DEFINE_integer("image_size", None, "Side the model resizes inputs to (default: the "
                         "checkpoint's training size; 224 for DeepMind parameter files).")


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _eval_crop(checkpoint: str) -> tuple[float, str]:
    """(crop proportion, rounding) of the checkpoint's own evaluation pipeline: a project run's
    augmentation recipe from its config.json; DeepMind's reference (int(): floor) for haiku files;
    the release's (round half to even) otherwise."""
    if checkpoint.endswith((".pkl", ".pickle", ".npz")):
        return 0.875, "floor"
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    config = os.path.join(folder, "config.json")
    if os.path.exists(config):
        from common.cli import job, settings
        with open(config) as f:
            stored = json.load(f)["config"]
        aug = job.augment_config(settings.AugmentSettings(**stored["augment"]),
                                 stored["data"]["image_size"])
        return aug.eval_crop_proportion, aug.eval_crop_rounding
    return 0.875, "rint"


def export(checkpoint: str, output: str, image_size: int | None = None) -> dict:
    """Loads `checkpoint` and writes its SavedModel to `output`; returns the signature description."""
    from common.interop import export as export_lib

    overrides = {} if image_size is None else {"image_size": image_size}
    if checkpoint.endswith((".pkl", ".pickle", ".npz")):
        from tools import haiku_params
        model = haiku_params.load_feature_model(checkpoint, **overrides)
    else:
        from common.interop import loading
        model = loading.load_feature_model(checkpoint, **overrides)
    proportion, rounding = _eval_crop(checkpoint)
    return export_lib.export_saved_model(model, output, proportion, rounding)


def main(argv):
    if len(argv) > 1:
        _die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not FLAGS.checkpoint or not FLAGS.output:
        _die("pass --checkpoint=<run, ckpt-N, release checkpoint or DeepMind .pkl/.npz> and "
             "--output=<folder>.")
    try:
        description = export(FLAGS.checkpoint, FLAGS.output, FLAGS.image_size)
    except (ValueError, KeyError, FileNotFoundError, NotImplementedError) as exc:
        _die(str(exc.args[0] if exc.args else exc))
    print(f"wrote {FLAGS.output}: {json.dumps(description['signatures']['serving_default'])}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
