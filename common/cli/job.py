"""The job every `train.py` runs: command line -> preset + overrides -> one frozen config -> run.

An algorithm package hands `run` one `TrainerSpec`: its name, its named presets (`Experiment`
objects around its own dataclass) and `build_method(config, parts, num_classes)`, which turns the
config into its `common.training.method.Method`. Everything else is the same for every algorithm:
checks (every error exits 2 before anything is written), `--print_config`, `<model_dir>/config.json`
(the resolved configuration, the command line and the package versions), the refusal to resume a
model_dir with another configuration, `--mode` train / eval / train_then_eval for `--train_mode`
pretrain or finetune, and (with `--final_linear_eval`) the trained encoder against a random one.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from typing import Callable

from common.cli import flags as flags_lib
from common.cli import settings
from common.cli.settings import Experiment


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """What an algorithm package hands the job.

    name: the package's short name (run folders are named after the preset, messages after this).
    presets: {preset name: Experiment}; default_preset: the one used without --config.
    build_method: (config, parts, num_classes) -> Method, called inside the strategy's scope.
    """
    name: str
    presets: dict
    default_preset: str
    build_method: Callable


@dataclasses.dataclass(frozen=True)
class Parts:
    """The library's configs resolved from an Experiment (steps from epochs and the dataset size)."""
    train: object  # common.training.trainer.TrainConfig
    data: object  # common.data.datasets.DataConfig
    augment: object  # common.data.augment.AugmentConfig
    resnet: object  # common.networks.resnet.ResNetConfig
    heads: object  # common.training.models.HeadsConfig
    distribute: object  # common.training.distribute.DistributeConfig
    finetune: object  # common.training.finetune.FinetuneConfig
    num_train_examples: int


# --mlp_init's values -> the initializer names of common.networks.layers.
_HEAD_INIT = {"release": "keras", "deepmind": "haiku", "normal": "normal"}

_PACKAGES = ("tensorflow", "tensorflow-datasets", "numpy", "absl-py", "scipy", "tensorboard")


def data_config(cfg: Experiment):
    from common.data import datasets
    d = cfg.data
    return datasets.DataConfig(dataset=d.dataset, data_dir=d.data_dir, train_split=d.train_split,
                               eval_split=d.eval_split, image_size=d.image_size,
                               cache=d.cache_dataset, seed=cfg.run.seed,
                               on_bad_image=d.on_bad_image)


def derived_steps(cfg: Experiment, num_train_examples: int) -> dict:
    """Steps the run's epochs amount to for a training split of `num_train_examples`."""
    r, b = cfg.run, cfg.run.train_batch_size
    steps = r.train_steps or max(1, int(r.train_epochs * num_train_examples // b))
    return {"num_train_examples": num_train_examples, "train_steps": steps,
            "warmup_steps": min(int(cfg.optim.warmup_epochs * num_train_examples // b), steps),
            "checkpoint_steps": r.checkpoint_steps or max(
                1, int(round(r.checkpoint_epochs * num_train_examples / b)))}


def augment_config(a: settings.AugmentSettings, image_size: int):
    """The AugmentConfig of an augmentation section: a recipe, then the jitter and crop flags."""
    from common.data import augment as augment_lib
    if a.batch_image_augmentation_type == "asymmetric":
        aug = augment_lib.byol_config(image_size)
    else:
        aug = augment_lib.simclr_config(image_size)
        if not a.use_blur:
            aug = dataclasses.replace(aug, blur_prob=(0.0, 0.0))
    return dataclasses.replace(
        aug, crop=a.bbox_sampling, area_range=(a.area_range_lower_bound, 1.0),
        brightness=a.color_jitter_brightness, contrast=a.color_jitter_contrast,
        saturation=a.color_jitter_saturation, hue=a.color_jitter_hue,
        brightness_mode=a.brightness_fn)


def resnet_config(m: settings.ModelSettings, image_size: int):
    """The ResNetConfig of a model section for inputs of `image_size`."""
    from common.networks import resnet as resnet_lib
    cfg = resnet_lib.resnet_config(m.resnet_depth, m.width_multiplier, image_size)
    return dataclasses.replace(
        cfg, sk_ratio=m.sk_ratio, se_ratio=m.se_ratio, padding=m.resnet_padding,
        bn=dataclasses.replace(cfg.bn, momentum=m.batch_norm_decay, semantics=m.bn_semantics,
                               sync=m.global_bn))


def build_parts(cfg: Experiment, model_dir: str, num_train_examples: int | None = None) -> Parts:
    """Resolves the library configs: reads the training split's size (DataError if unavailable)
    unless `num_train_examples` gives it (tools that build a model without its data)."""
    from common.data import datasets
    from common.training import distribute, finetune, models, optim, schedules, trainer

    data_cfg = data_config(cfg)
    n_train = (datasets.num_examples(data_cfg, data_cfg.train_split) if num_train_examples is None
               else num_train_examples)
    d = derived_steps(cfg, n_train)
    o, r, m = cfg.optim, cfg.run, cfg.model
    lr_cfg = schedules.LRConfig(
        base_lr=o.learning_rate, batch_size=r.train_batch_size, warmup_steps=d["warmup_steps"],
        total_steps=d["train_steps"], scaling=o.learning_rate_scaling,
        schedule=o.learning_rate_schedule)
    optim_cfg = optim.OptimConfig(name=o.optimizer, momentum=o.momentum,
                                  weight_decay=o.weight_decay, eta=o.lars_eta,
                                  lars_form=o.lars_form, exclude_probe=o.exclude_probe_from_lars)
    train_cfg = trainer.TrainConfig(
        model_dir=model_dir, train_steps=d["train_steps"], train_batch_size=r.train_batch_size,
        eval_batch_size=r.eval_batch_size,
        steps_per_loop=max(1, min(r.train_summary_steps, d["train_steps"])),
        checkpoint_steps=d["checkpoint_steps"], keep_checkpoint_max=r.keep_checkpoint_max,
        lr=lr_cfg, optim=optim_cfg, seed=r.seed, eval_timeout_secs=cfg.job.eval_timeout,
        jit_compile=r.jit_compile, precision=r.precision, on_nonfinite=r.on_nonfinite)
    aug = augment_config(cfg.augment, cfg.data.image_size)
    resnet_cfg = resnet_config(cfg.model, cfg.data.image_size)
    heads = models.HeadsConfig(hidden_dim=m.proj_head_hidden_dim, out_dim=m.proj_out_dim,
                               num_layers=m.num_proj_layers, probe_input=m.probe_input,
                               output_bn=m.proj_head_output_bn, kernel_init=_HEAD_INIT[m.mlp_init],
                               use_hidden_bias=m.mlp_hidden_bias)
    ds = cfg.distribute
    dist = distribute.DistributeConfig(use_tpu=ds.use_tpu, tpu_name=ds.tpu_name,
                                       tpu_zone=ds.tpu_zone, gcp_project=ds.gcp_project,
                                       master=ds.master, cpu_replicas=ds.cpu_replicas)
    ft = finetune.FinetuneConfig(fine_tune_after_block=cfg.finetune.fine_tune_after_block,
                                 zero_init_head=cfg.finetune.zero_init_logits_layer,
                                 checkpoint=cfg.finetune.checkpoint)
    return Parts(train=train_cfg, data=data_cfg, augment=aug, resnet=resnet_cfg, heads=heads,
                 distribute=dist, finetune=ft, num_train_examples=n_train)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(preset: str, cfg: Experiment) -> dict:
    """The resolved configuration as config.json holds it (without the command line and versions).

    `derived` holds the steps the epochs amount to, when the dataset's size can be read."""
    from common.data import datasets
    out = {"preset": preset, "config": settings.as_dict(cfg)}
    data_cfg = data_config(cfg)
    try:
        if not datasets.is_prepared(data_cfg):
            raise datasets.DataError("not prepared in its data directory")
        out["derived"] = derived_steps(cfg, datasets.num_examples(data_cfg, cfg.data.train_split))
    except (datasets.DataError, ValueError, OSError) as e:
        out["derived"] = {"unavailable": f"the size of {cfg.data.dataset}/{cfg.data.train_split} "
                                         f"cannot be read here ({str(e).splitlines()[0]})"}
    return out


CONFIG_FILE = "config.json"


def check_resumable(model_dir: str, cfg: Experiment) -> None:
    """Refuses to continue a model_dir whose stored configuration differs from `cfg` in anything
    but settings.RESUMABLE_CHANGES (run length, bookkeeping, evaluation, placement)."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f).get("config", {})
    # A setting added after the run was started is absent from its config.json: the run had that
    # setting's default behaviour, so the default stands in for it.
    for leaf in settings.leaves(cfg):
        node = stored
        for name in leaf.path[:-1]:
            node = node.setdefault(name, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf.path[-1] not in node \
                and leaf.field.default is not dataclasses.MISSING:
            node[leaf.path[-1]] = leaf.field.default
    diff = settings.differences(stored, settings.as_dict(cfg), ignore=settings.RESUMABLE_CHANGES)
    if diff:
        raise flags_lib.FlagError(
            f"{model_dir} holds a run with another configuration ({path}); it differs in:\n  "
            + "\n  ".join(diff) + "\nPass the run's own flags (or its --config) to continue it, or "
            "a new --model_dir for a new run.")


def write_config(model_dir: str, trainer: str, preset: str, cfg: Experiment,
                 argv: list[str]) -> None:
    """<model_dir>/config.json: the trainer, preset, configuration, derived steps, command line and
    package versions (written atomically)."""
    from common.training import checkpoints
    record = describe(preset, cfg)
    record.update(trainer=trainer, command_line=list(argv), versions=versions(),
                  written=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    checkpoints.write_json(os.path.join(model_dir, CONFIG_FILE), record)


def check_paths(model_dir: str, cfg: Experiment) -> None:
    """FlagError unless --data_dir exists and model_dir (or the folder it will be made in) is
    writable. Writability is probed by creating and removing a file, which also catches read-only
    mounts (os.access does not); object-store paths are left to the first write."""
    import tempfile
    data_dir = cfg.data.data_dir
    if data_dir and "://" not in data_dir and not os.path.isdir(data_dir):
        raise flags_lib.FlagError(
            f"--data_dir={data_dir} does not exist; pass the folder that holds the prepared TFDS "
            "data (create it first if TFDS should download into it).")
    if "://" in model_dir:
        return
    probe = os.path.abspath(model_dir)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".write-probe-")
        os.close(fd)
        os.remove(name)
    except OSError as e:
        raise flags_lib.FlagError(
            f"--model_dir={model_dir} is not writable ({probe}: {e.strerror or e}); pass a "
            "--model_dir you can write to, or fix its permissions.") from e


def die(message: str) -> None:
    """Prints a one-paragraph error and exits with status 2 (bad usage)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _model_dir(preset: str, cfg: Experiment) -> str:
    if cfg.job.model_dir:
        return cfg.job.model_dir
    path = os.path.join(os.getcwd(), "runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"--model_dir not given; writing to {path}")
    return path


def knn_monitor(method, parts: Parts, bank_split: str | None, print_fn=print):
    """A training hook: kNN top-1/top-5 of the backbone (inference mode) on the eval split, the
    bank being `bank_split` (None: the training split), written as knn/top_1 and knn/top_5."""
    import tensorflow as tf
    from common.data import datasets
    from common.evaluation import knn, linear_eval, suite

    def hook(step, writer):
        t0 = time.perf_counter()
        (bx, by), (qx, qy) = [
            linear_eval.extract_features(
                lambda x: method.encoder(x, training=False),
                datasets.eval_dataset(parts.data, parts.augment, split, parts.train.eval_batch_size))
            for split in (bank_split or parts.data.train_split, parts.data.eval_split)]
        info = datasets.dataset_info(parts.data)
        result = suite.knn_on_features(bx, by, qx, qy, info.num_classes, knn.KNNConfig())
        with writer.as_default(step=step):
            tf.summary.scalar("knn/top_1", result["top_1"])
            tf.summary.scalar("knn/top_5", result["top_5"])
        writer.flush()
        print_fn(f"knn monitor at step {step}: top-1 {result['top_1']:.4f} top-5 "
                 f"{result['top_5']:.4f} ({len(bx)} bank, {len(qx)} queries, "
                 f"{time.perf_counter() - t0:.0f}s)", flush=True)
    return hook


EXPORT_DIR = "saved_model"


def export_eval_model(method, parts: Parts, model_dir: str, step: int, print_fn=print) -> str:
    """--export_eval_model: <model_dir>/saved_model from the trained method's inference networks
    (common.interop.export): its encoder, its projection head when it has one, and its linear
    probe on the input the probe reads; preprocessing as the run's evaluation pipeline. Returns
    the SavedModel's path."""
    from common.data import augment as augment_lib
    from common.interop import export, features

    aug = parts.augment
    heads = getattr(method, "heads_cfg", None)
    model = features.FeatureModel(
        image_size=parts.data.image_size,
        normalize=augment_lib.normalize if aug.normalize else tf_identity,
        encoder=method.encoder, projector=getattr(method, "projector", None),
        classifier=getattr(method, "probe", None),
        classifier_input=heads.probe_input if heads is not None else "backbone",
        source="project", description=f"{model_dir} at step {step}")
    path = os.path.join(model_dir, EXPORT_DIR)
    export.export_saved_model(model, path, aug.eval_crop_proportion, aug.eval_crop_rounding)
    print_fn(f"SavedModel of the inference networks: {path}", flush=True)
    return path


def tf_identity(x):
    """The normalisation of pipelines that do not normalise."""
    return x


def main(spec: TrainerSpec, flag_values, argv: list[str], print_fn=print) -> dict:
    """Runs the job the parsed `flag_values` ask for; returns the result dict.

    A bad image met by an input pipeline with --on_bad_image=stop exits 2 with the one line that
    names it; with skip, the number of images skipped is printed at the end."""
    from common.data import datasets
    try:
        result = _job(spec, flag_values, argv, print_fn)
    except Exception as e:  # tf.data hands the pipeline's BadImageError on as an OpError
        message = datasets.bad_image_message(e)
        if message is None:
            raise
        die(message)
    if datasets.skipped_images():
        print_fn(f"skipped {datasets.skipped_images()} bad image(s) of the dataset "
                 "(--on_bad_image=skip).", flush=True)
    return result


def _job(spec: TrainerSpec, flag_values, argv: list[str], print_fn=print) -> dict:
    from common.data import datasets
    from common.training import checkpoints

    def warn(message):
        print_fn(f"warning: {message}", flush=True)

    try:
        preset, cfg = flags_lib.resolve(flag_values, spec.presets, warn)
    except (flags_lib.FlagError, ValueError) as e:
        die(str(e))
    if flag_values["print_config"].value:
        print_fn(json.dumps(describe(preset, cfg), indent=2, sort_keys=True))
        return {}

    import tensorflow as tf
    from common.evaluation import suite
    from common.training import distribute, finetune
    from common.training import trainer as trainer_lib

    try:
        if cfg.distribute.cpu_replicas > 1:
            distribute.split_cpu(cfg.distribute.cpu_replicas)
        # Initial weights and tf.data's seeded shuffles also depend on the global seed.
        tf.random.set_seed(cfg.run.seed)
        if cfg.run.deterministic:
            tf.config.experimental.enable_op_determinism()
        model_dir = _model_dir(preset, cfg)
        check_paths(model_dir, cfg)
        check_resumable(model_dir, cfg)
        parts = build_parts(cfg, model_dir)
    except (flags_lib.FlagError, datasets.DataError, ValueError) as e:
        die(str(e))
    strategy = distribute.get_strategy(parts.distribute)
    train = parts.train
    print_fn(f"{spec.name}: config {preset}, {strategy.num_replicas_in_sync} replica(s), "
             f"{train.train_steps} steps of batch {train.train_batch_size} on "
             f"{cfg.data.dataset}/{cfg.data.train_split} ({parts.num_train_examples} examples), "
             f"model_dir {model_dir}", flush=True)
    if cfg.run.train_mode == "finetune":
        def method_fn(n):
            return finetune.Supervised(parts.resnet, n, parts.finetune)

        def dataset_fn(ctx, start_step):
            return datasets.linear_train_dataset(parts.data, parts.augment,
                                                 train.train_batch_size, ctx, start_step=start_step)
    else:
        def method_fn(n):
            return spec.build_method(cfg, parts, n)
        dataset_fn = None
    result = {}
    if cfg.job.mode in ("train", "train_then_eval"):
        try:  # resume (or refuse another model's checkpoint) before anything is written
            pretrainer = trainer_lib.Pretrainer(method_fn, train, parts.data, parts.augment,
                                                strategy, dataset_fn=dataset_fn, print_fn=print_fn)
            pretrainer.restore()
        except (checkpoints.CheckpointError, ValueError) as e:  # e.g. batch vs TPU replicas
            die(str(e))
        if cfg.finetune.checkpoint and pretrainer.manager.latest_checkpoint is None:
            # A new run starts from --checkpoint (this project's or the original release's):
            # fine-tuning takes its encoder, pretraining every module it has (docs/DECISIONS.md 16).
            from common.interop import loading
            try:
                if cfg.run.train_mode == "finetune":
                    pretrainer.method.load_pretrained(print_fn=print_fn)
                else:
                    loading.initialise_method(pretrainer.method, cfg.finetune.checkpoint,
                                              print_fn=print_fn)
            except (ValueError, checkpoints.CheckpointError) as e:
                die(str(e))
        write_config(model_dir, spec.name, preset, cfg, argv)
        hooks = []
        if cfg.run.knn_every_steps > 0:
            hooks.append((cfg.run.knn_every_steps,
                          knn_monitor(pretrainer.method, parts, cfg.run.knn_bank_split, print_fn)))
        try:
            pretrainer.train(hooks=hooks)
        except checkpoints.CheckpointError as e:  # a save failed; the previous one is intact
            die(str(e))
        except trainer_lib.NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        if pretrainer.preempted:  # SIGTERM: checkpointed; the next start resumes
            return {"preempted_at": pretrainer.step}
        if cfg.job.mode == "train_then_eval":
            result = trainer_lib.evaluate_probe(pretrainer.method, strategy, parts.data,
                                                parts.augment, cfg.data.eval_split,
                                                train.eval_batch_size)
            result["global_step"] = pretrainer.step
            print_fn(f"probe on {cfg.data.eval_split}: top-1 {result['label_top_1_accuracy']:.4f} "
                     f"top-5 {result['label_top_5_accuracy']:.4f}", flush=True)
            checkpoints.write_json(os.path.join(model_dir, "result.json"), result)
        if cfg.job.final_linear_eval and cfg.run.train_mode == "pretrain":
            with strategy.scope():
                fresh = method_fn(pretrainer.num_classes)
            table = suite.pretrained_vs_random(
                {"pretrained": pretrainer.method.encoder, "random_init": fresh.encoder},
                parts.data, parts.augment, train.eval_batch_size,
                corruption_examples=cfg.job.final_eval_corruption_examples, seed=cfg.run.seed,
                print_fn=print_fn)
            suite.print_comparison(table, print_fn=print_fn)
            result["linear_eval"] = table
            checkpoints.write_json(os.path.join(model_dir, "linear_eval.json"), table)
        if cfg.job.export_eval_model:
            result["saved_model"] = export_eval_model(pretrainer.method, parts, model_dir,
                                                      pretrainer.step, print_fn)
    else:
        result = trainer_lib.eval_checkpoints(method_fn, train, parts.data, parts.augment,
                                              strategy, cfg.data.eval_split, print_fn=print_fn)
    return result


def run(spec: TrainerSpec) -> None:
    """The `if __name__ == "__main__"` of every train.py: define the flags, parse, run `main`.

    app.run turns absl's logging up to INFO unless -v/--verbosity is given, and TensorFlow's Python
    side logs at INFO on every checkpoint save; the trainers print their own progress, so without
    the flag the level is WARNING (`--verbosity=0` brings INFO back).
    """
    from absl import app
    from absl import flags
    from absl import logging as absl_logging

    flags_lib.define(flags.FLAGS, spec.presets, spec.default_preset)
    verbosity_given = any(re.match(r"^--?(v|verbosity)(=|$)", a) for a in sys.argv[1:])
    argv_copy = list(sys.argv)

    def _parse(argv):
        # absl would exit 1 on a bad flag; every usage error of the trainers exits 2.
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            die(f"{e}. Pass --helpfull to list this trainer's flags.")

    def _main(argv):
        if not verbosity_given:
            absl_logging.set_verbosity(absl_logging.WARNING)
        if len(argv) > 1:
            die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
        main(spec, flags.FLAGS, argv_copy)

    app.run(_main, flags_parser=_parse)
