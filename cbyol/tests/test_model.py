"""C-BYOL's model: its variables, the vMF predictor in the step, and the backward encoder's wiring."""
import math

import numpy as np
import pytest
import tensorflow as tf

from cbyol import model
from common.ceb import settings as ceb_settings
from common.training import models
from common import testing

T = 10


def make(num_classes, beta=1.0):
    return model.CBYOL(testing.tiny_resnet(), testing.tiny_heads(),
                       models.TargetConfig(base_ema=0.9, total_steps=T), num_classes,
                       ceb_settings.CEBConfig(kappa_e=1024.0, kappa_b=10.0, beta=beta))


def refs(variables):
    return {v.ref() for v in variables}


def batch(n=4):
    return next(iter(testing.synthetic_dataset_fn(n)(None)))


def test_optimizer_and_ema_variables():
    m = make(4)
    opt = refs(m.optimized_variables())
    assert opt == refs(list(m.encoder.trainable_variables) + list(m.projector.trainable_variables)
                       + list(m.predictor.trainable_variables)
                       + list(m.backward_projector.trainable_variables)
                       + list(m.probe.trainable_variables))
    assert not opt & refs(m.target_encoder.variables + m.target_projector.variables)
    # b(z|y)'s mean network is trained, never averaged.
    assert not refs(m.backward_projector.variables) & refs(m.target_variables())
    for o, t in zip(m.online_variables(), m.target_variables()):
        assert t.name == "target_" + o.name


def _grads(m, beta_seed=(3, 4)):
    with tf.GradientTape() as tape:
        loss, metrics = m.loss(batch(), tf.constant(0, tf.int64), tf.constant(beta_seed))
    return loss, metrics, dict(zip([v.name for v in m.optimized_variables()],
                                   tape.gradient(loss, m.optimized_variables())))


def test_backward_projector_learns_only_from_the_compression_term():
    m = make(4, beta=1.0)
    _, metrics, g = _grads(m)
    bp = [n for n in g if n.startswith("backward_projector")]
    assert bp and all(g[n] is not None for n in bp)
    assert max(float(tf.reduce_max(tf.abs(g[n]))) for n in bp) > 0
    m0 = make(4, beta=0.0)
    _, _, g0 = _grads(m0)
    assert all(float(tf.reduce_max(tf.abs(g0[n]))) == 0.0 for n in bp)
    for k in ("byol_loss", "i_xzx_y", "h_e_zx_x", "h_b_zx_y", "beta", "probe_acc"):
        assert np.isfinite(metrics[k].numpy())


def test_loss_is_deterministic_in_the_seed_and_varies_with_it():
    m = make(4)
    b = batch()
    step = tf.constant(0, tf.int64)
    l1, _ = m.loss(b, step, tf.constant([1, 2]))
    l2, _ = m.loss(b, step, tf.constant([1, 2]))
    l3, _ = m.loss(b, step, tf.constant([5, 6]))
    # BN moving statistics change between calls, but training-mode outputs do not depend on them.
    assert l1.numpy() == l2.numpy()
    assert l1.numpy() != l3.numpy()


def test_target_follows_ema_through_training_steps(tmp_path):
    tr = testing.tiny_pretrainer(lambda n: make(n), str(tmp_path), steps=3,
                                 print_fn=lambda *a, **k: None)
    m = tr.method
    expected = [v.numpy().astype(np.float64) for v in m.target_variables()]
    backward0 = [v.numpy() for v in m.backward_projector.trainable_variables]
    for k in range(3):
        tr.run_steps(1)
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * k / T) + 1) / 2
        expected = [e + (1 - tau) * (o.numpy() - e) for e, o in zip(expected, m.online_variables())]
    for e, t in zip(expected, m.target_variables()):
        np.testing.assert_allclose(t.numpy(), e, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b.numpy())
               for a, b in zip(backward0, m.backward_projector.trainable_variables))


# ------------------------------------------------------------------------------ wiring
# Which network output reaches which input of the loss, checked against the sub-networks run
# independently on each view, and the loss value against a float64 numpy oracle.

_record = testing.record_calls



def distinct_views(n=4, size=16):
    return testing.distinct_views(n, size, seed=21)


def np_log_vmf(z, mu, kappa):
    """log vMF(z; mu, kappa) on S^{d-1} in float64, rows aligned."""
    import scipy.special
    d = z.shape[-1]
    v = d / 2.0 - 1.0
    log_c = v * np.log(kappa) - d / 2.0 * np.log(2 * np.pi) - (
        np.log(scipy.special.ive(v, kappa)) + kappa)
    return log_c + kappa * np.sum(z * mu, -1)


def np_unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_xent(logits, labels):
    logits = np.asarray(logits, np.float64)
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    return np.mean(lse - logits[np.arange(len(labels)), labels])


def make_wired(backward_view, probe_input="backbone"):
    from common.ceb import settings as ceb_settings
    heads = models.HeadsConfig(hidden_dim=16, out_dim=8, probe_input=probe_input)
    return model.CBYOL(testing.tiny_resnet(), heads, models.TargetConfig(base_ema=0.9, total_steps=T),
                       4, ceb_settings.CEBConfig(kappa_e=1024.0, kappa_b=10.0, beta=0.7),
                       byol_loss_weight=0.6, backward_view=backward_view)


class _Independent:
    """The sub-networks of `m` run on one view in training mode, as the paper wires them."""

    def __init__(self, m, view):
        self.feats = m.encoder(view, training=True)
        self.proj = m.projector(self.feats, training=True)
        _, _, self.mu = m.predictor(self.proj, training=True, sample=False)
        self.target = m.target_projector(m.target_encoder(view, training=True), training=True)
        self.b_mean = m.backward_projector(tf.math.l2_normalize(self.target, -1), training=True)


@pytest.mark.parametrize("backward_view", ["same", "other"])
def test_each_network_output_reaches_its_own_input_of_the_loss(monkeypatch, backward_view):
    m = make_wired(backward_view)
    calls = _record(monkeypatch, model.losses, "byol_ceb_loss")
    probe_calls = _record(monkeypatch, type(m), "probe_loss")
    b = distinct_views()
    seed = tf.constant([3, 4])
    loss, metrics = m.loss(b, tf.constant(0, tf.int64), seed)
    assert len(calls) == 1 and len(probe_calls) == 1
    a = {k: (v.numpy().astype(np.float64) if isinstance(v, tf.Tensor) else v)
         for k, v in calls[0].items()}
    on = [_Independent(m, b["view1"]), _Independent(m, b["view2"])]
    close = dict(rtol=1e-5, atol=1e-5)
    for k, o in ((1, on[0]), (2, on[1])):
        np.testing.assert_allclose(a[f"t{k}"], o.target.numpy(), **close, err_msg=f"t{k}")
        np.testing.assert_allclose(a[f"mu{k}"], o.mu.numpy(), **close, err_msg=f"mu{k}")
        np.testing.assert_allclose(a[f"b_mean{k}"], o.b_mean.numpy(), **close, err_msg=f"b{k}")
        z, mu = a[f"z{k}"], a[f"mu{k}"]
        # z_k is a draw from vMF(mu_k, 1024): unit, near mu_k (E z.mu = 1 - (d-1)/(2 kappa)) but
        # not mu_k itself; p_k is the predictor's output layer on that draw.
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
        assert np.all(np.sum(z * mu, 1) > 0.98) and np.abs(z - mu).max() > 1e-3, k
        np.testing.assert_allclose(a[f"p{k}"], z @ m.predictor.linear_2.w.numpy(), **close)
    # The two views' samples use different noise. A draw is z = H(mu) z0 with z0 ~ vMF(e1, kappa)
    # and H the reflection taking e1 to mu (an involution), so z0 = H(mu) z must differ.
    def noise(z, mu):
        u = -mu.copy()
        u[:, 0] += 1.0
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        return z - 2.0 * np.sum(z * u, 1, keepdims=True) * u
    assert np.abs(noise(a["z1"], a["mu1"]) - noise(a["z2"], a["mu2"])).max() > 1e-3
    assert a["backward_view"] == backward_view
    assert (a["kappa_e"], a["kappa_b"], a["byol_loss_weight"]) == (1024.0, 10.0, 0.6)
    np.testing.assert_allclose(float(a["beta"]), 0.7, rtol=1e-7)
    # The probe reads view 1's backbone features with view 1's labels.
    np.testing.assert_allclose(probe_calls[0]["features"].numpy(), on[0].feats.numpy(), **close)
    np.testing.assert_array_equal(probe_calls[0]["labels"].numpy(), b["label"].numpy())

    # The loss value, from the independent outputs and the recorded draws, in float64.
    t = [o.target.numpy() for o in on]
    p = [a["p1"], a["p2"]]
    z = [a["z1"], a["z2"]]
    reg = sum(2 - 2 * np.sum(np_unit(p[k]) * np_unit(t[1 - k]), 1) for k in range(2))
    b_dir = [np_unit(o.b_mean.numpy()) for o in on]
    if backward_view == "other":
        b_dir = b_dir[::-1]
    residual = sum(np_log_vmf(z[k], np_unit(on[k].mu.numpy()), 1024.0)
                   - np_log_vmf(z[k], b_dir[k], 10.0) for k in range(2))
    logits = on[0].feats.numpy().astype(np.float64) @ m.probe.linear.w.numpy() + m.probe.linear.b.numpy()
    probe = np_xent(logits, b["label"].numpy())
    np.testing.assert_allclose(metrics["byol_loss"].numpy(), reg.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["i_xzx_y"].numpy(), residual.mean(), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(loss.numpy(), 0.6 * reg.mean() + 0.7 * residual.mean() + probe,
                               rtol=1e-4, atol=2e-3)
    # The test can tell the wirings apart: the other pairing gives a clearly different residual.
    swapped = sum(np_log_vmf(z[k], np_unit(on[k].mu.numpy()), 1024.0)
                  - np_log_vmf(z[k], b_dir[1 - k], 10.0) for k in range(2))
    assert abs(swapped.mean() - residual.mean()) > 0.1


@pytest.mark.parametrize("probe_input", ["backbone", "projection"])
def test_probe_reads_view_one_backbone_or_projection(monkeypatch, probe_input):
    m = make_wired("same", probe_input)
    probe_calls = _record(monkeypatch, type(m), "probe_loss")
    b = distinct_views()
    m.loss(b, tf.constant(0, tf.int64), tf.constant([1, 2]))
    o = _Independent(m, b["view1"])
    want = o.feats if probe_input == "backbone" else o.proj
    np.testing.assert_allclose(probe_calls[0]["features"].numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_online_networks_and_backward_projector_never_the_target():
    m = make_wired("same")
    b = distinct_views()
    with tf.GradientTape(persistent=True) as tape:
        loss, metrics = m.loss(b, tf.constant(0, tf.int64), tf.constant([5, 6]))
    variables = list(m.trainable_variables)
    grads = tape.gradient(loss, variables)
    connected = {v.ref() for v, g in zip(variables, grads) if g is not None}
    moved = {v.ref() for v, g in zip(variables, grads)
             if g is not None and np.abs(g.numpy()).max() > 0}
    assert connected == refs(m.optimized_variables())
    assert not connected & refs(m.target_variables())
    # Every head parameter moves (inside the ResNet, the zero-initialised last BN scale of each
    # residual branch keeps that branch's earlier layers at zero gradient on the first step).
    heads = [m.projector, m.predictor, m.backward_projector, m.probe]
    assert refs([v for h in heads for v in h.trainable_variables]) <= moved

    def reached(value, module):
        gs = tape.gradient(value, module.trainable_variables)
        return [g is not None and np.abs(g.numpy()).max() > 0 for g in gs]
    # The probe reads stop-gradient features; b(z|y) learns only from the residual information.
    assert list(tape.gradient(metrics["probe_loss"], m.encoder.trainable_variables)) == [None] * len(
        m.encoder.trainable_variables)
    assert not any(reached(metrics["byol_loss"], m.backward_projector))
    assert all(reached(metrics["i_xzx_y"], m.backward_projector))
    # The residual information reaches the online encoder through mu and the sample.
    assert any(reached(metrics["i_xzx_y"], m.encoder))
    del tape
