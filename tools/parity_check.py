"""Parity of the project's TensorFlow code with DeepMind's BYOL JAX reference, on stored outputs.

    python tools/parity_check.py [--golden PATH] [--groups a,b,...] [--verbose]

Runs the project's own code (common.*, byol.*) on the inputs stored in a golden file with the schema
of tools/golden/byol_golden_manifest.txt and compares the results with the reference's outputs
stored next to them. Groups (what each runs and compares: tools/PARITY.md):

  a  l2-normalisation, regression loss and its gradient, symmetric BYOL loss, softmax cross-entropy
  b  learning-rate and target-EMA schedules (inside tf.function, int32 steps)
  c  two LARS steps per variant (DeepMind form): buffers, parameters, updates, the filter mask
  d  augmentation ops with fixed factors, fixed-order jitter, blur; the per-view decisions
     regenerated from the stored JAX key (tools/jax_prng.py) and the pipeline replayed from them
  e  haiku ResNet-18/50 forward in training then eval mode, weights rebuilt from their names
  f  complete BYOL training steps through common.training.trainer.Pretrainer, chained and restarted

Prints one row per group (arrays compared, max absolute and relative error, tolerance, result)
and exits with status 1 if any group fails (2 on bad usage). `--verbose` lists every array: compared
(with its errors), used as input, or skipped with the reason. Nothing is keyed to the shipped
values: shapes, steps, hyper-parameters and layouts are read from the file.

Tolerances (float32 on CPU; justification in tools/PARITY.md): a-d rtol 1e-5 with atol 1e-6 (tau:
4 ulp); e atol 1e-4 (ResNet-18) and 5e-3 (ResNet-50); f rtol 1e-4 of each array's scale for
gradients, LARS buffers, parameters and BN state; integers, booleans and counters exactly. Group f
also measures how far one-ulp changes of its stored inputs move each of the project's own chained
results (its float32 spread): a chained comparison whose spread times 3 exceeds its strict bound is
ill-conditioned and judged against 3 x that spread (result "PASS (ill-conditioned)"); steps
restarted from the stored state stay strict.

The implementation is the package tools/parity (tolerances and the verdict rule, the golden file,
one module per family of groups, the runner and the report); this file is its command line and
re-exports the names scripts and tests use.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tools.parity.golden import Golden  # noqa: E402
from tools.parity.records import GroupRun, Row  # noqa: E402
from tools.parity.report import report  # noqa: E402
from tools.parity.runner import GROUP_FUNCTIONS, GROUPS, run_checks, run_group, select_groups  # noqa: E402
from tools.parity.tolerances import (EXACT, NUMERICAL_ZERO, SPREAD_FACTOR, TOL_AD, TOL_F,  # noqa: E402
                                     TOL_F_LOG, TOL_R18, TOL_R50, TOL_TAU, Judgement, Tol,
                                     chained_tolerance, compare)

DEFAULT_GOLDEN = ROOT / "tools" / "golden" / "byol_golden.npz"

__all__ = ["DEFAULT_GOLDEN", "EXACT", "GROUPS", "GROUP_FUNCTIONS", "Golden", "GroupRun",
           "Judgement", "NUMERICAL_ZERO", "Row", "SPREAD_FACTOR", "TOL_AD", "TOL_F", "TOL_F_LOG",
           "TOL_R18", "TOL_R50", "TOL_TAU", "Tol", "chained_tolerance", "compare", "main", "report",
           "run_checks", "run_group", "select_groups"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", default=str(DEFAULT_GOLDEN),
                        help="golden npz with the schema of tools/golden/byol_golden_manifest.txt")
    parser.add_argument("--groups", default=None,
                        help="comma-separated subset of a,b,c,d,e,f (default: every group in the file)")
    parser.add_argument("--manifest", default=None, help="default: <golden stem>_manifest.txt")
    parser.add_argument("--golden-f64", default=None, help="default: <golden stem>_resnet_f64.npz")
    parser.add_argument("--verbose", action="store_true",
                        help="list every array: compared (with its errors), input, or skipped")
    args = parser.parse_args(argv)
    try:
        golden = Golden(args.golden, args.manifest, args.golden_f64)
        groups = select_groups(golden, args.groups)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = run_checks(golden, groups)
    return 0 if report(golden, runs, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
