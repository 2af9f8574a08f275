"""Train or evaluate C-BYOL: `python cbyol/train.py [--config=cbyol_small] [flags]`.

With no flags: the small-scale default on Fashion-MNIST (the README's demo adds
--final_linear_eval). Flag names follow the original release's run.py; `--helpfull` lists them and
`--print_config` shows the resolved configuration.
"""
from cbyol import configs
from cbyol import model
from common.cli import job


def build_method(cfg, parts, num_classes):
    a, steps = cfg.algorithm, parts.train.train_steps
    return model.CBYOL(parts.resnet, parts.heads, a.target.config(steps), num_classes,
                       a.ceb.config(parts.train.lr.warmup_steps, steps),
                       byol_loss_weight=a.byol_loss_weight, backward_view=a.backward_view)


TRAINER = job.TrainerSpec(name="cbyol", presets=configs.PRESETS,
                          default_preset=configs.DEFAULT, build_method=build_method)


def main():
    job.run(TRAINER)


if __name__ == "__main__":
    main()
