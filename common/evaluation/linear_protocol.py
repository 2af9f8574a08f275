"""The standard linear-evaluation protocol, streamed: a linear classifier trained by SGD on the
frozen backbone's pooled features, through any tf.distribute strategy.

Protocol (ImageNet values are the defaults of `LinearProtocolConfig`):
  * features h = stop_gradient(encoder(x, training=False)): the backbone frozen, BN in inference
    mode, recomputed for every batch (not cached), so the training images keep their
    augmentation: random crop + resize + horizontal flip (`datasets.linear_train_dataset`);
    evaluation uses the centre crop (`datasets.eval_dataset`), every example once, padded rows
    masked out;
  * logits = h W + b (`heads.LinearHead`, W = 0 at the start as the release's
    zero_init_logits_layer); loss = mean softmax cross-entropy over the global batch; with
    weight_decay wd the kernel's gradient gets + wd W (the objective + wd/2 ||W||^2; no decay on b);
  * SGD with Nesterov momentum m = 0.9 (`optim.SGDMomentum`: mu = m mu + g; W -= lr (g + m mu)),
    gradients summed over replicas of per-replica means / num_replicas (the global-batch mean);
  * learning rate lr(k) = base_lr * B / 256 * 0.5 * (1 + cos(pi * k / T)), k = 0..T-1, no warm-up,
    T = epochs * N // B steps for N training examples;
  * B = 4096, 90 epochs, base_lr = 0.1 (so the peak is 1.6), no weight decay, top-1 and top-5.

Sources of the ImageNet values: SimCLR (Chen et al., ICML 2020), Appendix B.6 "Linear
evaluation": the fine-tuning procedure of Appendix B.5 (Nesterov momentum, batch 4096, momentum
0.9, no warm-up, only random crop + flip + resize, no regularisation including weight decay) with
a learning rate of 1.6 = 0.1 x BatchSize / 256 and 90 epochs; the release's ImageNet linear-eval
command (google-research/simclr README: --optimizer=momentum --learning_rate=0.1
--learning_rate_scaling=linear --weight_decay=0 --train_epochs=90 --train_batch_size=4096
--warmup_epochs=0 --zero_init_logits_layer=True; its momentum optimizer is Nesterov, its decay
cosine). BYOL (Grill et al., NeurIPS 2020), Appendix C.1, uses the same recipe family with its
own grid: SGD with Nesterov momentum 0.9, batch 1024, 80 epochs, learning rate chosen on a
validation set from {0.4, 0.3, 0.2, 0.1, 0.05}, no weight decay (pass those values to the config
to follow it). The paper values above were transcribed from the papers' appendices, the command
line from the release's README.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from common.data import augment as augment_lib
from common.data import datasets as data_lib
from common.networks import heads as heads_lib
from common.training import distribute
from common.training import optim as optim_lib
from common.training import schedules


@dataclasses.dataclass(frozen=True)
class LinearProtocolConfig:
    """The protocol's hyper-parameters (module docstring; defaults: the ImageNet protocol).

    Attributes:
      epochs: passes over the training examples; T = epochs * N // batch_size steps (>= 1).
      batch_size: global batch B (all replicas).
      base_lr: learning rate before scaling; the peak is base_lr * B / 256.
      weight_decay: wd on the kernel (0: none, as the papers).
      momentum, nesterov: SGD momentum.
      eval_batch_size: global batch of the evaluation pass.
      augment: random crop + flip on the training images (False: centre crop, as evaluation).
      zero_init_head: W = 0 at the start (the release); False: fan-in truncated normal.
      train_steps: overrides T (None: from epochs).
      steps_per_loop: steps per tf.function call.
    """
    epochs: int = 90
    batch_size: int = 4096
    base_lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    eval_batch_size: int = 1024
    augment: bool = True
    zero_init_head: bool = True
    train_steps: int | None = None
    steps_per_loop: int = 100

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_loop"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LinearProtocolConfig.{name} must be a positive int, "
                                 f"got {getattr(self, name)!r}.")
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError(f"train_steps must be None or positive, got {self.train_steps}.")
        if self.base_lr <= 0 or self.weight_decay < 0:
            raise ValueError("base_lr must be > 0 and weight_decay >= 0.")

    @property
    def peak_lr(self) -> float:
        """base_lr * B / 256."""
        return schedules.scaled_learning_rate(self.base_lr, self.batch_size, "linear")


def total_steps(cfg: LinearProtocolConfig, num_train_examples: int) -> int:
    """T = cfg.train_steps, else max(1, epochs * N // B)."""
    if cfg.train_steps is not None:
        return cfg.train_steps
    return max(1, cfg.epochs * int(num_train_examples) // cfg.batch_size)


def learning_rate(step, cfg: LinearProtocolConfig, num_steps: int) -> tf.Tensor:
    """float32 []: peak * 0.5 * (1 + cos(pi * min(k, T) / T)), peak = base_lr * B / 256."""
    return schedules.warmup_cosine_lr(step, cfg.peak_lr, 0, num_steps)


def _accuracy_sums(logits, labels, mask):
    """float64 [4]: masked sums of top-1 hits, top-5 hits, cross-entropy, and the mask."""
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(mask, tf.float32)
    k = min(5, int(logits.shape[-1]))
    top = tf.math.top_k(logits, k=k).indices
    hits = tf.cast(tf.equal(top, labels[:, None]), tf.float32)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    sums = tf.stack([tf.reduce_sum(hits[:, 0] * mask), tf.reduce_sum(tf.reduce_max(hits, -1) * mask),
                     tf.reduce_sum(xent * mask), tf.reduce_sum(mask)])
    return tf.cast(sums, tf.float64)


class LinearProtocol:
    """A linear head on a frozen encoder, its optimizer and the train / evaluate loops.

    Args:
      encoder: `encoder(images, training=False) -> [b, F]` (a backbone; its variables, if any,
        built in `strategy`'s scope). Never updated.
      strategy: the tf.distribute strategy to run in (the default strategy for one device).
      cfg: the protocol's hyper-parameters.
      num_classes: C.
      feature_dim: F (None: encoder.feature_dim).
      train_dataset_fn: `input_context -> Dataset` of per-replica batches {'image', 'label'}
        (endless); evaluate's `eval_dataset_fn`: the same with a 'mask', one pass.
    """

    def __init__(self, encoder: Callable, strategy: tf.distribute.Strategy,
                 cfg: LinearProtocolConfig, num_classes: int, feature_dim: int | None = None):
        self.encoder, self.strategy, self.cfg = encoder, strategy, cfg
        if cfg.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the "
                             f"{strategy.num_replicas_in_sync} replicas.")
        feature_dim = feature_dim if feature_dim is not None else getattr(encoder, "feature_dim",
                                                                          None)
        if feature_dim is None:
            raise ValueError("Pass feature_dim: the encoder has no feature_dim attribute.")
        with strategy.scope():
            self.head = heads_lib.LinearHead(int(feature_dim), num_classes, name="linear_eval",
                                             zero_init=cfg.zero_init_head)
            self.variables = list(self.head.trainable_variables)
            self.optimizer = optim_lib.SGDMomentum(self.variables, momentum=cfg.momentum,
                                                   nesterov=cfg.nesterov,
                                                   weight_decay=cfg.weight_decay)
        self._loop = tf.function(self._run_steps)
        self._eval_step = tf.function(self._eval_batch)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def features(self, images):
        """Frozen features [b, F]: encoder in inference mode, no gradient."""
        return tf.stop_gradient(tf.cast(self.encoder(images, training=False), tf.float32))

    def _train_step(self, batch, num_steps):
        step = self.optimizer.iterations.read_value()
        h = self.features(batch["image"])
        labels = tf.cast(batch["label"], tf.int32)
        with tf.GradientTape() as tape:
            logits = self.head(h)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            scaled = loss / tf.cast(distribute.num_replicas(), loss.dtype)
        grads = distribute.all_reduce_sum(tape.gradient(scaled, self.variables))
        self.optimizer.apply_gradients(grads, learning_rate(step, self.cfg, num_steps))
        return distribute.all_reduce_sum(scaled)  # the global-batch mean loss

    def _run_steps(self, iterator, n, num_steps):
        total = tf.constant(0.0, tf.float32)
        for _ in tf.range(n):
            per_replica = self.strategy.run(self._train_step, args=(next(iterator), num_steps))
            total += self.strategy.experimental_local_results(per_replica)[0]
        return total / tf.cast(n, tf.float32)

    def train(self, train_dataset_fn: Callable, num_steps: int, print_fn=None) -> float:
        """Runs the protocol's steps from the current one to num_steps (the schedule's T);
        returns the mean training loss of the last loop (nan when no step ran)."""
        dataset = self.strategy.distribute_datasets_from_function(train_dataset_fn)
        iterator = iter(dataset)
        loss = float("nan")
        while self.step < num_steps:
            n = min(self.cfg.steps_per_loop, num_steps - self.step)
            loss = float(self._loop(iterator, tf.constant(n), int(num_steps)))
            if print_fn is not None:
                print_fn(f"linear eval step {self.step}/{num_steps}: loss {loss:.4f}")
        return loss

    def _eval_batch(self, batch):
        def replica_fn(b):
            sums = _accuracy_sums(self.head(self.features(b["image"])), b["label"], b["mask"])
            return distribute.all_reduce_sum(sums)
        return self.strategy.experimental_local_results(
            self.strategy.run(replica_fn, args=(batch,)))[0]

    def evaluate(self, eval_dataset_fn: Callable) -> dict:
        """{'top_1', 'top_5', 'eval_loss', 'num_examples'} over one pass of the eval batches."""
        total = tf.zeros([4], tf.float64)
        for batch in self.strategy.distribute_datasets_from_function(eval_dataset_fn):
            total += self._eval_step(batch)
        top1, top5, xent, count = total.numpy().tolist()
        if count == 0:
            raise ValueError("The evaluation data holds no real example.")
        return {"top_1": top1 / count, "top_5": top5 / count, "eval_loss": xent / count,
                "num_examples": int(count)}


def train_linear(encoder: Callable, strategy: tf.distribute.Strategy,
                 data_cfg: data_lib.DataConfig, aug_cfg: augment_lib.AugmentConfig,
                 cfg: LinearProtocolConfig, num_classes: int, *, feature_dim: int | None = None,
                 eval_split: str | None = None, train_dataset_fn: Callable | None = None,
                 eval_dataset_fn: Callable | None = None, num_train_examples: int | None = None,
                 print_fn=None, return_head: bool = False):
    """Trains the linear protocol on `data_cfg.train_split` and evaluates on `eval_split` (None:
    data_cfg.eval_split). Datasets default to `linear_train_dataset` (augment=cfg.augment; honours
    data_cfg.train_indices) and `eval_dataset` (centre crop, masks); num_train_examples defaults
    to `datasets.train_examples(data_cfg)`.

    Returns {'top_1', 'top_5', 'eval_loss', 'num_examples', 'loss' (mean training loss of the
    last loop), 'epochs' (steps * B / N), 'steps', 'peak_lr'}; with return_head, (that, the
    trained head: features [B, F] -> logits [B, C]).
    """
    if train_dataset_fn is None:
        train_dataset_fn = lambda ctx: data_lib.linear_train_dataset(  # noqa: E731
            data_cfg, aug_cfg, cfg.batch_size, ctx, augment=cfg.augment)
    if eval_dataset_fn is None:
        eval_dataset_fn = lambda ctx: data_lib.eval_dataset(  # noqa: E731
            data_cfg, aug_cfg, eval_split, cfg.eval_batch_size, ctx)
    if num_train_examples is None:
        num_train_examples = data_lib.train_examples(data_cfg)
    steps = total_steps(cfg, num_train_examples)
    protocol = LinearProtocol(encoder, strategy, cfg, num_classes, feature_dim)
    loss = protocol.train(train_dataset_fn, steps, print_fn)
    result = protocol.evaluate(eval_dataset_fn)
    result.update(loss=loss, steps=steps, epochs=steps * cfg.batch_size / num_train_examples,
                  peak_lr=cfg.peak_lr)
    return (result, protocol.head) if return_head else result
