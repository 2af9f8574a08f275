"""The evaluations users run after pretraining, for one checkpoint: linear, kNN, fine-tuning and
robustness to corruptions, with progress, TensorBoard scalars, a result JSON and a markdown table.

`load_encoder` rebuilds a checkpoint's backbone from the `config.json` its run wrote; `run_suite`
runs the evaluations asked for and returns (and writes) one result record. The command line is
`tools/evaluate.py`; everything here takes plain config objects.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from common.data import datasets
from common.evaluation import linear_eval

EVALUATIONS = ("linear", "knn", "finetune", "corruptions", "shifts")
# The distribution-shift test sets evaluated by 'shifts' when they are prepared in TFDS (each scored
# by the linear classifier fitted on the checkpoint's training split; ImageNet-A and -R label 200 of
# the 1000 classes, so their logits are restricted to the classes their labels use).
SHIFT_DATASETS = ("imagenet_a", "imagenet_r", "imagenet_v2", "imagenet2012_corrupted")
_SHIFT_SPLITS = {"imagenet_a": "test", "imagenet_r": "test", "imagenet_v2": "test",
                 "imagenet2012_corrupted": "validation"}
# Above this many training examples the linear protocol streams (SGD) instead of caching features.
_CACHED_LINEAR_MAX_EXAMPLES = 200_000


class EvaluationError(ValueError):
    """An evaluation this checkpoint or dataset cannot support, with the reason and the fix."""


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What to evaluate and how.

    evaluations: a subset of EVALUATIONS. batch_size: global batch of feature extraction.
    linear: 'auto' (cached logistic regression up to 200k training examples, streamed SGD above),
      'logistic' or 'sgd'. knn_k, knn_temperature: the kNN classifier. corruptions, severities:
      the grid; corruption_split: the split corrupted (None: the eval split). reference: mCE's
      reference, a result JSON of another evaluation or 'random' (the same encoder randomly
      initialised). finetune_fractions: label fractions (1.0 = every label); finetune_epochs,
      finetune_batch_size, finetune_learning_rate, fine_tune_after_block: fine-tuning's recipe.
    """
    evaluations: tuple = ("linear", "knn")
    batch_size: int = 500
    linear: str = "auto"
    knn_k: int = 200
    knn_temperature: float = 0.07
    corruptions: tuple | None = None
    severities: tuple = (1, 2, 3, 4, 5)
    corruption_split: str | None = None
    reference: str | None = "random"
    finetune_fractions: tuple = (0.01, 0.1)
    finetune_subset_file: str | None = None
    finetune_epochs: float = 30.0
    finetune_batch_size: int = 128
    finetune_learning_rate: float = 0.05
    fine_tune_after_block: int = -1
    shift_datasets: tuple = SHIFT_DATASETS
    shift_data_dir: str | None = None
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.evaluations) - set(EVALUATIONS)
        if unknown or not self.evaluations:
            raise EvaluationError(f"unknown evaluation(s) {sorted(unknown)}; choose from "
                                  f"{', '.join(EVALUATIONS)}.")
        if self.linear not in ("auto", "logistic", "sgd"):
            raise EvaluationError(f"linear={self.linear!r}: choose auto, logistic or sgd.")
        if self.knn_k < 1 or self.knn_temperature <= 0:
            raise EvaluationError("knn_k must be >= 1 and knn_temperature > 0.")
        if any(s not in (1, 2, 3, 4, 5) for s in self.severities) or not self.severities:
            raise EvaluationError(f"severities {self.severities}: choose among 1..5.")
        if any(not 0 < f <= 1 for f in self.finetune_fractions):
            raise EvaluationError(f"finetune fractions {self.finetune_fractions}: each in (0, 1].")


class ProgressLine:
    """Prints `label: i/n (p%) | ETA` at most every `every` seconds and at the end."""

    def __init__(self, label: str, total: int, print_fn=print, every: float = 10.0):
        self.label, self.total, self.print_fn, self.every = label, max(1, total), print_fn, every
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        from common.training.reporting import format_duration
        self.print_fn(f"{self.label}: {done}/{self.total} ({100 * done / self.total:.0f}%) | "
                      f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}", flush=True)

    def iterate(self, items: Iterable, step: int = 1):
        done = 0
        for item in items:
            yield item
            done += step
            self.update(min(done, self.total))


@dataclasses.dataclass
class LoadedEncoder:
    """A checkpoint's backbone, its run's configuration and how to build its untrained twin."""
    encoder: tf.Module
    checkpoint: str
    step: int
    config: dict  # the run's config.json
    build: Callable[[], tf.Module]  # a freshly initialised encoder of the same architecture
    resnet_cfg: object  # its common.networks.resnet.ResNetConfig

    @property
    def image_size(self) -> int:
        return self.config["config"]["data"]["image_size"]


def _resolve_checkpoint(path: str) -> str:
    from common.training import checkpoints
    try:
        return checkpoints.resolve(path)
    except checkpoints.CheckpointError as e:
        raise EvaluationError(str(e)) from e


def load_encoder(path: str) -> LoadedEncoder:
    """The backbone stored at `path` (a ckpt-N prefix or a model_dir), built from the config.json
    of its run, in the checkpoint's `model/encoder` (every trainer and fine-tuning keep it there)."""
    from common.cli import job, settings
    from common.networks import resnet as resnet_lib
    from common.training import checkpoints

    ckpt = _resolve_checkpoint(path)
    config_path = os.path.join(os.path.dirname(ckpt), job.CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        from common.interop import release
        if release.is_release_checkpoint(ckpt):
            return _load_release_encoder(ckpt)
        raise EvaluationError(f"{config_path} is missing: the evaluation rebuilds the encoder from "
                              "the run's configuration, which every trainer of this project writes "
                              "there.")
    with tf.io.gfile.GFile(config_path) as f:
        config = json.load(f)
    model = settings.ModelSettings(**config["config"]["model"])
    resnet_cfg = job.resnet_config(model, config["config"]["data"]["image_size"])

    def build():
        return resnet_lib.ResNet(resnet_cfg, name="encoder")

    encoder = build()
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoints.restore_partial(tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder),
                                                    optimizer=tf.train.Checkpoint(iterations=step)),
                                ckpt)
    return LoadedEncoder(encoder=encoder, checkpoint=ckpt, step=int(step.numpy()), config=config,
                         build=build, resnet_cfg=resnet_cfg)


def _load_release_encoder(ckpt: str) -> LoadedEncoder:
    """The backbone of an original release checkpoint (`model/_resnet`, architecture from the
    stored shapes), with a configuration of the release's defaults: ImageNet mean/std inputs,
    image size 32 with a CIFAR stem and 224 otherwise (tools/evaluate.py --image_size changes it)."""
    from common.cli import settings
    from common.interop import release
    from common.networks import resnet as resnet_lib
    try:
        stored = release.read(ckpt)
        layout = release.infer_resnet(stored)

        def build():
            return resnet_lib.ResNet(layout.config, name="encoder")
        encoder = build()
        report = release.import_modules(stored, {"encoder": (encoder, "_resnet")}, layout.describe())
    except release.ReleaseCheckpointError as e:
        raise EvaluationError(str(e)) from e
    cfg = layout.config
    model = settings.ModelSettings(resnet_depth=cfg.depth, width_multiplier=cfg.width_multiplier,
                                   sk_ratio=cfg.sk_ratio, se_ratio=cfg.se_ratio)
    config = {"trainer": "release", "import_report": report.lines(), "config": {
        "data": dataclasses.asdict(settings.DataSettings(image_size=32 if cfg.cifar_stem else 224)),
        "augment": dataclasses.asdict(settings.AugmentSettings()),
        "model": dataclasses.asdict(model)}}
    return LoadedEncoder(encoder=encoder, checkpoint=ckpt, step=stored.step, config=config,
                         build=build, resnet_cfg=cfg)


@dataclasses.dataclass
class Context:
    """What every evaluation reads: data, augmentation (its eval preprocessing), the strategy."""
    data: datasets.DataConfig
    augment: object  # common.data.augment.AugmentConfig
    num_classes: int
    strategy: tf.distribute.Strategy
    writer: object
    print_fn: Callable = print
    _features: dict = dataclasses.field(default_factory=dict)

    def eval_batches(self, split: str, batch_size: int, normalize: bool = True):
        aug = self.augment if normalize else dataclasses.replace(self.augment, normalize=False)
        return datasets.eval_dataset(self.data, aug, split, batch_size)

    def features(self, name: str, encoder, split: str, batch_size: int):
        """(features [N, F], labels [N]) of `split` under `encoder` in inference mode, cached."""
        key = (name, split)
        if key not in self._features:
            n = datasets.eval_steps(self.data, split, batch_size)
            line = ProgressLine(f"features ({name}, {split})", n, self.print_fn)
            ds = line.iterate(self.eval_batches(split, batch_size))
            self._features[key] = linear_eval.extract_features(
                lambda x: encoder(x, training=False), ds)
        return self._features[key]


def _scalars(writer, step: int, prefix: str, values: dict) -> None:
    """Every number in `values` (nested dicts flattened into tag/paths) as a scalar at `step`."""
    if writer is None:
        return
    with writer.as_default(step=step):
        for tag, value in _flatten(values, prefix):
            tf.summary.scalar(tag, value)
    writer.flush()


def _flatten(values: dict, prefix: str):
    for k, v in values.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}/{k}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            yield f"{prefix}/{k}", v


def evaluate_linear(ctx: Context, loaded: LoadedEncoder, cfg: SuiteConfig) -> tuple[dict, object]:
    """Linear evaluation on frozen backbone features: (result, a classifier usable on features).

    Cached logistic regression (L2 chosen on a held-out tenth of train) up to 200k training
    examples; above, or with cfg.linear == 'sgd', the streamed SGD protocol of
    `common.evaluation.linear_protocol` through the context's strategy.
    """
    n_train = datasets.num_examples(ctx.data, ctx.data.train_split)
    mode = cfg.linear
    if mode == "auto":
        mode = "logistic" if n_train <= _CACHED_LINEAR_MAX_EXAMPLES else "sgd"
    if mode == "logistic":
        trx, try_ = ctx.features("pretrained", loaded.encoder, ctx.data.train_split, cfg.batch_size)
        tex, tey = ctx.features("pretrained", loaded.encoder, ctx.data.eval_split, cfg.batch_size)
        ctx.print_fn(f"linear: fitting logistic regression on {len(trx)} x {trx.shape[1]} "
                     "features", flush=True)
        result, classifier = linear_eval.linear_probe(trx, try_, tex, tey, ctx.num_classes,
                                                      return_classifier=True)
        top5 = _top_k_accuracy(classifier.logits(tex), tey, 5)
        out = {"top_1": result["test_accuracy"], "top_5": top5, "protocol": "logistic",
               "l2": result["l2"], "train_accuracy": result["train_accuracy"],
               "num_train": int(len(trx)), "num_test": int(len(tex))}
        return out, classifier
    from common.evaluation import linear_protocol
    result, head = linear_protocol.train_linear(
        loaded.encoder, ctx.strategy, ctx.data, ctx.augment, linear_protocol.LinearProtocolConfig(),
        ctx.num_classes, print_fn=ctx.print_fn, return_head=True)
    result = dict(result, protocol="sgd", num_train=n_train, num_test=result["num_examples"])
    return result, head


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def evaluate_knn(ctx: Context, loaded: LoadedEncoder, cfg: SuiteConfig) -> dict:
    """Weighted kNN on cosine similarities of frozen backbone features (train split as the bank)."""
    from common.evaluation import knn
    trx, try_ = ctx.features("pretrained", loaded.encoder, ctx.data.train_split, cfg.batch_size)
    tex, tey = ctx.features("pretrained", loaded.encoder, ctx.data.eval_split, cfg.batch_size)
    return knn_on_features(trx, try_, tex, tey, ctx.num_classes,
                           knn.KNNConfig(k=cfg.knn_k, temperature=cfg.knn_temperature))


def knn_on_features(train_x, train_y, test_x, test_y, num_classes: int, cfg,
                    query_batch: int = 1024) -> dict:
    """`common.evaluation.knn` on features already extracted: the bank is train_x [N, D], the
    queries test_x [Q, D] in batches of `query_batch`. Returns knn.knn_eval's record."""
    from common.evaluation import knn
    bank = tf.math.l2_normalize(tf.constant(train_x, tf.float32), axis=-1)
    bank_labels = tf.constant(train_y, tf.int32)
    k = knn.effective_k(cfg.k, int(bank.shape[0]))
    predict = tf.function(lambda q: knn.knn_predict(q, bank, bank_labels, num_classes, k,
                                                    cfg.temperature, cfg.bank_chunk))
    correct = np.zeros(2, np.int64)
    for start in range(0, len(test_x), query_batch):
        scores = predict(tf.constant(test_x[start:start + query_batch], tf.float32))
        y = tf.constant(test_y[start:start + query_batch], tf.int32)
        correct += [int(tf.reduce_sum(tf.cast(knn.top_k_correct(scores, y, t), tf.int64)))
                    for t in (1, 5)]
    n = max(len(test_x), 1)
    return {"top_1": float(correct[0] / n), "top_5": float(correct[1] / n), "k": k,
            "temperature": float(cfg.temperature), "num_train": int(len(train_x)),
            "num_test": int(len(test_x))}


def _corrupted_accuracy(ctx: Context, encode, classifier, split: str, name: str, severity: int,
                        batch_size: int, seed: int, max_examples: int | None = None) -> float:
    """Accuracy of encode (a traced encoder in inference mode) + linear classifier on `split` with
    every image corrupted before the eval normalisation, on images in [0, 1], as the benchmark
    corrupts pixels. The corruption runs eagerly: one graph per (name, severity) would cost more
    to trace than to run."""
    from common.data import augment as augment_lib
    from common.evaluation import corruptions

    base = tf.constant([seed, severity], tf.int32)
    correct = total = 0.0
    for i, batch in enumerate(ctx.eval_batches(split, batch_size, normalize=False)):
        if max_examples is not None and total >= max_examples:
            break
        mask = batch["mask"].numpy() > 0
        if max_examples is not None:
            mask &= np.cumsum(mask) + total <= max_examples
        x = corruptions.corrupt(batch["image"], name, severity,
                                tf.random.experimental.stateless_fold_in(base, i))
        if ctx.augment.normalize:
            x = augment_lib.normalize(x)
        feats = encode(x).numpy()
        pred = np.argmax(_logits(classifier, feats[mask]), axis=1)
        correct += float(np.sum(pred == batch["label"].numpy()[mask]))
        total += float(mask.sum())
    return correct / max(total, 1.0)


def _logits(classifier, feats: np.ndarray) -> np.ndarray:
    if isinstance(classifier, linear_eval.LinearClassifier):
        return classifier.logits(feats)
    return classifier(tf.constant(feats)).numpy()


def evaluate_corruptions(ctx: Context, loaded: LoadedEncoder, classifier, cfg: SuiteConfig,
                         reference: dict | None = None, label: str = "pretrained",
                         max_examples: int | None = None) -> dict:
    """Accuracy under every corruption and severity of the grid, their mean, and (with a
    reference's grid) the corruption errors CE_c = sum_s E_{c,s} / sum_s E^ref_{c,s} and their mean,
    the mCE of Hendrycks & Dietterich (2019), as fractions (1.0 = as bad as the reference)."""
    from common.evaluation import corruptions
    names = tuple(cfg.corruptions or corruptions.CORRUPTIONS)
    split = cfg.corruption_split or ctx.data.eval_split
    grid = [(n, s) for n in names for s in cfg.severities]
    line = ProgressLine(f"corruptions ({label}, {split})", len(grid), ctx.print_fn)
    acc: dict = {}
    encode = tf.function(lambda x: loaded.encoder(x, training=False))
    for i, (name, severity) in enumerate(grid):
        acc.setdefault(name, {})[str(severity)] = _corrupted_accuracy(
            ctx, encode, classifier, split, name, severity, cfg.batch_size, cfg.seed,
            max_examples)
        line.update(i + 1)
    per_corruption = {n: float(np.mean(list(v.values()))) for n, v in acc.items()}
    out = {"accuracy": acc, "mean_accuracy_per_corruption": per_corruption,
           "mean_accuracy": float(np.mean(list(per_corruption.values()))), "split": split,
           "severities": list(cfg.severities)}
    if reference is not None:
        ce = {}
        for n, by_severity in acc.items():
            ref = reference["accuracy"].get(n)
            if ref is None or any(str(s) not in ref for s in cfg.severities):
                continue
            err = sum(1.0 - by_severity[str(s)] for s in cfg.severities)
            ref_err = sum(1.0 - ref[str(s)] for s in cfg.severities)
            ce[n] = err / ref_err if ref_err > 0 else float("nan")
        out["corruption_error"] = ce
        out["mCE"] = float(np.mean(list(ce.values()))) if ce else float("nan")
    return out


def evaluate_finetune(ctx: Context, loaded: LoadedEncoder, cfg: SuiteConfig,
                      output_dir: str) -> dict:
    """Supervised fine-tuning (from block cfg.fine_tune_after_block) on class-balanced fractions of
    the training split's labels, then top-1/top-5 on the eval split, one run per fraction.

    Recipe: SGD with Nesterov momentum 0.9, no weight decay, the learning rate
    cfg.finetune_learning_rate x B/256 decayed by a cosine without warm-up, cfg.finetune_epochs over
    the labelled subset, crop-and-flip augmentation. Each run checkpoints under
    <output_dir>/finetune-<key>, keyed by everything that defines it, so an interrupted run resumes
    and a repeated one is reused.
    """
    import hashlib

    from common.evaluation import subsets
    from common.training import finetune, optim, schedules, trainer

    labels = subsets.split_labels(ctx.data)
    replicas = ctx.strategy.num_replicas_in_sync
    chosen = {f"{f:g}": None if f >= 1.0 else subsets.balanced_subset(labels, f, cfg.seed)
              for f in cfg.finetune_fractions}
    if cfg.finetune_subset_file:
        try:
            names = subsets.read_subset_file(cfg.finetune_subset_file)
            split_names = subsets.split_file_names(ctx.data)
        except (KeyError, ValueError) as e:
            raise EvaluationError(f"cannot use {cfg.finetune_subset_file} on {ctx.data.dataset}/"
                                  f"{ctx.data.train_split}: {e} (subset files name images by the "
                                  "split's 'file_name' feature, as imagenet2012's).") from e
        chosen = {os.path.basename(cfg.finetune_subset_file):
                  subsets.indices_for_file_names(names, split_names)}
    out = {}
    for label, indices in chosen.items():
        t0 = time.perf_counter()
        fraction = 1.0 if indices is None else len(indices) / len(labels)
        data = ctx.data if indices is None else subsets.with_subset(ctx.data, indices)
        n = len(labels) if indices is None else len(indices)
        batch = max(replicas, min(cfg.finetune_batch_size, n) // replicas * replicas)
        steps = max(1, math.ceil(cfg.finetune_epochs * n / batch))
        key = hashlib.sha256(json.dumps([loaded.checkpoint, fraction, cfg.finetune_epochs, batch,
                                         cfg.finetune_learning_rate, cfg.fine_tune_after_block,
                                         cfg.seed, data.dataset, data.train_split]).encode())
        model_dir = os.path.join(output_dir, f"finetune-{key.hexdigest()[:12]}")
        train_cfg = trainer.TrainConfig(
            model_dir=model_dir, train_steps=steps, train_batch_size=batch,
            eval_batch_size=cfg.batch_size, steps_per_loop=min(100, steps),
            checkpoint_steps=min(1000, steps), keep_checkpoint_max=1,
            lr=schedules.LRConfig(base_lr=cfg.finetune_learning_rate, batch_size=batch,
                                  warmup_steps=0, total_steps=steps),
            optim=optim.OptimConfig(name="momentum", momentum=0.9, nesterov=True,
                                    weight_decay=0.0), seed=cfg.seed)
        ft_cfg = finetune.FinetuneConfig(fine_tune_after_block=cfg.fine_tune_after_block,
                                         checkpoint=loaded.checkpoint)
        ctx.print_fn(f"finetune: {fraction:.0%} of the labels ({n} examples), {steps} steps of "
                     f"batch {batch}, from block {cfg.fine_tune_after_block}", flush=True)
        run = trainer.Pretrainer(
            lambda k: finetune.Supervised(loaded.resnet_cfg, k, ft_cfg), train_cfg, data,
            ctx.augment, ctx.strategy,
            dataset_fn=lambda c, start, d=data, b=batch: datasets.linear_train_dataset(
                d, ctx.augment, b, c, start_step=start),
            num_classes=ctx.num_classes, print_fn=ctx.print_fn)
        if run.step == 0 and tf.train.latest_checkpoint(model_dir) is None:
            run.method.load_pretrained()
        run.train()
        result = trainer.evaluate_probe(run.method, ctx.strategy, data, ctx.augment,
                                        data.eval_split, cfg.batch_size)
        out[label] = {"top_1": result["label_top_1_accuracy"],
                                "top_5": result["label_top_5_accuracy"], "num_labelled": n,
                                "steps": steps, "batch_size": batch,
                                "seconds": time.perf_counter() - t0}
        ctx.print_fn(f"finetune {fraction:.0%}: top-1 {result['label_top_1_accuracy']:.4f}",
                     flush=True)
    return out


def evaluate_shifts(ctx: Context, loaded: LoadedEncoder, classifier, cfg: SuiteConfig) -> dict:
    """Top-1 of encoder + linear classifier on each prepared dataset of cfg.shift_datasets (the
    datasets must use the training dataset's label indices; logits are restricted to the classes
    their labels use). Unprepared ones are reported with how to prepare them; none prepared raises
    EvaluationError."""
    out, missing = {}, []
    encode = tf.function(lambda x: loaded.encoder(x, training=False))
    for name in cfg.shift_datasets:
        base = name.split("/")[0]
        data = dataclasses.replace(ctx.data, dataset=name, data_dir=cfg.shift_data_dir or
                                   ctx.data.data_dir, eval_split=_SHIFT_SPLITS.get(base, "test"))
        try:
            prepared = datasets.is_prepared(data)
        except datasets.DataError:
            prepared = False
        if not prepared:
            how = (f"not prepared in {data.data_dir or '~/tensorflow_datasets'}: build it where the "
                   f"network reaches its source (`tfds build {name}`; imagenet2012_corrupted/<name>_"
                   "<severity> needs ImageNet's validation files in its manual directory) and pass "
                   "--data_dir=DIR")
            out[name] = {"skipped": how}
            missing.append(f"{name}: {how}")
            continue
        t0 = time.perf_counter()
        feats, labels = [], []
        n = datasets.eval_steps(data, None, cfg.batch_size)
        for batch in ProgressLine(f"shifts ({name})", n, ctx.print_fn).iterate(
                _eval_pass(data, ctx.augment, cfg.batch_size)):
            mask = batch["mask"].numpy() > 0
            feats.append(encode(batch["image"]).numpy()[mask])
            labels.append(batch["label"].numpy()[mask])
        feats, labels = np.concatenate(feats), np.concatenate(labels)
        logits = _logits(classifier, feats)
        used = np.unique(labels)
        restricted = np.full_like(logits, -np.inf)
        restricted[:, used] = logits[:, used]
        out[name] = {"top_1": float(np.mean(np.argmax(restricted, 1) == labels)),
                     "num_examples": int(len(labels)), "num_classes_used": int(len(used)),
                     "split": data.eval_split, "seconds": time.perf_counter() - t0}
    for line in missing:
        ctx.print_fn(f"shifts: {line}", flush=True)
    if len(missing) == len(cfg.shift_datasets):
        raise EvaluationError("none of the distribution-shift datasets is prepared:\n  "
                              + "\n  ".join(missing))
    return out


def _eval_pass(data: datasets.DataConfig, aug_cfg, batch_size: int):
    """One pass over data.eval_split, evaluation preprocessing, padded batches with masks."""
    return datasets.eval_dataset(data, aug_cfg, None, batch_size)


def _reference_grid(ctx: Context, loaded: LoadedEncoder, cfg: SuiteConfig) -> tuple[dict, str]:
    """The corruption grid mCE is relative to: a stored result JSON, or the same encoder randomly
    initialised with its own linear classifier."""
    if cfg.reference is None:
        return None, "none"
    if cfg.reference != "random":
        with tf.io.gfile.GFile(cfg.reference) as f:
            stored = json.load(f)
        grid = stored.get("results", {}).get("corruptions")
        if grid is None:
            raise EvaluationError(f"{cfg.reference} holds no corruption results to compare with; "
                                  "pass the evaluation.json of a run with --eval=corruptions.")
        return grid, cfg.reference
    tf.random.set_seed(cfg.seed)
    fresh = dataclasses.replace(loaded, encoder=loaded.build())
    trx, try_ = ctx.features("random_init", fresh.encoder, ctx.data.train_split, cfg.batch_size)
    tex, tey = ctx.features("random_init", fresh.encoder, ctx.data.eval_split, cfg.batch_size)
    _, classifier = linear_eval.linear_probe(trx, try_, tex, tey, ctx.num_classes,
                                             return_classifier=True)
    return evaluate_corruptions(ctx, fresh, classifier, cfg, label="random_init"), "random_init"


def run_suite(loaded: LoadedEncoder, data_cfg: datasets.DataConfig, aug_cfg, cfg: SuiteConfig,
              output_dir: str, strategy: tf.distribute.Strategy | None = None,
              print_fn=print) -> dict:
    """Runs cfg.evaluations on `loaded`'s encoder; writes <output_dir>/evaluation.json and
    TensorBoard scalars (<output_dir>/tensorboard, at the checkpoint's step); returns the record."""
    from common.training import checkpoints

    info = datasets.dataset_info(data_cfg)
    for split in (data_cfg.train_split, data_cfg.eval_split):
        if datasets.num_examples(data_cfg, split) == 0:
            raise EvaluationError(f"split {split!r} of {data_cfg.dataset} is empty.")
    if info.num_classes < 2:
        raise EvaluationError(f"{data_cfg.dataset} has {info.num_classes} label value(s); every "
                              "evaluation here needs labelled examples of at least 2 classes.")
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
    ctx = Context(data=data_cfg, augment=aug_cfg, num_classes=info.num_classes,
                  strategy=strategy or tf.distribute.get_strategy(), writer=writer,
                  print_fn=print_fn)
    results, classifier = {}, None
    t_all = time.perf_counter()
    if {"linear", "corruptions", "shifts"} & set(cfg.evaluations):
        t0 = time.perf_counter()
        linear, classifier = evaluate_linear(ctx, loaded, cfg)
        linear["seconds"] = time.perf_counter() - t0
        results["linear"] = linear
        print_fn(f"linear: top-1 {linear['top_1']:.4f} top-5 {linear['top_5']:.4f} "
                 f"({linear['seconds']:.0f}s)", flush=True)
    if "knn" in cfg.evaluations:
        t0 = time.perf_counter()
        results["knn"] = dict(evaluate_knn(ctx, loaded, cfg), seconds=0.0)
        results["knn"]["seconds"] = time.perf_counter() - t0
        print_fn(f"knn: top-1 {results['knn']['top_1']:.4f} (k={cfg.knn_k}, "
                 f"T={cfg.knn_temperature}; {results['knn']['seconds']:.0f}s)", flush=True)
    if "corruptions" in cfg.evaluations:
        t0 = time.perf_counter()
        reference, ref_name = _reference_grid(ctx, loaded, cfg)
        grid = evaluate_corruptions(ctx, loaded, classifier, cfg, reference=reference)
        grid.update(reference=ref_name, seconds=time.perf_counter() - t0)
        if reference is not None and ref_name == "random_init":
            grid["reference_grid"] = reference
        results["corruptions"] = grid
        print_fn(f"corruptions: mean accuracy {grid['mean_accuracy']:.4f}"
                 + (f", mCE {grid['mCE']:.3f} vs {ref_name}" if "mCE" in grid else "")
                 + f" ({grid['seconds']:.0f}s)", flush=True)
    if "shifts" in cfg.evaluations:
        results["shifts"] = evaluate_shifts(ctx, loaded, classifier, cfg)
    if "finetune" in cfg.evaluations:
        results["finetune"] = evaluate_finetune(ctx, loaded, cfg, output_dir)
    if "linear" not in cfg.evaluations:
        results.pop("linear", None)
    for name, values in results.items():
        _scalars(writer, loaded.step, f"eval_suite/{name}", values)
    writer.close()
    record = {"checkpoint": loaded.checkpoint, "step": loaded.step,
              "dataset": {"name": data_cfg.dataset, "data_dir": data_cfg.data_dir,
                          "train_split": data_cfg.train_split, "eval_split": data_cfg.eval_split,
                          "image_size": data_cfg.image_size, "num_classes": info.num_classes},
              "suite": dataclasses.asdict(cfg), "run_config": loaded.config.get("config"),
              "results": results, "seconds": time.perf_counter() - t_all}
    checkpoints.write_json(os.path.join(output_dir, "evaluation.json"), record)
    return record


def markdown_table(record: dict) -> str:
    """One row per metric of a `run_suite` record."""
    rows = ["| evaluation | metric | value | seconds |", "| --- | --- | --- | --- |"]
    r = record["results"]
    if "linear" in r:
        for k in ("top_1", "top_5"):
            rows.append(f"| linear ({r['linear']['protocol']}) | {k} | {r['linear'][k]:.4f} | "
                        f"{r['linear']['seconds']:.0f} |")
    if "knn" in r:
        rows.append(f"| knn (k={r['knn']['k']}, T={r['knn']['temperature']}) | top_1 | "
                    f"{r['knn']['top_1']:.4f} | {r['knn']['seconds']:.0f} |")
    if "corruptions" in r:
        c = r["corruptions"]
        rows.append(f"| corruptions | mean accuracy | {c['mean_accuracy']:.4f} | "
                    f"{c['seconds']:.0f} |")
        if "mCE" in c:
            rows.append(f"| corruptions | mCE vs {c['reference']} | {c['mCE']:.3f} | |")
        for name, acc in c["mean_accuracy_per_corruption"].items():
            rows.append(f"| corruptions | {name} | {acc:.4f} | |")
    for subset, f in r.get("finetune", {}).items():
        rows.append(f"| finetune ({subset} of the labels, {f['num_labelled']} examples) | "
                    f"top_1 | {f['top_1']:.4f} | {f['seconds']:.0f} |")
    for name, value in r.get("shifts", {}).items():
        shown = f"{value['top_1']:.4f}" if "top_1" in value else "not prepared"
        rows.append(f"| shifts | {name} | {shown} | {value.get('seconds', 0):.0f} |")
    return "\n".join(rows)


def pretrained_vs_random(encoders: dict, data_cfg: datasets.DataConfig, aug_cfg, batch_size: int,
                         corruption_examples: int = 1000, seed: int = 0, print_fn=print) -> dict:
    """The demo's closing comparison: for each {name: encoder} (e.g. the trained one and the same
    architecture randomly initialised), logistic regression on frozen features (fitted on the
    training split, tested on the eval split), kNN top-1, and the accuracy of that linear classifier
    averaged over the 15 corruptions at severities 1-5 on the first `corruption_examples` examples
    of the eval split (0: skipped). Returns {name: {'test_accuracy', 'l2', 'knn_top_1',
    ['corruption_accuracy', 'corruption_examples']}}."""
    from common.evaluation import knn
    info = datasets.dataset_info(data_cfg)
    ctx = Context(data=data_cfg, augment=aug_cfg, num_classes=info.num_classes,
                  strategy=tf.distribute.get_strategy(), writer=None, print_fn=print_fn)
    cfg = SuiteConfig(batch_size=batch_size, seed=seed, reference=None)
    out = {}
    for name, encoder in encoders.items():
        t0 = time.perf_counter()
        trx, try_ = ctx.features(name, encoder, data_cfg.train_split, batch_size)
        tex, tey = ctx.features(name, encoder, data_cfg.eval_split, batch_size)
        t1 = time.perf_counter()
        lin, classifier = linear_eval.linear_probe(trx, try_, tex, tey, info.num_classes,
                                                   return_classifier=True)
        nn = knn_on_features(trx, try_, tex, tey, info.num_classes, knn.KNNConfig())
        row = {"test_accuracy": lin["test_accuracy"], "l2": lin["l2"],
               "train_accuracy": lin["train_accuracy"], "knn_top_1": nn["top_1"]}
        t2 = time.perf_counter()
        if corruption_examples > 0:
            loaded = LoadedEncoder(encoder=encoder, checkpoint="", step=0, config={},
                                   build=lambda: None, resnet_cfg=None)
            grid = evaluate_corruptions(ctx, loaded, classifier, cfg, label=name,
                                        max_examples=corruption_examples)
            row.update(corruption_accuracy=grid["mean_accuracy"],
                       corruption_examples=min(corruption_examples, len(tex)))
        out[name] = row
        print_fn(f"final eval ({name}): linear {row['test_accuracy']:.4f}, kNN "
                 f"{row['knn_top_1']:.4f}"
                 + (f", corrupted {row['corruption_accuracy']:.4f}" if "corruption_accuracy" in row
                    else "")
                 + f" ({trx.shape[1]}-d features of {len(trx) + len(tex)} images in "
                 f"{t1 - t0:.0f}s, fits {t2 - t1:.0f}s, corruptions "
                 f"{time.perf_counter() - t2:.0f}s)", flush=True)
    return out


def print_comparison(results: dict, print_fn=print) -> None:
    """A markdown table of `pretrained_vs_random`'s results."""
    corrupted = all("corruption_accuracy" in r for r in results.values())
    print_fn("\n| encoder | linear-probe test accuracy | kNN top-1 |"
             + (" mean accuracy under corruptions |" if corrupted else "") + " L2 |")
    print_fn("| --- | --- | --- |" + (" --- |" if corrupted else "") + " --- |")
    for name, r in results.items():
        print_fn(f"| {name} | {r['test_accuracy']:.4f} | {r['knn_top_1']:.4f} |"
                 + (f" {r['corruption_accuracy']:.4f} |" if corrupted else "") + f" {r['l2']:g} |")
