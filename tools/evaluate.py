"""Evaluate a pretrained checkpoint: linear, kNN, fine-tuning, robustness to corruptions.

  python tools/evaluate.py --checkpoint=runs/demo-cbyol --eval=linear,knn,corruptions
  python tools/evaluate.py --checkpoint=runs/x/ckpt-840 --eval=finetune --finetune_fractions=0.01,0.1
  python tools/evaluate.py --checkpoint=runs/x --dataset=cifar10 --train_split=train --eval_split=test

The data default to the checkpoint's own run (its config.json); every TFDS image-classification
dataset works by name. Results: a markdown table on stdout, <output_dir>/evaluation.json and
TensorBoard scalars in <output_dir>/tensorboard (output_dir defaults to <model_dir>/evaluation).
An evaluation the checkpoint or data cannot support stops with the reason, exit status 2.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

flags.DEFINE_string("checkpoint", None, "A ckpt-N prefix or the model_dir of a run of this "
                    "project (its config.json describes the encoder), or a checkpoint of the "
                    "original release (the encoder read from its shapes).")
flags.DEFINE_integer("image_size", None, "Input size (default: the checkpoint's run; release "
                     "checkpoints: 32 with a CIFAR stem, else 224).")
flags.DEFINE_list("eval", ["linear", "knn"], "Evaluations: linear, knn, finetune, corruptions, "
                  "shifts (ImageNet-A, -R, -v2, -C through TFDS when prepared).")
flags.DEFINE_string("dataset", None, "TFDS dataset name (default: the checkpoint's).")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: the checkpoint's).")
flags.DEFINE_string("train_split", None, "Split the classifiers are fitted on (default: the "
                    "checkpoint's training split).")
flags.DEFINE_string("eval_split", None, "Split the evaluations report (default: the checkpoint's).")
flags.DEFINE_enum("on_bad_image", None, ["stop", "skip"], "An image that cannot be decoded or "
                  "has the wrong shape: stop naming it, or skip and count it (default: the "
                  "checkpoint's run, else stop).")
flags.DEFINE_integer("eval_batch_size", 500, "Global batch of feature extraction.")
flags.DEFINE_enum("linear_protocol", "auto", ["auto", "logistic", "sgd"],
                  "auto: logistic regression on cached features up to 200k training examples, the "
                  "streamed SGD protocol above.")
flags.DEFINE_integer("knn_k", 200, "Neighbours of the kNN classifier.")
flags.DEFINE_float("knn_temperature", 0.07, "Temperature of the kNN votes exp(sim / T).")
flags.DEFINE_list("corruptions", [], "Corruptions to apply (default: all 15 of ImageNet-C).")
flags.DEFINE_list("severities", ["1", "2", "3", "4", "5"], "Corruption severities.")
flags.DEFINE_string("corruption_split", None, "Split corrupted (default: the eval split), e.g. "
                    "test[:2000] for a quicker grid.")
flags.DEFINE_string("reference", "random", "mCE's reference: 'random' (the same encoder randomly "
                    "initialised), the evaluation.json of another checkpoint, or 'none'.")
flags.DEFINE_list("finetune_fractions", ["0.01", "0.1"], "Label fractions to fine-tune on.")
flags.DEFINE_string("finetune_subset_file", None, "A file of training image names (ImageNet's "
                    "1percent.txt / 10percent.txt) to fine-tune on instead of the fractions.")
flags.DEFINE_list("shift_datasets", ["imagenet_a", "imagenet_r", "imagenet_v2",
                                     "imagenet2012_corrupted"],
                  "TFDS datasets of --eval=shifts (configs as name/config).")
flags.DEFINE_string("shift_data_dir", None, "TFDS data directory of --shift_datasets (default: "
                    "--data_dir).")
flags.DEFINE_float("finetune_epochs", 30, "Fine-tuning epochs over the labelled subset.")
flags.DEFINE_integer("finetune_batch_size", 128, "Fine-tuning batch.")
flags.DEFINE_float("finetune_learning_rate", 0.05, "Fine-tuning base learning rate per 256.")
flags.DEFINE_integer("fine_tune_after_block", -1, "Fine-tune the blocks after this one: -1 "
                     "everything, 4 the head only.")
flags.DEFINE_string("output_dir", None, "Where evaluation.json and TensorBoard go (default: "
                    "<model_dir>/evaluation).")
flags.DEFINE_integer("seed", 0, "Seed of corruptions, subsets and initialisations.")
flags.DEFINE_integer("cpu_replicas", 1, "Replicas over logical CPU devices.")
flags.DEFINE_boolean("use_tpu", False, "Run on a Cloud TPU.")
flags.DEFINE_string("tpu_name", None, "Cloud TPU name.")
FLAGS = flags.FLAGS


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv) -> None:
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # TensorFlow logs a line per checkpoint save at INFO
    if len(argv) > 1:
        _die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not FLAGS.checkpoint:
        _die("--checkpoint is required: a ckpt-N prefix or the model_dir of a run.")
    import dataclasses

    import tensorflow as tf

    from common.cli import job, settings
    from common.data import datasets
    from common.evaluation import suite
    from common.training import checkpoints, distribute

    try:
        cfg = suite.SuiteConfig(
            evaluations=tuple(FLAGS.eval), batch_size=FLAGS.eval_batch_size,
            linear=FLAGS.linear_protocol, knn_k=FLAGS.knn_k, knn_temperature=FLAGS.knn_temperature,
            corruptions=tuple(FLAGS.corruptions) or None,
            severities=tuple(int(s) for s in FLAGS.severities),
            corruption_split=FLAGS.corruption_split,
            reference=None if FLAGS.reference == "none" else FLAGS.reference,
            finetune_fractions=tuple(float(f) for f in FLAGS.finetune_fractions),
            finetune_subset_file=FLAGS.finetune_subset_file,
            shift_datasets=tuple(FLAGS.shift_datasets), shift_data_dir=FLAGS.shift_data_dir,
            finetune_epochs=FLAGS.finetune_epochs, finetune_batch_size=FLAGS.finetune_batch_size,
            finetune_learning_rate=FLAGS.finetune_learning_rate,
            fine_tune_after_block=FLAGS.fine_tune_after_block, seed=FLAGS.seed)
        if FLAGS.cpu_replicas > 1:
            distribute.split_cpu(FLAGS.cpu_replicas)
        tf.random.set_seed(FLAGS.seed)
        loaded = suite.load_encoder(FLAGS.checkpoint)
        run = loaded.config["config"]
        data = dataclasses.replace(
            settings.DataSettings(**run["data"]),
            **{k: getattr(FLAGS, k) for k in ("dataset", "data_dir", "train_split", "eval_split",
                                              "on_bad_image") if FLAGS[k].present})
        if FLAGS.image_size:
            data = dataclasses.replace(data, image_size=FLAGS.image_size)
        if FLAGS["dataset"].present and not FLAGS["data_dir"].present:
            data = dataclasses.replace(data, data_dir=None)
        data_cfg = datasets.DataConfig(dataset=data.dataset, data_dir=data.data_dir,
                                       train_split=data.train_split, eval_split=data.eval_split,
                                       image_size=data.image_size, seed=FLAGS.seed,
                                       on_bad_image=data.on_bad_image)
        aug_cfg = job.augment_config(settings.AugmentSettings(**run["augment"]), data.image_size)
        strategy = distribute.get_strategy(distribute.DistributeConfig(
            use_tpu=FLAGS.use_tpu, tpu_name=FLAGS.tpu_name, cpu_replicas=FLAGS.cpu_replicas))
        output_dir = FLAGS.output_dir or os.path.join(os.path.dirname(loaded.checkpoint),
                                                      "evaluation")
        for line in loaded.config.get("import_report", []):
            print(line, flush=True)
        print(f"evaluating {loaded.checkpoint} (step {loaded.step}) on {data_cfg.dataset} "
              f"{data_cfg.train_split} -> {data_cfg.eval_split}: {', '.join(cfg.evaluations)}; "
              f"results in {output_dir}", flush=True)
        record = suite.run_suite(loaded, data_cfg, aug_cfg, cfg, output_dir, strategy)
    except (suite.EvaluationError, datasets.DataError, checkpoints.CheckpointError) as e:
        _die(str(e))
    except Exception as e:  # a pipeline's BadImageError reaches here as a tf.errors.OpError
        message = datasets.bad_image_message(e)
        if message is None:
            raise
        _die(message)
    print("\n" + suite.markdown_table(record), flush=True)
    if datasets.skipped_images():
        print(f"skipped {datasets.skipped_images()} bad image(s) (--on_bad_image=skip).",
              flush=True)


if __name__ == "__main__":
    app.run(main)
