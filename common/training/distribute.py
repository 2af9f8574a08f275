"""Choosing a tf.distribute strategy and the cross-replica helpers the losses and BN need.

Every helper here works in a replica context of any strategy, including the default (no strategy),
so losses and layers call them unconditionally.
"""
from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Where to run. `use_tpu` wins; then TF_CONFIG (multi-worker); then local GPUs; then one device.

    Attributes:
      use_tpu: run on a Cloud TPU found through `tpu_name` (or `master`).
      tpu_name, tpu_zone, gcp_project, master: TPU cluster resolver arguments.
      num_gpus: None uses every local GPU; 0 forces CPU.
      cpu_replicas: >1 runs MirroredStrategy over that many logical CPU devices (tests, debugging).
    """
    use_tpu: bool = False
    tpu_name: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    master: str | None = None
    num_gpus: int | None = None
    cpu_replicas: int = 1


def get_strategy(cfg: DistributeConfig = DistributeConfig()) -> tf.distribute.Strategy:
    """Returns the strategy for `cfg`: TPUStrategy, MultiWorkerMirrored, Mirrored, or one device."""
    if cfg.use_tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=cfg.tpu_name or cfg.master, zone=cfg.tpu_zone, project=cfg.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if cfg.num_gpus is not None:
        gpus = gpus[:cfg.num_gpus]
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    if cfg.cpu_replicas > 1:
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < cfg.cpu_replicas:
            raise ValueError(
                f"cpu_replicas={cfg.cpu_replicas} but only {len(cpus)} logical CPU devices exist; "
                "call common.distribute.split_cpu(n) before TensorFlow is initialised.")
        return tf.distribute.MirroredStrategy([c.name for c in cpus[:cfg.cpu_replicas]])
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def split_cpu(n: int) -> None:
    """Makes `n` logical CPU devices (must run before TensorFlow creates its devices)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def num_replicas() -> int:
    """Replicas in sync in the current context (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_id() -> tf.Tensor:
    """This replica's index in its sync group, an int32 scalar (0 outside any strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    rid = ctx.replica_id_in_sync_group
    return tf.cast(rid, tf.int32)


def all_reduce_sum(values):
    """Sums a tensor (or nest of tensors) over replicas; the identity on one replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def cross_replica_concat(x: tf.Tensor) -> tf.Tensor:
    """Concatenates `x` [B, ...] from every replica on axis 0: [num_replicas * B, ...].

    Replica r's rows land at [r*B, (r+1)*B), so row i of this replica is row `replica_id()*B + i`
    of the result, the label index the contrastive losses use. Gradients flow back to each
    replica's own rows (the all-reduce's gradient is an all-reduce of the incoming gradients,
    restricted here to this replica's slice).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    n = ctx.num_replicas_in_sync
    # Scatter into a zero tensor at this replica's slot, then all-reduce: one collective, any
    # backend (all_gather is not differentiable on every strategy).
    padded = tf.scatter_nd(
        indices=[[replica_id()]], updates=x[tf.newaxis], shape=tf.concat([[n], tf.shape(x)], 0))
    padded = ctx.all_reduce(tf.distribute.ReduceOp.SUM, padded)
    return tf.reshape(padded, tf.concat([[-1], tf.shape(x)[1:]], 0))
