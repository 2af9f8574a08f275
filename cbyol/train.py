"""Train or evaluate C-BYOL: `python cbyol/train.py [--config=cbyol_small] [flags]`.

With no flags: the small-scale default on Fashion-MNIST (the README's demo adds
--final_linear_eval). Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from cbyol import configs  # noqa: E402
from cbyol import model  # noqa: E402
from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402
from common import models  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("cbyol", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    target = models.TargetConfig(base_ema=FLAGS.ema_alpha, total_steps=cfgs.train.train_steps)
    cfg = model.CBYOLConfig(kappa_e=FLAGS.kappa_e, kappa_b=FLAGS.kappa_b, beta=FLAGS.ceb_beta,
                            beta_schedule=FLAGS.beta_schedule,
                            warmup_steps=cfgs.train.lr.warmup_steps,
                            total_steps=cfgs.train.train_steps,
                            byol_loss_weight=FLAGS.byol_loss_weight,
                            backward_view=FLAGS.backward_view)
    return model.CBYOL(cfgs.resnet, cfgs.heads, target, num_classes, cfg)


def main(argv):
    if len(argv) > 1:
        flags_lib.die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    cli.main("cbyol", build_method, configs.PRESETS)


if __name__ == "__main__":
    app.run(main)
