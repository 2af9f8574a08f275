"""Train or evaluate C-SimCLR: `python csimclr/train.py [--config=csimclr_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402
from csimclr import configs  # noqa: E402
from csimclr import model  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("csimclr", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    return model.CSimCLR(cfgs.resnet, cfgs.heads, num_classes, flags_lib.ceb_config(cfgs),
                         sampling=FLAGS.ceb_sampling, double_batch_trick=FLAGS.double_batch_trick)


if __name__ == "__main__":
    cli.run("csimclr", build_method, configs.PRESETS)
