"""Train or evaluate BYOL: `python byol/train.py [--config=byol_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from byol import configs  # noqa: E402
from byol import model  # noqa: E402
from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402
from common import models  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("byol", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    target = models.TargetConfig(base_ema=FLAGS.ema_alpha, total_steps=cfgs.train.train_steps)
    return model.BYOL(cfgs.resnet, cfgs.heads, target, num_classes,
                      byol_loss_weight=FLAGS.byol_loss_weight, use_predictor=FLAGS.use_projector)


def main(argv):
    if len(argv) > 1:
        flags_lib.die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    cli.main("byol", build_method, configs.PRESETS)


if __name__ == "__main__":
    app.run(main)
