"""Train or evaluate C-SimCLR: `python csimclr/train.py [--config=csimclr_small] [flags]`.

Flag names follow the original release's run.py; `--helpfull` lists them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from common import cli  # noqa: E402
from common import flags as flags_lib  # noqa: E402
from csimclr import configs  # noqa: E402
from csimclr import model  # noqa: E402

FLAGS = flags_lib.FLAGS
flags_lib.define_flags("csimclr", configs.PRESETS, configs.DEFAULT)


def build_method(num_classes, cfgs):
    ceb = model.CEBConfig(kappa_e=FLAGS.kappa_e, kappa_b=FLAGS.kappa_b, beta=FLAGS.ceb_beta,
                          beta_schedule=FLAGS.beta_schedule,
                          warmup_steps=cfgs.train.lr.warmup_steps,
                          total_steps=cfgs.train.train_steps, sampling=FLAGS.ceb_sampling,
                          double_batch_trick=FLAGS.double_batch_trick)
    return model.CSimCLR(cfgs.resnet, cfgs.heads, num_classes, ceb)


def main(argv):
    if len(argv) > 1:
        flags_lib.die(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    cli.main("csimclr", build_method, configs.PRESETS)


if __name__ == "__main__":
    app.run(main)
