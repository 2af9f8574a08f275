"""Projection / prediction heads and the linear probe, as plain tf.Modules.

MLP (BYOL's projector g and predictor q, SimCLR's projection head):
  h_0 = x;  h_{i+1} = relu(BN(h_i W_i [+ b_i]))  for the num_layers - 1 hidden layers;
  y = h_{L-1} W_{L-1}            (no bias; no BN unless output_bn).
  The hidden Linear's bias is a flag: the release uses none (its BN has the offset), DeepMind's
  BYOL uses one (and a BN offset too), which adds hidden_dim parameters per hidden layer.
  2048 -> 4096 -> 256: release 9,445,376 parameters, DeepMind 9,449,472.

StochasticPredictor (C-BYOL's predictor with the forward encoder e(z|x)):
  mu = l2norm(relu(BN(x W_0 [+ b_0])) W_1),  z ~ vMF(mu, kappa_e) (training and sampling) else mu,
  prediction = z W_2.
"""
from __future__ import annotations

import tensorflow as tf

from common import layers, vmf


def _haiku_name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


class MLP(tf.Module):
    """[B, in_dim] -> [B, out_dim] with num_layers Linear layers (num_layers - 1 hidden, BN + ReLU).

    Modules: 'linear_{i}' (w [d_i, d_{i+1}], b if use_hidden_bias and i is hidden), 'batchnorm_{i}'
    after every hidden Linear (scale and offset); with output_bn a final 'batchnorm_{L-1}' with
    scale only (center=False, as in the release). num_layers=1 is a single bias-free Linear.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 2,
                 bn: layers.BNConfig = layers.BNConfig(), use_hidden_bias: bool = False,
                 output_bn: bool = False, kernel_init: str = "haiku", name: str = "mlp"):
        super().__init__(name=name)
        if num_layers < 1:
            raise ValueError(f"MLP num_layers must be >= 1, got {num_layers}.")
        init = layers.initializer(kernel_init)
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.num_layers = num_layers
        self.linears, self.batchnorms = [], []
        self.output_batchnorm = None
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        with self.name_scope:
            for i in range(num_layers):
                hidden = i < num_layers - 1
                self.linears.append(layers.Dense(dims[i], dims[i + 1], use_bias=hidden and use_hidden_bias,
                                                 kernel_init=init, name=f"linear_{i}"))
                if hidden:
                    self.batchnorms.append(layers.BatchNorm(dims[i + 1], name=f"batchnorm_{i}", **bn.kwargs()))
            if output_bn:
                self.output_batchnorm = layers.BatchNorm(out_dim, center=False, name=f"batchnorm_{num_layers - 1}",
                                                         **bn.kwargs())

    def __call__(self, x: tf.Tensor, training: bool, return_hidden: bool = False):
        """x [B, in_dim] -> y [B, out_dim]; with return_hidden, (y, [h_1, ..., h_{L-1}]) where h_i
        [B, hidden_dim] are the post-ReLU hidden activations."""
        hiddens = []
        h = x
        for linear, bn in zip(self.linears[:-1], self.batchnorms):
            h = tf.nn.relu(bn(linear(h), training))
            hiddens.append(h)
        y = self.linears[-1](h)
        if self.output_batchnorm is not None:
            y = self.output_batchnorm(y, training)
        return (y, hiddens) if return_hidden else y

    def haiku_param_map(self, prefix: str = "projector/") -> dict[str, tf.Variable]:
        """haiku key -> variable for DeepMind's `MLP` module called prefix[:-1].

        haiku names Linear layers 'linear', 'linear_1', ... and BNs 'batch_norm', 'batch_norm_1',
        ...; its BN scale/offset/EMAs are (1, C) where ours are (C,) (see `layers.assign_from_haiku`).
        """
        out = {}
        for i, linear in enumerate(self.linears):
            out[f"{prefix}{_haiku_name('linear', i)}/w"] = linear.w
            if linear.b is not None:
                out[f"{prefix}{_haiku_name('linear', i)}/b"] = linear.b
        bns = self.batchnorms + ([self.output_batchnorm] if self.output_batchnorm is not None else [])
        for i, bn in enumerate(bns):
            out.update(bn.haiku_entries(f"{prefix}{_haiku_name('batch_norm', i)}"))
        return out


    def release_checkpoint_map(self, prefix: str = "model/_projection_head/") -> dict[str, tf.Variable]:
        """Object path in the release's checkpoints (without '/.ATTRIBUTES/VARIABLE_VALUE') ->
        variable: '<prefix>linear_layers/{i}/dense/{kernel,bias}' and
        '<prefix>linear_layers/{i}/bn_relu/bn/{gamma,beta,moving_mean,moving_variance}'."""
        out = {}
        for i, linear in enumerate(self.linears):
            out.update(_release_dense(linear, f"{prefix}linear_layers/{i}/dense"))
        bns = self.batchnorms + ([self.output_batchnorm] if self.output_batchnorm is not None else [])
        for i, bn in enumerate(bns):
            out.update(layers.release_entries(bn, f"{prefix}linear_layers/{i}/bn_relu/bn"))
        return out


def _release_dense(linear: layers.Dense, base: str) -> dict[str, tf.Variable]:
    out = {f"{base}/kernel": linear.w}
    if linear.b is not None:
        out[f"{base}/bias"] = linear.b
    return out


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
        out = _release_dense(self.linear_0, f"{prefix}linear_layers/0/dense")
        out.update(layers.release_entries(self.batchnorm_0, f"{prefix}linear_layers/0/bn_relu/bn"))
        out.update(_release_dense(self.linear_1, f"{prefix}linear_layers/2/dense"))
        out.update(_release_dense(self.linear_2, f"{prefix}linear_layers/3/dense"))
        return out


class LinearHead(tf.Module):
    """Linear classifier (supervised head / linear probe): logits [B, C] = x W + b, W [in, C], b [C].

    zero_init: W = 0 (the release's zero_init_logits_layer); otherwise fan-in truncated normal.
    """

    def __init__(self, in_dim: int, num_classes: int, name: str = "probe", zero_init: bool = False,
                 kernel_init: str = "haiku"):
        super().__init__(name=name)
        init = layers.zeros_init if zero_init else layers.initializer(kernel_init)
        self.in_dim, self.num_classes = in_dim, num_classes
        with self.name_scope:
            self.linear = layers.Dense(in_dim, num_classes, use_bias=True, kernel_init=init, name="linear")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x [B, in_dim] -> logits [B, num_classes]."""
        return self.linear(x)

    def release_checkpoint_map(self, prefix: str = "model/supervised_head/") -> dict[str, tf.Variable]:
        """'<prefix>linear_layer/dense/{kernel,bias}' -> variable (the release's SupervisedHead)."""
        return _release_dense(self.linear, f"{prefix}linear_layer/dense")
