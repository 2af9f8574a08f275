"""An original release checkpoint -> a run of one of this project's trainers.

  python tools/import_checkpoint.py --checkpoint=ORIG --trainer=cbyol --model_dir=NEW \
      [--config=cbyol_small] [--image_size=64] [--<trainer flag>=VALUE ...]

Writes <NEW>/ckpt-0 (the trainer's whole checkpoint: the model with every module the release
checkpoint holds imported, a fresh optimizer at step 0, zeroed metric sums) and <NEW>/config.json:
the preset with the architecture read from the checkpoint's shapes (--resnet_depth,
--width_multiplier, --sk_ratio, --se_ratio, head sizes, --image_size) and the extra trainer flags.
It prints the import report and the command that continues pretraining from it; tools/evaluate.py
and tools/extract_features.py read NEW as any run. Bad input: one line on stderr, exit status 2,
nothing written.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile

TRAINERS = ("simclr", "csimclr", "byol", "cbyol")


class ImportRefused(ValueError):
    """The checkpoint cannot become a run of the trainer, with the reason."""


def convert(checkpoint: str, trainer: str, model_dir: str, preset: str | None = None,
            image_size: int | None = None, argv: list | None = None, print_fn=print,
            **flag_overrides) -> str:
    """Writes the release checkpoint as a run of `trainer` in `model_dir` (must not exist; the run
    is written to a temporary sibling and renamed, so a failure leaves nothing). Returns the
    command line that continues pretraining. Raises ValueError with the reason."""
    import tensorflow as tf

    from common.cli import job, settings
    from common.interop import release
    from common.training import trainer as trainer_lib

    if trainer not in TRAINERS:
        raise ImportRefused(f"--trainer={trainer}: choose one of {', '.join(TRAINERS)}.")
    if os.path.exists(model_dir):
        raise ImportRefused(f"--model_dir={model_dir} already exists; pass a new folder.")
    spec = importlib.import_module(f"{trainer}.train").TRAINER
    preset = preset or spec.default_preset
    if preset not in spec.presets:
        raise ImportRefused(f"--config={preset}: choose one of {sorted(spec.presets)}.")
    ckpt = release.read(checkpoint)
    # A ratio the shapes cannot pin down (the selective kernel's floor of 32 channels) is taken
    # from the trainer flags given here, as the refusal's message advises.
    layout = release.infer_resnet(ckpt, **{k: flag_overrides[k] for k in ("sk_ratio", "se_ratio")
                                           if k in flag_overrides})
    r = layout.config
    if not layout.expressible:
        raise ImportRefused(f"{ckpt.path} holds {layout.describe()}, which --resnet_depth and "
                           "--width_multiplier cannot express; use it through "
                           "tools/extract_features.py instead.")
    size = image_size or (32 if r.cifar_stem else 224)
    if r.cifar_stem != (size <= 32):
        raise ImportRefused(f"--image_size={size}: the checkpoint has "
                           f"{'a CIFAR' if r.cifar_stem else 'an ImageNet'} stem, which the trainers "
                           f"build at {'32 px and below' if r.cifar_stem else 'sizes above 32 px'}.")
    kw = dict(resnet_depth=r.depth, width_multiplier=r.width_multiplier, image_size=size)
    kw.update({k: getattr(r, k) for k in ("sk_ratio", "se_ratio") if getattr(r, k) > 0})
    head = release.infer_head(ckpt, "_projection_head")
    if head is not None:
        kw.update(proj_head_hidden_dim=head.hidden_dim, proj_out_dim=head.out_dim,
                  num_proj_layers=head.num_layers, proj_head_output_bn=head.output_bn)
    kw.update(flag_overrides)
    try:
        cfg = settings.with_overrides(spec.presets[preset], model_dir=model_dir, **kw)
    except (KeyError, ValueError, TypeError) as e:
        raise ImportRefused(str(e.args[0] if e.args else e)) from e
    errors, _ = settings.problems(cfg)
    if errors:
        raise ImportRefused(" ".join(errors))
    sup = ckpt.variables.get("model/supervised_head/linear_layer/dense/kernel")
    if sup is not None:
        num_classes = sup[1]
    else:
        from common.data import datasets
        num_classes = datasets.dataset_info(job.data_config(cfg)).num_classes
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".import-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make the run private to its writer
    try:
        parts = job.build_parts(cfg, tmp, num_train_examples=cfg.run.train_batch_size)
        # The trainer's own object graph (model, optimizer, metric sums), so that the trainer
        # resumes from it; nothing is trained here.
        pretrainer = trainer_lib.Pretrainer(
            lambda n: spec.build_method(cfg, parts, n), parts.train, parts.data, parts.augment,
            tf.distribute.get_strategy(), dataset_fn=lambda ctx, start_step: None,
            num_classes=num_classes, print_fn=lambda *a, **k: None)
        release.import_into_method(pretrainer.method, ckpt.path, print_fn=print_fn)
        pretrainer.manager.save(checkpoint_number=0)
        job.write_config(tmp, spec.name, preset, cfg, list(argv or [
            "tools/import_checkpoint.py", f"--checkpoint={checkpoint}", f"--trainer={trainer}"]))
        os.rename(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    flags = " ".join(f"--{k}={v}" for k, v in kw.items())
    command = f"python {trainer}/train.py --config={preset} --model_dir={model_dir} {flags}"
    print_fn(f"wrote {model_dir} (ckpt-0, config.json); continue pretraining with:\n  {command}",
             flush=True)
    return command


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv=None) -> None:
    import argparse
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="tools/import_checkpoint.py", description="An original release checkpoint -> a run "
        "of a trainer of this project (checkpoint + config.json). Extra --name=value pairs are "
        "the trainer's flags, stored in the run's configuration (e.g. --dataset=imagenet2012).")
    parser.add_argument("--checkpoint", required=True, help="ckpt-N prefix or its directory")
    parser.add_argument("--trainer", required=True, choices=TRAINERS)
    parser.add_argument("--model_dir", required=True, help="the new run's folder (must not exist)")
    parser.add_argument("--config", default=None, help="the preset the run's other settings come "
                        "from (default: the trainer's default)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: 32 with a CIFAR stem, else 224")
    args, rest = parser.parse_known_args(argv[1:])
    from common.cli import flags as flags_lib
    spec = importlib.import_module(f"{args.trainer}.train").TRAINER
    preset = args.config if args.config in spec.presets else spec.default_preset
    try:
        overrides = flags_lib.parse_overrides(rest, spec.presets, preset, args.trainer)
    except flags_lib.FlagError as e:
        _die(str(e))
    try:
        convert(args.checkpoint, args.trainer, args.model_dir, args.config, args.image_size,
                argv=argv, **overrides)
    except (ValueError, KeyError) as e:
        _die(str(e.args[0] if e.args else e))


if __name__ == "__main__":
    main()
