"""byol's named presets pinned to the paper's and the release's values, written out by hand
so that a preset cannot drift."""
from common import testing
from byol import configs

PAPER = {
    "byol_300epochs": dict(train_epochs=300.0, learning_rate=0.3, weight_decay=1e-6,
                           ema_alpha=0.99, byol_loss_weight=5.0, use_projector=True),
    "byol_1000epochs": dict(train_epochs=1000.0, learning_rate=0.2, weight_decay=1.5e-6,
                            ema_alpha=0.996, byol_loss_weight=2.0, use_projector=True),
}


def test_presets_are_the_papers_and_the_release_values():
    testing.check_presets(configs, PAPER)
