"""C-BYOL's release hook (`CBYOL.release_modules`): the original release's C-BYOL checkpoint
imported into the method reproduces every stored output of its fixture (written by the original
code), predictor and b(z|y)'s mean network included."""
import pathlib

import numpy as np
import tensorflow as tf

from cbyol import model
from common.interop import release
from common.networks import resnet
from common.training import models

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tools" / "fixtures" / "original" / "cbyol_r50_s64"


def _close(got, want, what):
    err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    assert err <= 1e-4, f"{what}: relative error {err:.2e}"


def test_cbyol_method_takes_every_module_of_the_release_checkpoint():
    f = np.load(FIXTURE / "features.npz")
    cfg = resnet.resnet_config(50, 0.125, 64)
    heads = models.HeadsConfig(hidden_dim=64, out_dim=32, probe_input="projection")
    m = model.CBYOL(cfg, heads, models.TargetConfig(), 10)
    report = release.import_into_method(m, str(FIXTURE), print_fn=None)
    assert [line.split(" ")[0] for line in report.loaded] == [
        "encoder", "probe", "projector", "target_encoder", "target_projector", "predictor",
        "backward_projector"]
    assert report.missing == [] and report.unused == []
    x = tf.constant(f["x_normalized"])
    feats = m.encoder(x, training=False)
    proj = m.projector(feats, training=False)
    pred, z, mu = m.predictor(proj, training=False)
    t = m.target_projector(m.target_encoder(x, training=False), training=False)
    b = m.backward_projector(tf.math.l2_normalize(t, -1), training=False)
    for got, key in ((feats, "online_resnet_out"), (proj, "online_head_out"),
                     (mu, "online_predictor_mu"), (pred, "online_predictor_out"),
                     (m.probe(proj), "supervised_logits"), (t, "target_head_out"),
                     (b, "target_projector_out")):
        _close(got, f[key], key)
