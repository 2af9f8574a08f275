"""Train or evaluate SimCLR: `python simclr/train.py [--config=simclr_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402
from simclr import configs  # noqa: E402
from simclr import model  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("simclr", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    return model.SimCLR(cfgs.resnet, cfgs.heads, num_classes, temperature=FLAGS.temperature,
                        double_batch_trick=FLAGS.double_batch_trick)


if __name__ == "__main__":
    cli.run("simclr", build_method, configs.PRESETS)
