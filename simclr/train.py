"""Train or evaluate SimCLR: `python simclr/train.py [--config=simclr_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them and `--print_config`
shows the resolved configuration.
"""
from common.cli import job
from simclr import configs
from simclr import model


def build_method(cfg, parts, num_classes):
    a = cfg.algorithm
    return model.SimCLR(parts.resnet, parts.heads, num_classes, temperature=a.temperature,
                        double_batch_trick=a.double_batch_trick)


TRAINER = job.TrainerSpec(name="simclr", presets=configs.PRESETS, default_preset=configs.DEFAULT,
                          build_method=build_method)


def main():
    job.run(TRAINER)


if __name__ == "__main__":
    main()
