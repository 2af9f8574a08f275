"""Small-scale results (issue #16): SimCLR, C-SimCLR, BYOL and C-BYOL on Fashion-MNIST, tuned on a
held-out part of train, three seeds each, evaluated on test; a table and the plots.

  python tools/benchmark_accuracy.py run --output_dir=benchmarks/accuracy   # everything, resumable
  python tools/benchmark_accuracy.py plan                        # the runs and the estimate
  python tools/benchmark_accuracy.py report --output_dir=benchmarks/accuracy  # table + plots again
  python tools/benchmark_accuracy.py plot runs/x runs/y --output_dir=plots    # PNGs of any runs
  python tools/benchmark_accuracy.py baseline --kind=random_init --like=runs/x --seed=0 \
      --baseline_dir=runs/random-0                                         # one non-trained row

`run` works through a plan, one process at a time (the machine has 2 cores):
  1. tuning: every algorithm pretrains each configuration of its grid (learning rate x one second
     knob, the same number of configurations and steps for every algorithm) on --tune_train_split,
     and is scored by logistic regression fitted on features of --tune_fit_split (part of the
     pretraining split) and tested on --tune_holdout_split (never pretrained on, not the test set);
  2. the best configuration of each algorithm pretrains with every seed on --train_split; so do the
     extra rows (C-BYOL with b(z|y) from the other view; C-SimCLR and C-BYOL with beta = 0, same
     heads), with their algorithm's tuned configuration;
  3. tools/evaluate.py scores every final run on --test_split: linear (logistic regression, L2
     searched on a tenth of --probe_split), kNN, mean accuracy under the 15 corruptions x 5
     severities on the first --corruption_examples test images; the same suite scores the encoder
     randomly initialised (one per seed) and logistic regression on raw pixels (`baseline`,
     in-process);
     the final runs' earlier checkpoints (every --checkpoint_steps) are scored too, linear only,
     for the plot of accuracy against training time;
  4. <output_dir>/results.json (every run: row, seed, configuration, metrics, wall times, commands),
     <output_dir>/table.md (mean +- sample std over seeds; differences within the seeds' spread
     reported as no difference) and the PNGs.
Every training and evaluation is a subprocess of the ordinary commands (`<algo>/train.py`,
`tools/evaluate.py`), printed before it runs and recorded, so any row can be re-run by hand. A
finished run (its evaluation.json, at the run's final step) is reused; an interrupted one resumes
from its checkpoint, because the trainers resume.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("output_dir", "benchmarks/accuracy", "Where results.json, table.md and the "
                    "PNGs go (committed beside BENCHMARKS.md).")
flags.DEFINE_string("runs_dir", "runs/benchmark-accuracy", "Where the runs (checkpoints, "
                    "TensorBoard events, evaluation.json, logs) go.")
flags.DEFINE_list("algorithms", ["simclr", "csimclr", "byol", "cbyol"], "Algorithms to compare.")
flags.DEFINE_list("extra_rows", ["cbyol_other_view", "csimclr_beta0", "cbyol_beta0"],
                  "Extra rows trained with their algorithm's tuned configuration.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the final runs (and of the random encoders).")
flags.DEFINE_integer("train_steps", 90, "Pretraining steps of every final run.")
flags.DEFINE_integer("checkpoint_steps", 60, "Checkpoint interval of every run. The final runs' "
                     "checkpoints before the last are scored too (linear, --probe_split on "
                     "--test_split): the points of accuracy against training time.")
flags.DEFINE_integer("tune_steps", 30, "Pretraining steps of every tuning run.")
flags.DEFINE_integer("train_batch_size", 128, "Pretraining batch of every run.")
flags.DEFINE_list("learning_rates", ["2.0", "4.0"], "Learning rates tried by every algorithm.")
flags.DEFINE_list("simclr_temperature", ["0.1", "0.2"], "SimCLR's second knob: temperatures.")
flags.DEFINE_list("csimclr_kappa_b", ["10", "5"], "C-SimCLR's second knob: kappa_b (= 1 / the "
                  "temperature of its contrast).")
flags.DEFINE_list("byol_ema_alpha", ["0.98", "0.99"], "BYOL's second knob: the EMA rate.")
flags.DEFINE_list("cbyol_kappa_b", ["5", "10"], "C-BYOL's second knob: kappa_b.")
flags.DEFINE_string("train_split", "train", "Pretraining split of the final runs.")
flags.DEFINE_string("probe_split", "train[:10000]", "Labelled split the final runs' linear probe "
                    "and kNN are fitted on (its first tenth picks the L2 strength).")
flags.DEFINE_float("width_multiplier", 0.125, "ResNet-18 width of every run (the demo uses 0.25; "
                   "0.125 halves the step time, so the budget fits about two hours on a 2-core "
                   "AVX2 CPU).")
flags.DEFINE_string("test_split", "test", "Split every final number is reported on.")
flags.DEFINE_string("tune_train_split", "train[:50000]", "Pretraining split of the tuning runs.")
flags.DEFINE_string("tune_fit_split", "train[:5000]", "Features the tuning's logistic "
                    "regression is fitted on (part of --tune_train_split).")
flags.DEFINE_string("tune_holdout_split", "train[55000:]", "Held-out split the tuning scores on.")
flags.DEFINE_integer("corruption_examples", 100, "Test images corrupted (15 corruptions x 5 "
                     "severities each).")
flags.DEFINE_string("trainer_flags", "", "Extra flags for every <algo>/train.py (e.g. a tiny model "
                    "for a smoke test), space-separated.")
flags.DEFINE_string("eval_flags", "", "Extra flags for every tools/evaluate.py, space-separated.")
flags.DEFINE_enum("kind", None, ["random_init", "raw_pixels"], "baseline: which row.")
flags.DEFINE_string("like", None, "baseline: a run whose config.json gives the encoder and data.")
flags.DEFINE_integer("seed", 0, "baseline: seed of the random initialisation.")
flags.DEFINE_string("baseline_dir", None, "baseline: where its evaluation.json goes.")
FLAGS = flags.FLAGS

LABELS = {"simclr": "SimCLR", "csimclr": "C-SimCLR", "byol": "BYOL", "cbyol": "C-BYOL",
          "cbyol_other_view": "C-BYOL, b(z|y) from the other view",
          "csimclr_beta0": "C-SimCLR heads, beta = 0", "cbyol_beta0": "C-BYOL heads, beta = 0",
          "random_init": "the same encoder, randomly initialised",
          "raw_pixels": "logistic regression on raw pixels"}
# The second tuned knob of each algorithm (the learning rate is the first). C-SimCLR's contrast is
# NT-Xent at temperature 1 / kappa_b, so its kappa_b grid is SimCLR's temperature grid; C-BYOL
# tunes the same concentration (docs/DECISIONS.md 27).
KNOBS = {"simclr": "temperature", "csimclr": "kappa_b", "byol": "ema_alpha", "cbyol": "kappa_b"}
EXTRA_ROWS = {"cbyol_other_view": ("cbyol", ("--backward_view=other",)),
              "csimclr_beta0": ("csimclr", ("--ceb_beta=0",)),
              "cbyol_beta0": ("cbyol", ("--ceb_beta=0",))}
# (row, baseline row): the comparisons the table reports.
COMPARISONS = (("csimclr", "simclr"), ("cbyol", "byol"), ("csimclr", "csimclr_beta0"),
               ("cbyol", "cbyol_beta0"), ("cbyol_other_view", "cbyol"),
               ("simclr", "random_init"), ("csimclr", "random_init"), ("byol", "random_init"),
               ("cbyol", "random_init"))
METRICS = (("linear_top_1", "linear top-1"), ("knn_top_1", "kNN top-1"),
           ("corruption_accuracy", "mean accuracy under corruptions"))

# Cost model of the estimate (seconds) on a 2-core AVX2 CPU (AMD EPYC, no AVX-512), the default
# width 0.125 at batch 128: ~90 images/s of pretraining averaged over the four algorithms (C-BYOL
# 79, measured with tools/benchmark.py). Start-up (TensorFlow import, tracing, pipeline), feature
# extraction, the logistic-regression fit and the corruption grid are rough figures.
TRAIN_IMAGES_PER_S = 90.0
START_UP_S = 25.0
FEATURE_IMAGES_PER_S = 600.0
LINEAR_FIT_S_PER_1K = 0.4
CORRUPTED_IMAGES_PER_S = 300.0
SEVERITIES = 5
NUM_CORRUPTIONS = 15


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _say(message: str) -> None:
    print(f"[benchmark] {message}", flush=True)


def write_json(path: str, obj) -> None:
    """Writes `obj` as JSON atomically (a temporary file in the same folder, then a rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Aggregation: pure functions of the per-seed numbers.

def mean_std(values) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1 in the denominator; None for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to aggregate")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def spread(values) -> float:
    """The seeds' spread of one row: max - min over its seeds (0 for one value)."""
    values = [float(v) for v in values]
    return max(values) - min(values)


def compare(values_a, values_b) -> dict:
    """Row a against row b on one metric.

    difference = mean(a) - mean(b); spread = the larger of the two rows' spreads (max - min over
    seeds). A difference not larger than the spread is reported as no difference; otherwise a is
    'higher' or 'lower' than b.
    """
    diff = mean_std(values_a)[0] - mean_std(values_b)[0]
    s = max(spread(values_a), spread(values_b))
    verdict = "no difference" if abs(diff) <= s else ("higher" if diff > 0 else "lower")
    return {"difference": diff, "spread": s, "verdict": verdict}


def format_mean_std(values, digits: int = 4) -> str:
    """'m ± s' (sample std) for several values, 'm' for one."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_comparison(c: dict, digits: int = 4) -> str:
    shown = f"{c['difference']:+.{digits}f}, spread {c['spread']:.{digits}f}"
    if c["verdict"] == "no difference":
        return f"no difference ({shown})"
    return f"{c['verdict']} ({shown})"


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def aggregate(runs: list[dict]) -> dict:
    """{row: {'label', 'seeds', metric: [values...], 'train_seconds': [...]}} over finished runs."""
    rows: dict = {}
    for r in runs:
        if r.get("metrics") is None:
            continue
        row = rows.setdefault(r["row"], {"label": LABELS.get(r["row"], r["row"]), "seeds": [],
                                         "train_seconds": []})
        row["seeds"].append(r["seed"])
        if r.get("train_seconds") is not None:
            row["train_seconds"].append(r["train_seconds"])
        for metric, _ in METRICS:
            if r["metrics"].get(metric) is not None:
                row.setdefault(metric, []).append(r["metrics"][metric])
    return rows


def comparisons(rows: dict) -> list[dict]:
    out = []
    for a, b in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        entry = {"row": a, "baseline": b}
        for metric, _ in METRICS:
            va, vb = rows[a].get(metric), rows[b].get(metric)
            if va and vb and len(va) > 1 and len(vb) > 1:
                entry[metric] = compare(va, vb)
        out.append(entry)
    return out


def markdown_tables(rows: dict, comps: list[dict]) -> str:
    """The results table (mean ± sample std over seeds) and the comparisons table."""
    order = [r for r in ("simclr", "csimclr", "byol", "cbyol", "cbyol_other_view",
                         "csimclr_beta0", "cbyol_beta0", "random_init", "raw_pixels") if r in rows]
    order += [r for r in rows if r not in order]
    lines = ["| row | seeds | " + " | ".join(name for _, name in METRICS)
             + " | pretraining wall time |",
             "| --- | --- |" + " --- |" * len(METRICS) + " --- |"]
    for key in order:
        row = rows[key]
        cells = [format_mean_std(row[m]) if row.get(m) else "—" for m, _ in METRICS]
        wall = (format_mean_std(row["train_seconds"], 0) + " s") if row["train_seconds"] else "—"
        lines.append(f"| {row['label']} | {len(row['seeds'])} | " + " | ".join(cells)
                     + f" | {wall} |")
    if comps:
        lines += ["", "| comparison | " + " | ".join(name for _, name in METRICS) + " |",
                  "| --- |" + " --- |" * len(METRICS)]
        for c in comps:
            cells = [format_comparison(c[m]) if m in c else "—" for m, _ in METRICS]
            lines.append(f"| {LABELS.get(c['row'], c['row'])} vs "
                         f"{LABELS.get(c['baseline'], c['baseline'])} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def metrics_of(evaluation: dict) -> dict:
    """The numbers the table reads from an evaluation.json of tools/evaluate.py."""
    r = evaluation.get("results", {})
    out = {"linear_top_1": r.get("linear", {}).get("top_1"),
           "knn_top_1": r.get("knn", {}).get("top_1")}
    c = r.get("corruptions")
    if c:
        out["corruption_accuracy"] = c["mean_accuracy"]
        out["corruption_by_severity"] = {
            s: sum(v[s] for v in c["accuracy"].values()) / len(c["accuracy"])
            for s in sorted(next(iter(c["accuracy"].values())))}
    return out


# ---------------------------------------------------------------------------------------------
# The plan.

@dataclasses.dataclass
class Run:
    """One pretraining run and its evaluation, or one baseline evaluation."""
    stage: str  # 'tune', 'final' or 'baseline'
    row: str
    seed: int
    model_dir: str
    hparams: dict  # the tuned values (flag name -> value)
    train_argv: list | None  # None for baselines
    eval_argv: list
    steps: int
    estimate_train: float
    estimate_eval: float

    @property
    def evaluation_path(self) -> str:
        return os.path.join(self.model_dir, "evaluation", "evaluation.json")

    @property
    def name(self) -> str:
        return os.path.relpath(self.model_dir, FLAGS.runs_dir)


def _python() -> str:
    return sys.executable


def _shown(argv: list) -> str:
    """argv as a shell line, the interpreter written relative to the repository when inside it."""
    return shlex.join([_from_root(argv[0])] + list(argv[1:]))


def _fmt_value(v: float) -> str:
    return f"{float(v):g}"


def _grid(algo: str) -> list[dict]:
    knob = KNOBS[algo]
    values = getattr(FLAGS, f"{algo}_{knob}")
    return [{"learning_rate": float(lr), knob: float(v)}
            for lr, v in itertools.product(FLAGS.learning_rates, values)]


def _hp_dirname(hp: dict) -> str:
    return "_".join(f"{k}{_fmt_value(v)}" for k, v in hp.items())


def _num_examples(split: str, total: int) -> int:
    """Examples of a Fashion-MNIST split expression like 'train[:50000]' (for the estimate only)."""
    if "[" not in split:
        return total
    lo, _, hi = split[split.index("[") + 1:split.rindex("]")].partition(":")
    conv = (lambda s, d: d if not s else (int(s) if int(s) >= 0 else total + int(s)))
    try:
        return max(0, min(conv(hi, total), total) - conv(lo, 0))
    except ValueError:  # a percent slice or another form: estimate with the whole split
        return total


def _sizes(split: str) -> int:
    return _num_examples(split, 10000 if split.startswith("test") else 60000)


def _slice_start(split: str, total: int) -> int:
    if "[" not in split:
        return 0
    lo = split[split.index("[") + 1:split.rindex("]")].partition(":")[0]
    if lo and not lo.lstrip("-").isdigit():
        raise ValueError(f"{split!r}: give --test_split as an absolute slice (test[:5000]) or a "
                         "whole split")
    return 0 if not lo else (int(lo) if int(lo) >= 0 else total + int(lo))


def _train_argv(algo: str, hp: dict, seed: int, steps: int, split: str, model_dir: str,
                extra: tuple = (), final: bool = False) -> list:
    summary = max(1, min(20, steps))
    if final:  # a summary at every checkpoint: its wall time places the checkpoint's score
        summary = math.gcd(summary, _checkpoint_every(steps))
    return ([_python(), f"{algo}/train.py",
             f"--model_dir={model_dir}", "--mode=train", f"--train_steps={steps}",
             f"--train_batch_size={FLAGS.train_batch_size}", f"--train_split={split}",
             f"--seed={seed}", f"--train_summary_steps={summary}",
             f"--width_multiplier={_fmt_value(FLAGS.width_multiplier)}",
             f"--checkpoint_steps={_checkpoint_every(steps)}"]
            + [f"--{k}={_fmt_value(v)}" for k, v in hp.items()] + list(extra)
            + shlex.split(FLAGS.trainer_flags))


def _checkpoint_every(steps: int) -> int:
    return max(1, min(FLAGS.checkpoint_steps, steps))


def curve_steps(run: Run) -> list[int]:
    """The steps of a final run's checkpoints before its last, each scored for the curve of
    accuracy against training time (the last is the run's own evaluation)."""
    every = _checkpoint_every(run.steps)
    return list(range(every, run.steps, every)) if run.stage == "final" else []


def curve_dir(model_dir: str, step: int) -> str:
    return os.path.join(model_dir, f"evaluation-step{step}")


def _curve_argv(run: Run, step: int) -> list:
    argv = _eval_argv(os.path.join(run.model_dir, f"ckpt-{step}"), "linear", FLAGS.probe_split,
                      FLAGS.test_split)
    out = f"--output_dir={curve_dir(run.model_dir, step)}"
    return [out if a.startswith("--output_dir=") else a for a in argv]


def _eval_argv(model_dir: str, evals: str, train_split: str, eval_split: str,
               corruption_split: str | None = None) -> list:
    argv = [_python(), "tools/evaluate.py", f"--checkpoint={model_dir}", f"--eval={evals}",
            f"--train_split={train_split}", f"--eval_split={eval_split}",
            f"--output_dir={os.path.join(model_dir, 'evaluation')}", "--reference=none"]
    if corruption_split:
        argv.append(f"--corruption_split={corruption_split}")
    return argv + shlex.split(FLAGS.eval_flags)


def _train_estimate(steps: int) -> float:
    return START_UP_S + steps * FLAGS.train_batch_size / TRAIN_IMAGES_PER_S


def _eval_estimate(train_split: str, eval_split: str, corrupted: int) -> float:
    n_train, n_eval = _sizes(train_split), _sizes(eval_split)
    return (START_UP_S + (n_train + n_eval) / FEATURE_IMAGES_PER_S
            + LINEAR_FIT_S_PER_1K * n_train / 1000
            + corrupted * SEVERITIES * NUM_CORRUPTIONS / CORRUPTED_IMAGES_PER_S)


def corruption_split() -> str:
    """The first --corruption_examples examples of --test_split, as a split expression."""
    base = FLAGS.test_split.split("[")[0]
    n = min(FLAGS.corruption_examples, _sizes(FLAGS.test_split))
    lo = _slice_start(FLAGS.test_split, 10000 if base == "test" else 60000)
    return f"{base}[{lo}:{lo + n}]"


def tuning_runs() -> list[Run]:
    runs = []
    for algo in FLAGS.algorithms:
        for hp in _grid(algo):
            md = os.path.join(FLAGS.runs_dir, "tune", algo, _hp_dirname(hp))
            runs.append(Run("tune", algo, 0, md, hp,
                            _train_argv(algo, hp, 0, FLAGS.tune_steps, FLAGS.tune_train_split, md),
                            _eval_argv(md, "linear", FLAGS.tune_fit_split,
                                       FLAGS.tune_holdout_split),
                            FLAGS.tune_steps, _train_estimate(FLAGS.tune_steps),
                            _eval_estimate(FLAGS.tune_fit_split, FLAGS.tune_holdout_split, 0)))
    return runs


def final_rows() -> list[tuple[str, str, tuple]]:
    """(row, algorithm, extra trainer flags) of every trained row."""
    rows = [(a, a, ()) for a in FLAGS.algorithms]
    rows += [(r, *EXTRA_ROWS[r]) for r in FLAGS.extra_rows]
    return rows


def final_runs(best: dict) -> list[Run]:
    """The final runs; `best` maps an algorithm to its tuned configuration (None: not known yet)."""
    runs = []
    ev = _eval_estimate(FLAGS.probe_split, FLAGS.test_split, FLAGS.corruption_examples)
    for row, algo, extra in final_rows():
        hp = best.get(algo) or {}
        for seed in (int(s) for s in FLAGS.seeds):
            md = os.path.join(FLAGS.runs_dir, "final", row, f"seed{seed}")
            runs.append(Run("final", row, seed, md, hp,
                            _train_argv(algo, hp, seed, FLAGS.train_steps, FLAGS.train_split, md,
                                        extra, final=True),
                            _eval_argv(md, "linear,knn,corruptions", FLAGS.probe_split,
                                       FLAGS.test_split, corruption_split()),
                            FLAGS.train_steps, _train_estimate(FLAGS.train_steps), ev))
    return runs


def baseline_runs(like: str) -> list[Run]:
    ev = _eval_estimate(FLAGS.probe_split, FLAGS.test_split, FLAGS.corruption_examples) - START_UP_S
    out = []
    for kind, seeds in (("random_init", [int(s) for s in FLAGS.seeds]), ("raw_pixels", [0])):
        for seed in seeds:
            md = os.path.join(FLAGS.runs_dir, "baselines", kind, f"seed{seed}")
            argv = [_python(), "tools/benchmark_accuracy.py", "baseline", f"--kind={kind}",
                    f"--like={like}", f"--seed={seed}", f"--baseline_dir={md}",
                    f"--probe_split={FLAGS.probe_split}", f"--test_split={FLAGS.test_split}",
                    f"--corruption_examples={FLAGS.corruption_examples}"]
            if FLAGS.eval_flags:
                argv.append(f"--eval_flags={FLAGS.eval_flags}")
            out.append(Run("baseline", kind, seed, md, {}, None, argv, 0, 0.0, ev))
    return out


def _check_flags() -> None:
    problems = []
    unknown = [a for a in FLAGS.algorithms if a not in KNOBS]
    if unknown:
        problems.append(f"--algorithms: unknown {unknown}; choose among {', '.join(KNOBS)}")
    unknown = [r for r in FLAGS.extra_rows if r not in EXTRA_ROWS]
    if unknown:
        problems.append(f"--extra_rows: unknown {unknown}; choose among {', '.join(EXTRA_ROWS)}")
    missing = sorted({EXTRA_ROWS[r][0] for r in FLAGS.extra_rows if r in EXTRA_ROWS}
                     - set(FLAGS.algorithms))
    if missing:
        problems.append(f"--extra_rows need their algorithm's tuning: add {missing} to "
                        "--algorithms or drop those rows")
    counts = {a: len(getattr(FLAGS, f"{a}_{KNOBS[a]}")) for a in FLAGS.algorithms if a in KNOBS}
    if len(set(counts.values())) > 1:
        problems.append(f"every algorithm must try the same number of configurations; the "
                        f"second-knob lists have {counts}: give each list as many values")
    try:
        [float(v) for a in counts for v in getattr(FLAGS, f"{a}_{KNOBS[a]}") + FLAGS.learning_rates]
        [int(s) for s in FLAGS.seeds]
    except ValueError as e:
        problems.append(f"a grid value or seed is not a number ({e})")
    if not FLAGS.seeds or not FLAGS.learning_rates or not FLAGS.algorithms:
        problems.append("--seeds, --learning_rates and --algorithms need at least one value each")
    if FLAGS.train_steps < 1 or FLAGS.tune_steps < 1 or FLAGS.train_batch_size < 1:
        problems.append("--train_steps, --tune_steps and --train_batch_size must be >= 1")
    if FLAGS.corruption_examples < 1:
        problems.append("--corruption_examples must be >= 1")
    try:
        corruption_split()
    except ValueError as e:
        problems.append(str(e))
    if problems:
        _die("; ".join(problems) + ".")


# ---------------------------------------------------------------------------------------------
# Running.

def _finished_evaluation(run: Run) -> dict | None:
    """The run's evaluation.json when it scores the run's final step (a finished run)."""
    record = read_json(run.evaluation_path)
    if record is None or "results" not in record:
        return None
    if run.stage != "baseline" and record.get("step") != run.steps:
        return None
    return record


def _run_command(argv: list, log_path: str) -> tuple[int, float]:
    """Runs argv from the repository root, output to the terminal and to log_path (appended)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            print("    " + line, end="", flush=True)
        proc.wait()
    return proc.returncode, time.perf_counter() - t0


class Clock:
    """Elapsed time and an ETA: the remaining estimate scaled by measured / estimated so far."""

    def __init__(self, total_estimate: float):
        self.t0 = time.perf_counter()
        self.total = total_estimate
        self.done_estimate = 0.0
        self.done_measured = 0.0

    def account(self, estimate: float, measured: float) -> None:
        self.done_estimate += estimate
        self.done_measured += measured

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        ratio = self.done_measured / self.done_estimate if self.done_measured > 30 else 1.0
        eta = max(0.0, self.total - self.done_estimate) * ratio
        return f"elapsed {_format_seconds(elapsed)}, ETA {_format_seconds(eta)}"


def _record_path(run: Run) -> str:
    return os.path.join(run.model_dir, "benchmark_run.json")


def _without_length(command: str) -> list:
    """A training command without --train_steps: a run may be lengthened (the trainers resume)."""
    return [a for a in shlex.split(command) if not a.startswith("--train_steps=")]


def execute(run: Run, clock: Clock, index: int, total: int, in_process=None) -> dict:
    """Trains (unless finished) and evaluates (unless finished) one run; returns its record."""
    record = read_json(_record_path(run)) or {}
    before, now = record.get("train_command"), _shown(run.train_argv) if run.train_argv else None
    if before and now and _without_length(before) != _without_length(now):
        _die(f"{run.model_dir} was trained by `{before}`, not by `{now}`; pass another "
             "--runs_dir (or remove that folder) to train it again.")
    if (record.get("eval_command") not in (None, _shown(run.eval_argv))
            and os.path.exists(run.evaluation_path)):
        os.remove(run.evaluation_path)  # evaluated differently (say, another grid): evaluate again
    record.update(stage=run.stage, row=run.row, label=LABELS.get(run.row, run.row), seed=run.seed,
                  model_dir=run.model_dir, hparams=run.hparams, steps=run.steps,
                  train_command=_shown(run.train_argv) if run.train_argv else None,
                  eval_command=_shown(run.eval_argv))
    evaluation = _finished_evaluation(run)
    head = f"[{index}/{total}] {run.stage} {run.name}"
    if evaluation is not None:
        _say(f"{head}: reused (finished: {run.evaluation_path}) | {clock.line()}")
        clock.total -= run.estimate_train + run.estimate_eval  # nothing left to do for it
    else:
        log = os.path.join(FLAGS.runs_dir, "logs", run.name.replace(os.sep, "-") + ".log")
        trained = os.path.exists(os.path.join(run.model_dir, f"ckpt-{run.steps}.index"))
        if run.train_argv and trained:
            _say(f"{head}: trained (ckpt-{run.steps}), evaluation missing")
            clock.total -= run.estimate_train
        elif run.train_argv:
            _say(f"{head}: training (estimate {_format_seconds(run.estimate_train)}) | "
                 f"{clock.line()}\n  $ {_shown(run.train_argv)}")
            code, seconds = _run_command(run.train_argv, log)
            if code != 0:
                _die(f"{_shown(run.train_argv)} failed with status {code}; see {log}. Fix it "
                     "and run the benchmark again: finished runs are reused.")
            record["train_seconds"] = record.get("train_seconds", 0.0) + seconds
            clock.account(run.estimate_train, seconds)
            write_json(_record_path(run), record)
        _say(f"{head}: evaluating (estimate {_format_seconds(run.estimate_eval)}) | "
             f"{clock.line()}\n  $ {_shown(run.eval_argv)}")
        if in_process is not None:
            t0 = time.perf_counter()
            in_process()
            code, seconds = 0, time.perf_counter() - t0
        else:
            code, seconds = _run_command(run.eval_argv, log)
        if code != 0:
            _die(f"{_shown(run.eval_argv)} failed with status {code}; see {log}.")
        record["eval_seconds"] = seconds
        clock.account(run.estimate_eval, seconds)
        evaluation = _finished_evaluation(run)
        if evaluation is None:
            _die(f"{run.evaluation_path} is missing or not at step {run.steps} after the "
                 "evaluation; see the log above.")
    if run.train_argv and "train_seconds" not in record:
        record["train_seconds"] = None  # trained before this file recorded times
    record["metrics"] = metrics_of(evaluation)
    record["evaluation"] = run.evaluation_path
    write_json(_record_path(run), record)
    return record


def _curve_estimate() -> float:
    return _eval_estimate(FLAGS.probe_split, FLAGS.test_split, 0)


def score_checkpoints(run: Run, record: dict, clock: Clock) -> dict:
    """Scores each checkpoint of curve_steps(run) with tools/evaluate.py (linear; reused when
    its evaluation.json exists at that step) and stores {step: linear top-1} as record['curve'];
    returns the record."""
    curve = {}
    for step in curve_steps(run):
        path = os.path.join(curve_dir(run.model_dir, step), "evaluation.json")
        evaluation = read_json(path)
        if evaluation is None or evaluation.get("step") != step or "results" not in evaluation:
            argv = _curve_argv(run, step)
            _say(f"{run.stage} {run.name}: scoring ckpt-{step} (estimate "
                 f"{_format_seconds(_curve_estimate())}) | {clock.line()}\n  $ {_shown(argv)}")
            log = os.path.join(FLAGS.runs_dir, "logs", run.name.replace(os.sep, "-") + ".log")
            code, seconds = _run_command(argv, log)
            if code != 0:
                _die(f"{_shown(argv)} failed with status {code}; see {log}.")
            clock.account(_curve_estimate(), seconds)
            evaluation = read_json(path)
            if evaluation is None or evaluation.get("step") != step:
                _die(f"{path} is missing or not at step {step} after the evaluation; see {log}.")
        else:
            clock.total -= _curve_estimate()
        curve[str(step)] = evaluation["results"]["linear"]["top_1"]
    record["curve"] = curve
    write_json(_record_path(run), record)
    return record


def select_best(records: list[dict]) -> dict:
    """{algorithm: {'best': hparams, 'scores': [(hparams, held-out top-1)]}}; ties go to the
    configuration listed first."""
    out = {}
    for r in records:
        entry = out.setdefault(r["row"], {"scores": []})
        entry["scores"].append({"hparams": r["hparams"], "holdout_top_1":
                                r["metrics"]["linear_top_1"], "model_dir": r["model_dir"]})
    for entry in out.values():
        best = max(entry["scores"], key=lambda s: s["holdout_top_1"])  # first of equal maxima
        entry["best"] = best["hparams"]
    return out


def cmd_plan() -> None:
    _check_flags()
    tune = tuning_runs()
    final = final_runs({})
    base = baseline_runs(final[0].model_dir)
    curve = [(r, step) for r in final for step in curve_steps(r)]
    total = (sum(r.estimate_train + r.estimate_eval for r in tune + final + base)
             + len(curve) * _curve_estimate())
    for stage, runs in (("tuning", tune), ("final", final), ("baselines", base)):
        est = sum(r.estimate_train + r.estimate_eval for r in runs)
        _say(f"{stage}: {len(runs)} runs, estimate {_format_seconds(est)}")
        for r in runs:
            if r.train_argv:
                print("  " + _shown(r.train_argv))
            print("  " + _shown(r.eval_argv))
    _say(f"accuracy against training time: {len(curve)} earlier checkpoints of the final runs, "
         f"estimate {_format_seconds(len(curve) * _curve_estimate())}")
    for r, step in curve:
        print("  " + _shown(_curve_argv(r, step)))
    _say(f"total estimate {_format_seconds(total)} (final runs use each algorithm's tuned "
         "learning rate and second knob, added to their commands once tuning has finished)")


def cmd_run() -> None:
    _check_flags()
    t0 = time.perf_counter()
    tune = tuning_runs()
    placeholder_final = final_runs({})
    base_est = baseline_runs(placeholder_final[0].model_dir)
    all_runs = tune + placeholder_final + base_est
    n_curve = sum(len(curve_steps(r)) for r in placeholder_final)
    clock = Clock(sum(r.estimate_train + r.estimate_eval for r in all_runs)
                  + n_curve * _curve_estimate())
    total = len(all_runs)
    _say(f"{len(tune)} tuning runs, {len(placeholder_final)} final runs, {len(base_est)} baseline "
         f"evaluations, {n_curve} earlier checkpoints scored; estimate "
         f"{_format_seconds(clock.total)} on a 2-core machine")
    tune_records = [execute(r, clock, i + 1, total) for i, r in enumerate(tune)]
    _say(f"tuning finished | {clock.line()}")
    tuning = select_best(tune_records)
    for algo, entry in tuning.items():
        scores = ", ".join(f"{_hp_dirname(s['hparams'])}: {s['holdout_top_1']:.4f}"
                           for s in entry["scores"])
        _say(f"tuning {algo}: {scores} -> {_hp_dirname(entry['best'])}")
    best = {a: e["best"] for a, e in tuning.items()}
    final = final_runs(best)
    records = [execute(r, clock, len(tune) + i + 1, total) for i, r in enumerate(final)]
    for i, r in enumerate(baseline_runs(final[0].model_dir)):
        records.append(execute(r, clock, len(tune) + len(final) + i + 1, total,
                               in_process=lambda r=r: baseline(r.row, final[0].model_dir, r.seed,
                                                               r.model_dir)))
    for r, record in zip(final, records):
        score_checkpoints(r, record, clock)
    report(tune_records + records, tuning, time.perf_counter() - t0)


def _budget() -> dict:
    return {k: FLAGS[k].value for k in (
        "algorithms", "extra_rows", "seeds", "train_steps", "tune_steps", "checkpoint_steps",
        "train_batch_size", "learning_rates", "simclr_temperature", "csimclr_kappa_b",
        "byol_ema_alpha", "cbyol_kappa_b", "train_split", "probe_split", "width_multiplier",
        "test_split", "tune_train_split", "tune_fit_split", "tune_holdout_split",
        "corruption_examples", "trainer_flags", "eval_flags")}


def report(records: list[dict], tuning: dict, seconds: float | None) -> dict:
    """Writes results.json (every run: tuning, final, baselines), table.md and the PNGs into
    --output_dir; returns what results.json holds."""
    rows = aggregate([r for r in records if r["stage"] != "tune"])
    comps = comparisons(rows)
    table = markdown_tables(rows, comps)
    previous = read_json(os.path.join(FLAGS.output_dir, "results.json")) or {}
    results = {"budget": _budget(), "tuning": tuning, "runs": records,
               "rows": {k: {m: v[m] for m in v} for k, v in rows.items()},
               "comparisons": comps,
               "wall_seconds_of_this_invocation": seconds,
               "wall_seconds_of_runs": sum((r.get("train_seconds") or 0)
                                           + (r.get("eval_seconds") or 0) for r in records),
               "command": shlex.join(["python", "tools/benchmark_accuracy.py"] + sys.argv[1:]),
               "previous_invocation_seconds": previous.get("wall_seconds_of_this_invocation")}
    write_json(os.path.join(FLAGS.output_dir, "results.json"), results)
    with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table, flush=True)
    final_dirs = [r["model_dir"] for r in records if r["stage"] == "final"]
    for path in plot_runs(final_dirs, FLAGS.output_dir):
        _say(f"wrote {path}")
    return results


def cmd_report() -> None:
    """Table and plots again from the finished runs under --runs_dir (nothing trained)."""
    _check_flags()
    tune_records = [read_json(_record_path(r)) for r in tuning_runs()]
    tune_records = [r for r in tune_records if r and r.get("metrics")]
    tuning = select_best(tune_records)
    final = final_runs({a: e["best"] for a, e in tuning.items()})
    records = [read_json(_record_path(r)) for r in final + baseline_runs(final[0].model_dir)]
    records = [r for r in records if r and r.get("metrics")]
    if not records:
        _die(f"no finished runs under {FLAGS.runs_dir}; run `python tools/benchmark_accuracy.py "
             "run` first (with the same flags).")
    report(tune_records + records, tuning, None)


# ---------------------------------------------------------------------------------------------
# The two rows without pretraining.

class RawPixels:
    """The 'encoder' of the raw-pixel row: images [B, H, W, C] -> their first channel [B, H*W]
    (Fashion-MNIST is grey: the channels are equal)."""

    def __call__(self, images, training=False):
        import tensorflow as tf
        del training
        return tf.reshape(images[..., 0], [tf.shape(images)[0], -1])


def baseline(kind: str, like: str, seed: int, out_dir: str) -> dict:
    """Runs the evaluation suite (linear, kNN, corruptions; splits from the flags) on the encoder of
    run `like` randomly initialised with `seed`, or on raw pixels; writes
    <out_dir>/evaluation/evaluation.json. Returns the record."""
    import tensorflow as tf

    from common.cli import job, settings
    from common.data import datasets
    from common.evaluation import suite

    loaded = suite.load_encoder(like)
    run = loaded.config["config"]
    tf.random.set_seed(seed)
    encoder = loaded.build() if kind == "random_init" else RawPixels()
    loaded = dataclasses.replace(loaded, encoder=encoder, checkpoint=f"{kind} (seed {seed})",
                                 step=0)
    data = settings.DataSettings(**run["data"])
    data_cfg = datasets.DataConfig(dataset=data.dataset, data_dir=data.data_dir,
                                   train_split=FLAGS.probe_split, eval_split=FLAGS.test_split,
                                   image_size=data.image_size, seed=seed)
    aug_cfg = job.augment_config(settings.AugmentSettings(**run["augment"]), data.image_size)
    extra = _eval_overrides()
    cfg = suite.SuiteConfig(evaluations=("linear", "knn", "corruptions"), reference=None,
                            corruption_split=corruption_split(), seed=seed, **extra)
    return suite.run_suite(loaded, data_cfg, aug_cfg, cfg, os.path.join(out_dir, "evaluation"))


def _eval_overrides() -> dict:
    """The --eval_flags the suite config understands (corruptions, severities, batch size), so the
    baselines are scored on the same grid as the runs."""
    out = {}
    for arg in shlex.split(FLAGS.eval_flags):
        name, _, value = arg.lstrip("-").partition("=")
        if name == "corruptions":
            out["corruptions"] = tuple(value.split(","))
        elif name == "severities":
            out["severities"] = tuple(int(s) for s in value.split(","))
        elif name == "eval_batch_size":
            out["batch_size"] = int(value)
    return out


def cmd_baseline() -> None:
    if not FLAGS.kind or not FLAGS.like or not FLAGS.baseline_dir:
        _die("baseline needs --kind=random_init|raw_pixels, --like=<a run's model_dir> and "
             "--baseline_dir=<where its evaluation.json goes>.")
    if not os.path.exists(os.path.join(FLAGS.like, "config.json")):
        _die(f"--like={FLAGS.like} holds no config.json; pass the model_dir of a finished run.")
    from common.evaluation import suite
    record = baseline(FLAGS.kind, FLAGS.like, FLAGS.seed, FLAGS.baseline_dir)
    print("\n" + suite.markdown_table(record), flush=True)


# ---------------------------------------------------------------------------------------------
# Plots: from the runs' TensorBoard event files and evaluation.json, for any run folders.

def read_scalars(log_dir: str) -> dict:
    """{tag: [(step, wall_time, value), ...] sorted by step} of every scalar in the event files of
    log_dir (tf.summary.scalar writes tensors; older writers simple_value)."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util
    out: dict = {}
    if not os.path.isdir(log_dir):
        return out
    for name in sorted(os.listdir(log_dir)):
        if "tfevents" not in name:
            continue
        for event in event_file_loader.EventFileLoader(os.path.join(log_dir, name)).Load():
            for v in event.summary.value:
                if v.HasField("tensor"):
                    value = float(tensor_util.make_ndarray(v.tensor).reshape(-1)[0])
                elif v.HasField("simple_value"):
                    value = float(v.simple_value)
                else:
                    continue
                out.setdefault(v.tag, {})[int(event.step)] = (event.wall_time, value)
    return {tag: sorted((s, w, v) for s, (w, v) in d.items()) for tag, d in out.items()}


def _run_label(model_dir: str) -> str:
    record = read_json(os.path.join(model_dir, "benchmark_run.json"))
    if record and record.get("label"):
        return record["label"]
    config = read_json(os.path.join(model_dir, "config.json")) or {}
    return LABELS.get(config.get("trainer"), config.get("trainer") or os.path.basename(model_dir))


def _time_origin(model_dir: str, first_event_time: float) -> float:
    """When the run started: its config.json's time stamp (written just before training, so the
    start-up counts as training time), or its first summary when config.json was rewritten later
    (a resumed run)."""
    import datetime
    written = (read_json(os.path.join(model_dir, "config.json")) or {}).get("written")
    try:
        t = datetime.datetime.strptime(written, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return first_event_time
    return t if t <= first_event_time else first_event_time


def _evaluation(model_dir: str) -> dict | None:
    return read_json(os.path.join(model_dir, "evaluation", "evaluation.json"))


def _scored_checkpoints(model_dir: str, scalars: dict, evaluation: dict | None) -> dict:
    """{step: (wall seconds since the run started, linear top-1 on test)} of the run's scored
    checkpoints: <model_dir>/evaluation-step<N>/evaluation.json and the final
    evaluation/evaluation.json; a step's time is that of its training summary."""
    times = {}
    for tag in ("loss", "probe_acc"):
        for step, wall, _ in scalars.get(tag, []):
            times.setdefault(step, wall)
    if not times:
        return {}
    origin = _time_origin(model_dir, min(times.values()))
    found = [evaluation] if evaluation else []
    if os.path.isdir(model_dir):
        found += [read_json(os.path.join(model_dir, d, "evaluation.json"))
                  for d in sorted(os.listdir(model_dir)) if d.startswith("evaluation-step")]
    out = {}
    for e in found:
        if e and e.get("step") in times and "linear" in e.get("results", {}):
            out[e["step"]] = (times[e["step"]] - origin, e["results"]["linear"]["top_1"])
    return out


def plot_runs(model_dirs: list[str], output_dir: str) -> list[str]:
    """Writes the PNGs of the runs in model_dirs (grouped by row label) into output_dir:
    probe_accuracy.png: left, the linear evaluation on test (top-1) of every scored checkpoint
      (`evaluation-step<N>/` and the final `evaluation/`) against the wall time of its step since
      the run started; right, the online linear probe's accuracy on the training batches (a
      diagnostic); mean over a row's runs, band min..max;
    ceb_terms.png: residual information I(X;Z|Y) and the -log e, -log b terms over steps, one curve
      per run of a C-variant;
    information_plane.png: residual information against the contrastive bound I(Y;Z) over training,
      one curve per run that logs both (C-SimCLR);
    corruption_severity.png: mean accuracy over the corruptions at each severity (0 = clean test
      top-1 of the linear evaluation), mean and band over a row's runs.
    Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(output_dir, exist_ok=True)
    groups: dict = {}
    for md in model_dirs:
        groups.setdefault(_run_label(md), []).append(
            (md, read_scalars(os.path.join(md, "train")), _evaluation(md)))
    written = []

    def save(fig, name):
        path = os.path.join(output_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, (ax, ax_online) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (label, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        # Left: linear evaluation on test of every scored checkpoint, at its step's wall time.
        points = [_scored_checkpoints(md, s, e) for md, s, e in runs]
        points = [p for p in points if p]
        common = sorted(set.intersection(*[set(p) for p in points])) if points else []
        if common:
            t = np.array([[p[k][0] for k in common] for p in points])
            y = np.array([[p[k][1] for k in common] for p in points])
            ax.plot(t.mean(0), y.mean(0), color=color, marker="o",
                    label=f"{label} ({len(points)} runs)")
            ax.fill_between(t.mean(0), y.min(0), y.max(0), color=color, alpha=0.2)
        # Right: the online probe on the training batches, a diagnostic.
        have = [(md, s["probe_acc"]) for md, s, _ in runs if s.get("probe_acc")]
        if not have:
            continue
        curves = [c for _, c in have]
        steps = sorted(set.intersection(*[{c[0] for c in curve} for curve in curves]))
        if not steps:
            continue
        origins = [_time_origin(md, c[0][1]) for md, c in have]
        t = np.array([[dict((s, w) for s, w, _ in c)[k] - o for k in steps]
                      for c, o in zip(curves, origins)])
        y = np.array([[dict((s, v) for s, _, v in c)[k] for k in steps] for c in curves])
        ax_online.plot(t.mean(0), y.mean(0), color=color, marker=".", label=label)
        ax_online.fill_between(t.mean(0), y.min(0), y.max(0), color=color, alpha=0.2)
    for a in (ax, ax_online):
        a.set_xlabel("wall time since the run started (s)")
        a.set_ylabel("accuracy")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    ax.set_title("linear evaluation on test of each checkpoint\n(mean; band: min-max over "
                 "seeds)", fontsize=9)
    ax_online.set_title("online linear probe on training batches (diagnostic: it shares the "
                        "pretraining\nlearning rate and can diverge at high rates; mean, band "
                        "min-max)", fontsize=9)
    save(fig, "probe_accuracy.png")

    tags = (("i_xzx_y", "residual information I(X;Z|Y) (nats)"),
            ("h_e_zx_x", "-log e(z|x)"), ("h_b_zx_y", "-log b(z|y)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for i, (label, runs) in enumerate(groups.items()):
        for j, (_, s, _) in enumerate(runs):
            for ax, (tag, _) in zip(axes, tags):
                if s.get(tag):
                    ax.plot([p[0] for p in s[tag]], [p[2] for p in s[tag]], color=f"C{i % 10}",
                            marker=".", alpha=0.8, label=label if j == 0 else None)
    for ax, (_, name) in zip(axes, tags):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("CEB terms over training (C-variants; one curve per run)", fontsize=10)
    save(fig, "ceb_terms.png")

    fig, ax = plt.subplots(figsize=(6, 5))
    for i, (label, runs) in enumerate(groups.items()):
        for j, (_, s, _) in enumerate(runs):
            if s.get("i_xzx_y") and s.get("i_y_zx"):
                r = dict((p[0], p[2]) for p in s["i_xzx_y"])
                b = dict((p[0], p[2]) for p in s["i_y_zx"])
                steps = sorted(set(r) & set(b))
                ax.plot([r[k] for k in steps], [b[k] for k in steps], color=f"C{i % 10}",
                        marker=".", alpha=0.8, label=label if j == 0 else None)
                ax.annotate(str(steps[-1]), (r[steps[-1]], b[steps[-1]]), fontsize=6)
    ax.set_xlabel("residual information I(X;Z|Y) (nats)")
    ax.set_ylabel("I(Y;Z), contrastive bound (nats)")
    ax.set_title("information plane over training (runs that log both terms;\nlast step "
                 "annotated)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, "information_plane.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(groups.items()):
        per_run = []
        for _, _, e in runs:
            m = metrics_of(e) if e else {}
            if m.get("corruption_by_severity") and m.get("linear_top_1") is not None:
                sev = m["corruption_by_severity"]
                per_run.append([m["linear_top_1"]] + [sev[k] for k in sorted(sev, key=int)])
                xs = [0] + sorted(int(k) for k in sev)
        if not per_run:
            continue
        y = np.array(per_run)
        ax.plot(xs, y.mean(0), marker="o", color=f"C{i % 10}", label=f"{label} ({len(y)} runs)")
        ax.fill_between(xs, y.min(0), y.max(0), color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel("corruption severity (0: clean)")
    ax.set_ylabel("linear-classifier accuracy (mean over corruptions)")
    ax.set_title("accuracy under corruptions (band: min-max over seeds)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, "corruption_severity.png")
    return written


def cmd_plot(dirs: list[str]) -> None:
    if not dirs:
        _die("plot needs run folders: python tools/benchmark_accuracy.py plot RUN_DIR... "
             "--output_dir=DIR")
    missing = [d for d in dirs if not os.path.isdir(os.path.join(d, "train"))
               and _evaluation(d) is None]
    if missing:
        _die(f"{missing} hold neither TensorBoard events (train/) nor evaluation/evaluation.json; "
             "pass the model_dir of runs.")
    for path in plot_runs(dirs, FLAGS.output_dir):
        _say(f"wrote {path}")


def _from_root(path: str) -> str:
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, ROOT]) == ROOT
    return os.path.relpath(path, ROOT) if inside else path


COMMANDS = ("run", "plan", "report", "plot", "baseline")


def main(argv) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        _die(f"give a command: {', '.join(COMMANDS)} (e.g. `python tools/benchmark_accuracy.py "
             "run --output_dir=benchmarks/accuracy`).")
    command, rest = argv[1], argv[2:]
    if rest and command != "plot":
        _die(f"unexpected arguments {rest}; flags look like --name=value.")
    # Commands run from the repository root; paths given relative to the caller's folder are
    # rewritten relative to the root (or absolute outside it), so recorded commands stay short.
    for name in ("output_dir", "runs_dir", "like", "baseline_dir"):
        if FLAGS[name].value:
            FLAGS[name].value = _from_root(FLAGS[name].value)
    rest = [_from_root(d) for d in rest]
    os.chdir(ROOT)
    if command == "plot":
        cmd_plot(rest)
    else:
        commands = {"run": cmd_run, "plan": cmd_plan, "report": cmd_report,
                    "baseline": cmd_baseline}
        commands[command]()


if __name__ == "__main__":
    app.run(main)
