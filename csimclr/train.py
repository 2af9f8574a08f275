"""Train or evaluate C-SimCLR: `python csimclr/train.py [--config=csimclr_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them and `--print_config`
shows the resolved configuration.
"""
from common.cli import job
from csimclr import configs
from csimclr import model


def build_method(cfg, parts, num_classes):
    a, steps = cfg.algorithm, parts.train.train_steps
    return model.CSimCLR(parts.resnet, parts.heads, num_classes,
                         a.ceb.config(parts.train.lr.warmup_steps, steps),
                         sampling=a.ceb_sampling, double_batch_trick=a.double_batch_trick)


TRAINER = job.TrainerSpec(name="csimclr", presets=configs.PRESETS, default_preset=configs.DEFAULT,
                          build_method=build_method)


def main():
    job.run(TRAINER)


if __name__ == "__main__":
    main()
