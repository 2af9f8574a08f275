"""Train or evaluate C-BYOL: `python cbyol/train.py [--config=cbyol_small] [flags]`.

With no flags: the small-scale default on Fashion-MNIST (the README's demo adds
--final_linear_eval). Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cbyol import configs  # noqa: E402
from cbyol import model  # noqa: E402
from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("cbyol", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    return model.CBYOL(cfgs.resnet, cfgs.heads, flags_lib.target_config(cfgs), num_classes,
                       flags_lib.ceb_config(cfgs), byol_loss_weight=FLAGS.byol_loss_weight,
                       backward_view=FLAGS.backward_view)


if __name__ == "__main__":
    cli.run("cbyol", build_method, configs.PRESETS)
