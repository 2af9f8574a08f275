"""Building blocks every algorithm package composes; `common` names no algorithm.

Subpackages, by concern:
- `common.networks`: layers (Conv, Dense, synchronised BatchNorm), the ResNet family, MLP heads and the
  linear probe.
- `common.data`: datasets (TFDS by name, the built-in Fashion-MNIST) and augmentations.
- `common.ceb`: the von Mises-Fisher distribution, the CEB terms and the CEB settings block.
- `common.losses`: loss terms shared by several objectives (l2-normalisation, regression, InfoNCE).
- `common.training`: the Method protocol and model shapes, the generic trainer, optimizers,
  schedules, EMA, distribution, checkpoints, reporting, supervised fine-tuning.
- `common.evaluation`: evaluations of a trained encoder (offline linear evaluation).
- `common.cli`: the command line every `train.py` runs: configuration dataclasses, flags generated
  from them, preset bases, and the job.
- `common.testing`: tiny models and runners for the tests of every package.
"""

import os as _os


def _quiet_without_gpu() -> None:
    # TensorFlow's CUDA platform logs "E... failed call to cuInit: ... CUDA error" on every machine
    # without an NVIDIA driver, which reads as a failure in a healthy CPU run. Without a driver
    # (no /proc/driver/nvidia, no /dev/nvidia0) and unless the user chose a level, TensorFlow's C++
    # log is limited to fatal messages; Python exceptions still carry every error's text
    # (docs/DECISIONS.md 24). This must run before TensorFlow is first imported.
    if "TF_CPP_MIN_LOG_LEVEL" in _os.environ:
        return
    if _os.path.exists("/proc/driver/nvidia") or _os.path.exists("/dev/nvidia0"):
        return
    _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


_quiet_without_gpu()
