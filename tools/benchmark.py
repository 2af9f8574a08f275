"""Training throughput of the four trainers on this machine: images per second and step time.

  python tools/benchmark.py throughput --algorithm=cbyol --resnet_depth=18 --width_multiplier=1 \\
      --image_size=32 --train_batch_size=64 [--jit_compile] [--precision=bfloat16]
  python tools/benchmark.py throughput --algorithm=all --windows=5 --window_steps=5

For each algorithm (its default preset, `<algo>_small`, with the flags above applied) it measures,
after warm-up steps whose first call traces (and compiles) the step:
  pipeline  the input pipeline alone: batches of two augmented views per second, no training;
  step      the training step alone, fed one cached batch over and over (no input work);
  train     both together, as `train.py` runs them (`Pretrainer.run_steps`);
  profile   (`--profile`) the cached-batch step split into forward (the loss), backward (the loss
            and its gradient, minus forward) and the rest (all-reduce, optimizer, EMA, metrics);
each as the median and the min-max spread of `--windows` timed windows of `--window_steps` steps.
Nothing is checkpointed or summarised inside a timed window. With `--flops`, the step's
floating-point operations (convolutions and matmuls of forward and backward, from the traced
graph's static shapes) are divided by the step time and compared with the rates of a 4096x4096
matmul and of a 3x3 convolution measured here in the same precision.

Output: a markdown table on stdout and a JSON file (`--output`, default
runs/benchmark-<time>.json) holding every window, the configuration, the command line and the
machine (CPU model, cores, instruction-set flags, TensorFlow version).
"""
from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

ALGORITHMS = ("simclr", "csimclr", "byol", "cbyol")


def define_flags() -> None:
    """The command's flags, defined when it runs (not on import, so that other tools' flags of
    the same names can coexist in one process, e.g. a test session)."""
    flags.DEFINE_string("algorithm", "cbyol", "One of simclr, csimclr, byol, cbyol, or 'all'.")
    flags.DEFINE_integer("resnet_depth", None, "ResNet depth (default: the preset's, 18).")
    flags.DEFINE_float("width_multiplier", None, "ResNet width (default: the preset's, 0.25).")
    flags.DEFINE_integer("image_size", None, "Input size (default: the preset's, 32).")
    flags.DEFINE_integer("train_batch_size", None, "Global batch (default: the preset's, 128).")
    flags.DEFINE_string("dataset", None, "Dataset (default: the preset's, fashion_mnist).")
    flags.DEFINE_bool("jit_compile", None, "Compile the step with XLA (default: the preset's).")
    flags.DEFINE_enum("precision", None, ["float32", "bfloat16", "float16"],
                      "Compute dtype (default: the preset's, float32).")
    flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (the first call traces).")
    flags.DEFINE_integer("windows", 5, "Timed windows per measurement.")
    flags.DEFINE_integer("window_steps", 5, "Steps (or batches) per timed window.")
    flags.DEFINE_list("parts", ["pipeline", "step", "train"], "Measurements: pipeline, step, train.")
    flags.DEFINE_bool("profile", False, "Also time forward and forward+backward on the cached batch.")
    flags.DEFINE_bool("flops", True, "Count the step's FLOPs and measure matmul/conv rates.")
    flags.DEFINE_string("output", None, "JSON file (default runs/benchmark-<time>.json).")


FLAGS = flags.FLAGS
COMMANDS = ("throughput",)


def summarise(seconds: list[float], steps: int, batch: int) -> dict:
    """Per-window seconds of `steps` steps of `batch` images -> images per second and milliseconds
    per step of the median window (the lower middle one for an even count, so both figures
    describe the same window), and their min and max over the windows."""
    middle = statistics.median_low(seconds)
    rates = sorted(batch * steps / s for s in seconds)
    ms = sorted(1000.0 * s / steps for s in seconds)
    return {"windows": len(seconds), "window_steps": steps, "window_seconds": list(seconds),
            "images_per_sec": batch * steps / middle, "images_per_sec_min": rates[0],
            "images_per_sec_max": rates[-1], "step_ms": 1000.0 * middle / steps,
            "step_ms_min": ms[0], "step_ms_max": ms[-1]}


def time_windows(run, windows: int, steps: int) -> list[float]:
    """Seconds of each of `windows` calls run(steps); run must return only when the work is done."""
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        run(steps)
        out.append(time.perf_counter() - t0)
    return out


def conv_flops(out_shape, filter_shape) -> int:
    """2 x multiply-adds of a convolution whose (forward) output is `out_shape` [N, Ho, Wo, Co] and
    kernel `filter_shape` [kh, kw, Ci, Co]; its input and kernel gradients cost the same each."""
    n, ho, wo, co = out_shape
    kh, kw, ci, _ = filter_shape
    return 2 * n * ho * wo * co * kh * kw * ci


def graph_flops(graph) -> int:
    """FLOPs of the convolutions and matmuls of a traced graph (and the functions it calls), from
    static shapes: Conv2D and its two gradients 2 N Ho Wo Co kh kw Ci each, MatMul 2 M N K,
    BatchMatMul 2 B M N K. Everything else (elementwise, BatchNorm, reductions) is left out."""
    total = 0
    seen = set()

    def walk(g):
        nonlocal total
        for op in g.get_operations():
            t = op.type
            if t == "Conv2D":
                total += conv_flops(op.outputs[0].shape.as_list(), op.inputs[1].shape.as_list())
            elif t == "Conv2DBackpropInput":  # (input_sizes, filter, out_backprop)
                total += conv_flops(op.inputs[2].shape.as_list(), op.inputs[1].shape.as_list())
            elif t == "Conv2DBackpropFilter":  # (input, filter_sizes, out_backprop) -> filter
                total += conv_flops(op.inputs[2].shape.as_list(), op.outputs[0].shape.as_list())
            elif t in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
                a = op.inputs[0].shape.as_list()
                out = op.outputs[0].shape.as_list()
                ta = op.get_attr("transpose_a") if t == "MatMul" else op.get_attr("adj_x")
                k = a[-2] if ta else a[-1]
                batch = 1
                for d in out[:-2]:
                    batch *= d
                total += 2 * batch * out[-2] * out[-1] * k
            for attr in ("f", "body", "cond", "then_branch", "else_branch", "branches"):
                try:
                    value = op.get_attr(attr)
                except ValueError:
                    continue
                for fn in value if isinstance(value, list) else [value]:
                    name = getattr(fn, "name", None)
                    if name and name not in seen and g._get_function(name) is not None:
                        seen.add(name)
                        walk(g._get_function(name).graph)
    walk(graph)
    return total


def peak_rates(precision: str, seconds: float = 2.0) -> dict:
    """GFLOP/s of a 4096x4096 matmul and of a 3x3 convolution (batch 64, 16x16, 128->128 channels,
    ResNet-18's second group at 32 px) in `precision`, each the best of a few timed calls."""
    import tensorflow as tf
    dtype = tf.as_dtype(precision)

    def best(fn, flops):
        fn()  # trace
        rates = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            t0 = time.perf_counter()
            fn()
            rates.append(flops / (time.perf_counter() - t0) / 1e9)
        return max(rates)

    a = tf.random.normal([4096, 4096], dtype=tf.float32)
    a = tf.cast(a, dtype)
    mm = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, a)[0, 0], tf.float32)))
    x = tf.cast(tf.random.normal([64, 16, 16, 128]), dtype)
    w = tf.cast(tf.random.normal([3, 3, 128, 128]), dtype)
    cv = tf.function(lambda: tf.reduce_sum(tf.cast(tf.nn.conv2d(x, w, 1, "SAME")[0, 0, 0, 0],
                                                   tf.float32)))
    return {"matmul_4096_gflops": best(lambda: mm().numpy(), 2 * 4096 ** 3),
            "conv3x3_gflops": best(lambda: cv().numpy(), conv_flops([64, 16, 16, 128],
                                                                    [3, 3, 128, 128]))}


def machine() -> dict:
    """CPU model, cores, relevant instruction-set flags, OS, Python and TensorFlow versions."""
    import tensorflow as tf
    model, cpu_flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    cpu_flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
              "avx512_fp16")
    return {"cpu": model, "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "cpu_flags": [f for f in wanted if f in cpu_flags], "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def experiment(algorithm: str):
    """(TrainerSpec, the default preset with the command line's overrides applied)."""
    from common.cli import settings
    spec = importlib.import_module(f"{algorithm}.train").TRAINER
    values = {name: getattr(FLAGS, name) for name in (
        "resnet_depth", "width_multiplier", "image_size", "train_batch_size", "dataset",
        "jit_compile", "precision") if getattr(FLAGS, name) is not None}
    # Steps enough for any warm-up and windows; nothing is saved, so the count only sizes the
    # schedules (a long run keeps the learning rate in its warm-up, as early training is).
    values["train_steps"] = 100000
    cfg = settings.with_overrides(spec.presets[spec.default_preset], **values)
    errors, _ = settings.problems(cfg)
    if errors:
        raise ValueError("invalid flags: " + "; ".join(errors))
    return spec, cfg


def measure(algorithm: str, print_fn=print) -> dict:
    """Every requested measurement of one algorithm; see the module docstring."""
    import tensorflow as tf
    from common.cli import job
    from common.data import datasets as data_lib
    from common.training import distribute
    from common.training import precision as precision_lib
    from common.training import trainer as trainer_lib

    spec, cfg = experiment(algorithm)
    tf.random.set_seed(cfg.run.seed)
    model_dir = tempfile.mkdtemp(prefix=f"benchmark-{algorithm}-")
    parts = job.build_parts(cfg, model_dir)
    strategy = distribute.get_strategy(parts.distribute)
    train = parts.train
    batch = train.train_batch_size

    def real(ctx, start_step):
        return data_lib.pretrain_dataset(parts.data, parts.augment, batch, ctx,
                                         start_step=start_step)

    def cached(ctx, start_step):
        del start_step
        return real(ctx, 0).take(1).cache().repeat()

    result = {"algorithm": algorithm, "config": {
        "preset": spec.default_preset, "resnet_depth": cfg.model.resnet_depth,
        "width_multiplier": cfg.model.width_multiplier, "image_size": cfg.data.image_size,
        "train_batch_size": batch, "dataset": cfg.data.dataset, "jit_compile": train.jit_compile,
        "precision": train.precision, "replicas": strategy.num_replicas_in_sync}}
    W, S = FLAGS.windows, FLAGS.window_steps

    if "pipeline" in FLAGS.parts:
        dist = strategy.distribute_datasets_from_function(lambda ctx: real(ctx, 0))
        it = iter(dist)

        @tf.function
        def pull(n):
            acc = tf.zeros([])
            for _ in tf.range(n):
                b = next(it)
                acc += tf.add_n([tf.reduce_sum(t[:1, :1, :1]) for t in
                                 strategy.experimental_local_results(b["view1"])])
            return acc

        pull(tf.constant(max(FLAGS.warmup_steps, 1))).numpy()
        result["pipeline"] = summarise(
            time_windows(lambda n: pull(tf.constant(n)).numpy(), W, S), S, batch)
        print_fn(f"{algorithm}: pipeline {result['pipeline']['images_per_sec']:.1f} img/s",
                 flush=True)

    pretrainer = trainer_lib.Pretrainer(lambda n: spec.build_method(cfg, parts, n), train,
                                        parts.data, parts.augment, strategy, dataset_fn=cached,
                                        print_fn=print_fn)

    def run(n):
        pretrainer.run_steps(n)
        return pretrainer.step  # reads a variable: waits for the steps to finish

    if "step" in FLAGS.parts or FLAGS.profile or FLAGS.flops:
        t0 = time.perf_counter()
        run(1)
        result["first_call_seconds"] = time.perf_counter() - t0
        run(max(FLAGS.warmup_steps - 1, 0))
        if "step" in FLAGS.parts:
            result["step"] = summarise(time_windows(run, W, S), S, batch)
            print_fn(f"{algorithm}: step on a cached batch {result['step']['images_per_sec']:.1f}"
                     f" img/s, {result['step']['step_ms']:.0f} ms", flush=True)

    method = pretrainer.method
    one = next(iter(strategy.distribute_datasets_from_function(lambda ctx: cached(ctx, 0))))

    def replica_loss(b, grad: bool):
        step = tf.constant(0, tf.int64)
        seed = trainer_lib.step_seed(cfg.run.seed, step)
        with tf.GradientTape() as tape:
            with precision_lib.policy(train.precision):
                loss, _ = method.loss(b, step, seed)
        if not grad:
            return loss
        grads = tape.gradient(loss, pretrainer.variables)
        return loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0

    def make(grad):
        inner = tf.function(lambda b: replica_loss(b, grad), jit_compile=train.jit_compile)

        @tf.function
        def loop(n):
            acc = tf.zeros([])
            for _ in tf.range(n):
                out = strategy.run(inner, args=(one,))
                acc += tf.add_n(strategy.experimental_local_results(out))
            return acc
        return inner, lambda n: loop(tf.constant(n)).numpy()

    if FLAGS.profile:
        for name, grad in (("forward", False), ("forward_backward", True)):
            _, fn = make(grad)
            fn(max(FLAGS.warmup_steps, 1))
            result[name] = summarise(time_windows(fn, W, S), S, batch)
            print_fn(f"{algorithm}: {name} {result[name]['step_ms']:.0f} ms", flush=True)

    if FLAGS.flops:
        traced = tf.function(lambda b: strategy.run(lambda x: replica_loss(x, True), args=(b,)))
        result["step_gflop"] = graph_flops(traced.get_concrete_function(one).graph) / 1e9

    if "train" in FLAGS.parts:
        pretrainer.use_dataset(real)
        t0 = time.perf_counter()
        run(max(FLAGS.warmup_steps, 1))
        result["train_warmup_seconds"] = time.perf_counter() - t0
        result["train"] = summarise(time_windows(run, W, S), S, batch)
        print_fn(f"{algorithm}: train {result['train']['images_per_sec']:.1f} img/s, "
                 f"{result['train']['step_ms']:.0f} ms", flush=True)
    return result


def table(results: list[dict], rates: dict | None) -> str:
    """The markdown table: one row per algorithm, median [min-max] of each measurement."""
    def cell(r, key):
        m = r.get(key)
        if not m:
            return "-"
        return (f"{m['images_per_sec']:.1f} [{m['images_per_sec_min']:.1f}-"
                f"{m['images_per_sec_max']:.1f}]")
    head = ["algorithm", "precision", "XLA", "train img/s", "train ms/step", "step img/s (cached)",
            "pipeline img/s", "pipeline / train"]
    profiled = any("forward" in r for r in results)
    if profiled:
        head += ["forward ms", "backward ms", "rest ms"]
    if rates:
        head += ["GFLOP/step", "GFLOP/s", "% matmul", "% conv"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        c = r["config"]
        row = [r["algorithm"], c["precision"], "yes" if c["jit_compile"] else "no",
               cell(r, "train"), f"{r['train']['step_ms']:.0f}" if "train" in r else "-",
               cell(r, "step"), cell(r, "pipeline"),
               (f"{r['pipeline']['images_per_sec'] / r['train']['images_per_sec']:.1f}x"
                if "pipeline" in r and "train" in r else "-")]
        if profiled:
            if "forward" in r:
                fwd = r["forward"]["step_ms"]
                fb = r["forward_backward"]["step_ms"]
                rest = r["step"]["step_ms"] - fb if "step" in r else float("nan")
                row += [f"{fwd:.0f}", f"{fb - fwd:.0f}", f"{rest:.0f}"]
            else:
                row += ["-", "-", "-"]
        if rates:
            base = r.get("step") or r.get("train")
            if base and "step_gflop" in r:
                rate = r["step_gflop"] / (base["step_ms"] / 1000.0)
                r["achieved_gflops"] = rate
                row += [f"{r['step_gflop']:.1f}", f"{rate:.0f}",
                        f"{100 * rate / rates['matmul_4096_gflops']:.0f}%",
                        f"{100 * rate / rates['conv3x3_gflops']:.0f}%"]
            else:
                row += ["-"] * 4
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv):
    from common.cli import job
    if len(argv) != 2 or argv[1] not in COMMANDS:
        job.die(f"usage: python tools/benchmark.py throughput [flags]; got {argv[1:]!r} (the only "
                f"command is 'throughput'; --helpfull lists the flags).")
    algos = ALGORITHMS if FLAGS.algorithm == "all" else (FLAGS.algorithm,)
    if FLAGS.algorithm != "all" and FLAGS.algorithm not in ALGORITHMS:
        job.die(f"--algorithm={FLAGS.algorithm}: pass one of {', '.join(ALGORITHMS)} or all.")
    unknown = set(FLAGS.parts) - {"pipeline", "step", "train"}
    if unknown:
        job.die(f"--parts: unknown {sorted(unknown)}; pass some of pipeline, step, train.")
    if FLAGS.windows < 1 or FLAGS.window_steps < 1 or FLAGS.warmup_steps < 0:
        job.die("--windows and --window_steps must be >= 1 and --warmup_steps >= 0.")
    for a in algos:
        try:
            experiment(a)
        except (ValueError, KeyError) as e:
            job.die(f"{a}: {e}")
    output = FLAGS.output or os.path.join("runs", f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}.json")
    results = [measure(a) for a in algos]
    precision = results[0]["config"]["precision"]
    rates = peak_rates(precision) if FLAGS.flops else None
    text = table(results, rates)
    print(text, flush=True)
    from common.training import checkpoints
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    checkpoints.write_json(output, {
        "command_line": [os.path.basename(sys.executable)] + sys.argv, "machine": machine(),
        "peak_rates": rates, "results": results, "table": text,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(f"wrote {output}", flush=True)
    # Several endless input pipelines are still open; TensorFlow's shutdown can wait on their
    # threads for ever (seen with --algorithm=all), and everything is written: leave now.
    sys.stderr.flush()
    os._exit(0)


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
