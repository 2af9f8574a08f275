"""What every algorithm's `train.py` does after parsing flags: presets, checks, configs, the job.

`main(algorithm, build_method)` runs `--mode` train / eval / train_then_eval for `--train_mode`
pretrain or finetune, then (with --final_linear_eval) the offline linear evaluation of the trained
encoder against the same encoder randomly initialised.
"""
from __future__ import annotations

import os
import time

import tensorflow as tf

from common.training import checkpoints
from common.data import datasets as data_lib
from common.training import distribute
from common.training import finetune
from common import flags as flags_lib
from common.evaluation import linear_eval
from common.training import trainer as trainer_lib

FLAGS = flags_lib.FLAGS


def _model_dir(algorithm: str) -> str:
    if FLAGS.model_dir:
        return FLAGS.model_dir
    path = os.path.join(os.getcwd(), "runs", f"{FLAGS.config}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"--model_dir not given; writing to {path}")
    return path


def offline_linear_eval(method, cfgs, fresh_method, print_fn=print) -> dict:
    """Logistic regression on frozen encoder features: the trained encoder vs a random one.

    Returns {'pretrained': result, 'random_init': result} (see common.linear_eval.linear_probe).
    """
    info = data_lib.dataset_info(cfgs.data)
    data_cfg, aug = cfgs.data, cfgs.augment
    results = {}
    for name, m in (("pretrained", method), ("random_init", fresh_method)):
        t0 = time.perf_counter()
        feats = {}
        for split in (data_cfg.train_split, data_cfg.eval_split):
            ds = data_lib.eval_dataset(data_cfg, aug, split, cfgs.train.eval_batch_size)
            feats[split] = linear_eval.extract_features(
                lambda x, m=m: m.encoder(x, training=False), ds)
        (trx, try_), (tex, tey) = feats[data_cfg.train_split], feats[data_cfg.eval_split]
        t1 = time.perf_counter()
        results[name] = linear_eval.linear_probe(trx, try_, tex, tey, info.num_classes)
        t2 = time.perf_counter()
        print_fn(f"linear eval ({name}): test accuracy {results[name]['test_accuracy']:.4f} "
                 f"({trx.shape[1]}-d features of {len(trx) + len(tex)} images in {t1 - t0:.0f}s, "
                 f"fits {t2 - t1:.0f}s)", flush=True)
    return results


def print_table(results: dict, print_fn=print) -> None:
    print_fn("\n| encoder | linear-probe test accuracy | L2 |\n| --- | --- | --- |")
    for name, r in results.items():
        print_fn(f"| {name} | {r['test_accuracy']:.4f} | {r['l2']:g} |")


def main(algorithm: str, build_method, presets: dict) -> dict:
    """Runs the job the flags ask for. `build_method(num_classes, cfgs) -> Method`."""
    flags_lib.apply_preset(presets)
    try:
        flags_lib.validate(algorithm)
        # Initial weights and tf.data's seeded shuffles also depend on the global seed.
        tf.random.set_seed(FLAGS.seed)
        if FLAGS.deterministic:
            tf.config.experimental.enable_op_determinism()
        if FLAGS.cpu_replicas > 1:
            distribute.split_cpu(FLAGS.cpu_replicas)
        model_dir = _model_dir(algorithm)
        cfgs = flags_lib.build_configs(algorithm, model_dir)
    except (flags_lib.FlagError, data_lib.DataError, ValueError) as e:
        flags_lib.die(str(e))
    strategy = distribute.get_strategy(cfgs.distribute)
    print(f"{algorithm}: config {FLAGS.config}, {strategy.num_replicas_in_sync} replica(s), "
          f"{cfgs.train.train_steps} steps of batch {cfgs.train.train_batch_size} on "
          f"{cfgs.data.dataset}/{cfgs.data.train_split} ({cfgs.num_train_examples} examples), "
          f"model_dir {model_dir}", flush=True)
    if FLAGS.train_mode == "finetune":
        ft_cfg = finetune.FinetuneConfig(fine_tune_after_block=FLAGS.fine_tune_after_block,
                                         zero_init_head=FLAGS.zero_init_logits_layer,
                                         checkpoint=FLAGS.checkpoint)
        method_fn = lambda n: finetune.Supervised(cfgs.resnet, n, ft_cfg)  # noqa: E731
        dataset_fn = lambda ctx, start_step: data_lib.linear_train_dataset(  # noqa: E731
            cfgs.data, cfgs.augment, cfgs.train.train_batch_size, ctx, start_step=start_step)
    else:
        method_fn = lambda n: build_method(n, cfgs)  # noqa: E731
        dataset_fn = None
    checkpoints.write_json(os.path.join(model_dir, "flags.json"), _flag_values())
    result = {}
    if FLAGS.mode in ("train", "train_then_eval"):
        trainer = trainer_lib.Pretrainer(method_fn, cfgs.train, cfgs.data, cfgs.augment, strategy,
                                         dataset_fn=dataset_fn)
        if FLAGS.train_mode == "finetune":
            trainer.method.load_pretrained()
        trainer.train()
        if FLAGS.mode == "train_then_eval":
            result = trainer_lib.evaluate_probe(trainer.method, strategy, cfgs.data, cfgs.augment,
                                                cfgs.data.eval_split, cfgs.train.eval_batch_size)
            result["global_step"] = trainer.step
            print(f"probe on {cfgs.data.eval_split}: top-1 {result['label_top_1_accuracy']:.4f} "
                  f"top-5 {result['label_top_5_accuracy']:.4f}", flush=True)
            checkpoints.write_json(os.path.join(model_dir, "result.json"), result)
        if FLAGS.final_linear_eval and FLAGS.train_mode == "pretrain":
            with strategy.scope():
                fresh = method_fn(trainer.num_classes)
            table = offline_linear_eval(trainer.method, cfgs, fresh)
            print_table(table)
            result["linear_eval"] = table
            checkpoints.write_json(os.path.join(model_dir, "linear_eval.json"), table)
    else:
        result = trainer_lib.eval_checkpoints(method_fn, cfgs.train, cfgs.data, cfgs.augment,
                                              strategy, cfgs.data.eval_split)
    return result


def run(algorithm: str, build_method, presets: dict) -> None:
    """The `if __name__ == "__main__"` of every train.py: parse flags, then `main`.

    app.run turns absl's logging up to INFO unless -v/--verbosity is given, and TensorFlow's Python
    side logs at INFO on every checkpoint save; the trainers print their own progress, so without
    the flag the level is WARNING (`--verbosity=0` brings INFO back).
    """
    import re
    import sys

    from absl import app
    from absl import logging as absl_logging

    verbosity_given = any(re.match(r"^--?(v|verbosity)(=|$)", a) for a in sys.argv[1:])

    def _main(argv):
        if not verbosity_given:
            absl_logging.set_verbosity(absl_logging.WARNING)
        if len(argv) > 1:
            flags_lib.die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
        main(algorithm, build_method, presets)

    app.run(_main)


def _flag_values() -> dict:
    out = {}
    for name in FLAGS:
        value = FLAGS[name].value
        if isinstance(value, (str, int, float, bool, type(None), list)):
            out[name] = value
    return out
