"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_multiworker.py).

argv: worker index, output .npz path. TF_CONFIG comes from the environment.
"""
import os
import sys

import numpy as np
import tensorflow as tf

from common.data import datasets as data_lib
from common.training import distribute
from common import testing
from common.training import trainer as trainer_lib


def main():
    index, out = int(sys.argv[1]), sys.argv[2]
    strategy = distribute.get_strategy(distribute.DistributeConfig())
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)
    assert strategy.num_replicas_in_sync == 2
    tf.random.set_seed(0)  # both workers start from the same weights
    cfg = testing.tiny_train_config(os.path.join(os.path.dirname(out), f"w{index}"), steps=2)
    tr = trainer_lib.Pretrainer(testing.ToyContrastive, cfg, data_lib.DataConfig(image_size=16),
                                None, strategy, dataset_fn=testing.synthetic_dataset_fn(8, 16, 4),
                                num_classes=4, print_fn=lambda *a, **k: None)
    initial = {f"i{i}": v.numpy() for i, v in enumerate(tr.method.variables)}
    tr.run_steps(2)
    values = {f"v{i}": v.numpy() for i, v in enumerate(tr.method.variables)}
    np.savez(out, step=tr.step, ssl=tr.metrics.result()["ssl"], **values, **initial)


if __name__ == "__main__":
    main()
