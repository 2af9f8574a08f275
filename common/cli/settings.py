"""The configuration of a run: frozen dataclasses whose fields are the command line's flags.

An `Experiment` nests one section per concern (data, augmentation, model, optimisation, run,
fine-tuning, distribution, job) and the algorithm's own dataclass, which an algorithm package
defines and may compose from building blocks of `common` (`common.ceb.settings.CEBSettings`,
`common.training.models.TargetSettings`). Every leaf field is a flag: its name is the flag's name
(the original release's run.py names), its metadata the help text and, for flags the release had
but this project implements at one value only, the values accepted and why (`setting`).

Named presets are `Experiment` objects; `with_overrides` applies flag values to one by flag name,
which is how presets derive from a base and how the command line overrides a preset. Checks live
next to the fields they check: a section (or the algorithm's dataclass) may define `errors()` and
`warnings()`, each returning a list of one-line messages.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator


def setting(default, help: str, *, choices: tuple | None = None, allowed: tuple | None = None,
            why: str | None = None, flag: str | None = None):
    """A dataclass field that is also a flag.

    help: the flag's help text. choices: the values an enum flag takes. allowed/why: a release flag
    this project implements at the `allowed` values only; another value is refused with `why`.
    flag: the flag's name when it differs from the field's (a release name kept for a clearer field).
    """
    meta = {"help": help, "choices": choices, "allowed": allowed, "why": why, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


MIN_IMAGE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class DataSettings:
    dataset: str = setting("imagenet2012", "TFDS dataset name; fashion_mnist is built in (Debian's "
                           "files, no download).")
    data_dir: str | None = setting(None, "TFDS data directory.")
    train_split: str = setting("train", "Training split (TFDS split syntax, e.g. train[:10%]).")
    eval_split: str = setting("validation", "Evaluation split.")
    image_size: int = setting(224, "Input size; <= 32 selects the CIFAR stem.")
    cache_dataset: bool = setting(False, "Cache the decoded dataset in memory.")
    on_bad_image: str = setting(
        "stop", "An image that cannot be decoded or has another shape than the dataset declares: "
        "stop with an error naming the example's index, or skip it (a warning names it; the count "
        "is printed at the end and written as data/skipped_images); docs/DECISIONS.md 29.",
        choices=("stop", "skip"))

    def errors(self) -> list[str]:
        # The smallest stem, the CIFAR one (image_size <= 32), downsamples by 8 over the network;
        # below 8 px the last stages see nothing but padding.
        return [] if self.image_size >= MIN_IMAGE_SIZE else [
            f"--image_size={self.image_size}: the ResNet downsamples by {MIN_IMAGE_SIZE}; pass "
            f"--image_size >= {MIN_IMAGE_SIZE}."]


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    batch_image_augmentation_type: str = setting(
        "asymmetric", "Augmentation recipe (docs/DECISIONS.md 11). asymmetric: per-view blur "
        "(1.0 / 0.1) and solarisation (0 / 0.2) and mean/std normalisation (the release's default "
        "type); symmetric: blur with p=0.5 on both views (--use_blur), no normalisation (the "
        "release's other type).",
        choices=("asymmetric", "symmetric"))
    use_blur: bool = setting(True, "Blur (symmetric recipe only).")
    color_jitter_brightness: float = setting(0.4, "Brightness jitter.")
    color_jitter_contrast: float = setting(0.4, "Contrast jitter.")
    color_jitter_saturation: float = setting(0.2, "Saturation jitter.")
    color_jitter_hue: float = setting(0.1, "Hue jitter.")
    bbox_sampling: str = setting("logarithmic", "Crop sampler.", choices=("logarithmic", "uniform"))
    area_range_lower_bound: float = setting(0.08, "Smallest crop area fraction.")
    brightness_fn: str = setting("additive", "Brightness jitter: additive x + d (the release's "
                                 "default) or multiplicative x * (1 + d); docs/DECISIONS.md 11.",
                                 choices=("additive", "multiplicative"))
    clip_by_value_after_resizing: bool = setting(
        True, "Release option.", allowed=(True,), why="augmentations always clip to [0, 1]")
    clip_by_value_after_grayscale: bool = setting(
        True, "Release option.", allowed=(True,), why="augmentations always clip to [0, 1]")
    no_augmentation: bool = setting(
        False, "Release option.", allowed=(False,),
        why="pretraining needs two augmented views (the release crashes)")

    def errors(self) -> list[str]:
        out = []
        if self.batch_image_augmentation_type != "symmetric" and not self.use_blur:
            out.append("--use_blur=False only applies to --batch_image_augmentation_type=symmetric; "
                       "the asymmetric recipe always blurs view 1.")
        if not 0.0 < self.area_range_lower_bound <= 1.0:
            out.append(f"--area_range_lower_bound={self.area_range_lower_bound}: pass a fraction "
                       "in (0, 1].")
        return out


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    resnet_depth: int = setting(50, "ResNet depth.", choices=(18, 34, 50, 101, 152, 200))
    width_multiplier: float = setting(1.0, "ResNet width multiplier (fractions allowed).")
    sk_ratio: float = setting(0.0, "Selective-kernel ratio (0 = off).")
    se_ratio: float = setting(0.0, "Squeeze-excitation ratio (0 = off).")
    global_bn: bool = setting(True, "Synchronise BN batch statistics across replicas; False "
                              "normalises with each replica's own and averages the moving "
                              "statistics over replicas (docs/DECISIONS.md 7).")
    bn_semantics: str = setting("keras", "BN moving averages: keras (no debias) or haiku "
                                "(zero-debiased, DeepMind's reference); docs/DECISIONS.md 7.",
                                choices=("keras", "haiku"))
    batch_norm_decay: float = setting(0.9, "BN moving-average decay (Keras momentum).")
    num_proj_layers: int = setting(2, "Projection MLP layers.")
    proj_head_hidden_dim: int = setting(4096, "Projection MLP hidden width.")
    proj_out_dim: int = setting(256, "Projection output width.")
    proj_head_output_bn: bool = setting(False, "BN (scale only) on the projection output.")
    resnet_padding: str = setting(
        "fixed", "Strided convolutions' padding: fixed (the release: (k-1)/2 on each side before "
        "the stride) or same (haiku's SAME, DeepMind's reference; what converted DeepMind parameters "
        "need, docs/DECISIONS.md 18).", choices=("fixed", "same"))
    mlp_hidden_bias: bool = setting(
        False, "A bias on the heads' hidden Linear layers before their BN (DeepMind's MLP has one; "
        "converted DeepMind parameters need it, docs/DECISIONS.md 18).")
    mlp_init: str = setting(
        "release", "Head kernel init (docs/DECISIONS.md 9). release: Keras VarianceScaling(), a "
        "fan-in truncated normal with std 1/sqrt(fan_in) (the release's default); deepmind: the "
        "same without the truncation correction, std 0.88/sqrt(fan_in) (DeepMind's reference); "
        "normal: N(0, 0.01^2) (the release's other option).",
        choices=("release", "deepmind", "normal"))
    probe_input: str = setting("backbone", "What the online probe reads (docs/DECISIONS.md 4): "
                               "the backbone feature (standard) or the projection output (the "
                               "release); the release's --ft_proj_selector=0/-1 says the same.",
                               choices=("backbone", "projection"))
    proj_head_mode: str = setting("nonlinear", "Release option.", allowed=("nonlinear",),
                                  why="the projection head is the paper's nonlinear MLP")
    projector_mid_bn: bool = setting(True, "Release option.", allowed=(True,),
                                     why="the predictor's hidden layer always has BN")

    def errors(self) -> list[str]:
        out = []
        if self.width_multiplier <= 0:
            out.append(f"--width_multiplier={self.width_multiplier}: pass a positive number.")
        elif round(64 * self.width_multiplier) < 1:  # the narrowest layers have 64 channels at width 1
            out.append(f"--width_multiplier={self.width_multiplier} rounds the 64-channel layers "
                       "to 0 channels; pass a width > 1/128 (0.0079).")
        for name in ("num_proj_layers", "proj_head_hidden_dim", "proj_out_dim"):
            if getattr(self, name) < 1:
                out.append(f"--{name}={getattr(self, name)}: pass a positive integer.")
        if not 0.0 <= self.batch_norm_decay < 1.0:
            out.append(f"--batch_norm_decay={self.batch_norm_decay}: pass a value in [0, 1).")
        return out


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    optimizer: str = setting("lars", "Optimizer.", choices=("lars", "momentum", "adam"))
    learning_rate: float = setting(0.3, "Base learning rate per 256 examples (see scaling).")
    learning_rate_scaling: str = setting("linear", "linear: lr*B/256; sqrt: lr*sqrt(B).",
                                         choices=("linear", "sqrt"))
    learning_rate_schedule: str = setting("cosine", "Warm-up then cosine decay, or a constant "
                                          "scaled rate.", choices=("cosine", "constant"))
    warmup_epochs: float = setting(10.0, "Linear warm-up epochs (also beta's linear_warmup).")
    weight_decay: float = setting(1e-6, "Weight decay.")
    momentum: float = setting(0.9, "Momentum.")
    lars_form: str = setting("deepmind", "LARS momentum form (docs/DECISIONS.md 6): deepmind "
                             "mu=m*mu+g, p-=lr*mu; release folds lr into the buffer.",
                             choices=("deepmind", "release"))
    lars_eta: float = setting(1e-3, "LARS trust coefficient.")
    exclude_probe_from_lars: bool = setting(
        True, "Treat the online linear probe as the release's supervised head: its kernel gets "
        "weight decay but no LARS trust ratio, its bias neither (always so with "
        "--lars_form=release); False adapts it like every kernel (DeepMind's reference); "
        "docs/DECISIONS.md 10.")

    def errors(self) -> list[str]:
        out = []
        if self.learning_rate <= 0:
            out.append(f"--learning_rate={self.learning_rate}: pass a positive rate.")
        if self.weight_decay < 0:
            out.append(f"--weight_decay={self.weight_decay}: pass a value >= 0.")
        if self.warmup_epochs < 0:
            out.append(f"--warmup_epochs={self.warmup_epochs}: pass a value >= 0.")
        if not 0.0 <= self.momentum < 1.0:
            out.append(f"--momentum={self.momentum}: pass a value in [0, 1).")
        return out


@dataclasses.dataclass(frozen=True)
class RunSettings:
    train_mode: str = setting("pretrain", "Pretrain, or fine-tune a pretrained encoder.",
                              choices=("pretrain", "finetune"))
    train_batch_size: int = setting(512, "Global training batch.")
    train_epochs: float = setting(100.0, "Epochs (ignored when train_steps > 0).")
    train_steps: int = setting(0, "Training steps; overrides train_epochs when > 0.")
    eval_batch_size: int = setting(256, "Global eval batch.")
    checkpoint_epochs: float = setting(1.0, "Checkpoint every this many epochs.")
    checkpoint_steps: int = setting(0, "Checkpoint every this many steps; overrides epochs.")
    train_summary_steps: int = setting(100, "Steps between progress lines and summaries.")
    keep_checkpoint_max: int = setting(5, "Checkpoints kept.")
    seed: int = setting(0, "Run seed: data order, augmentation, vMF samples, initial weights.")
    deterministic: bool = setting(False, "Enable TF op determinism (bit-exact reruns).")
    jit_compile: bool = setting(False, "Compile the training step with XLA (the small-scale "
                                "presets' default: faster on CPUs; docs/DECISIONS.md 30).")
    on_nonfinite: str = setting(
        "stop", "A NaN or Inf in the loss, a metric, a gradient or a variable: stop with an error "
        "naming the step and the value (no checkpoint of that state), or skip the step (undone, "
        "counted as nonfinite_skipped in the summaries); docs/DECISIONS.md 21.",
        choices=("stop", "skip"))
    precision: str = setting("float32", "Compute dtype of the networks in the training step; "
                             "variables, losses, vMF, optimizer and BN statistics stay float32 "
                             "(docs/DECISIONS.md 25). bfloat16: TPUs and CPUs with BF16 "
                             "instructions; float16: GPUs, with dynamic loss scaling.",
                             choices=("float32", "bfloat16", "float16"))
    knn_every_steps: int = setting(0, "Monitor: every this many steps, kNN accuracy (k=200, "
                                   "T=0.07) of the backbone on the eval split with the bank "
                                   "split's features, written to TensorBoard (knn/top_1); 0: off.")
    knn_bank_split: str | None = setting(None, "The kNN monitor's bank (default: the training "
                                         "split), e.g. train[:10000] for a quicker monitor.")
    lineareval_while_pretraining: bool = setting(
        True, "Release option: the online probe.", allowed=(True,),
        why="the online probe always trains, on stop-gradient features, so it cannot change the "
            "representation; --final_linear_eval gives the offline number")
    explicitly_watch_vars: bool = setting(
        True, "Release option: optimise an explicit variable list.", allowed=(True,),
        why="the trainers always optimise the method's explicit variable list")

    def errors(self) -> list[str]:
        out = []
        for name in ("train_batch_size", "eval_batch_size", "train_summary_steps",
                     "keep_checkpoint_max"):
            if getattr(self, name) <= 0:
                out.append(f"--{name}={getattr(self, name)}: pass a positive integer.")
        if self.train_steps < 0:
            out.append("--train_steps must be >= 0 (0 means: use --train_epochs).")
        if self.train_steps == 0 and self.train_epochs <= 0:
            out.append("Pass --train_steps > 0 or --train_epochs > 0.")
        if self.checkpoint_steps < 0 or (self.checkpoint_steps == 0 and self.checkpoint_epochs <= 0):
            out.append("Pass --checkpoint_steps > 0 or --checkpoint_epochs > 0.")
        if self.knn_every_steps < 0:
            out.append("--knn_every_steps must be >= 0 (0 turns the kNN monitor off).")
        return out


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    checkpoint: str | None = setting(None, "Checkpoint a new run starts from (a ckpt-N prefix or "
                                     "a model_dir of this project, or a checkpoint of the original "
                                     "release): fine-tuning takes its encoder, pretraining every "
                                     "module it has; ignored once model_dir holds a checkpoint.")
    fine_tune_after_block: int = setting(-1, "Fine-tuning trains blocks after this one: -1 "
                                         "everything, 4 the head only.", choices=(-1, 0, 1, 2, 3, 4))
    zero_init_logits_layer: bool = setting(False, "Zero-initialise the supervised head.")
    reinit_logits_layer: bool = setting(True, "Release option.", allowed=(True,),
                                        why="fine-tuning always starts from a fresh classifier")
    rename_supervised_head: bool = setting(False, "Release option.", allowed=(False,),
                                           why="the fine-tuning head is always sized for the dataset")
    use_binary_cross_entropy: bool = setting(False, "Release option.", allowed=(False,),
                                             why="the supervised loss is softmax cross-entropy")
    ft_with_full_aug: bool = setting(False, "Release option.", allowed=(False,),
                                     why="fine-tuning uses crop and flip")


@dataclasses.dataclass(frozen=True)
class DistributeSettings:
    use_tpu: bool = setting(False, "Run on a Cloud TPU (the release defaults to True).")
    tpu_name: str | None = setting(None, "Cloud TPU name.")
    tpu_zone: str | None = setting(None, "Cloud TPU zone.")
    gcp_project: str | None = setting(None, "GCP project of the TPU.")
    master: str | None = setting(None, "TPU address.")
    cpu_replicas: int = setting(1, "Replicas over logical CPU devices (testing).")

    def errors(self) -> list[str]:
        return [] if self.cpu_replicas >= 1 else ["--cpu_replicas must be >= 1."]


@dataclasses.dataclass(frozen=True)
class JobSettings:
    mode: str = setting("train_then_eval", "train, eval (evaluate checkpoints as they appear), or "
                        "both.", choices=("train", "eval", "train_then_eval"))
    model_dir: str | None = setting(None, "Where checkpoints, summaries and results go (default: "
                                    "runs/<config>-<time>).")
    eval_timeout: float = setting(3600.0, "Eval job: seconds to wait for a new checkpoint.")
    final_linear_eval: bool = setting(
        False, "After training, compare the trained encoder with the same one randomly "
        "initialised: logistic regression and kNN on frozen features, and the linear "
        "classifier's mean accuracy under the 15 corruptions (see "
        "--final_eval_corruption_examples).")
    final_eval_corruption_examples: int = setting(
        500, "Eval-split examples the final evaluation corrupts (every corruption at severities "
        "1-5); 0 skips the corruptions.")
    export_eval_model: bool = setting(
        False, "After training, write <model_dir>/saved_model: a SavedModel of the encoder, "
        "projection head and linear probe that takes uint8 or float images of any size, applies "
        "the evaluation preprocessing itself and returns backbone, projection and logits (README, "
        "SavedModel export; docs/DECISIONS.md 19).")
    export_train_model: bool = setting(
        False, "Release option (SavedModel of the training graph).", allowed=(False,),
        why="only the inference networks are exported (--export_eval_model); resume or fine-tune "
            "from the checkpoint instead, docs/DECISIONS.md 19")

    def errors(self) -> list[str]:
        out = []
        if self.model_dir is None and self.mode == "eval":
            out.append("--mode=eval needs --model_dir (where the training job writes checkpoints).")
        if self.final_eval_corruption_examples < 0:
            out.append("--final_eval_corruption_examples must be >= 0 (0 skips the corruptions).")
        return out


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One run's whole configuration. Defaults are the original release's run.py defaults (with
    use_tpu False); `algorithm` is the algorithm package's own dataclass."""
    algorithm: Any
    data: DataSettings = DataSettings()
    augment: AugmentSettings = AugmentSettings()
    model: ModelSettings = ModelSettings()
    optim: OptimSettings = OptimSettings()
    run: RunSettings = RunSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    distribute: DistributeSettings = DistributeSettings()
    job: JobSettings = JobSettings()

    def errors(self) -> list[str]:
        b, n = self.run.train_batch_size, self.distribute.cpu_replicas
        if b > 0 and n > 1 and b % n:
            return [f"--train_batch_size={b} is not divisible by --cpu_replicas={n}; pass a "
                    f"multiple of {n}."]
        return []

    def warnings(self) -> list[str]:
        if self.run.train_mode == "finetune" and self.job.mode != "eval" \
                and self.finetune.checkpoint is None:
            return ["--train_mode=finetune without --checkpoint trains from random initialisation "
                    "(a supervised baseline)."]
        return []


# Fields that may change between the runs of one model_dir: the run's length, bookkeeping,
# evaluation, placement and compilation (jit_compile: XLA computes the same step, with other bits
# for its random draws; runs stored before XLA became the small presets' default resume under it).
# Anything else differing from the stored config.json stops a resume.
RESUMABLE_CHANGES = frozenset({
    "train_steps", "train_epochs", "checkpoint_steps", "checkpoint_epochs", "keep_checkpoint_max",
    "train_summary_steps", "eval_batch_size", "eval_split", "deterministic", "knn_every_steps",
    "knn_bank_split", "on_nonfinite", "on_bad_image",
    "use_tpu", "tpu_name", "tpu_zone", "gcp_project", "master", "cpu_replicas",
    "jit_compile", "mode", "model_dir", "eval_timeout", "final_linear_eval",
    "final_eval_corruption_examples",
    "export_eval_model",
    "export_train_model"})


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One flag-backed field: its flag name, its path from the root, its type and metadata."""
    flag: str
    path: tuple[str, ...]
    type: Any
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self):
        return self.field.metadata.get("choices")

    @property
    def allowed(self):
        return self.field.metadata.get("allowed")

    @property
    def why(self):
        return self.field.metadata.get("why")


def leaves(config) -> Iterator[Leaf]:
    """Every flag-backed leaf of a config tree, depth first, in field order."""
    def walk(obj, prefix):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, prefix + (f.name,))
            elif "help" in f.metadata:
                yield Leaf(f.metadata.get("flag") or f.name, prefix + (f.name,), hints[f.name], f)
    yield from walk(config, ())


def leaf_index(config) -> dict[str, Leaf]:
    """flag name -> Leaf; refuses two leaves with one flag name (flags must be unambiguous)."""
    out = {}
    for leaf in leaves(config):
        if leaf.flag in out:
            raise ValueError(f"two config fields claim the flag --{leaf.flag}: "
                             f"{'.'.join(out[leaf.flag].path)} and {'.'.join(leaf.path)}")
        out[leaf.flag] = leaf
    return out


def get_path(config, path):
    for name in path:
        config = getattr(config, name)
    return config


def _replace_path(config, path, value):
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    child = getattr(config, path[0])
    return dataclasses.replace(config, **{path[0]: _replace_path(child, path[1:], value)})


def _coerce(leaf: Leaf, value):
    """Ints are accepted for float fields (presets write 1 for 1.0); nothing else is converted."""
    if leaf.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def with_overrides(config, **values):
    """A copy of `config` with the named flags set, e.g. with_overrides(cfg, learning_rate=2.0)."""
    index = leaf_index(config)
    for name, value in values.items():
        if name not in index:
            raise KeyError(f"no configuration field is set by the flag --{name}")
        config = _replace_path(config, index[name].path, _coerce(index[name], value))
    return config


def as_dict(config) -> dict:
    """The config tree as nested plain dicts (JSON-ready)."""
    return dataclasses.asdict(config)


def differences(stored: dict, current: dict, ignore=frozenset()) -> list[str]:
    """'path: stored -> current' for every leaf that differs between two `as_dict` trees."""
    out = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            path = prefix + (key,)
            x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, path)
            elif key not in ignore and x != y:
                out.append(f"{'.'.join(path)}: {x!r} -> {y!r}")
    walk(stored, current, ())
    return out


def problems(config) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a config tree: restricted values, then every section's own checks."""
    errors, warnings = [], []
    for leaf in leaves(config):
        value = get_path(config, leaf.path)
        if leaf.allowed is not None and value not in leaf.allowed:
            errors.append(f"--{leaf.flag}={value} is not supported ({leaf.why}); accepted: "
                          f"{', '.join(str(a) for a in leaf.allowed)}.")
        if leaf.choices is not None and value not in leaf.choices:
            errors.append(f"--{leaf.flag}={value!r}: choose one of {leaf.choices}.")

    def walk(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value)
        errors.extend(getattr(obj, "errors", lambda: [])())
        warnings.extend(getattr(obj, "warnings", lambda: [])())
    walk(config)
    return errors, warnings
