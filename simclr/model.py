"""SimCLR: one encoder and projection for both views, NT-Xent over the global batch."""
from __future__ import annotations

from common.training import models
from simclr import losses


class SimCLR(models.SharedEncoderMethod):
    """h = g(f([v1; v2])); loss = contrastive_loss(h, temperature) + online probe."""

    metric_names = ("ssl_loss", "i_y_zx", "i_x_zy", "contrast_acc", "contrast_entropy",
                    "probe_loss", "probe_acc")
    progress_keys = ("loss", "contrast_acc", "probe_acc")

    def __init__(self, resnet_cfg, heads_cfg, num_classes, temperature=0.1,
                 double_batch_trick=True):
        super().__init__(resnet_cfg, heads_cfg, num_classes, name="simclr")
        self.temperature = temperature
        self.double_batch_trick = double_batch_trick

    def ssl_loss(self, hidden, step, seed):
        del step, seed
        return losses.contrastive_loss(hidden, temperature=self.temperature,
                                       double_batch_trick=self.double_batch_trick)
