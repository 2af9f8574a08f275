"""tools/benchmark.py: FLOP counting, window statistics, and a two-step run of the command."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tools import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_graph_flops_counts_convolutions_matmuls_and_their_gradients_by_hand():
    x = tf.random.normal([2, 8, 8, 3])
    w = tf.Variable(tf.random.normal([3, 3, 3, 4]))
    a = tf.random.normal([5, 6])
    m = tf.Variable(tf.random.normal([6, 7]))

    @tf.function
    def f(x, a):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")) + tf.reduce_sum(tf.matmul(a, m))
        return tape.gradient(y, [x, w, m])

    graph = f.get_concrete_function(x, a).graph
    conv = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)  # per output: 27 multiply-adds
    mm = 2 * 5 * 7 * 6
    # forward conv + input and filter gradients; forward matmul + the weight's gradient (a is not
    # differentiated: no gradient is asked for it)
    assert benchmark.graph_flops(graph) == 3 * conv + 2 * mm


def test_summarise_gives_the_median_and_spread_of_the_windows():
    seconds = [2.0, 1.0, 4.0, 1.6]
    s = benchmark.summarise(seconds, steps=4, batch=8)
    # The median window of four is the lower middle one: sorted 1.0, 1.6, 2.0, 4.0 -> 1.6 s.
    assert s["images_per_sec"] == pytest.approx(32 / 1.6)
    assert s["step_ms"] == pytest.approx(1.6 / 4 * 1000)
    assert (s["images_per_sec_min"], s["images_per_sec_max"]) == (8.0, 32.0)
    assert (s["step_ms_min"], s["step_ms_max"]) == (250.0, 1000.0)


def _run(*flags, tmp_path):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has: the trainers quieten TF
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), *flags],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_two_step_run_writes_the_table_and_json_and_start_up_is_quiet(tmp_path):
    out = tmp_path / "b.json"
    r = _run("throughput", "--algorithm=csimclr", "--width_multiplier=0.0625", "--image_size=16",
             "--train_batch_size=8", "--windows=2", "--window_steps=1", "--warmup_steps=1",
             "--flops=false", "--jit_compile=false", f"--output={out}", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "cuInit" not in r.stderr and "CUDA error" not in r.stderr, r.stderr[-2000:]
    assert "| csimclr | float32 | no |" in r.stdout
    record = json.loads(out.read_text())
    assert record["machine"]["tensorflow"] == tf.__version__
    assert record["machine"]["logical_cores"] == os.cpu_count()
    res = record["results"][0]
    assert res["config"]["train_batch_size"] == 8 and res["config"]["image_size"] == 16
    for part in ("pipeline", "step", "train"):
        assert res[part]["windows"] == 2 and res[part]["images_per_sec"] > 0
        # rate and step time describe the same windows: img/s = batch / (ms / 1000)
        assert res[part]["images_per_sec"] == pytest.approx(8 / (res[part]["step_ms"] / 1000))


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    r = _run("throughput", "--algorithm=moco", f"--output={tmp_path / 'b.json'}",
             tmp_path=tmp_path)
    assert r.returncode == 2
    assert "--algorithm=moco" in r.stderr and "simclr, csimclr, byol, cbyol or all" in r.stderr
    assert not (tmp_path / "b.json").exists()
