"""SavedModel export of a `FeatureModel`: a self-contained model that preprocesses raw images.

The SavedModel needs TensorFlow only (no code of this project) to load and run:

  loaded = tf.saved_model.load(path)
  out = loaded(images)                                   # uint8 or float32 [N, H, W, 3]
  out = loaded.signatures["serving_default"](images=x)   # float32 [N, H, W, 3] in [0, 1]
  out = loaded.signatures["serving_uint8"](images=u8)    # uint8 [N, H, W, 3]
  layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")

Preprocessing inside the model, the evaluation transform of `common.data.augment.eval_preprocess`
applied to the whole batch: uint8 -> x / 255 (float input is taken to be in [0, 1]); when
image_size > 32, the centred square crop of side c = round(crop_proportion * min(H, W)) at
offsets ((H - c + 1) // 2, (W - c + 1) // 2); bicubic resize to image_size (no antialias); clip
to [0, 1]; the checkpoint's normalisation (ImageNet mean/std or none). Outputs: 'backbone'
[N, D], 'projection' [N, d] when the model has a projection head, 'logits' [N, K] when it has a
classifier; every network in inference mode.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from common.data import augment
from common.interop import features

SIGNATURE_FILE = "signatures.json"


class _Serving(tf.Module):
    """The exported object: the networks as tracked attributes and one polymorphic `__call__`."""

    def __init__(self, model: features.FeatureModel, crop_proportion: float, crop_rounding: str):
        super().__init__(name="feature_model")
        # Attributes make the networks' variables part of the SavedModel.
        self.encoder = model.encoder
        self.projector = model.projector
        self.classifier = model.classifier
        self._model = dataclasses.replace(model, target_encoder=None, target_projector=None)
        self._crop = (crop_proportion, crop_rounding)
        self.image_size = tf.constant(model.image_size, tf.int32)

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """[N, H, W, 3] uint8 or float in [0, 1] -> [N, S, S, 3] float in [0, 1] (crop, resize, clip;
        normalisation happens in FeatureModel.outputs)."""
        if images.dtype == tf.uint8:
            x = tf.cast(images, tf.float32) * (1.0 / 255.0)
        else:
            x = tf.cast(images, tf.float32)
        size = self._model.image_size
        if size > 32:
            shape = tf.shape(x)
            box = augment.center_crop_box(shape[1], shape[2], *self._crop)
            x = x[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3], :]
        x = tf.image.resize(x, [size, size], method=tf.image.ResizeMethod.BICUBIC, antialias=False)
        return tf.clip_by_value(x, 0.0, 1.0)

    def run(self, images: tf.Tensor) -> dict:
        out = self._model.outputs(self.preprocess(images))
        return {k: out[k] for k in ("backbone", "projection", "logits") if k in out}


def export_saved_model(model: features.FeatureModel, path: str, crop_proportion: float = 0.875,
                       crop_rounding: str = "rint") -> dict:
    """Writes `model` as a SavedModel at `path` (see the module docstring for what it computes).

    crop_proportion, crop_rounding: the evaluation centre crop of the checkpoint's own pipeline
      (common.data.augment.AugmentConfig.eval_crop_proportion / eval_crop_rounding).
    Written to a temporary sibling folder and renamed, so `path` never holds a partial export; an
    existing export at `path` is replaced. Also writes <path>/signatures.json (inputs, outputs and
    their shapes, preprocessing). Returns that description.
    """
    if crop_rounding not in ("rint", "floor"):
        raise ValueError(f"crop_rounding must be 'rint' or 'floor', got {crop_rounding!r}.")
    if not 0.0 < crop_proportion <= 1.0:
        raise ValueError(f"crop_proportion must be in (0, 1], got {crop_proportion}.")
    serving = _Serving(model, crop_proportion, crop_rounding)
    specs = {"serving_default": tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
             "serving_uint8": tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")}
    call = tf.function(serving.run)
    concrete = {name: call.get_concrete_function(spec) for name, spec in specs.items()}
    serving.__call__ = call
    dims = {k: int(v.shape[-1]) for k, v in concrete["serving_default"].structured_outputs.items()}
    description = {
        "image_size": model.image_size, "source": model.source, "description": model.description,
        "signatures": {name: {"inputs": {"images": f"{spec.dtype.name} [N, H, W, 3]"},
                              "outputs": {k: f"float32 [N, {d}]" for k, d in dims.items()}}
                       for name, spec in specs.items()},
        "preprocessing": (f"uint8 / 255 (float taken as [0, 1]); "
                          + (f"centre crop {crop_proportion:g} x min(H, W) ({crop_rounding}); "
                             if model.image_size > 32 else "")
                          + f"bicubic resize to {model.image_size}; clip [0, 1]; "
                          + ("ImageNet mean/std" if model.normalize is augment.normalize
                             else "the checkpoint's normalisation")),
    }
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        tf.saved_model.save(serving, tmp, signatures=concrete)
        with open(os.path.join(tmp, SIGNATURE_FILE), "w") as f:
            json.dump(description, f, indent=2, sort_keys=True)
            f.write("\n")
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "export"))
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return description
