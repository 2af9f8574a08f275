"""SimCLR's configuration: its hyper-parameters, its flags and its named presets.

Flags keep the original release's names; `python simclr/train.py --config=NAME --print_config`
shows what a preset amounts to.
"""
from __future__ import annotations

import dataclasses

from common.cli import presets
from common.cli.settings import setting


@dataclasses.dataclass(frozen=True)
class SimCLRConfig:
    """NT-Xent over the global batch at temperature tau, both directions summed."""
    pretrain_loss: str = setting(
        "contrastive", "The release's loss selector; this trainer trains contrastive.",
        allowed=("contrastive",), why="this trainer trains contrastive; each of the release's "
        "losses has its own trainer (README, Training)")
    temperature: float = setting(0.1, "Contrastive temperature tau.")
    double_batch_trick: bool = setting(True, "Same-view negatives too (2B - 2 per row).")

    def errors(self) -> list[str]:
        return [] if self.temperature > 0 else [
            f"--temperature={self.temperature}: pass a positive temperature."]


PRESETS = {
    "simclr_small": presets.small_scale(SimCLRConfig(temperature=0.2)),
    "simclr_300epochs": presets.imagenet(SimCLRConfig(), 300, learning_rate=0.3),
    "simclr_1000epochs": presets.imagenet(SimCLRConfig(), 1000, learning_rate=0.2),
    "release_defaults": presets.release_defaults(SimCLRConfig()),
}
DEFAULT = "simclr_small"
