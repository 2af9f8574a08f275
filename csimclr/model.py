"""C-SimCLR: SimCLR's model with the contrastive CEB loss over vMF encoders."""
from __future__ import annotations

import dataclasses

from common import models
from common import schedules
from csimclr import losses


@dataclasses.dataclass(frozen=True)
class CEBConfig:
    """kappa_e, kappa_b: vMF concentrations of e(z|x) and b(z|y); beta and its schedule
    (constant, linear_warmup over warmup_steps, cosine over total_steps); sampling: z ~ e(z|x)."""
    kappa_e: float = 1024.0
    kappa_b: float = 10.0
    beta: float = 1.0
    beta_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    sampling: bool = True
    double_batch_trick: bool = True


class CSimCLR(models.SharedEncoderMethod):
    """h = g(f([v1; v2])); loss = contrastive_ceb_loss(h, kappa_e, kappa_b, beta(step))."""

    metric_names = ("ssl_loss", "i_xzx_y", "i_y_zx", "h_e_zx_x", "h_b_zx_y", "i_yzy_x", "i_x_zy",
                    "contrast_acc", "beta", "probe_loss", "probe_acc")
    progress_keys = ("loss", "i_xzx_y", "contrast_acc", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, num_classes, ceb: CEBConfig = CEBConfig()):
        super().__init__(resnet_cfg, heads_cfg, num_classes, name="csimclr")
        self.ceb = ceb

    def ssl_loss(self, hidden, step, seed):
        c = self.ceb
        beta = schedules.beta_schedule(step, c.beta, c.beta_schedule, c.warmup_steps,
                                       c.total_steps)
        loss, metrics = losses.contrastive_ceb_loss(
            hidden, kappa_e=c.kappa_e, kappa_b=c.kappa_b, beta=beta, sampling=c.sampling,
            double_batch_trick=c.double_batch_trick, seed=seed)
        return loss, dict(metrics, beta=beta)
