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
