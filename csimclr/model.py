"""C-SimCLR: SimCLR's model with the contrastive CEB loss over vMF encoders."""
from __future__ import annotations

from common.ceb import settings as ceb_settings
from common.training import models
from csimclr import losses


class CSimCLR(models.SharedEncoderMethod):
    """h = g(f([v1; v2])); loss = contrastive_ceb_loss(h, kappa_e, kappa_b, beta(step))."""

    metric_names = ("ssl_loss", "i_xzx_y", "i_y_zx", "h_e_zx_x", "h_b_zx_y", "i_yzy_x", "i_x_zy",
                    "contrast_acc", "beta", "probe_loss", "probe_acc")
    progress_keys = ("loss", "i_xzx_y", "contrast_acc", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, num_classes,
                 ceb: ceb_settings.CEBConfig = ceb_settings.CEBConfig(), sampling=True,
                 double_batch_trick=True):
        super().__init__(resnet_cfg, heads_cfg, num_classes, name="csimclr")
        self.ceb = ceb
        self.sampling = sampling
        self.double_batch_trick = double_batch_trick

    def ssl_loss(self, hidden, step, seed):
        beta = self.ceb.beta_at(step)
        loss, metrics = losses.contrastive_ceb_loss(
            hidden, kappa_e=self.ceb.kappa_e, kappa_b=self.ceb.kappa_b, beta=beta,
            sampling=self.sampling, double_batch_trick=self.double_batch_trick, seed=seed)
        return loss, dict(metrics, beta=beta)
