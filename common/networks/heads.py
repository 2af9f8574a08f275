"""Projection / prediction heads and the linear probe, as plain tf.Modules.

MLP (BYOL's projector g and predictor q, SimCLR's projection head):
  h_0 = x;  h_{i+1} = relu(BN(h_i W_i [+ b_i]))  for the num_layers - 1 hidden layers;
  y = h_{L-1} W_{L-1}            (no bias; no BN unless output_bn).
  The hidden Linear's bias is a flag: the release uses none (its BN has the offset), DeepMind's
  BYOL uses one (and a BN offset too), which adds hidden_dim parameters per hidden layer.
  2048 -> 4096 -> 256: release 9,445,376 parameters, DeepMind 9,449,472.
"""
from __future__ import annotations

import tensorflow as tf

from common.networks import layers
from common.training import precision


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
        # Mixed precision (common.training.precision): compute in the policy's dtype, return float32.
        h = precision.to_compute(x)
        for linear, bn in zip(self.linears[:-1], self.batchnorms):
            h = tf.nn.relu(bn(linear(h), training))
            hiddens.append(precision.to_float32(h))
        y = self.linears[-1](h)
        if self.output_batchnorm is not None:
            y = self.output_batchnorm(y, training)
        y = precision.to_float32(y)
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
            out.update(release_dense_entries(linear, f"{prefix}linear_layers/{i}/dense"))
        bns = self.batchnorms + ([self.output_batchnorm] if self.output_batchnorm is not None else [])
        for i, bn in enumerate(bns):
            out.update(layers.release_entries(bn, f"{prefix}linear_layers/{i}/bn_relu/bn"))
        return out


def release_dense_entries(linear: layers.Dense, base: str) -> dict[str, tf.Variable]:
    """'<base>/kernel' (and '<base>/bias') -> variable, the release's Keras Dense layout."""
    out = {f"{base}/kernel": linear.w}
    if linear.b is not None:
        out[f"{base}/bias"] = linear.b
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
        return release_dense_entries(self.linear, f"{prefix}linear_layer/dense")
