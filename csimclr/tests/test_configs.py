"""csimclr's named presets pinned to the paper's and the release's values, written out by hand
so that a preset cannot drift."""
from common import testing
from csimclr import configs

PAPER = {
    "csimclr_300epochs": dict(train_epochs=300.0, learning_rate=0.3, weight_decay=1e-6,
                              kappa_e=1024.0, kappa_b=10.0, ceb_beta=1.0,
                              beta_schedule="constant", pretrain_loss="contrastive_ceb"),
    "csimclr_1000epochs": dict(train_epochs=1000.0, learning_rate=0.2, weight_decay=1.5e-6,
                               kappa_e=1024.0, kappa_b=10.0, ceb_beta=1.0,
                               beta_schedule="constant", pretrain_loss="contrastive_ceb"),
}


def test_presets_are_the_papers_and_the_release_values():
    testing.check_presets(configs, PAPER)
