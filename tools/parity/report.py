"""The text report: a row per group, failures, notes, every array with --verbose, and the verdict."""
from __future__ import annotations

import math
import sys

from tools.parity.golden import Golden
from tools.parity.records import GroupRun
from tools.parity.runner import GROUPS
from tools.parity.tolerances import SPREAD_FACTOR


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.2e}"


def _max(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else math.nan


def report(golden: Golden, runs: list[GroupRun], verbose: bool, out=None) -> bool:
    """Prints the summary table, failures, notes (and with `verbose` every array); returns True
    when every group passed."""
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"golden file: {golden.path} ({len(golden.arrays)} arrays)")
    if "meta_json" in golden:
        p(f"reference:   {golden['meta_json']} (meta_json)")
    p(f"manifest:    {golden.manifest_path or 'not found'}")
    p(f"float64 ResNet file: {golden.f64_path or 'not found'}")
    p("")
    header = (f"{'group':<22} {'arrays':>6} {'inputs':>6} {'skipped':>7} {'max abs err':>11} "
              f"{'max rel err':>11} {'tol used':>8}  {'result':<30} tolerances")
    p(header)
    p("-" * (len(header) + 30))
    all_ok = True
    for run in runs:
        rows = run.rows + run.extra_rows
        tols = "; ".join(dict.fromkeys(str(r.tol) for r in rows)) or "-"
        status = ("FAIL" if not run.ok else "PASS (ill-conditioned)" if run.ill_conditioned
                  else "PASS")
        all_ok &= run.ok
        p(f"{run.name + ' ' + run.title:<22} {len(run.compared):>6} {len(run.inputs):>6} "
          f"{len(run.skipped):>7} {_fmt(_max(r.max_abs for r in rows)):>11} "
          f"{_fmt(_max(r.max_rel for r in rows)):>11} {_fmt(_max(r.used for r in rows)):>8}  "
          f"{status + f' ({run.seconds:.1f}s)':<30} {tols}")
    p("")
    p("max rel err = max |ours - stored| / max |stored| per array; tol used = the largest "
      "error / bound ratio (> 1 fails). PASS (ill-conditioned): passed, with some chained comparisons "
      f"judged against {SPREAD_FACTOR:g} x their float32 spread.")
    for run in runs:
        failed = [r for r in run.rows + run.extra_rows if not r.ok]
        if run.error:
            p(f"[{run.name}] ERROR {run.error}")
            if verbose and run.traceback:
                p(run.traceback)
        if failed:
            p(f"[{run.name}] {len(failed)} comparisons FAILED:")
            for r in failed[:50] if not verbose else failed:
                p(f"    {r.key}: max abs {_fmt(r.max_abs)}, max rel {_fmt(r.max_rel)}, "
                  f"{_fmt(r.used)} x tolerance ({r.tol}) [{r.note}]")
            if len(failed) > 50 and not verbose:
                p(f"    ... and {len(failed) - 50} more (--verbose lists all)")
        for text in run.notes:
            p(f"[{run.name}] note: {text}")
        if run.skipped and not verbose:
            p(f"[{run.name}] {len(run.skipped)} arrays skipped (--verbose lists them with the reason)")
    if verbose:
        for run in runs:
            p("")
            p(f"===== group {run.name}: {run.title} =====")
            for r in run.rows + run.extra_rows:
                p(f"  {'ok  ' if r.ok else 'FAIL'} {r.key}: max abs {_fmt(r.max_abs)}, max rel "
                  f"{_fmt(r.max_rel)}, {_fmt(r.used)} x tol ({r.tol}) [{r.note}]")
            for key in sorted(run.inputs):
                p(f"  used as input: {key}")
            for key, reason in sorted(run.skipped.items()):
                p(f"  SKIPPED {key}: {reason}")
    n_all = len(golden.arrays)
    outside = [k for k in golden.arrays if k.split("/", 1)[0] not in GROUPS]
    selected = {r.name for r in runs}
    not_selected = sum(1 for k in golden.arrays if k.split("/", 1)[0] in set(GROUPS) - selected)
    p("")
    p(f"{n_all} arrays in the file: {sum(len(r.compared) for r in runs)} compared, "
      f"{sum(len(r.inputs) for r in runs) + len(outside)} used as input "
      f"(incl. {', '.join(outside) or 'nothing'} outside the groups), "
      f"{sum(len(r.skipped) for r in runs)} skipped, {not_selected} in groups not selected.")
    ill = sum(len(run.ill_conditioned) for run in runs)
    if ill:
        p(f"{ill} chained comparisons are ill-conditioned: float32 rounding alone moves them by more "
          f"than their strict bound / {SPREAD_FACTOR:g}, so each was judged against {SPREAD_FACTOR:g} x "
          "its own measured one-ulp spread (notes above; restarted comparisons stay strict).")
    if not all_ok:
        p("PARITY FAILED")
    else:
        p("PARITY OK" + (" (ill-conditioned)" if ill else ""))
    return all_ok
