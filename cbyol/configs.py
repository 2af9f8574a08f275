"""C-BYOL's configuration: its hyper-parameters, its flags and its named presets.

C-BYOL composes two building blocks of `common`: the CEB settings (kappa_e, kappa_b, beta) and the
EMA target. Flags keep the original release's names; `python cbyol/train.py --config=NAME
--print_config` shows what a preset amounts to.
"""
from __future__ import annotations

import dataclasses

from common.ceb.settings import CEBSettings
from common.cli import presets
from common.cli.settings import setting
from common.training.models import TargetSettings


@dataclasses.dataclass(frozen=True)
class CBYOLConfig:
    """The C-BYOL loss: byol_loss_weight * (regression of the stochastic prediction onto the target)
    + beta * residual information log e(z|x) - log b(z|y); b(z|y) built from the target's view named
    by `backward_view` (docs/DECISIONS.md 3)."""
    pretrain_loss: str = setting(
        "byol_ceb", "The release's loss selector; this trainer trains byol_ceb.",
        allowed=("byol_ceb",), why="this trainer trains byol_ceb; each of the release's losses has "
        "its own trainer (README, Training)")
    byol_loss_weight: float = setting(1.0, "Weight of the BYOL regression loss (= kappa_d / 2).")
    backward_view: str = setting(
        "same", "b(z|y) pairing (docs/DECISIONS.md 3): b scores z from view 1 with the target's "
        "view 1 (same, the release) or view 2 (other).", choices=("same", "other"))
    ceb: CEBSettings = CEBSettings(kappa_e=16384.0, kappa_b=10.0)
    target: TargetSettings = TargetSettings()
    use_projector: bool = setting(
        True, "The predictor (release name).", allowed=(True,),
        why="C-BYOL's predictor carries e(z|x); without it there is no compression (use "
            "byol/train.py for the baseline)")
    stochastic_projector: bool = setting(
        True, "vMF predictor e(z|x) (release flag).", allowed=(True,),
        why="it is C-BYOL's forward encoder; without it there is no compression")
    use_target_projector: bool = setting(
        True, "Trainable b(z|y) mean network (release flag).", allowed=(True,),
        why="it is C-BYOL's backward encoder; without it there is no compression")
    ceb_sampling: bool = setting(
        True, "Sample z ~ e(z|x) (release flag).", allowed=(True,),
        why="C-BYOL always regresses a sample of e(z|x)")

    def errors(self) -> list[str]:
        return [] if self.byol_loss_weight > 0 else [
            f"--byol_loss_weight={self.byol_loss_weight}: pass a positive weight."]


def _paper(epochs: int, learning_rate: float, ema_alpha: float, byol_loss_weight: float):
    algorithm = CBYOLConfig(byol_loss_weight=byol_loss_weight,
                            ceb=CEBSettings(ceb_beta=1.0, kappa_e=16384.0, kappa_b=10.0),
                            target=TargetSettings(ema_alpha=ema_alpha))
    return presets.imagenet(algorithm, epochs, learning_rate)


PRESETS = {
    "cbyol_small": presets.small_scale(CBYOLConfig(
        byol_loss_weight=5.0, ceb=CEBSettings(ceb_beta=1.0, kappa_e=16384.0, kappa_b=10.0),
        target=TargetSettings(ema_alpha=0.99))),
    "cbyol_300epochs": _paper(300, learning_rate=0.35, ema_alpha=0.99, byol_loss_weight=5.0),
    "cbyol_1000epochs": _paper(1000, learning_rate=0.25, ema_alpha=0.996, byol_loss_weight=2.0),
    "release_defaults": presets.release_defaults(CBYOLConfig()),
}
DEFAULT = "cbyol_small"
