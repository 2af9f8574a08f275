"""BYOL's configuration: its hyper-parameters, its flags and its named presets.

BYOL composes the EMA-target block of `common`. Flags keep the original release's names;
`python byol/train.py --config=NAME --print_config` shows what a preset amounts to.
"""
from __future__ import annotations

import dataclasses

from common.cli import presets
from common.cli.settings import setting
from common.training.models import TargetSettings


@dataclasses.dataclass(frozen=True)
class BYOLConfig:
    """The BYOL loss: byol_loss_weight * the symmetric regression of the online prediction q(g(f(v)))
    onto the target projection g'(f'(v')) of the other view."""
    pretrain_loss: str = setting(
        "byol", "The release's loss selector; this trainer trains byol.", allowed=("byol",),
        why="this trainer trains byol; each of the release's losses has its own trainer (README, "
            "Training)")
    byol_loss_weight: float = setting(1.0, "Weight of the BYOL regression loss.")
    use_predictor: bool = setting(
        True, "BYOL's predictor q (the release calls it the projector). The release's scripts "
        "never set it and so trained without one (docs/DECISIONS.md 1).", flag="use_projector")
    target: TargetSettings = TargetSettings()

    def errors(self) -> list[str]:
        return [] if self.byol_loss_weight > 0 else [
            f"--byol_loss_weight={self.byol_loss_weight}: pass a positive weight."]

    def warnings(self) -> list[str]:
        if not self.use_predictor:
            return ["--use_projector=False: BYOL without a predictor, as the release's scripts ran "
                    "it (docs/DECISIONS.md 1); expect collapse."]
        return []


def _paper(epochs: int, learning_rate: float, ema_alpha: float, byol_loss_weight: float):
    algorithm = BYOLConfig(byol_loss_weight=byol_loss_weight,
                           target=TargetSettings(ema_alpha=ema_alpha))
    return presets.imagenet(algorithm, epochs, learning_rate)


PRESETS = {
    "byol_small": presets.small_scale(BYOLConfig(byol_loss_weight=5.0,
                                                 target=TargetSettings(ema_alpha=0.99))),
    "byol_300epochs": _paper(300, learning_rate=0.3, ema_alpha=0.99, byol_loss_weight=5.0),
    "byol_1000epochs": _paper(1000, learning_rate=0.2, ema_alpha=0.996, byol_loss_weight=2.0),
    "release_defaults": presets.release_defaults(BYOLConfig()),
}
DEFAULT = "byol_small"
