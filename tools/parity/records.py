"""Per-group bookkeeping: one `Row` per comparison, and a `GroupRun` that records them together with
the arrays used as inputs, skipped arrays, notes and the group's error."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tools.parity.golden import Golden
from tools.parity.tolerances import Judgement, Tol, compare, is_numerical_zero


@dataclasses.dataclass
class Row:
    """One comparison: a stored array against the project's value."""
    key: str
    max_abs: float
    max_rel: float
    used: float  # max over elements of |got - want| / bound (see Tol): > 1 fails
    tol: Tol
    ok: bool
    note: str = ""
    got: np.ndarray | None = dataclasses.field(default=None, repr=False)
    ill_conditioned: bool = False  # judged against a multiple of its float32 spread (see tolerances)
    spread: float | None = None    # the measured one-ulp spread, when there is one


class GroupRun:
    """Bookkeeping of one group: comparisons, inputs, skipped arrays, notes, error."""

    def __init__(self, golden: Golden, name: str, title: str):
        self.golden = golden
        self.name = name
        self.title = title
        self.rows: list[Row] = []
        self.extra_rows: list[Row] = []  # comparisons with arrays outside the main file (f64)
        self.inputs: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.error: str | None = None
        self.traceback = ""
        self.seconds = 0.0
        # group f: {step: largest one-ulp spread over the step's chained arrays}, see training_steps
        self.float32_spread: dict[int, float] = {}

    def input(self, key: str) -> np.ndarray:
        """The stored array `key`, recorded as used as input."""
        if key not in self.golden:
            raise KeyError(f"{key} is missing from {self.golden.path}; the file does not follow the "
                           "schema of tools/golden/byol_golden_manifest.txt.")
        self.inputs.add(key)
        return self.golden[key]

    def check(self, key: str, got, tol: Tol | Judgement, note: str = "") -> Row:
        """Compares the project's value `got` with the stored array `key`, held to `tol` (or to a
        `Judgement`'s tolerance, whose ill-conditioning note is appended)."""
        if key not in self.golden:
            raise KeyError(f"{key} is missing from {self.golden.path}.")
        judgement = tol if isinstance(tol, Judgement) else Judgement(tol, False, None, "")
        tol = judgement.tol
        got = to_numpy(got)
        max_abs, max_rel, used, ok, why = compare(got, self.golden[key], tol)
        if is_numerical_zero(tol):
            max_rel = math.nan  # the stored values are rounding noise: no relative error to speak of
        row = Row(key, max_abs, max_rel, used, tol, ok,
                  "; ".join(s for s in (note, judgement.note, why) if s), np.asarray(got),
                  judgement.ill_conditioned, judgement.spread)
        self.rows.append(row)
        return row

    def check_extra(self, label: str, got, want, tol: Tol, note: str = "") -> Row:
        """A comparison with an array that is not in the main file (the float64 ResNet file)."""
        max_abs, max_rel, used, ok, why = compare(np.asarray(got), want, tol)
        row = Row(label, max_abs, max_rel, used, tol, ok, "; ".join(s for s in (note, why) if s))
        self.extra_rows.append(row)
        return row

    def skip(self, key: str, reason: str) -> None:
        self.skipped[key] = reason

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def compared(self) -> set[str]:
        return {r.key for r in self.rows}

    def finish(self) -> None:
        """Accounts for every array of the group: unreached ones are listed as skipped."""
        seen = self.compared | self.inputs | set(self.skipped)
        for key in self.golden.keys(f"{self.name}/"):
            if key not in seen:
                self.skipped[key] = ("not reached: the group stopped with an error" if self.error
                                     else "not part of the known schema; nothing compares it")

    @property
    def ok(self) -> bool:
        return (self.error is None and bool(self.rows) and all(r.ok for r in self.rows)
                and all(r.ok for r in self.extra_rows))

    @property
    def ill_conditioned(self) -> list[Row]:
        """The passing or failing comparisons that were judged against their float32 spread."""
        return [r for r in self.rows if r.ill_conditioned]


def to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
