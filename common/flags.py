"""The command line shared by every `train.py`: the original run.py's flag names, plus a few of ours.

Flags are parsed only in `train.py`; this module turns them into plain config objects
(`build_configs`) and refuses contradictory or meaningless combinations with one clear error
(`validate`). Named presets (`--config`) set flags the user did not pass; flags given on the command
line always win.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import flags
from absl import logging

from common.data import augment as augment_lib
from common.data import datasets as data_lib
from common.training import distribute
from common.training import models
from common.training import optim as optim_lib
from common.networks import resnet as resnet_lib
from common.training import schedules
from common.training import trainer as trainer_lib

FLAGS = flags.FLAGS

_DEPTHS = (18, 34, 50, 101, 152, 200)
ALGORITHMS = ("simclr", "csimclr", "byol", "cbyol")
PRETRAIN_LOSS = {"simclr": "contrastive", "csimclr": "contrastive_ceb", "byol": "byol",
                 "cbyol": "byol_ceb"}


class FlagError(ValueError):
    """A flag value or combination that cannot run as asked, with the fix in the message."""


def define_flags(algorithm: str, presets: dict, default_config: str) -> None:
    """Defines every flag; `presets` maps config names to {flag: value} overrides."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    d = flags
    d.DEFINE_enum("config", default_config, sorted(presets),
                  "Named preset that sets the flags you do not pass: the small-scale default, or a "
                  "paper config (e.g. cbyol_300epochs) that reproduces the release's scripts.")
    # Optimisation.
    d.DEFINE_float("learning_rate", 0.3, "Base learning rate per 256 examples (see scaling).")
    d.DEFINE_enum("learning_rate_scaling", "linear", ["linear", "sqrt"],
                  "linear: lr*B/256; sqrt: lr*sqrt(B).")
    d.DEFINE_enum("learning_rate_schedule", "cosine", ["cosine", "constant"],
                  "Warm-up then cosine decay, or a constant scaled rate.")
    d.DEFINE_float("warmup_epochs", 10, "Linear warm-up epochs (also beta's linear_warmup).")
    d.DEFINE_float("weight_decay", 1e-6, "Weight decay.")
    d.DEFINE_float("batch_norm_decay", 0.9, "BN moving-average decay (Keras momentum).")
    d.DEFINE_float("ema_alpha", 0.999, "Base target-network EMA rate tau_0 (cosine-ramped to 1).")
    d.DEFINE_enum("optimizer", "lars", ["lars", "momentum", "adam"], "Optimizer.")
    d.DEFINE_float("momentum", 0.9, "Momentum.")
    d.DEFINE_enum("lars_form", "deepmind", ["deepmind", "release"],
                  "LARS momentum form (REFERENCE.md decision 6): deepmind mu=m*mu+g, p-=lr*mu; "
                  "release folds lr into the buffer.")
    d.DEFINE_float("lars_eta", 1e-3, "LARS trust coefficient.")
    d.DEFINE_boolean("exclude_probe_from_lars", True,
                     "Train the online linear probe at the full learning rate without weight decay "
                     "or trust ratio (as the release's supervised head); False adapts it like "
                     "every kernel (DeepMind).")
    # Data and steps.
    d.DEFINE_integer("train_batch_size", 512, "Global training batch.")
    d.DEFINE_string("train_split", "train", "Training split (TFDS split syntax).")
    d.DEFINE_float("train_epochs", 100, "Epochs (ignored when train_steps > 0).")
    d.DEFINE_integer("train_steps", 0, "Training steps; overrides train_epochs when > 0.")
    d.DEFINE_integer("eval_batch_size", 256, "Global eval batch.")
    d.DEFINE_string("eval_split", "validation", "Evaluation split.")
    d.DEFINE_string("dataset", "imagenet2012", "TFDS dataset name; fashion_mnist is built in.")
    d.DEFINE_boolean("cache_dataset", False, "Cache the decoded dataset in memory.")
    d.DEFINE_string("data_dir", None, "TFDS data directory.")
    d.DEFINE_float("checkpoint_epochs", 1, "Checkpoint every this many epochs.")
    d.DEFINE_integer("checkpoint_steps", 0, "Checkpoint every this many steps; overrides epochs.")
    d.DEFINE_integer("train_summary_steps", 100, "Steps between progress lines and summaries.")
    # Program.
    d.DEFINE_enum("mode", "train_then_eval", ["train", "eval", "train_then_eval"], "Job kind.")
    d.DEFINE_enum("train_mode", "pretrain", ["pretrain", "finetune"], "Pretrain or fine-tune.")
    d.DEFINE_boolean("lineareval_while_pretraining", True,
                     "Train a linear probe on stop-gradient features during pretraining.")
    d.DEFINE_enum("probe_input", "backbone", ["backbone", "projection"],
                  "What the online probe reads (decision 4): the backbone feature (standard) or "
                  "the projection output (the release).")
    d.DEFINE_string("checkpoint", None, "Pretrained checkpoint to fine-tune from.")
    d.DEFINE_boolean("zero_init_logits_layer", False, "Zero-initialise the supervised head.")
    d.DEFINE_integer("fine_tune_after_block", -1,
                     "Fine-tuning trains blocks after this one: -1 everything, 4 the head only.")
    d.DEFINE_string("master", None, "TPU address.")
    d.DEFINE_string("model_dir", None, "Where checkpoints, summaries and results go.")
    d.DEFINE_boolean("use_tpu", False, "Run on a Cloud TPU (the release defaults to True).")
    d.DEFINE_string("tpu_name", None, "Cloud TPU name.")
    d.DEFINE_string("tpu_zone", None, "Cloud TPU zone.")
    d.DEFINE_string("gcp_project", None, "GCP project of the TPU.")
    d.DEFINE_integer("cpu_replicas", 1, "Replicas over logical CPU devices (testing).")
    d.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept.")
    d.DEFINE_integer("seed", 0, "Run seed: data order, augmentation, vMF samples.")
    d.DEFINE_boolean("deterministic", False, "Enable TF op determinism (bit-exact reruns).")
    d.DEFINE_float("eval_timeout", 3600, "Eval job: seconds to wait for a new checkpoint.")
    d.DEFINE_boolean("jit_compile", False, "Compile the training step with XLA.")
    # Losses.
    d.DEFINE_enum("pretrain_loss", PRETRAIN_LOSS[algorithm], sorted(PRETRAIN_LOSS.values()),
                  "Fixed by the trainer; accepted so the release's command lines carry over.")
    d.DEFINE_float("temperature", 0.1, "Contrastive temperature (SimCLR).")
    d.DEFINE_boolean("double_batch_trick", True, "Use same-view negatives too (SimCLR, C-SimCLR).")
    d.DEFINE_float("ceb_beta", 1.0, "CEB beta (C-variants; 0 trains the baseline, with a warning).")
    d.DEFINE_enum("beta_schedule", "constant", ["constant", "linear_warmup", "cosine"],
                  "beta schedule.")
    d.DEFINE_boolean("ceb_sampling", True, "Sample z ~ e(z|x) (C-SimCLR).")
    d.DEFINE_float("kappa_e", 1024.0, "Concentration of the forward encoder e(z|x).")
    d.DEFINE_float("kappa_b", 10.0, "Concentration of the backward encoder b(z|y).")
    d.DEFINE_float("byol_loss_weight", 1.0, "Weight of the BYOL regression loss (= kappa_d / 2).")
    d.DEFINE_enum("backward_view", "same", ["same", "other"],
                  "C-BYOL b(z|y) pairing (decision 3): the release's same view, or the other view.")
    # Architecture.
    d.DEFINE_integer("resnet_depth", 50, "ResNet depth: 18, 34, 50, 101, 152, 200.")
    d.DEFINE_float("width_multiplier", 1, "ResNet width multiplier (fractions allowed).")
    d.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (0 = off).")
    d.DEFINE_float("se_ratio", 0.0, "Squeeze-excitation ratio (0 = off).")
    d.DEFINE_boolean("global_bn", True, "Synchronise BN statistics across replicas.")
    d.DEFINE_enum("bn_semantics", "keras", ["keras", "haiku"],
                  "BN moving averages (decision 7): keras (no debias) or haiku (zero-debiased).")
    d.DEFINE_integer("image_size", 224, "Input size; <= 32 selects the CIFAR stem.")
    d.DEFINE_integer("num_proj_layers", 2, "Projection MLP layers.")
    d.DEFINE_integer("proj_head_hidden_dim", 4096, "Projection MLP hidden width.")
    d.DEFINE_integer("proj_out_dim", 256, "Projection output width.")
    d.DEFINE_boolean("use_projector", False,
                     "BYOL's predictor (the release's name). Paper configs set it (decision 1).")
    d.DEFINE_boolean("stochastic_projector", False, "vMF predictor (C-BYOL).")
    d.DEFINE_boolean("use_target_projector", False, "Trainable b(z|y) MLP (C-BYOL).")
    d.DEFINE_boolean("use_momentum_encoder", False, "EMA target ResNet (BYOL).")
    d.DEFINE_boolean("use_momentum_proj_head", False, "EMA target projection head (BYOL).")
    d.DEFINE_boolean("explicitly_watch_vars", False, "Accepted for compatibility; always explicit.")
    # Augmentation.
    d.DEFINE_enum("batch_image_augmentation_type", "byol", ["byol", "simclr"],
                  "byol: per-view blur/solarize + mean/std normalisation; simclr: blur p=0.5.")
    d.DEFINE_boolean("use_blur", True, "Blur (simclr augmentation type).")
    d.DEFINE_float("color_jitter_brightness", 0.4, "Brightness jitter.")
    d.DEFINE_float("color_jitter_contrast", 0.4, "Contrast jitter.")
    d.DEFINE_float("color_jitter_saturation", 0.2, "Saturation jitter.")
    d.DEFINE_float("color_jitter_hue", 0.1, "Hue jitter.")
    d.DEFINE_enum("bbox_sampling", "logarithmic", ["logarithmic", "uniform"], "Crop sampler.")
    d.DEFINE_float("area_range_lower_bound", 0.08, "Smallest crop area fraction.")
    d.DEFINE_enum("brightness_fn", "simclrv1", ["simclrv1", "simclrv2"],
                  "simclrv1: additive brightness; simclrv2: multiplicative.")
    # Release flags kept so its command lines parse; see _RESTRICTED for the values accepted.
    d.DEFINE_boolean("reinit_logits_layer", True, "Fine-tune with a fresh classifier.")
    d.DEFINE_boolean("rename_supervised_head", False, "Release option; only False.")
    d.DEFINE_boolean("use_binary_cross_entropy", False, "Release option; only False.")
    d.DEFINE_boolean("export_eval_model", False, "Release option (SavedModel); only False.")
    d.DEFINE_boolean("export_train_model", False, "Release option (SavedModel); only False.")
    d.DEFINE_integer("keep_hub_module_max", 1, "Release option; unused (no hub export).")
    d.DEFINE_string("eval_name", None, "Unused, as in the release.")
    d.DEFINE_string("proj_head_mode", "nonlinear", "Release option; only nonlinear.")
    d.DEFINE_boolean("proj_head_output_bn", False, "BN (scale only) on the projection output.")
    d.DEFINE_integer("ft_proj_selector", 0,
                     "Release name for --probe_input: 0 = backbone feature, -1 = projection output.")
    d.DEFINE_enum("mlp_init", "byol", ["byol", "simclr"],
                  "Head kernel init: byol = fan-in truncated normal as DeepMind's BYOL (the "
                  "release's VarianceScaling corrects the truncation, x1/0.88), simclr = "
                  "N(0, 0.01^2).")
    d.DEFINE_boolean("projector_mid_bn", True, "Release option; only True.")
    d.DEFINE_boolean("clip_by_value_after_resizing", True, "Release option; only True.")
    d.DEFINE_boolean("clip_by_value_after_grayscale", True, "Release option; only True.")
    d.DEFINE_boolean("no_augmentation", False, "Release option; only False.")
    d.DEFINE_boolean("ft_with_full_aug", False, "Release option; only False.")
    # Final offline linear evaluation (the demo's table).
    d.DEFINE_boolean("final_linear_eval", False,
                     "After training, fit logistic regression on frozen features of the trained and "
                     "of a randomly initialised encoder, and print both test accuracies.")


# Flags that change nothing for an algorithm: passing one explicitly is an error, not a silent no-op.
_IRRELEVANT = {
    "simclr": ("kappa_e", "kappa_b", "ceb_beta", "beta_schedule", "ceb_sampling", "byol_loss_weight",
               "backward_view", "ema_alpha", "use_projector", "stochastic_projector",
               "use_target_projector", "use_momentum_encoder", "use_momentum_proj_head"),
    "csimclr": ("temperature", "byol_loss_weight", "backward_view", "ema_alpha", "use_projector",
                "stochastic_projector", "use_target_projector", "use_momentum_encoder",
                "use_momentum_proj_head"),
    "byol": ("temperature", "double_batch_trick", "kappa_e", "kappa_b", "ceb_beta",
             "beta_schedule", "ceb_sampling", "backward_view", "stochastic_projector",
             "use_target_projector"),
    "cbyol": ("temperature", "double_batch_trick", "ceb_sampling"),
}

# Release flags that exist so its command lines parse, accepted only at the values this project
# implements: {flag: (allowed values, why the others are refused)}.
_RESTRICTED = {
    "reinit_logits_layer": ((True,), "fine-tuning always starts from a fresh classifier"),
    "rename_supervised_head": ((False,), "the fine-tuning head is always sized for the dataset"),
    "use_binary_cross_entropy": ((False,), "the supervised loss is softmax cross-entropy"),
    "export_eval_model": ((False,), "SavedModel export is not part of this release"),
    "export_train_model": ((False,), "SavedModel export is not part of this release"),
    "proj_head_mode": (("nonlinear",), "the projection head is the paper's nonlinear MLP"),
    "projector_mid_bn": ((True,), "the predictor's hidden layer always has BN"),
    "clip_by_value_after_resizing": ((True,), "augmentations always clip to [0, 1]"),
    "clip_by_value_after_grayscale": ((True,), "augmentations always clip to [0, 1]"),
    "no_augmentation": ((False,), "pretraining needs two augmented views (the release crashes)"),
    "ft_with_full_aug": ((False,), "fine-tuning uses crop and flip"),
    "ft_proj_selector": ((0, -1), "the probe reads the backbone (0) or the projection (-1)"),
}


def apply_preset(presets: dict) -> dict:
    """Sets every flag of the chosen preset that was not given on the command line."""
    preset = presets[FLAGS.config]
    for name, value in preset.items():
        if name not in FLAGS:
            raise KeyError(f"preset {FLAGS.config} sets unknown flag {name}")
        if not FLAGS[name].present:
            FLAGS[name].value = value
    return preset


def explicit(name: str) -> bool:
    return bool(FLAGS[name].present)


def validate(algorithm: str, warn=logging.warning) -> None:
    """Refuses flag combinations that would crash late or silently train something else."""
    errors = []
    if FLAGS.pretrain_loss != PRETRAIN_LOSS[algorithm]:
        errors.append(f"--pretrain_loss={FLAGS.pretrain_loss} contradicts this trainer "
                      f"({algorithm} trains {PRETRAIN_LOSS[algorithm]}); run "
                      f"{_trainer_for(FLAGS.pretrain_loss)}/train.py instead.")
    for name in _IRRELEVANT[algorithm]:
        if explicit(name):
            errors.append(f"--{name} has no effect on {algorithm}; remove it.")
    for name, (allowed, why) in _RESTRICTED.items():
        if FLAGS[name].value not in allowed:
            errors.append(f"--{name}={FLAGS[name].value} is not supported ({why}); accepted: "
                          f"{', '.join(str(a) for a in allowed)}.")
    if explicit("ft_proj_selector") and explicit("probe_input") and \
            FLAGS.probe_input != {0: "backbone", -1: "projection"}.get(FLAGS.ft_proj_selector):
        errors.append("--ft_proj_selector and --probe_input disagree; pass only one.")
    if FLAGS.resnet_depth not in _DEPTHS:
        errors.append(f"--resnet_depth={FLAGS.resnet_depth}: choose one of {_DEPTHS}.")
    if FLAGS.width_multiplier <= 0:
        errors.append("--width_multiplier must be positive.")
    if FLAGS.train_batch_size <= 0 or FLAGS.eval_batch_size <= 0:
        errors.append("--train_batch_size and --eval_batch_size must be positive.")
    if FLAGS.train_steps < 0:
        errors.append("--train_steps must be >= 0 (0 means: use --train_epochs).")
    if FLAGS.train_steps == 0 and FLAGS.train_epochs <= 0:
        errors.append("Pass --train_steps > 0 or --train_epochs > 0.")
    if FLAGS.model_dir is None and FLAGS.mode == "eval":
        errors.append("--mode=eval needs --model_dir (where the training job writes checkpoints).")
    if FLAGS.train_mode == "finetune" and FLAGS.mode != "eval" and not FLAGS.checkpoint:
        warn("--train_mode=finetune without --checkpoint trains from random initialisation.")
    if algorithm in ("csimclr", "cbyol"):
        for name in ("kappa_e", "kappa_b"):
            if FLAGS[name].value <= 0:
                errors.append(f"--{name} must be positive (a vMF concentration).")
        if FLAGS.ceb_beta < 0:
            errors.append("--ceb_beta must be >= 0.")
        elif FLAGS.ceb_beta == 0:
            if explicit("ceb_beta"):
                warn("--ceb_beta=0: no compression; this trains the %s baseline with extra heads "
                     "(REFERENCE.md decision 2).", "SimCLR" if algorithm == "csimclr" else "BYOL")
            else:
                errors.append("ceb_beta is 0 without being asked for; pass --ceb_beta explicitly.")
    if algorithm == "cbyol":
        for name in ("use_projector", "stochastic_projector", "use_target_projector"):
            if explicit(name) and not FLAGS[name].value:
                errors.append(f"--{name}=False would remove a part of C-BYOL's CEB (the vMF "
                              "predictor e(z|x) or b(z|y)); C-BYOL needs all three. Use byol/train.py "
                              "for the baseline.")
    if algorithm in ("byol", "cbyol"):
        if explicit("use_momentum_encoder") and not FLAGS.use_momentum_encoder:
            errors.append("--use_momentum_encoder=False: BYOL's target is always an EMA network.")
        if not 0.0 <= FLAGS.ema_alpha <= 1.0:
            errors.append("--ema_alpha must be in [0, 1].")
    if algorithm == "byol" and explicit("use_projector") and not FLAGS.use_projector:
        warn("--use_projector=False: BYOL without a predictor, as the release's scripts ran it "
             "(decision 1); expect collapse.")
    if errors:
        raise FlagError("Invalid flags:\n  " + "\n  ".join(errors))


def _trainer_for(loss: str) -> str:
    return {v: k for k, v in PRETRAIN_LOSS.items()}[loss]


@dataclasses.dataclass(frozen=True)
class Configs:
    """Everything `train.py` hands to the library, built from the flags."""
    train: trainer_lib.TrainConfig
    data: data_lib.DataConfig
    augment: augment_lib.AugmentConfig
    resnet: resnet_lib.ResNetConfig
    heads: models.HeadsConfig
    distribute: distribute.DistributeConfig
    num_train_examples: int


def build_configs(algorithm: str, model_dir: str) -> Configs:
    """Turns the parsed flags into config objects (steps resolved from epochs)."""
    data_cfg = data_lib.DataConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, train_split=FLAGS.train_split,
        eval_split=FLAGS.eval_split, image_size=FLAGS.image_size, cache=FLAGS.cache_dataset,
        seed=FLAGS.seed)
    n_train = data_lib.num_examples(data_cfg, FLAGS.train_split)
    b = FLAGS.train_batch_size
    steps = FLAGS.train_steps or max(1, int(FLAGS.train_epochs * n_train // b))
    warmup = int(FLAGS.warmup_epochs * n_train // b)
    ckpt_steps = FLAGS.checkpoint_steps or max(1, int(round(FLAGS.checkpoint_epochs * n_train / b)))
    lr_cfg = schedules.LRConfig(
        base_lr=FLAGS.learning_rate, batch_size=b, warmup_steps=min(warmup, steps),
        total_steps=steps, scaling=FLAGS.learning_rate_scaling,
        schedule=FLAGS.learning_rate_schedule)
    optim_cfg = optim_lib.OptimConfig(
        name=FLAGS.optimizer, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay,
        eta=FLAGS.lars_eta, lars_form=FLAGS.lars_form, exclude_probe=FLAGS.exclude_probe_from_lars)
    train_cfg = trainer_lib.TrainConfig(
        model_dir=model_dir, train_steps=steps, train_batch_size=b,
        eval_batch_size=FLAGS.eval_batch_size,
        steps_per_loop=max(1, min(FLAGS.train_summary_steps, steps)),
        checkpoint_steps=ckpt_steps, keep_checkpoint_max=FLAGS.keep_checkpoint_max,
        lr=lr_cfg, optim=optim_cfg, seed=FLAGS.seed, eval_timeout_secs=FLAGS.eval_timeout,
        jit_compile=FLAGS.jit_compile)
    if FLAGS.batch_image_augmentation_type == "byol":
        aug = augment_lib.byol_config(FLAGS.image_size)
    else:
        aug = augment_lib.simclr_config(FLAGS.image_size)
        if not FLAGS.use_blur:
            aug = dataclasses.replace(aug, blur_prob=(0.0, 0.0))
    aug = dataclasses.replace(
        aug, crop=FLAGS.bbox_sampling, area_range=(FLAGS.area_range_lower_bound, 1.0),
        brightness=FLAGS.color_jitter_brightness, contrast=FLAGS.color_jitter_contrast,
        saturation=FLAGS.color_jitter_saturation, hue=FLAGS.color_jitter_hue,
        brightness_mode="additive" if FLAGS.brightness_fn == "simclrv1" else "multiplicative")
    resnet_cfg = resnet_lib.resnet_config(FLAGS.resnet_depth, FLAGS.width_multiplier,
                                          FLAGS.image_size)
    resnet_cfg = dataclasses.replace(
        resnet_cfg, sk_ratio=FLAGS.sk_ratio, se_ratio=FLAGS.se_ratio,
        bn=dataclasses.replace(resnet_cfg.bn, momentum=FLAGS.batch_norm_decay,
                               semantics=FLAGS.bn_semantics, sync=FLAGS.global_bn))
    dist = distribute.DistributeConfig(
        use_tpu=FLAGS.use_tpu, tpu_name=FLAGS.tpu_name, tpu_zone=FLAGS.tpu_zone,
        gcp_project=FLAGS.gcp_project, master=FLAGS.master, cpu_replicas=FLAGS.cpu_replicas)
    probe_input = FLAGS.probe_input
    if explicit("ft_proj_selector"):
        probe_input = "backbone" if FLAGS.ft_proj_selector == 0 else "projection"
    heads = models.HeadsConfig(hidden_dim=FLAGS.proj_head_hidden_dim, out_dim=FLAGS.proj_out_dim,
                               num_layers=FLAGS.num_proj_layers, probe_input=probe_input,
                               output_bn=FLAGS.proj_head_output_bn,
                               kernel_init="simclr" if FLAGS.mlp_init == "simclr" else "haiku")
    return Configs(train=train_cfg, data=data_cfg, augment=aug, resnet=resnet_cfg, heads=heads,
                   distribute=dist, num_train_examples=n_train)


def ceb_config(cfgs: Configs) -> models.CEBConfig:
    """The CEB hyper-parameters of C-SimCLR and C-BYOL from the flags."""
    return models.CEBConfig(kappa_e=FLAGS.kappa_e, kappa_b=FLAGS.kappa_b, beta=FLAGS.ceb_beta,
                            beta_schedule=FLAGS.beta_schedule,
                            warmup_steps=cfgs.train.lr.warmup_steps,
                            total_steps=cfgs.train.train_steps)


def target_config(cfgs: Configs) -> models.TargetConfig:
    """BYOL's EMA target from the flags: tau_0 = --ema_alpha, cosine to 1 over the run."""
    return models.TargetConfig(base_ema=FLAGS.ema_alpha, total_steps=cfgs.train.train_steps)


def die(message: str) -> None:
    """Prints a one-paragraph error and exits with status 2 (bad usage)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
