"""Plain tf.Module building blocks: convolution, dense layer and (synchronised) batch norm.

Every variable is created in `__init__` inside the module's name scope, so its name carries the
module path, e.g. 'online/resnet/block_group_1/block_0/conv_1/w:0'. Naming convention (the
optimizer's weight-decay / LARS exclusion filter relies on it):
  - conv and dense kernels are 'w', dense biases 'b';
  - every batch-norm module's name contains 'batchnorm'; its trainable variables are 'scale' and
    'offset', its statistics are non-trainable.

Variables use `tf.VariableAggregation.ONLY_FIRST_REPLICA`: the trainer all-reduces gradients
itself and assigns in replica context, where every replica holds the same value (the BN
statistics are synchronised, or replica-averaged without sync, so the first replica's value is
everyone's).

Initialisation. `fan_in_truncated_normal(correct_truncation)`:
  - False ('haiku', the default): w ~ TruncNormal(0, sd) cut at +-2 sd with sd = 1/sqrt(fan_in).
    This is haiku's default for Conv2D and Linear, used by DeepMind's BYOL; the realised standard
    deviation is 0.8796/sqrt(fan_in) because the truncation is not compensated.
  - True ('keras'): sd = 1/sqrt(fan_in)/0.87962566, Keras' `VarianceScaling()` (scale 1, fan_in,
    truncated normal), used by the original release; the realised standard deviation is
    1/sqrt(fan_in).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import tensorflow as tf

from common.training import distribute

Initializer = Callable[[tuple, tf.DType], tf.Tensor]

# Standard deviation of a unit normal truncated to [-2, 2] (scipy.stats.truncnorm(-2, 2).std()).
_TRUNCATED_NORMAL_STD = 0.87962566103423978

_AGG = tf.VariableAggregation.ONLY_FIRST_REPLICA


def fan_in_truncated_normal(correct_truncation: bool = False, scale: float = 1.0) -> Initializer:
    """Initializer w ~ TruncNormal(0, sd, cut at +-2 sd), sd = sqrt(scale / fan_in) [/ 0.8796].

    fan_in = prod(shape[:-1]) (HWIO conv kernels and [in, out] dense kernels).
    """
    def init(shape, dtype=tf.float32):
        fan_in = max(1, math.prod(shape[:-1]))
        stddev = math.sqrt(scale / fan_in)
        if correct_truncation:
            stddev /= _TRUNCATED_NORMAL_STD
        return tf.random.truncated_normal(shape, stddev=stddev, dtype=dtype)
    return init


def normal_init(stddev: float) -> Initializer:
    """Initializer w ~ N(0, stddev^2) (the release's 'simclr' head init uses stddev 0.01)."""
    def init(shape, dtype=tf.float32):
        return tf.random.normal(shape, stddev=stddev, dtype=dtype)
    return init


def zeros_init(shape, dtype=tf.float32) -> tf.Tensor:
    """Initializer w = 0."""
    return tf.zeros(shape, dtype)


def initializer(name: str) -> Initializer:
    """The kernel initializer called `name`.

    'haiku': fan-in truncated normal, truncation not corrected (DeepMind BYOL, haiku default);
    'keras': fan-in truncated normal, corrected (Keras VarianceScaling(); release convs and its
             mlp_init='byol' heads);
    'normal': N(0, 0.01^2) (the release's mlp_init='simclr' heads).
    """
    if name == "haiku":
        return fan_in_truncated_normal(correct_truncation=False)
    if name == "keras":
        return fan_in_truncated_normal(correct_truncation=True)
    if name == "normal":
        return normal_init(0.01)
    raise ValueError(f"unknown kernel initializer {name!r}; use 'haiku' (DeepMind: sd 1/sqrt(fan_in),"
                     " truncation not corrected), 'keras' (release: VarianceScaling()) or 'normal' "
                     "(N(0, 0.01^2)).")


def _variable(value, name: str, trainable: bool = True) -> tf.Variable:
    return tf.Variable(value, name=name, trainable=trainable, aggregation=_AGG)


def _check_positive_int(value, what: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


class Conv2D(tf.Module):
    """2-D convolution without bias, kernel `w` [k, k, in, out] (HWIO).

    padding:
      'fixed': the release's Conv2dFixedPadding. stride 1: TF 'SAME'. stride s > 1: pad
        p0 = (k-1)//2 before and k-1-p0 after on H and W, then 'VALID'. Output size is
        floor((H - 1)/s) + 1 = ceil(H/s), like 'SAME'.
      'same': TF/haiku 'SAME': total pad = max((ceil(H/s)-1)*s + k - H, 0), total//2 before and the
        rest after.
    The two agree for stride 1, for 1x1 kernels, and for stride 2 on odd H. For stride 2, k > 1
    and even H they differ: 'same' pads ((k-2)//2, k-2-(k-2)//2) (k=3: (0, 1); k=7: (2, 3)) while
    'fixed' pads ((k-1)//2, k-1-(k-1)//2) (k=3: (1, 1); k=7: (3, 3)), so every output window sits one
    pixel further up-left with 'fixed'. Both exist because the release uses 'fixed' and DeepMind's
    BYOL (haiku) uses 'same'.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: str = "fixed", kernel_init: Initializer | None = None,
                 name: str = "conv"):
        super().__init__(name=name)
        if padding not in ("fixed", "same"):
            raise ValueError(f"Conv2D padding must be 'fixed' (release) or 'same' (haiku), got {padding!r}.")
        self.in_channels = _check_positive_int(in_channels, "Conv2D in_channels")
        self.out_channels = _check_positive_int(out_channels, "Conv2D out_channels")
        self.kernel_size = _check_positive_int(kernel_size, "Conv2D kernel_size")
        self.stride = _check_positive_int(stride, "Conv2D stride")
        self.padding = padding
        init = kernel_init or fan_in_truncated_normal()
        with self.name_scope:
            self.w = _variable(init((kernel_size, kernel_size, in_channels, out_channels), tf.float32), "w")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x [B, H, W, in] -> [B, ceil(H/s), ceil(W/s), out]; y = conv(pad(x), w)."""
        if x.shape.rank != 4 or (x.shape[-1] is not None and x.shape[-1] != self.in_channels):
            raise ValueError(f"{self.name}: expected input [B, H, W, {self.in_channels}], got {x.shape}.")
        w = tf.cast(self.w, x.dtype)
        if self.padding == "fixed" and self.stride > 1:
            pad_total = self.kernel_size - 1
            beg = pad_total // 2
            x = tf.pad(x, [[0, 0], [beg, pad_total - beg], [beg, pad_total - beg], [0, 0]])
            return tf.nn.conv2d(x, w, self.stride, "VALID")
        return tf.nn.conv2d(x, w, self.stride, "SAME")


class Dense(tf.Module):
    """Fully connected layer: y = x w (+ b), w [in, out] ('w'), b [out] ('b', zeros)."""

    def __init__(self, in_features: int, out_features: int, use_bias: bool = True,
                 kernel_init: Initializer | None = None, name: str = "linear"):
        super().__init__(name=name)
        self.in_features = _check_positive_int(in_features, "Dense in_features")
        self.out_features = _check_positive_int(out_features, "Dense out_features")
        self.use_bias = use_bias
        init = kernel_init or fan_in_truncated_normal()
        with self.name_scope:
            self.w = _variable(init((in_features, out_features), tf.float32), "w")
            self.b = _variable(tf.zeros([out_features]), "b") if use_bias else None

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x [..., in] -> [..., out]."""
        if x.shape[-1] is not None and x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: expected input [..., {self.in_features}], got {x.shape}.")
        y = tf.linalg.matmul(x, tf.cast(self.w, x.dtype)) if x.shape.rank == 2 else \
            tf.tensordot(x, tf.cast(self.w, x.dtype), axes=1)
        if self.b is not None:
            y = y + tf.cast(self.b, x.dtype)
        return y


@dataclasses.dataclass(frozen=True)
class BNConfig:
    """Batch-norm hyper-parameters shared by every BN of a network.

    momentum: EMA decay m of the moving statistics (0.9 in both the release and DeepMind).
    epsilon: added to the variance (1e-5).
    semantics: 'keras' (release) or 'haiku' (DeepMind BYOL, zero-debiased EMA); see `BatchNorm`.
    sync: statistics over the global batch (all replicas) rather than the per-replica batch.
      With sync=False each replica normalises with its own batch statistics and the moving
      statistics are updated with the replica average of those (see `BatchNorm`).
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    semantics: str = "keras"
    sync: bool = True

    def kwargs(self) -> dict:
        """The fields as `BatchNorm` keyword arguments."""
        return dataclasses.asdict(self)


class BatchNorm(tf.Module):
    """Batch normalisation over every axis but the last, optionally synchronised across replicas.

    Training (`training=True`), for x [..., C] with n elements per channel over all replicas:
      mean = sum(x)/n, var = max(sum(x^2)/n - mean^2, 0)   (biased, one-pass; sums all-reduced
                                                          when `sync`; computed in float32)
      y = (x - mean) * scale * rsqrt(var + eps) + offset
    and the moving statistics are updated with the batch (mean, var) (without `sync` on several
    replicas: with the replica average of the per-replica (mean, var), the same on every replica):
      'keras': moving_mean/moving_variance, init 0/1,  moving = m*moving + (1-m)*batch.
               Keras 2's non-fused layer also stores the biased variance; its fused 4-D kernel
               would store the Bessel-corrected n/(n-1) variance instead (not reproduced here).
      'haiku': like haiku's ExponentialMovingAverage with zero debiasing: counter += 1,
               hidden = m*hidden + (1-m)*value, average = hidden / (1 - m^counter), all init 0.
               After one update average equals the batch statistic.
    Inference (`training=False`) uses the moving statistics (`moving_mean`, `moving_variance`: the
    keras variables or the haiku averages) and updates nothing.

    Variables: 'scale' [C] (init `scale_init`, only if `scale`), 'offset' [C] (zeros, only if
    `center`), and non-trainable statistics: 'moving_mean', 'moving_variance' (keras) or
    'mean_hidden', 'mean_average', 'var_hidden', 'var_average', 'counter' (int32) (haiku; haiku
    keeps one counter per EMA, always equal, so one is kept here).
    Output has the input's dtype (bf16 in, bf16 out); statistics and normalisation run in float32.
    """

    def __init__(self, channels: int, momentum: float = 0.9, epsilon: float = 1e-5,
                 semantics: str = "keras", scale_init: float = 1.0, center: bool = True,
                 scale: bool = True, sync: bool = True, name: str = "batchnorm"):
        super().__init__(name=name)
        if "batchnorm" not in name:
            raise ValueError(f"BatchNorm name {name!r} must contain 'batchnorm' (the optimizer's "
                             "weight-decay exclusion filter finds BN parameters by it).")
        if semantics not in ("keras", "haiku"):
            raise ValueError(f"BatchNorm semantics must be 'keras' or 'haiku', got {semantics!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1), got {momentum}.")
        if epsilon <= 0:
            raise ValueError(f"BatchNorm epsilon must be > 0, got {epsilon}.")
        self.channels = _check_positive_int(channels, "BatchNorm channels")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.semantics = semantics
        self.sync = sync
        with self.name_scope:
            self.scale = _variable(tf.fill([channels], float(scale_init)), "scale") if scale else None
            self.offset = _variable(tf.zeros([channels]), "offset") if center else None
            if semantics == "keras":
                self._moving_mean = _variable(tf.zeros([channels]), "moving_mean", trainable=False)
                self._moving_variance = _variable(tf.ones([channels]), "moving_variance", trainable=False)
            else:
                self.mean_hidden = _variable(tf.zeros([channels]), "mean_hidden", trainable=False)
                self._moving_mean = _variable(tf.zeros([channels]), "mean_average", trainable=False)
                self.var_hidden = _variable(tf.zeros([channels]), "var_hidden", trainable=False)
                self._moving_variance = _variable(tf.zeros([channels]), "var_average", trainable=False)
                self.counter = _variable(tf.constant(0, tf.int32), "counter", trainable=False)

    @property
    def moving_mean(self) -> tf.Variable:
        """[C] the mean used in inference (keras moving_mean, or haiku's debiased average)."""
        return self._moving_mean

    @property
    def moving_variance(self) -> tf.Variable:
        """[C] the variance used in inference (keras moving_variance, or haiku's debiased average)."""
        return self._moving_variance

    def _fused_training(self, x: tf.Tensor) -> tf.Tensor | None:
        """The same training-mode result through TF's fused kernel, or None where it can't apply.

        The fused kernel is about 2.5x faster on CPU but computes statistics on one device only,
        so it is used when nothing needs synchronising (one replica, or sync=False), for float32
        inputs of rank 2 or 4 with at least two elements per channel. It normalises with the biased
        variance, like `batch_statistics`, but returns the Bessel-corrected one, which is scaled
        back by (n-1)/n before it reaches the moving averages.
        """
        rank = x.shape.rank
        if x.dtype != tf.float32 or rank not in (2, 4) or None in x.shape.as_list():
            return None
        if self.sync and distribute.num_replicas() > 1:
            return None
        n = 1
        for d in x.shape.as_list()[:-1]:
            n *= d
        if n < 2:
            return None
        y, mean, var_unbiased = self._fused(x, is_training=True)
        self._update(mean, var_unbiased * ((n - 1) / n))
        return y

    def _fused_inference(self, x: tf.Tensor) -> tf.Tensor | None:
        """The inference-mode result through TF's fused kernel (about 1.3x faster for a whole
        ResNet forward on CPU), or None where it can't apply: float32 inputs of rank 2 or 4."""
        rank = x.shape.rank
        if x.dtype != tf.float32 or rank not in (2, 4):
            return None
        return self._fused(x, is_training=False,
                           mean=self._moving_mean, variance=self._moving_variance)[0]

    def _fused(self, x: tf.Tensor, is_training: bool, **stats):
        """tf.compat.v1.nn.fused_batch_norm on x [N, C] (viewed as [N, 1, 1, C]) or [N, H, W, C],
        with a missing scale/offset as ones/zeros; returns (y shaped like x, mean, variance)."""
        x4 = tf.reshape(x, [-1, 1, 1, self.channels]) if x.shape.rank == 2 else x
        scale = self.scale if self.scale is not None else tf.ones([self.channels], tf.float32)
        offset = self.offset if self.offset is not None else tf.zeros([self.channels], tf.float32)
        y, mean, var = tf.compat.v1.nn.fused_batch_norm(
            x4, scale, offset, epsilon=self.epsilon, is_training=is_training, **stats)
        return (tf.reshape(y, tf.shape(x)) if x.shape.rank == 2 else y), mean, var

    def batch_statistics(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """x [..., C] -> (mean [C], var [C]) in float32 over every axis but the last (and replicas)."""
        xf = tf.cast(x, tf.float32)
        axes = list(range(x.shape.rank - 1))
        s1 = tf.reduce_sum(xf, axes)
        s2 = tf.reduce_sum(tf.square(xf), axes)
        n = tf.cast(tf.reduce_prod(tf.shape(xf)[:-1]), tf.float32)
        if self.sync:
            s1, s2, n = distribute.all_reduce_sum((s1, s2, n))
        mean = s1 / n
        var = tf.maximum(s2 / n - tf.square(mean), 0.0)
        return mean, var

    def _update(self, mean: tf.Tensor, var: tf.Tensor) -> None:
        """Moves the statistics towards this step's batch (mean, var).

        Without `sync` on several replicas, every replica normalised with its own batch statistics;
        the moving statistics are updated with their replica average, mean_r(mean_r) and
        mean_r(var_r) (the mean of the per-replica biased variances, not the pooled variance), so
        every replica keeps the same values. This is what tf.keras 2 (the release's Keras) stores:
        its moving statistics are ON_READ variables with MEAN aggregation, each replica averaging
        its own statistics, read as the replica mean, which the linearity of the EMA makes equal to
        an EMA of the replica-averaged statistics.
        """
        m = tf.constant(self.momentum, tf.float32)
        mean = tf.stop_gradient(mean)
        var = tf.stop_gradient(var)
        ctx = tf.distribute.get_replica_context()
        if not self.sync and ctx is not None and ctx.num_replicas_in_sync > 1:
            mean, var = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, (mean, var))
        if self.semantics == "keras":
            self._moving_mean.assign(m * self._moving_mean + (1.0 - m) * mean)
            self._moving_variance.assign(m * self._moving_variance + (1.0 - m) * var)
            return
        self.counter.assign_add(1)
        debias = 1.0 - tf.pow(m, tf.cast(tf.identity(self.counter), tf.float32))
        mean_hidden = m * self.mean_hidden + (1.0 - m) * mean
        var_hidden = m * self.var_hidden + (1.0 - m) * var
        self.mean_hidden.assign(mean_hidden)
        self.var_hidden.assign(var_hidden)
        self._moving_mean.assign(mean_hidden / debias)
        self._moving_variance.assign(var_hidden / debias)

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """x [..., C] -> y [..., C] = (x - mean) * scale * rsqrt(var + eps) + offset."""
        if x.shape[-1] is not None and x.shape[-1] != self.channels:
            raise ValueError(f"{self.name}: expected input [..., {self.channels}], got {x.shape}.")
        if training:
            fused = self._fused_training(x)
            if fused is not None:
                return fused
            mean, var = self.batch_statistics(x)
            self._update(mean, var)
        else:
            fused = self._fused_inference(x)
            if fused is not None:
                return fused
            mean = tf.convert_to_tensor(self._moving_mean)
            var = tf.convert_to_tensor(self._moving_variance)
        inv = tf.math.rsqrt(var + self.epsilon)
        if self.scale is not None:
            inv = inv * self.scale
        y = (tf.cast(x, tf.float32) - mean) * inv
        if self.offset is not None:
            y = y + self.offset
        return tf.cast(y, x.dtype)

    def haiku_entries(self, module: str) -> dict[str, tf.Variable]:
        """{'<module>/scale', '<module>/offset', '<module>/~/{mean,var}_ema/{hidden,average,counter}'}
        -> variable, for a haiku BatchNorm called `module`.

        haiku stores scale/offset/EMAs with shape (1, ..., 1, C); ours are (C,): reshape on import.
        Keras semantics has no hidden/counter, so only the averages (= moving statistics) appear.
        """
        out = {}
        if self.scale is not None:
            out[f"{module}/scale"] = self.scale
        if self.offset is not None:
            out[f"{module}/offset"] = self.offset
        out[f"{module}/~/mean_ema/average"] = self._moving_mean
        out[f"{module}/~/var_ema/average"] = self._moving_variance
        if self.semantics == "haiku":
            out[f"{module}/~/mean_ema/hidden"] = self.mean_hidden
            out[f"{module}/~/var_ema/hidden"] = self.var_hidden
            out[f"{module}/~/mean_ema/counter"] = self.counter
            out[f"{module}/~/var_ema/counter"] = self.counter
        return out


def release_entries(bn: BatchNorm, base: str) -> dict[str, tf.Variable]:
    """{'<base>/gamma', '<base>/beta', '<base>/moving_mean', '<base>/moving_variance'} -> variable:
    a Keras BatchNormalization in the release's checkpoints (object path `base`, e.g. '.../bn')."""
    out = {}
    if bn.scale is not None:
        out[f"{base}/gamma"] = bn.scale
    if bn.offset is not None:
        out[f"{base}/beta"] = bn.offset
    out[f"{base}/moving_mean"] = bn.moving_mean
    out[f"{base}/moving_variance"] = bn.moving_variance
    return out


def assign_from_checkpoint(param_map: dict[str, tf.Variable], path: str) -> None:
    """Assigns `param_map`'s variables from the object-based TF checkpoint at `path` (a ckpt-N
    prefix or a directory). Keys are object paths without '/.ATTRIBUTES/VARIABLE_VALUE'; every key
    must exist with exactly the variable's shape. With haiku BN semantics only the averages are set
    (hidden and counter are not in such checkpoints)."""
    if tf.io.gfile.isdir(path):
        path = tf.train.latest_checkpoint(path) or path
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    for key, var in param_map.items():
        full = f"{key}/.ATTRIBUTES/VARIABLE_VALUE"
        if full not in shapes:
            raise KeyError(f"checkpoint {path} has no key {full!r}: wrong checkpoint, model size or prefix.")
        if list(shapes[full]) != var.shape.as_list():
            raise ValueError(f"checkpoint key {key!r} has shape {shapes[full]}, but variable {var.name} "
                             f"has {var.shape.as_list()}: the checkpoint's model differs in size.")
        var.assign(reader.get_tensor(full))


def count_params(module: tf.Module) -> int:
    """Number of trainable scalars of `module` (haiku's parameter count; BN statistics excluded)."""
    return int(sum(v.shape.num_elements() for v in module.trainable_variables))


def assign_from_haiku(param_map: dict[str, tf.Variable], arrays: dict, strict: bool = True) -> list[str]:
    """Assigns haiku arrays to the variables of `param_map` (from a `haiku_param_map`).

    Each array is reshaped to its variable's shape when only singleton axes differ (haiku BN
    (1,1,1,C) -> (C,)). With `strict`, every key of `param_map` must be in `arrays`.
    Returns the keys of `param_map` that were not found in `arrays`.
    """
    missing = [k for k in param_map if k not in arrays]
    if strict and missing:
        raise KeyError(f"{len(missing)} haiku entries missing from the arrays, e.g. {missing[:3]}; "
                       "pass strict=False to assign a subset.")
    for key, var in param_map.items():
        if key not in arrays:
            continue
        value = tf.convert_to_tensor(arrays[key])
        target = var.shape.as_list()
        squeezed_src = [d for d in value.shape.as_list() if d != 1]
        if squeezed_src != [d for d in target if d != 1]:
            raise ValueError(f"haiku entry {key!r} has shape {value.shape}, incompatible with "
                             f"variable {var.name} of shape {target}.")
        var.assign(tf.cast(tf.reshape(value, target), var.dtype))
    return missing
