"""Train or evaluate BYOL: `python byol/train.py [--config=byol_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them and `--print_config`
shows the resolved configuration.
"""
from byol import configs
from byol import model
from common.cli import job


def build_method(cfg, parts, num_classes):
    a = cfg.algorithm
    return model.BYOL(parts.resnet, parts.heads, a.target.config(parts.train.train_steps),
                      num_classes, byol_loss_weight=a.byol_loss_weight,
                      use_predictor=a.use_predictor)


TRAINER = job.TrainerSpec(name="byol", presets=configs.PRESETS, default_preset=configs.DEFAULT,
                          build_method=build_method)


def main():
    job.run(TRAINER)


if __name__ == "__main__":
    main()
