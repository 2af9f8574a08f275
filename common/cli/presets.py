"""The bases every algorithm's named presets derive from: the paper's ImageNet recipe, the small
CPU-scale default, and the original release's run.py defaults.

Each returns an `Experiment` around the algorithm's own dataclass; an algorithm's `configs.py` adds
its own values (learning rate, loss weights, concentrations) with `settings.with_overrides`.
"""
from __future__ import annotations

from common.cli.settings import Experiment, with_overrides

# The paper's ImageNet runs, as the release's training scripts launch them: ResNet-50 at batch 4096 on
# 32 TPU cores, LARS, 10 warm-up epochs then cosine decay, linear learning-rate scaling.
_IMAGENET = dict(dataset="imagenet2012", train_mode="pretrain", resnet_depth=50,
                 width_multiplier=1.0, train_batch_size=4096, image_size=224, train_split="train",
                 eval_split="validation", warmup_epochs=10.0, optimizer="lars",
                 learning_rate_scaling="linear", learning_rate_schedule="cosine", mlp_init="release")

# Weight decay per run length, as the release's scripts set it.
PAPER_WEIGHT_DECAY = {300: 1e-6, 1000: 1.5e-6}


def release_defaults(algorithm) -> Experiment:
    """The release's run.py defaults (ImageNet, ResNet-50, batch 512, 100 epochs), for command lines
    that relied on them."""
    return Experiment(algorithm=algorithm)


def imagenet(algorithm, epochs: int, learning_rate: float) -> Experiment:
    """The paper's ImageNet pretraining for `epochs` (300 or 1000) at base `learning_rate` per 256."""
    if epochs not in PAPER_WEIGHT_DECAY:
        raise ValueError(f"the paper's runs are {sorted(PAPER_WEIGHT_DECAY)} epochs, got {epochs}")
    return with_overrides(Experiment(algorithm=algorithm), **_IMAGENET, train_epochs=float(epochs),
                          weight_decay=PAPER_WEIGHT_DECAY[epochs], learning_rate=learning_rate)


def small_scale(algorithm, **overrides) -> Experiment:
    """Fashion-MNIST at 32 px on a CPU in minutes.

    A quarter-width ResNet-18 with the CIFAR stem (128-d features) and narrower heads, 840 steps of
    batch 128 (under two epochs), LARS with a short warm-up and a high rate (peak 2.0 at batch 128),
    which a short run needs: for C-BYOL the linear-probe accuracy after 840 steps was 0.805 at
    learning_rate 1.0, 0.826 at 2.0 and 0.831 at 4.0. Heads start from DeepMind's initialisation,
    with which those figures were measured. The training step is compiled with XLA, which trains
    7-24% more images per second on a CPU for every algorithm (docs/DECISIONS.md 30).
    """
    base = with_overrides(
        Experiment(algorithm=algorithm), dataset="fashion_mnist", train_split="train",
        eval_split="test", image_size=32, resnet_depth=18, width_multiplier=0.25,
        train_batch_size=128, eval_batch_size=500, train_steps=840, warmup_epochs=0.2,
        optimizer="lars", learning_rate=4.0, weight_decay=1e-5, proj_head_hidden_dim=512,
        proj_out_dim=128, train_summary_steps=60, checkpoint_steps=420, bn_semantics="keras",
        area_range_lower_bound=0.2, mlp_init="deepmind", jit_compile=True)
    return with_overrides(base, **overrides)
