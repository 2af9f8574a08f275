"""Test set-up shared by every package: quiet TF logs and two logical CPU devices.

Two logical devices let the distribution tests compare MirroredStrategy on two replicas with one
device; every other test runs on the first device as usual.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # TF was initialised by an earlier import; keep its devices
    pass
