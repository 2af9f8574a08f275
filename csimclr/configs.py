"""C-SimCLR's configuration: its hyper-parameters, its flags and its named presets.

C-SimCLR composes the CEB settings block of `common`. Flags keep the original release's names;
`python csimclr/train.py --config=NAME --print_config` shows what a preset amounts to.
"""
from __future__ import annotations

import dataclasses

from common.ceb.settings import CEBSettings
from common.cli import presets
from common.cli.settings import setting


@dataclasses.dataclass(frozen=True)
class CSimCLRConfig:
    """The contrastive CEB loss: InfoNCE with vMF(kappa_b) critics on z ~ e(z|x) = vMF(kappa_e)
    plus beta * residual information, both directions summed."""
    pretrain_loss: str = setting(
        "contrastive_ceb", "The release's loss selector; this trainer trains contrastive_ceb.",
        allowed=("contrastive_ceb",), why="this trainer trains contrastive_ceb; each of the "
        "release's losses has its own trainer (README, Training)")
    ceb: CEBSettings = CEBSettings(kappa_e=1024.0, kappa_b=10.0)
    ceb_sampling: bool = setting(True, "Sample z ~ e(z|x); False uses z = mu (no noise in the "
                                 "contrastive term, the residual information still trains).")
    double_batch_trick: bool = setting(True, "Same-view negatives too (2B - 2 per row).")


def _paper(epochs: int, learning_rate: float):
    algorithm = CSimCLRConfig(ceb=CEBSettings(ceb_beta=1.0, kappa_e=1024.0, kappa_b=10.0))
    return presets.imagenet(algorithm, epochs, learning_rate)


PRESETS = {
    "csimclr_small": presets.small_scale(CSimCLRConfig(
        ceb=CEBSettings(ceb_beta=1.0, kappa_e=1024.0, kappa_b=5.0))),
    "csimclr_300epochs": _paper(300, learning_rate=0.3),
    "csimclr_1000epochs": _paper(1000, learning_rate=0.2),
    "release_defaults": presets.release_defaults(CSimCLRConfig()),
}
DEFAULT = "csimclr_small"
