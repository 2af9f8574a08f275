"""XLA (`--jit_compile`) for the four trainers: the compiled step runs and agrees with the plain
step; vMF sampling compiles and keeps its distribution."""
import importlib

import numpy as np
import pytest
import tensorflow as tf

from common import testing
from common.ceb import vmf
from common.cli import job, settings
from common.training import trainer as trainer_lib


def _trained(algorithm, jit, tmp_path, steps=2):
    spec = importlib.import_module(f"{algorithm}.train").TRAINER
    cfg = settings.with_overrides(
        spec.presets[spec.default_preset], width_multiplier=0.0625, image_size=16,
        train_batch_size=8, train_steps=10, jit_compile=jit, proj_head_hidden_dim=16,
        proj_out_dim=8)
    parts = job.build_parts(cfg, str(tmp_path / f"{algorithm}-{jit}"))
    tf.random.set_seed(0)
    tr = trainer_lib.Pretrainer(lambda n: spec.build_method(cfg, parts, n), parts.train,
                                parts.data, parts.augment, tf.distribute.get_strategy(),
                                dataset_fn=testing.synthetic_dataset_fn(8, 16, 10),
                                num_classes=10, print_fn=lambda *a, **k: None)
    if steps:
        tr.run_steps(steps)
    return tr


def _updates(algorithm, jit, tmp_path):
    tr = _trained(algorithm, jit, tmp_path, steps=0)
    before = [v.numpy() for v in tr.method.trainable_variables]
    tr.run_steps(2)  # step 0 runs at learning rate 0 (warm-up); step 1 moves the weights
    assert tr.step == 2
    after = [v.numpy() for v in tr.method.trainable_variables]
    return np.concatenate([(a - b).ravel() for a, b in zip(after, before)]), tr.metrics.result()


# The C-variants draw vMF samples from stateless random ops, which XLA implements with other
# bits than TensorFlow's kernels: equally distributed, not equal samples. Their update is held
# to 25% of its own size (measured: 2-10%); the others, which draw nothing in the step, to 2%
# (float32 reassociation in XLA's fused kernels). A dropped or doubled update, or a wrong
# fusion, is off by 100%. Each compiles a ResNet step (30-75 s), hence `slow`.
@pytest.mark.parametrize("algorithm,tolerance", [
    pytest.param("simclr", 0.02, marks=pytest.mark.slow),
    pytest.param("csimclr", 0.25, marks=pytest.mark.slow),
    pytest.param("byol", 0.02, marks=pytest.mark.slow),
    pytest.param("cbyol", 0.25, marks=pytest.mark.slow)])
def test_the_xla_step_matches_the_plain_step(algorithm, tolerance, tmp_path):
    plain, m0 = _updates(algorithm, False, tmp_path)
    xla, m1 = _updates(algorithm, True, tmp_path)
    assert np.linalg.norm(plain) > 0
    relative = np.linalg.norm(xla - plain) / np.linalg.norm(plain)
    assert relative < tolerance, relative
    assert m1["loss"] == pytest.approx(m0["loss"], rel=tolerance)


def test_vmf_sampling_compiles_and_keeps_its_mean_resultant_length():
    dim, n = 16, 4000
    mu = tf.math.l2_normalize(tf.random.stateless_normal([n, dim], [1, 2]), -1)
    kappa = tf.fill([n], 20.0)
    seed = tf.constant([3, 4])

    def draw(mu, kappa, seed):
        return vmf.VonMisesFisher(mu, kappa).sample(seed)

    compiled = tf.function(draw, jit_compile=True)
    z_xla = compiled(mu, kappa, seed).numpy()
    np.testing.assert_array_equal(compiled(mu, kappa, seed).numpy(), z_xla)  # stateless
    np.testing.assert_allclose(np.linalg.norm(z_xla, axis=-1), 1.0, atol=1e-5)
    # E[mu.z] = A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) (scipy oracle: 0.6154 for d=16,
    # kappa=20); the Monte-Carlo mean of 4000 draws is within 4 standard errors of it.
    from scipy import special
    expected = special.ive(dim / 2, 20.0) / special.ive(dim / 2 - 1, 20.0)
    cos = np.sum(z_xla * mu.numpy(), -1)
    assert abs(cos.mean() - expected) < 4 * cos.std() / np.sqrt(n)
