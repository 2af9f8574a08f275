"""Metrics accumulation across replicas and steps, TensorBoard summaries and the progress line."""
from __future__ import annotations

import time

import tensorflow as tf

from common.training import distribute


class MetricAccumulator(tf.Module):
    """Running means of named scalar metrics over replicas and steps, kept in variables.

    Values are averaged over replicas with one all-reduce of the stacked vector per step, then
    summed into a variable; `result()` divides by the number of steps accumulated.
    """

    def __init__(self, names):
        super().__init__(name="metrics")
        self.names = tuple(sorted(names))
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self._sums = tf.Variable(tf.zeros([len(self.names)], tf.float64), trainable=False,
                                 aggregation=agg, name="sums")
        self._count = tf.Variable(0.0, dtype=tf.float64, trainable=False, aggregation=agg,
                                  name="count")

    def update(self, metrics: dict) -> None:
        """Adds one step of per-replica `metrics` (replica context)."""
        missing = set(self.names) - set(metrics)
        if missing:
            raise KeyError(f"metrics {sorted(missing)} were declared but not returned")
        vec = tf.stack([tf.cast(metrics[n], tf.float64) for n in self.names])
        vec = distribute.all_reduce_sum(vec) / distribute.num_replicas()
        self._sums.assign_add(vec)
        self._count.assign_add(1.0)

    def result(self) -> dict:
        """Host-side means since the last reset, as Python floats."""
        count = max(float(self._count.numpy()), 1.0)
        sums = self._sums.numpy()
        return {n: float(v) / count for n, v in zip(self.names, sums)}

    def reset(self) -> None:
        self._sums.assign(tf.zeros_like(self._sums))
        self._count.assign(0.0)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Prints `step a/b (p%) | x steps/s, y img/s | ETA | metric=value ...` and writes summaries."""

    def __init__(self, total_steps: int, batch_size: int, writer=None, start_step: int = 0,
                 keys=("loss", "probe_acc"), print_fn=print, clock=time.perf_counter):
        self.total = total_steps
        self.batch_size = batch_size
        self.writer = writer
        self.keys = keys
        self.print_fn = print_fn
        self._clock = clock
        self._t0 = clock()
        self._last_t = self._t0
        self._last_step = start_step

    def restart(self, step: int) -> None:
        """Starts the rate clock now at `step`: the next report's rate and ETA cover only the
        steps after it (the trainer excludes the first step's tracing this way)."""
        self._last_t, self._last_step = self._clock(), step

    def report(self, step: int, metrics: dict, extra: dict | None = None) -> dict:
        now = self._clock()
        scalars = dict(metrics)
        scalars.update(extra or {})
        if step > self._last_step:
            steps_per_s = (step - self._last_step) / max(now - self._last_t, 1e-9)
            scalars["steps_per_sec"] = steps_per_s
            scalars["images_per_sec"] = steps_per_s * self.batch_size
            eta = (self.total - step) / steps_per_s
            rate = (f"{steps_per_s:.2f} steps/s, {scalars['images_per_sec']:.0f} img/s | "
                    f"ETA {format_duration(eta)}")
        else:
            # No step since the clock (re)started, e.g. a run whose only step was the start-up
            # step: there is no rate to show, and a 0 would read as a stalled run.
            rate = "no rate yet (only the start-up step ran)"
        shown = " ".join(f"{k}={scalars[k]:.4g}" for k in self.keys if k in scalars)
        self.print_fn(f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%) | "
                      f"{rate} | {shown}", flush=True)
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for k, v in scalars.items():
                    tf.summary.scalar(k, v)
            self.writer.flush()
        self._last_t, self._last_step = now, step
        return scalars
