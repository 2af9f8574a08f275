"""Train or evaluate BYOL: `python byol/train.py [--config=byol_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from byol import configs  # noqa: E402
from byol import model  # noqa: E402
from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("byol", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    return model.BYOL(cfgs.resnet, cfgs.heads, flags_lib.target_config(cfgs), num_classes,
                      byol_loss_weight=FLAGS.byol_loss_weight, use_predictor=FLAGS.use_projector)


if __name__ == "__main__":
    cli.run("byol", build_method, configs.PRESETS)
