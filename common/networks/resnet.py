"""ResNet v1.5 backbones (post-activation, stride on the 3x3 conv) as plain tf.Modules.

Two layouts matter for this project, and both are one config away:
  - the original release (SimCLR TF2 resnet.py): `resnet_config(depth, width_multiplier,
    image_size)`: 'fixed' padding, Keras BN, Keras VarianceScaling init, zero-init of the last BN
    in bottleneck AND basic blocks;
  - DeepMind's BYOL (haiku `hk.nets.ResNet`): `deepmind_resnet18/50()`, `deepmind_tiny_resnet()`:
    TF 'SAME' padding, haiku BN (zero-debiased EMA), uncorrected truncated-normal init, zero-init
    of the last BN in bottleneck blocks only.
Both project the shortcut in the first block of every group, including ResNet-18's group 0
(64 -> 64, stride 1); 'first_block_if_needed' gives the torchvision layout instead.

Structure for input x [B, H, W, C_in]:
  stem: ImageNet: conv7x7/2 -> BN -> ReLU -> maxpool 3x3/2 SAME (H/4);
        CIFAR (`cifar_stem`): conv3x3/1 -> BN -> ReLU (H);
        with sk_ratio > 0 (ImageNet only) the ResNet-D stem: conv3x3/2 (c/2) -> BN-ReLU ->
        conv3x3/1 (c/2) -> BN-ReLU -> conv3x3/1 (c) -> BN-ReLU -> maxpool.
  4 block groups with strides (1, 2, 2, 2);
  global mean over H, W -> [B, feature_dim].
Blocks (out = relu(residual(x) + shortcut(x))):
  bottleneck: 1x1 (f) -> BN-ReLU -> 3x3/s (f) -> BN-ReLU -> 1x1 (4f) -> BN (scale 0 by default);
  basic:      3x3/s (f) -> BN-ReLU -> 3x3 (f) -> BN;
  shortcut:   identity, or 1x1/s conv -> BN (ResNet-D with sk_ratio > 0: avgpool 2x2/s -> 1x1 conv -> BN).
  sk_ratio > 0 turns the bottleneck's 3x3 into a selective-kernel conv (SimCLRv2); se_ratio > 0
  adds squeeze-and-excitation after the last BN of every block.

Variable names follow haiku: <name>/initial_conv/w, <name>/initial_batchnorm/{scale,offset,...},
<name>/block_group_{g}/block_{i}/{conv_k/w, batchnorm_k/..., shortcut_conv/w, shortcut_batchnorm/...}
with g, i, k counted from 0, so `haiku_param_map` is a rename.
"""
from __future__ import annotations

import dataclasses
import functools

import tensorflow as tf

from common.networks import layers
from common.training import precision

_DEPTHS = {  # depth -> (blocks per group, bottleneck)
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
_BASE_FILTERS = (64, 128, 256, 512)  # inner width f of each group before the width multiplier
_STRIDES = (1, 2, 2, 2)
_SK_MIN_DIM = 32  # floor of the SK attention width (SimCLRv2)


def _scaled(channels: int, width_multiplier: float) -> int:
    return max(1, int(round(channels * width_multiplier)))


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A ResNet layout.

    depth: 18/34 (basic blocks) or 50/101/152/200 (bottlenecks); sets the defaults below.
    width_multiplier: every default channel count c becomes max(1, round(c * wm)) (fractional ok).
    cifar_stem: conv3x3/1 stem without maxpool (images <= 32 px).
    blocks_per_group: 4 block counts, overriding the depth's.
    channels_per_group: 4 group OUTPUT channel counts (4f for bottlenecks), absolute, overriding
      width_multiplier for the groups.
    bottleneck: overrides the depth's block type.
    projection_shortcut: 'every_group' (release and DeepMind: block 0 of every group projects) or
      'first_block_if_needed' (torchvision: only when the shape changes).
    stem_channels: stem output channels, default round(64 * wm).
    padding: 'fixed' (release) or 'same' (haiku); see `layers.Conv2D`.
    bn: batch-norm momentum/epsilon/semantics/sync of every BN.
    kernel_init: 'haiku' or 'keras'; see `layers.initializer`.
    zero_init_last_bn: scale 0 on the last BN of bottleneck blocks (both references).
    zero_init_last_bn_basic: scale 0 on the last BN of basic blocks (release: True; DeepMind: False).
    sk_ratio: > 0 enables selective kernels + ResNet-D stem/shortcuts (SimCLRv2 uses 0.0625).
    se_ratio: > 0 enables squeeze-and-excitation with that reduction ratio.
    """
    depth: int = 50
    width_multiplier: float = 1.0
    cifar_stem: bool = False
    blocks_per_group: tuple | None = None
    channels_per_group: tuple | None = None
    bottleneck: bool | None = None
    projection_shortcut: str = "every_group"
    stem_channels: int | None = None
    padding: str = "fixed"
    bn: layers.BNConfig = layers.BNConfig()
    kernel_init: str = "haiku"
    zero_init_last_bn: bool = True
    zero_init_last_bn_basic: bool = False
    sk_ratio: float = 0.0
    se_ratio: float = 0.0

    def __post_init__(self):
        if self.blocks_per_group is not None:
            object.__setattr__(self, "blocks_per_group", tuple(int(b) for b in self.blocks_per_group))
            if len(self.blocks_per_group) != 4 or min(self.blocks_per_group) < 1:
                raise ValueError(f"blocks_per_group must be 4 positive counts, got {self.blocks_per_group}.")
        if self.channels_per_group is not None:
            object.__setattr__(self, "channels_per_group", tuple(int(c) for c in self.channels_per_group))
            if len(self.channels_per_group) != 4 or min(self.channels_per_group) < 1:
                raise ValueError(f"channels_per_group must be 4 positive counts, got {self.channels_per_group}.")
        if self.depth not in _DEPTHS and (self.blocks_per_group is None or self.bottleneck is None):
            raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(_DEPTHS)}; pick one, or "
                             "give both blocks_per_group and bottleneck.")
        if self.is_bottleneck and self.channels_per_group is not None and any(
                c % 4 for c in self.channels_per_group):
            raise ValueError(f"bottleneck channels_per_group {self.channels_per_group} must be multiples "
                             "of 4 (the inner width is out/4).")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}.")
        if self.projection_shortcut not in ("every_group", "first_block_if_needed"):
            raise ValueError(f"projection_shortcut must be 'every_group' or 'first_block_if_needed', "
                             f"got {self.projection_shortcut!r}.")
        if self.padding not in ("fixed", "same"):
            raise ValueError(f"padding must be 'fixed' (release) or 'same' (haiku), got {self.padding!r}.")
        layers.initializer(self.kernel_init)
        if not isinstance(self.bn, layers.BNConfig):
            raise TypeError(f"bn must be a common.layers.BNConfig, got {type(self.bn).__name__}.")
        if self.stem_channels is not None and self.stem_channels < 1:
            raise ValueError(f"stem_channels must be >= 1, got {self.stem_channels}.")
        if self.sk_ratio < 0 or self.se_ratio < 0:
            raise ValueError(f"sk_ratio and se_ratio must be >= 0, got {self.sk_ratio}, {self.se_ratio}.")

    @property
    def blocks(self) -> tuple:
        """Blocks in each of the 4 groups."""
        return self.blocks_per_group or _DEPTHS[self.depth][0]

    @property
    def is_bottleneck(self) -> bool:
        """Bottleneck (1x1, 3x3, 1x1 with 4x expansion) or basic (3x3, 3x3) blocks."""
        return self.bottleneck if self.bottleneck is not None else _DEPTHS[self.depth][1]

    @property
    def group_channels(self) -> tuple:
        """((inner f, output) per group): output = 4f for bottlenecks, f for basic blocks."""
        expansion = 4 if self.is_bottleneck else 1
        if self.channels_per_group is not None:
            return tuple((c // expansion, c) for c in self.channels_per_group)
        inner = [_scaled(f, self.width_multiplier) for f in _BASE_FILTERS]
        return tuple((f, f * expansion) for f in inner)

    @property
    def stem_width(self) -> int:
        """Output channels of the stem."""
        return self.stem_channels or _scaled(64, self.width_multiplier)

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature, the last group's output channels (2048 wm for ResNet-50)."""
        return self.group_channels[-1][1]


def resnet_config(depth: int = 50, width_multiplier: float = 1.0, image_size: int = 224,
                  **overrides) -> ResNetConfig:
    """The original release's ResNet: CIFAR stem when image_size <= 32, 'fixed' padding, Keras
    sync BN (momentum 0.9, eps 1e-5), Keras VarianceScaling init, zero-init last BN in every block."""
    kw = dict(depth=depth, width_multiplier=width_multiplier, cifar_stem=image_size <= 32,
              padding="fixed", projection_shortcut="every_group",
              bn=layers.BNConfig(semantics="keras", sync=True), kernel_init="keras",
              zero_init_last_bn=True, zero_init_last_bn_basic=True)
    kw.update(overrides)
    return ResNetConfig(**kw)


def _deepmind(**kw) -> ResNetConfig:
    base = dict(padding="same", projection_shortcut="every_group",
                bn=layers.BNConfig(semantics="haiku", sync=True), kernel_init="haiku",
                zero_init_last_bn=True, zero_init_last_bn_basic=False)
    base.update(kw)
    return ResNetConfig(**base)


def deepmind_resnet18(**overrides) -> ResNetConfig:
    """haiku ResNet18 as used by DeepMind's BYOL (11,180,736 parameters)."""
    return _deepmind(**{"depth": 18, **overrides})


def deepmind_resnet50(width_multiplier: float = 1.0, **overrides) -> ResNetConfig:
    """haiku ResNet50 as used by DeepMind's BYOL (23,508,032 parameters at width 1)."""
    return _deepmind(**{"depth": 50, "width_multiplier": width_multiplier, **overrides})


def deepmind_tiny_resnet(**overrides) -> ResNetConfig:
    """BYOL's TinyResNet (test config of the golden group f): basic blocks (1, 1, 1, 1), 8 channels
    in every group, a 64-channel 7x7/2 stem, feature dim 8."""
    return _deepmind(**{"depth": 18, "blocks_per_group": (1, 1, 1, 1), "bottleneck": False,
                        "channels_per_group": (8, 8, 8, 8), "stem_channels": 64, **overrides})


def _resnet_d_pool(x: tf.Tensor, stride: int) -> tf.Tensor:
    """ResNet-D shortcut pooling: stride 1: avgpool 2x2/1 SAME; stride s: pad (0, 1) with zeros,
    then avgpool 2x2/s VALID (as SimCLRv2 does)."""
    if stride == 1:
        return tf.nn.avg_pool2d(x, 2, 1, "SAME")
    x = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
    return tf.nn.avg_pool2d(x, 2, stride, "VALID")


class SqueezeExcite(tf.Module):
    """Squeeze-and-excitation: y = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2).

    x [B, H, W, C]; W1 [C, r] ('se_reduce'), W2 [r, C] ('se_expand'), both with biases.
    """

    def __init__(self, channels: int, reduced: int, kernel_init, name: str = "squeeze_excite"):
        super().__init__(name=name)
        with self.name_scope:
            self.se_reduce = layers.Dense(channels, reduced, True, kernel_init, name="se_reduce")
            self.se_expand = layers.Dense(reduced, channels, True, kernel_init, name="se_expand")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        s = tf.reduce_mean(x, axis=[1, 2])
        s = tf.sigmoid(self.se_expand(tf.nn.relu(self.se_reduce(s))))
        return x * s[:, tf.newaxis, tf.newaxis, :]


class SelectiveKernelConv(tf.Module):
    """SimCLRv2's selective-kernel 3x3 conv (two 3x3 branches, softmax attention over them).

    x [B, H, W, in] -> [B, H/s, W/s, f]:
      [u_0, u_1] = split(relu(BN(conv3x3/s(x) -> 2f)))       (two branches, f channels each)
      g = relu(BN(mean_hw(u_0 + u_1) W_r))                   (W_r [f, max(int(f*ratio), 32)], no bias)
      [a_0, a_1] = softmax over branches of split(g W_e)     (W_e [mid, 2f], no bias)
      y = a_0 * u_0 + a_1 * u_1
    The block applies no further BN after it.
    """

    def __init__(self, in_channels: int, filters: int, stride: int, sk_ratio: float, conv,
                 bn, dense_init, name: str = "selective_kernel"):
        super().__init__(name=name)
        mid = max(int(filters * sk_ratio), _SK_MIN_DIM)
        with self.name_scope:
            self.conv = conv(in_channels, 2 * filters, 3, stride, name="conv")
            self.batchnorm = bn(2 * filters, name="batchnorm")
            self.attention_reduce = layers.Dense(filters, mid, False, dense_init, name="attention_reduce")
            self.attention_batchnorm = bn(mid, name="attention_batchnorm")
            self.attention_expand = layers.Dense(mid, 2 * filters, False, dense_init, name="attention_expand")

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """x [B, H, W, in] -> [B, ceil(H/s), ceil(W/s), f]."""
        u = tf.nn.relu(self.batchnorm(self.conv(x), training))
        u0, u1 = tf.split(u, 2, axis=-1)
        g = tf.reduce_mean(u0 + u1, axis=[1, 2])
        g = tf.nn.relu(self.attention_batchnorm(self.attention_reduce(g), training))
        a0, a1 = tf.split(self.attention_expand(g), 2, axis=-1)
        a = tf.nn.softmax(tf.stack([a0, a1], axis=0), axis=0)[:, :, tf.newaxis, tf.newaxis, :]
        return a[0] * u0 + a[1] * u1


class Block(tf.Module):
    """One residual block (bottleneck or basic), post-activation: relu(residual(x) + shortcut(x))."""

    def __init__(self, cfg: ResNetConfig, in_channels: int, inner: int, out: int, stride: int,
                 project: bool, name: str):
        super().__init__(name=name)
        if not project and (in_channels != out or stride != 1):
            raise ValueError(f"{name}: an identity shortcut needs in == out channels and stride 1 "
                             f"(got {in_channels} -> {out}, stride {stride}).")
        init = layers.initializer(cfg.kernel_init)
        conv = functools.partial(layers.Conv2D, padding=cfg.padding, kernel_init=init)
        bn = functools.partial(layers.BatchNorm, **cfg.bn.kwargs())
        self.bottleneck = cfg.is_bottleneck
        self.stride = stride
        self.resnet_d = cfg.sk_ratio > 0
        self.convs, self.batchnorms = [], []
        self.selective_kernel = None
        self.squeeze_excite = None
        self.shortcut_conv = self.shortcut_batchnorm = None
        with self.name_scope:
            if project:
                self.shortcut_conv = conv(in_channels, out, 1, 1 if self.resnet_d else stride,
                                          name="shortcut_conv")
                self.shortcut_batchnorm = bn(out, name="shortcut_batchnorm")
            if self.bottleneck:
                self.convs.append(conv(in_channels, inner, 1, 1, name="conv_0"))
                self.batchnorms.append(bn(inner, name="batchnorm_0"))
                if cfg.sk_ratio > 0:
                    self.selective_kernel = SelectiveKernelConv(
                        inner, inner, stride, cfg.sk_ratio, conv, bn, init, name="selective_kernel_1")
                else:
                    self.convs.append(conv(inner, inner, 3, stride, name="conv_1"))
                    self.batchnorms.append(bn(inner, name="batchnorm_1"))
                last_in, last_k, last_stride, zero = inner, 1, 1, cfg.zero_init_last_bn
            else:
                self.convs.append(conv(in_channels, out, 3, stride, name="conv_0"))
                self.batchnorms.append(bn(out, name="batchnorm_0"))
                last_in, last_k, last_stride, zero = out, 3, 1, cfg.zero_init_last_bn_basic
            k = len(self.convs) + (self.selective_kernel is not None)
            self.convs.append(conv(last_in, out, last_k, last_stride, name=f"conv_{k}"))
            self.batchnorms.append(bn(out, scale_init=0.0 if zero else 1.0, name=f"batchnorm_{k}"))
            if cfg.se_ratio > 0:
                self.squeeze_excite = SqueezeExcite(out, max(1, int(inner * cfg.se_ratio)), init,
                                                    name="squeeze_excite")

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """x [B, H, W, in] -> [B, ceil(H/s), ceil(W/s), out]."""
        shortcut = x
        if self.shortcut_conv is not None:
            s = _resnet_d_pool(x, self.stride) if self.resnet_d else x
            shortcut = self.shortcut_batchnorm(self.shortcut_conv(s), training)
        h = x
        last = len(self.convs) - 1
        for k, (conv, bn) in enumerate(zip(self.convs, self.batchnorms)):
            h = bn(conv(h), training)
            if k < last:
                h = tf.nn.relu(h)
            if k == 0 and self.selective_kernel is not None:
                h = self.selective_kernel(h, training)
        if self.squeeze_excite is not None:
            h = self.squeeze_excite(h)
        return tf.nn.relu(h + shortcut)


class BlockGroup(tf.Module):
    """`num_blocks` blocks; the first one carries the group's stride (and projection)."""

    def __init__(self, cfg: ResNetConfig, in_channels: int, inner: int, out: int, num_blocks: int,
                 stride: int, name: str):
        super().__init__(name=name)
        self.blocks = []
        with self.name_scope:
            for i in range(num_blocks):
                block_in = in_channels if i == 0 else out
                block_stride = stride if i == 0 else 1
                if cfg.projection_shortcut == "every_group":
                    project = i == 0
                else:
                    project = block_in != out or block_stride != 1
                self.blocks.append(Block(cfg, block_in, inner, out, block_stride, project,
                                         name=f"block_{i}"))

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """x [B, H, W, in] -> [B, ceil(H/s), ceil(W/s), out]."""
        for block in self.blocks:
            x = block(x, training)
        return x


class ResNet(tf.Module):
    """ResNet backbone: images [B, H, W, in_channels] -> pooled features [B, feature_dim].

    `training` is a Python bool: True normalises with batch statistics and updates the BN moving
    statistics; False uses the moving statistics.
    """

    def __init__(self, cfg: ResNetConfig = ResNetConfig(), in_channels: int = 3, name: str = "resnet"):
        super().__init__(name=name)
        self.cfg = cfg
        self.in_channels = in_channels
        self.feature_dim = cfg.feature_dim
        init = layers.initializer(cfg.kernel_init)
        conv = functools.partial(layers.Conv2D, padding=cfg.padding, kernel_init=init)
        bn = functools.partial(layers.BatchNorm, **cfg.bn.kwargs())
        stem = cfg.stem_width
        self.stem_convs, self.stem_batchnorms = [], []
        with self.name_scope:
            if cfg.cifar_stem:
                self.initial_conv = conv(in_channels, stem, 3, 1, name="initial_conv")
            elif cfg.sk_ratio > 0:
                half = max(1, stem // 2)
                self.stem_convs = [conv(in_channels, half, 3, 2, name="stem_conv_0"),
                                   conv(half, half, 3, 1, name="stem_conv_1")]
                self.stem_batchnorms = [bn(half, name="stem_batchnorm_0"), bn(half, name="stem_batchnorm_1")]
                self.initial_conv = conv(half, stem, 3, 1, name="initial_conv")
            else:
                self.initial_conv = conv(in_channels, stem, 7, 2, name="initial_conv")
            self.initial_batchnorm = bn(stem, name="initial_batchnorm")
            self.block_groups = []
            channels = stem
            for g, (blocks, (inner, out), stride) in enumerate(
                    zip(cfg.blocks, cfg.group_channels, _STRIDES)):
                self.block_groups.append(BlockGroup(cfg, channels, inner, out, blocks, stride,
                                                    name=f"block_group_{g}"))
                channels = out

    def __call__(self, x: tf.Tensor, training: bool, return_endpoints: bool = False):
        """x [B, H, W, in_channels] -> [B, feature_dim] (global mean of the last group).

        With `return_endpoints`, returns a dict instead: 'stem' (after the maxpool, if any),
        'block_group1'..'block_group4' (each group's output) and 'pooled' ([B, feature_dim]).
        """
        if x.shape.rank != 4 or (x.shape[-1] is not None and x.shape[-1] != self.in_channels):
            raise ValueError(f"{self.name}: expected images [B, H, W, {self.in_channels}], got shape "
                             f"{x.shape}.")
        # Mixed precision (common.training.precision): compute in the policy's dtype, return float32.
        h = precision.to_compute(x)
        for conv, bn in zip(self.stem_convs, self.stem_batchnorms):
            h = tf.nn.relu(bn(conv(h), training))
        h = tf.nn.relu(self.initial_batchnorm(self.initial_conv(h), training))
        if not self.cfg.cifar_stem:
            h = tf.nn.max_pool2d(h, 3, 2, "SAME")
        endpoints = {"stem": h}
        for g, group in enumerate(self.block_groups):
            h = group(h, training)
            endpoints[f"block_group{g + 1}"] = h
        pooled = precision.to_float32(tf.reduce_mean(h, axis=[1, 2]))
        if return_endpoints:
            endpoints = {k: precision.to_float32(v) for k, v in endpoints.items()}
            endpoints["pooled"] = pooled
            return endpoints
        return pooled

    def release_checkpoint_map(self, prefix: str = "model/_resnet/") -> dict[str, tf.Variable]:
        """The module-level `release_checkpoint_map` of this network (every module of a method
        exposes its release layout under this name)."""
        return release_checkpoint_map(self, prefix)


count_params = layers.count_params


def haiku_param_map(resnet: ResNet, prefix: str | None = None) -> dict[str, tf.Variable]:
    """haiku key '<module>/<param>' -> variable, for every parameter and BN state of `resnet`.

    prefix: haiku's module prefix, default f'res_net{depth}/~/' ('tiny_res_net/~/' for TinyResNet).
    Keys: '<p>initial_conv/w', '<p>initial_batchnorm/{scale,offset}',
    '<p>initial_batchnorm/~/{mean,var}_ema/{hidden,average,counter}',
    '<p>block_group_{g}/~/block_{i}/~/{conv_k/w, batchnorm_k/..., shortcut_conv/w, shortcut_batchnorm/...}'.
    Conv kernels are HWIO on both sides. haiku's BN scale/offset/hidden/average are (1, 1, 1, C)
    and ours (C,): reshape on import (`layers.assign_from_haiku` does). Both of haiku's counters
    (mean_ema, var_ema) map to our single counter. With Keras BN semantics only the averages map.
    """
    if resnet.cfg.sk_ratio > 0 or resnet.cfg.se_ratio > 0:
        raise ValueError("haiku's ResNet has no selective-kernel or squeeze-excite modules; "
                         "haiku_param_map needs sk_ratio = se_ratio = 0.")
    if prefix is None:
        prefix = f"res_net{resnet.cfg.depth}/~/"
    out = {f"{prefix}initial_conv/w": resnet.initial_conv.w}
    out.update(resnet.initial_batchnorm.haiku_entries(f"{prefix}initial_batchnorm"))
    for g, group in enumerate(resnet.block_groups):
        for i, block in enumerate(group.blocks):
            base = f"{prefix}block_group_{g}/~/block_{i}/~/"
            for k, (conv, bn) in enumerate(zip(block.convs, block.batchnorms)):
                out[f"{base}conv_{k}/w"] = conv.w
                out.update(bn.haiku_entries(f"{base}batchnorm_{k}"))
            if block.shortcut_conv is not None:
                out[f"{base}shortcut_conv/w"] = block.shortcut_conv.w
                out.update(block.shortcut_batchnorm.haiku_entries(f"{base}shortcut_batchnorm"))
    return out


def release_checkpoint_map(resnet: ResNet, prefix: str = "model/_resnet/") -> dict[str, tf.Variable]:
    """Object path in the original release's checkpoints (without '/.ATTRIBUTES/VARIABLE_VALUE')
    -> variable, e.g. 'model/_resnet/block_groups/0/layers/0/conv_relu_dropblock_layers/0/conv2d/kernel'.

    Layout (SimCLR TF2 resnet.py, where the index is the position in a Keras layer list and
    DropBlock, identity and pooling layers take positions without holding variables):
      stem 'initial_conv_relu_max_pool/': plain or CIFAR '0/conv2d/kernel' + '2/bn/{gamma, beta,
        moving_mean, moving_variance}'; ResNet-D (sk_ratio > 0) convs 0, 2, 4 + BNs 1, 3, 6;
      bottleneck 'conv_relu_dropblock_layers/': convs 0, 3, 6 + BNs 1, 4, 7, squeeze-excite 9;
        with selective kernels the 3x3 conv is '3/' ('conv2d_fixed_padding/conv2d/kernel',
        'batch_norm_relu/bn', 'conv2d_0/kernel' (attention reduce), 'batch_norm_relu_1/bn',
        'conv2d_1/kernel' (attention expand)), the last conv 5 + BN 6, squeeze-excite 8;
      basic 'conv2d_bn_layers/': convs 0, 2 + BNs 1, 3, squeeze-excite 'se_layer/';
      squeeze-excite '{se_reduce, se_expand}/{kernel, bias}';
      shortcut ('projection_layers/' bottleneck, 'shortcut_layers/' basic): conv 0 + BN 1; with
        ResNet-D a padding (stride 2 only) and the average pool come first: conv 2 + BN 3 at
        stride 2, conv 1 + BN 2 at stride 1.
    Kernels are HWIO on both sides, except the selective-kernel attention and squeeze-excite
    kernels: 1x1 convolution kernels [1, 1, in, out] there, Dense matrices [in, out] here
    (`common.interop.release.import_modules` reshapes them). Use '_target_resnet/' for the EMA
    target. Plain networks work with `layers.assign_from_checkpoint` as well.
    """
    stem = f"{prefix}initial_conv_relu_max_pool/"
    out = {}
    if resnet.stem_convs:
        for k, (conv, bn) in enumerate(zip(resnet.stem_convs, resnet.stem_batchnorms)):
            out[f"{stem}{2 * k}/conv2d/kernel"] = conv.w
            out.update(layers.release_entries(bn, f"{stem}{2 * k + 1}/bn"))
        out[f"{stem}4/conv2d/kernel"] = resnet.initial_conv.w
        out.update(layers.release_entries(resnet.initial_batchnorm, f"{stem}6/bn"))
    else:
        out[f"{stem}0/conv2d/kernel"] = resnet.initial_conv.w
        out.update(layers.release_entries(resnet.initial_batchnorm, f"{stem}2/bn"))
    for g, group in enumerate(resnet.block_groups):
        for j, block in enumerate(group.blocks):
            base = f"{prefix}block_groups/{g}/layers/{j}/"
            if block.bottleneck:
                seq, step, proj = f"{base}conv_relu_dropblock_layers/", 3, "projection_layers"
            else:
                seq, step, proj = f"{base}conv2d_bn_layers/", 2, "shortcut_layers"
            sk = block.selective_kernel
            for k, (conv, bn) in enumerate(zip(block.convs, block.batchnorms)):
                # The selective-kernel layer stands in for the 3x3 conv and its BN (one list
                # position where they took two), so the last 1x1 conv sits at 5, not at 6.
                pos = step * k + (step - 1 if sk is not None and k > 0 else 0)
                out[f"{seq}{pos}/conv2d/kernel"] = conv.w
                out.update(layers.release_entries(bn, f"{seq}{pos + 1}/bn"))
            if sk is not None:
                out[f"{seq}3/conv2d_fixed_padding/conv2d/kernel"] = sk.conv.w
                out.update(layers.release_entries(sk.batchnorm, f"{seq}3/batch_norm_relu/bn"))
                out[f"{seq}3/conv2d_0/kernel"] = sk.attention_reduce.w
                out.update(layers.release_entries(sk.attention_batchnorm, f"{seq}3/batch_norm_relu_1/bn"))
                out[f"{seq}3/conv2d_1/kernel"] = sk.attention_expand.w
            se = block.squeeze_excite
            if se is not None:
                se_base = f"{seq}{8 if sk is not None else 9}/" if block.bottleneck else f"{base}se_layer/"
                for part in (se.se_reduce, se.se_expand):
                    out[f"{se_base}{part.name}/kernel"] = part.w
                    out[f"{se_base}{part.name}/bias"] = part.b
            if block.shortcut_conv is not None:
                pos = (2 if block.stride > 1 else 1) if block.resnet_d else 0
                out[f"{base}{proj}/{pos}/conv2d/kernel"] = block.shortcut_conv.w
                out.update(layers.release_entries(block.shortcut_batchnorm, f"{base}{proj}/{pos + 1}/bn"))
    return out
