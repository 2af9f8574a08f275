"""C-BYOL's stochastic predictor: the forward encoder e(z|x) as a head.

  mu = l2norm(relu(BN(x W_0 [+ b_0])) W_1),  z ~ vMF(mu, kappa_e) (training and sampling) else mu,
  prediction = z W_2.
"""
from __future__ import annotations

import tensorflow as tf

from common.ceb import vmf
from common.networks import heads
from common.networks import layers


class StochasticPredictor(tf.Module):
    """C-BYOL's predictor: x [B, in_dim] -> (prediction [B, out], z [B, out], mu [B, out]).

      mu = l2norm(relu(BN(x W_0 [+ b_0])) W_1)            e(z|x) = vMF(z; mu, kappa_e)
      z ~ vMF(mu, kappa_e) if training and sample, else z = mu
      prediction = z W_2
    Modules: 'linear_0' [in, hidden] (+ bias if use_hidden_bias), 'batchnorm_0', 'linear_1'
    [hidden, out] and 'linear_2' [out, out], both bias-free. The sample is reparameterised, so the
    gradient reaches W_0 and W_1 through z.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, kappa_e: float,
                 bn: layers.BNConfig = layers.BNConfig(), use_hidden_bias: bool = False,
                 kernel_init: str = "haiku", name: str = "predictor"):
        super().__init__(name=name)
        if kappa_e <= 0:
            raise ValueError(f"kappa_e (the vMF concentration of e(z|x)) must be > 0, got {kappa_e}.")
        init = layers.initializer(kernel_init)
        self.kappa_e = float(kappa_e)
        self.out_dim = out_dim
        with self.name_scope:
            self.linear_0 = layers.Dense(in_dim, hidden_dim, use_bias=use_hidden_bias, kernel_init=init,
                                         name="linear_0")
            self.batchnorm_0 = layers.BatchNorm(hidden_dim, name="batchnorm_0", **bn.kwargs())
            self.linear_1 = layers.Dense(hidden_dim, out_dim, use_bias=False, kernel_init=init, name="linear_1")
            self.linear_2 = layers.Dense(out_dim, out_dim, use_bias=False, kernel_init=init, name="linear_2")

    def __call__(self, x: tf.Tensor, training: bool, seed: tf.Tensor | None = None,
                 sample: bool = True):
        """x [B, in_dim] -> (prediction [B, out], z [B, out], mu [B, out]); mu and z are unit vectors.

        seed: int32 [2] stateless seed, required when training and sample.
        """
        h = tf.nn.relu(self.batchnorm_0(self.linear_0(x), training))
        mu = tf.math.l2_normalize(tf.cast(self.linear_1(h), tf.float32), axis=-1)
        if training and sample:
            if seed is None:
                raise ValueError(f"{self.name}: sampling z ~ vMF(mu, kappa_e) needs a stateless seed "
                                 "(int32 [2]); pass seed=..., or sample=False to use z = mu.")
            z = vmf.VonMisesFisher(mu, tf.constant(self.kappa_e, tf.float32)).sample(seed)
        else:
            z = mu
        return self.linear_2(z), z, mu


    def release_checkpoint_map(self, prefix: str = "model/_projector/") -> dict[str, tf.Variable]:
        """Object path in the release's checkpoints -> variable. The release's stochastic head keeps
        its layers at linear_layers/0 (Dense + BN), /2 (hidden -> out) and /3 (out -> out); index 1
        is an unused layer that never gets variables."""
        out = heads.release_dense_entries(self.linear_0, f"{prefix}linear_layers/0/dense")
        out.update(layers.release_entries(self.batchnorm_0, f"{prefix}linear_layers/0/bn_relu/bn"))
        out.update(heads.release_dense_entries(self.linear_1, f"{prefix}linear_layers/2/dense"))
        out.update(heads.release_dense_entries(self.linear_2, f"{prefix}linear_layers/3/dense"))
        return out
