"""Progress lines: rates and ETA leave out the first call's tracing, which is reported apart."""
import dataclasses
import re

from common import testing
from common.training import reporting


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_restart_excludes_what_ran_before_it_from_rate_and_eta():
    clock, lines = FakeClock(), []
    p = reporting.Progress(101, 8, start_step=0, keys=(), print_fn=lambda s, **k: lines.append(s),
                           clock=clock)
    clock.now = 60.0          # step 1, with tracing, took 60 s
    p.restart(1)
    clock.now = 60.0 + 10.0   # 20 more steps at 0.5 s each
    scalars = p.report(21, {})
    # Hand-derived: 20 steps / 10 s = 2 steps/s, 16 img/s; 80 steps left -> 40 s.
    assert scalars["steps_per_sec"] == 2.0
    assert scalars["images_per_sec"] == 16.0
    assert "2.00 steps/s, 16 img/s | ETA 0m40s" in lines[-1]


def test_a_report_after_no_step_shows_no_rate_instead_of_zero():
    clock, lines = FakeClock(), []
    p = reporting.Progress(1, 8, start_step=0, keys=(), print_fn=lambda s, **k: lines.append(s),
                           clock=clock)
    clock.now = 30.0          # a one-step run: its only step is the start-up step
    p.restart(1)
    scalars = p.report(1, {"loss": 1.0})
    assert "steps_per_sec" not in scalars and "images_per_sec" not in scalars
    assert "0.00 steps/s" not in lines[-1] and "no rate yet" in lines[-1]
    assert scalars["loss"] == 1.0


def test_train_runs_the_first_step_alone_and_says_how_long_start_up_took(tmp_path, monkeypatch):
    lines = []
    tr = testing.tiny_pretrainer(testing.ToyContrastive, str(tmp_path), steps=3,
                                 print_fn=lambda s, **k: lines.append(s))
    tr.cfg = dataclasses.replace(tr.cfg, steps_per_loop=3)
    calls = testing.record_calls(monkeypatch, tr, "run_steps")
    tr.train()
    assert [c["num_steps"] for c in calls] == [1, 2]
    assert tr.step == 3
    start = [i for i, s in enumerate(lines) if s.startswith("start-up")]
    assert len(start) == 1
    assert re.search(r"start-up \(graph tracing.*step 1\): \d+\.\ds, excluded", lines[start[0]])
    reports = [s for s in lines if s.startswith("step ")]
    assert start[0] < lines.index(reports[0]) and reports[0].startswith("step 3/3")
