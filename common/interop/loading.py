"""One entry point for every TensorFlow checkpoint a user may hand a tool: `load_feature_model`,
and `initialise_method`, which starts a run's model from such a checkpoint.

Both accept this project's checkpoints (a `ckpt-N` prefix or a model_dir with the run's
config.json) and the original release's (object-based checkpoints written by its `run.py`, the
architecture inferred from the stored shapes by `common.interop.release`).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import tensorflow as tf

from common.interop import features
from common.interop import release

# Module attributes of a project checkpoint's model that a FeatureModel uses.
_PROJECT_MODULES = ("encoder", "projector", "target_encoder", "target_projector", "probe")


def resolve(checkpoint: str) -> str:
    """A ckpt-N prefix from a prefix or a directory (ValueError with the fix when neither)."""
    return release.resolve(checkpoint)


def load_feature_model(checkpoint: str, print_fn: Callable | None = None,
                       **overrides) -> features.FeatureModel:
    """The inference-time networks stored at `checkpoint`.

    checkpoint: a ckpt-N prefix, or a directory whose `checkpoint` state file names one.
    print_fn: receives the import report of a release checkpoint (loaded / not in the
      checkpoint / not used), when given.
    overrides: release checkpoints: resnet_depth, width_multiplier, cifar_stem, sk_ratio, se_ratio
      (win over what the shapes say; the import refuses when they cannot match), image_size,
      normalize; project checkpoints: image_size.
    Returns a FeatureModel with encoder, projector, the target networks when stored, and the
    classifier (the online probe, or the release's supervised head); `source` is 'project' or
    'release'. Raises ValueError (one line: what does not match and how to fix it) for an
    unreadable path or an architecture that cannot match the stored shapes.
    """
    path = resolve(checkpoint)
    if release.is_release_checkpoint(path):
        return release.load(path, print_fn=print_fn, **overrides)[0]
    return _load_project(path, **overrides)


def run_config(path: str) -> dict:
    """The config.json of the run that wrote the checkpoint `path` (a ckpt-N prefix)."""
    from common.cli import job
    config_path = os.path.join(os.path.dirname(path), job.CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise ValueError(f"{config_path} is missing: a checkpoint of this project is rebuilt from "
                         "the config.json its run wrote next to it (copy it there), and the "
                         "original release's checkpoints keep their backbone at model/_resnet.")
    with tf.io.gfile.GFile(config_path) as f:
        return json.load(f)


def _load_project(path: str, image_size: int | None = None, **unknown) -> features.FeatureModel:
    from common.cli import job, settings
    from common.data import augment as augment_lib
    from common.networks import heads as heads_lib
    from common.networks import resnet as resnet_lib

    if unknown:
        raise ValueError(f"{sorted(unknown)}: a checkpoint of this project takes its architecture "
                         "from its run's config.json; only image_size may be overridden.")
    config = run_config(path)
    run = config["config"]
    model = settings.ModelSettings(**run["model"])
    resnet_cfg = job.resnet_config(model, run["data"]["image_size"])
    shapes = dict(tf.train.list_variables(path))
    present = {name for name in _PROJECT_MODULES
               if any(k.startswith(f"model/{name}/") for k in shapes)}
    if "encoder" not in present:
        raise ValueError(f"{path} holds no model/encoder: not a checkpoint of this project's "
                         "trainers.")
    modules = {"encoder": resnet_lib.ResNet(resnet_cfg, name="encoder")}
    feature_dim = modules["encoder"].feature_dim

    def mlp(name):
        return heads_lib.MLP(feature_dim, model.proj_head_hidden_dim, model.proj_out_dim,
                             num_layers=model.num_proj_layers, bn=resnet_cfg.bn,
                             use_hidden_bias=model.mlp_hidden_bias,
                             output_bn=model.proj_head_output_bn, name=name)
    if "projector" in present:
        modules["projector"] = mlp("projector")
    if "target_encoder" in present:
        modules["target_encoder"] = resnet_lib.ResNet(resnet_cfg, name="target_encoder")
        if "target_projector" in present:
            modules["target_projector"] = mlp("target_projector")
    classifier_input = "backbone"
    if "probe" in present:
        w = shapes.get("model/probe/linear/w/.ATTRIBUTES/VARIABLE_VALUE")
        if model.probe_input == "projection" and "projector" in present:
            classifier_input = "projection"
        expected = model.proj_out_dim if classifier_input == "projection" else feature_dim
        if w is not None and w[0] == expected:
            modules["probe"] = heads_lib.LinearHead(w[0], w[1], name="probe")
    ckpt = tf.train.Checkpoint(model=tf.train.Checkpoint(**modules))
    status = ckpt.restore(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{path} does not match the networks its config.json describes ({e}).") from e
    status.expect_partial()
    aug = job.augment_config(settings.AugmentSettings(**run["augment"]), run["data"]["image_size"])

    def normalize(images):
        x = tf.clip_by_value(images, 0.0, 1.0)
        return augment_lib.normalize(x) if aug.normalize else x
    size = image_size or run["data"]["image_size"]
    described = [f"ResNet-{model.resnet_depth} x{model.width_multiplier:g}"]
    described += [name for name in ("projector", "target_encoder", "probe") if name in modules]
    return features.FeatureModel(
        image_size=size, normalize=normalize, encoder=modules["encoder"],
        projector=modules.get("projector"), target_encoder=modules.get("target_encoder"),
        target_projector=modules.get("target_projector"), classifier=modules.get("probe"),
        classifier_input=classifier_input, source="project",
        description=f"{config.get('trainer', 'project')} checkpoint {path}: " + ", ".join(described))


def initialise_method(method, checkpoint: str, only: tuple | None = None,
                      print_fn: Callable | None = print) -> str:
    """Starts `method`'s networks from `checkpoint` (pretraining initialised from a checkpoint,
    fine-tuning from a pretrained one). Returns the resolved ckpt-N path.

    A release checkpoint is imported through `method.release_modules()` with a printed report; a
    project checkpoint is restored where its object paths match (`model/<module>`).
    only: module names to take (fine-tuning takes ('encoder',)); None takes every module.
    """
    from common.training import checkpoints
    path = resolve(checkpoint)
    if release.is_release_checkpoint(path):
        release.import_into_method(method, path, only=only, print_fn=print_fn)
        return path
    if only is None:
        model = method
    else:
        model = tf.train.Checkpoint(**{name: getattr(method, name) for name in only})
    checkpoints.restore_partial(tf.train.Checkpoint(model=model), path)
    if print_fn is not None:
        print_fn(f"initialised {', '.join(only) if only else 'the model'} from {path}", flush=True)
    return path
