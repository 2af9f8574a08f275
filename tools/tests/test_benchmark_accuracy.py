"""tools/benchmark_accuracy.py (issue #16): the aggregation and the 'no difference' rule against
hand-computed numbers, the plots from event files written here, refusals, and the whole command on
a tiny model (2 steps; one algorithm, one configuration, one seed), run twice: the second
invocation must reuse every finished run."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tools import benchmark_accuracy as bench

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_mean_std_spread_and_the_no_difference_rule_on_hand_computed_numbers():
    a = [0.80, 0.82, 0.84]    # mean 0.82, sample std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02
    b = [0.795, 0.80, 0.805]  # mean 0.80, sample std 0.005, spread 0.01
    c = [0.90, 0.91, 0.92]    # mean 0.91, spread 0.02
    mean, std = bench.mean_std(a)
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.02)
    assert bench.mean_std([0.5]) == (0.5, None)
    assert bench.spread(a) == pytest.approx(0.04)
    assert bench.format_mean_std(a) == "0.8200 ± 0.0200"
    assert bench.format_mean_std([0.841]) == "0.8410"
    # a - b = 0.02 is within a's spread (0.04, the larger of the two): no difference.
    ab = bench.compare(a, b)
    assert ab["difference"] == pytest.approx(0.02) and ab["spread"] == pytest.approx(0.04)
    assert ab["verdict"] == "no difference"
    assert bench.format_comparison(ab) == "no difference (+0.0200, spread 0.0400)"
    # c - b = 0.11 exceeds both spreads (0.02 and 0.01).
    assert bench.compare(c, b)["verdict"] == "higher"
    assert bench.compare(b, c)["verdict"] == "lower"
    assert bench.format_comparison(bench.compare(b, c)) == "lower (-0.1100, spread 0.0200)"


def _record(row, seed, linear, knn, corrupted, stage="final"):
    return {"stage": stage, "row": row, "seed": seed, "train_seconds": 100.0 + seed,
            "metrics": {"linear_top_1": linear, "knn_top_1": knn,
                        "corruption_accuracy": corrupted}}


def test_table_rows_and_comparisons():
    runs = ([_record("simclr", s, v, 0.7, 0.5) for s, v in enumerate([0.795, 0.80, 0.805])]
            + [_record("csimclr", s, v, 0.7 + s / 100, 0.6 + s / 100)
               for s, v in enumerate([0.80, 0.82, 0.84])]
            + [dict(_record("raw_pixels", 0, 0.841, 0.85, 0.4), train_seconds=None)])
    rows = bench.aggregate(runs)
    assert rows["csimclr"]["linear_top_1"] == [0.80, 0.82, 0.84]
    table = bench.markdown_tables(rows, bench.comparisons(rows))
    lines = table.splitlines()
    assert ("| SimCLR | 3 | 0.8000 ± 0.0050 | 0.7000 ± 0.0000 | 0.5000 ± 0.0000 | 101 ± 1 s |"
            in lines)
    assert ("| C-SimCLR | 3 | 0.8200 ± 0.0200 | 0.7100 ± 0.0100 | 0.6100 ± 0.0100 | 101 ± 1 s |"
            in lines)
    assert "| logistic regression on raw pixels | 1 | 0.8410 | 0.8500 | 0.4000 | — |" in lines
    # linear: +0.02 within spread 0.04; kNN: +0.01 within 0.02; corrupted: +0.11 beyond 0.02.
    assert ("| C-SimCLR vs SimCLR | no difference (+0.0200, spread 0.0400) | no difference "
            "(+0.0100, spread 0.0200) | higher (+0.1100, spread 0.0200) |") in lines
    assert not any(line.startswith("| logistic regression on raw pixels vs") for line in lines)


def test_tuning_picks_the_best_held_out_accuracy_and_the_first_of_ties():
    def tuned(lr, t, acc):
        return {"row": "simclr", "hparams": {"learning_rate": lr, "temperature": t},
                "model_dir": f"d{lr}{t}", "metrics": {"linear_top_1": acc}}
    records = [tuned(2.0, 0.1, 0.70), tuned(2.0, 0.2, 0.74), tuned(4.0, 0.1, 0.74),
               tuned(4.0, 0.2, 0.71)]
    best = bench.select_best(records)["simclr"]
    assert best["best"] == {"learning_rate": 2.0, "temperature": 0.2}
    assert [s["holdout_top_1"] for s in best["scores"]] == [0.70, 0.74, 0.74, 0.71]


def test_evaluation_numbers_are_read_as_written():
    grid = {"gaussian_noise": {"1": 0.9, "2": 0.7}, "contrast": {"1": 0.5, "2": 0.3}}
    m = bench.metrics_of({"results": {"linear": {"top_1": 0.8}, "knn": {"top_1": 0.7},
                                      "corruptions": {"accuracy": grid, "mean_accuracy": 0.6}}})
    assert m["linear_top_1"] == 0.8 and m["knn_top_1"] == 0.7
    assert m["corruption_accuracy"] == 0.6
    assert m["corruption_by_severity"] == pytest.approx({"1": 0.7, "2": 0.5})


def test_raw_pixels_are_the_first_channel_flattened():
    images = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    got = bench.RawPixels()(tf.constant(images)).numpy()
    np.testing.assert_array_equal(got, images[..., 0].reshape(2, 16))


def _write_run(path, label, values, evaluation):
    path.mkdir(parents=True)
    (path / "benchmark_run.json").write_text(json.dumps({"label": label}))
    (path / "evaluation").mkdir()
    (path / "evaluation" / "evaluation.json").write_text(json.dumps(evaluation))
    writer = tf.summary.create_file_writer(str(path / "train"))
    with writer.as_default():
        for step, row in values.items():
            for tag, value in row.items():
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_plot_reads_event_files_and_writes_the_pngs(tmp_path):
    values = {20: {"probe_acc": 0.3, "i_xzx_y": 9.0, "i_y_zx": 2.0, "h_e_zx_x": -5.0,
                   "h_b_zx_y": 4.0},
              40: {"probe_acc": 0.5, "i_xzx_y": 6.0, "i_y_zx": 3.5, "h_e_zx_x": -4.0,
                   "h_b_zx_y": 2.0}}
    grid = {"contrast": {str(s): 0.8 - 0.1 * s for s in range(1, 6)}}
    evaluation = {"results": {"linear": {"top_1": 0.8}, "corruptions": {
        "accuracy": grid, "mean_accuracy": 0.5}}}
    runs = []
    for seed in range(2):
        runs.append(tmp_path / f"run{seed}")
        _write_run(runs[-1], "C-SimCLR", values, evaluation)
    scalars = bench.read_scalars(str(runs[0] / "train"))
    assert [(s, v) for s, _, v in scalars["i_xzx_y"]] == [(20, 9.0), (40, 6.0)]
    assert [(s, v) for s, _, v in scalars["i_y_zx"]] == [(20, 2.0), (40, 3.5)]
    written = bench.plot_runs([str(r) for r in runs], str(tmp_path / "plots"))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["ceb_terms.png", "corruption_severity.png", "information_plane.png",
                     "probe_accuracy.png"]
    for path in written:
        data = pathlib.Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


def test_scored_checkpoints_pair_each_evaluation_with_its_steps_wall_time(tmp_path):
    run = tmp_path / "run"
    _write_run(run, "C-SimCLR", {20: {"loss": 3.0}, 40: {"loss": 2.0}},
               {"step": 40, "results": {"linear": {"top_1": 0.8}}})
    for step, top_1 in ((20, 0.6), (30, 0.7)):  # step 30 has no summary: no time, left out
        (run / f"evaluation-step{step}").mkdir()
        (run / f"evaluation-step{step}" / "evaluation.json").write_text(
            json.dumps({"step": step, "results": {"linear": {"top_1": top_1}}}))
    scalars = bench.read_scalars(str(run / "train"))
    walls = {step: wall for step, wall, _ in scalars["loss"]}
    got = bench._scored_checkpoints(str(run), scalars, json.loads(
        (run / "evaluation" / "evaluation.json").read_text()))
    assert sorted(got) == [20, 40]
    assert [got[k][1] for k in (20, 40)] == [0.6, 0.8]
    # No config.json: the clock starts at the first summary.
    assert got[20][0] == 0.0 and got[40][0] == pytest.approx(walls[40] - walls[20])


def _bench(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_accuracy.py"), *args],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def test_unequal_tuning_budgets_and_bad_commands_stop_with_exit_2(tmp_path):
    out = tmp_path / "out"
    r = _bench("plan", f"--output_dir={out}", "--simclr_temperature=0.1,0.2", "--csimclr_kappa_b=5")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "same number of configurations" in r.stderr, r.stderr
    r = _bench("plot", str(tmp_path), f"--output_dir={out}")
    assert r.returncode == 2 and "neither TensorBoard events" in r.stderr, r.stderr
    r = _bench("fly")
    assert r.returncode == 2 and "give a command" in r.stderr
    assert not out.exists()


TINY = ["--algorithms=csimclr", "--extra_rows=", "--seeds=0", "--train_steps=2", "--tune_steps=2",
        "--train_batch_size=16", "--learning_rates=1.0", "--csimclr_kappa_b=5",
        "--train_split=train[:256]", "--probe_split=train[:256]", "--test_split=test[:100]",
        "--tune_train_split=train[:256]",
        "--tune_fit_split=train[:128]", "--tune_holdout_split=train[256:384]",
        "--corruption_examples=20", "--width_multiplier=0.0625", "--checkpoint_steps=1",
        "--trainer_flags=--image_size=16 --proj_head_hidden_dim=16 --jit_compile=false "
        "--proj_out_dim=8 --eval_batch_size=64",
        "--eval_flags=--eval_batch_size=64 --corruptions=gaussian_noise,contrast"]


def test_the_whole_command_on_a_tiny_model_then_reuses_every_finished_run(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    first = _bench("run", f"--output_dir={out}", f"--runs_dir={runs}", *TINY)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    by_stage = {}
    for r in results["runs"]:
        by_stage.setdefault(r["stage"], []).append(r)
    assert [r["row"] for r in by_stage["tune"]] == ["csimclr"]
    assert [r["row"] for r in by_stage["final"]] == ["csimclr"]
    assert sorted(r["row"] for r in by_stage["baseline"]) == ["random_init", "raw_pixels"]
    final = by_stage["final"][0]
    assert final["hparams"] == {"learning_rate": 1.0, "kappa_b": 5.0}
    assert "csimclr/train.py" in final["train_command"]
    for flag in ("--learning_rate=1", "--kappa_b=5", "--train_steps=2", "--seed=0"):
        assert flag in final["train_command"].split(), flag
    assert final["train_seconds"] > 0 and final["eval_seconds"] > 0
    # The recorded numbers are those evaluate.py wrote.
    evaluation = json.loads((runs / "final" / "csimclr" / "seed0" / "evaluation" /
                             "evaluation.json").read_text())
    assert evaluation["step"] == 2
    # ckpt-1, the final run's earlier checkpoint, is scored for accuracy against training time.
    earlier = json.loads((runs / "final" / "csimclr" / "seed0" / "evaluation-step1" /
                          "evaluation.json").read_text())
    assert earlier["step"] == 1
    assert final["curve"] == {"1": earlier["results"]["linear"]["top_1"]}
    assert "--train_summary_steps=1" in final["train_command"].split()
    grid = evaluation["results"]["corruptions"]["accuracy"]
    assert final["metrics"]["linear_top_1"] == evaluation["results"]["linear"]["top_1"]
    assert final["metrics"]["knn_top_1"] == evaluation["results"]["knn"]["top_1"]
    for s in "12345":
        assert final["metrics"]["corruption_by_severity"][s] == pytest.approx(
            np.mean([grid[c][s] for c in ("gaussian_noise", "contrast")]))
    assert results["tuning"]["csimclr"]["best"] == {"learning_rate": 1.0, "kappa_b": 5.0}
    assert set(results["rows"]) == {"csimclr", "random_init", "raw_pixels"}
    table = (out / "table.md").read_text()
    assert "| C-SimCLR | 1 |" in table and "| logistic regression on raw pixels | 1 |" in table
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["ceb_terms.png", "corruption_severity.png",
                                      "information_plane.png", "probe_accuracy.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000, p

    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*")
              if p.name.startswith("ckpt-") or p.name == "evaluation.json"}
    second = _bench("run", f"--output_dir={out}", f"--runs_dir={runs}", *TINY)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert second.stdout.count(": reused (finished") == 4, second.stdout
    assert ": training (" not in second.stdout and ": evaluating (" not in second.stdout
    assert ": scoring ckpt-" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]
