"""The CEB settings every compressed algorithm composes: the two vMF concentrations and beta.

`CEBSettings` is the command line's block (release flag names); `CEBConfig` is what a model takes,
with beta's schedule resolved to steps.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from common.cli.settings import setting
from common.training import schedules


@dataclasses.dataclass(frozen=True)
class CEBConfig:
    """The CEB terms of C-SimCLR and C-BYOL: e(z|x) = vMF(., kappa_e), b(z|y) = vMF(., kappa_b),
    and beta(step) from `beta_schedule` (constant, linear_warmup over warmup_steps, cosine over
    total_steps) weighting the residual information log e(z|x) - log b(z|y)."""
    kappa_e: float = 1024.0
    kappa_b: float = 10.0
    beta: float = 1.0
    beta_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1

    def __post_init__(self):
        if self.kappa_e <= 0 or self.kappa_b <= 0:
            raise ValueError(f"kappa_e and kappa_b must be positive, got {self.kappa_e}, "
                             f"{self.kappa_b}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def beta_at(self, step) -> tf.Tensor:
        return schedules.beta_schedule(step, self.beta, self.beta_schedule, self.warmup_steps,
                                       self.total_steps)


@dataclasses.dataclass(frozen=True)
class CEBSettings:
    """e(z|x) = vMF(mu_e, kappa_e), b(z|y) = vMF(mu_b, kappa_b), loss weight beta (constant, linear
    warm-up over the learning rate's warm-up, or cosine over the run)."""
    ceb_beta: float = setting(1.0, "CEB beta, the weight of the residual information (0 trains "
                              "the baseline with extra heads, with a warning; docs/DECISIONS.md 2).")
    beta_schedule: str = setting("constant", "beta schedule.",
                                 choices=("constant", "linear_warmup", "cosine"))
    kappa_e: float = setting(1024.0, "Concentration of the forward encoder e(z|x).")
    kappa_b: float = setting(10.0, "Concentration of the backward encoder b(z|y).")

    def errors(self) -> list[str]:
        out = [f"--{name}={getattr(self, name)}: a vMF concentration must be positive."
               for name in ("kappa_e", "kappa_b") if getattr(self, name) <= 0]
        if self.ceb_beta < 0:
            out.append(f"--ceb_beta={self.ceb_beta}: pass a value >= 0.")
        return out

    def warnings(self) -> list[str]:
        if self.ceb_beta == 0:
            return ["--ceb_beta=0: no compression; this trains the uncompressed baseline with the "
                    "CEB heads (docs/DECISIONS.md 2)."]
        return []

    def config(self, warmup_steps: int, total_steps: int) -> CEBConfig:
        return CEBConfig(kappa_e=self.kappa_e, kappa_b=self.kappa_b, beta=self.ceb_beta,
                         beta_schedule=self.beta_schedule, warmup_steps=warmup_steps,
                         total_steps=total_steps)
