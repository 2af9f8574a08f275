"""The groups, and running them: a crash in the project's code fails its group, not the tool."""
from __future__ import annotations

import time
import traceback

from tools.parity.augmentations import group_d
from tools.parity.golden import Golden
from tools.parity.losses_schedules_lars import group_a, group_b, group_c
from tools.parity.records import GroupRun
from tools.parity.resnet_forward import group_e
from tools.parity.training_steps import group_f

GROUPS = ("a", "b", "c", "d", "e", "f")
GROUP_FUNCTIONS = {
    "a": ("losses", group_a),
    "b": ("schedules", group_b),
    "c": ("LARS", group_c),
    "d": ("augmentations", group_d),
    "e": ("ResNet forward", group_e),
    "f": ("BYOL training steps", group_f),
}


def run_group(golden: Golden, name: str) -> GroupRun:
    """Runs one group; an exception in the project's code fails the group (with its traceback)."""
    title, fn = GROUP_FUNCTIONS[name]
    run = GroupRun(golden, name, title)
    start = time.perf_counter()
    try:
        fn(run)
    except Exception as exc:  # a crash in the project's code is a failed group, not a crashed tool
        run.error = f"{type(exc).__name__}: {exc}"
        run.traceback = "".join(traceback.format_exception(exc)).rstrip()
    run.finish()
    run.seconds = time.perf_counter() - start
    return run


def select_groups(golden: Golden, groups: str | None) -> list[str]:
    """The groups to run: the comma-separated `groups`, or every group present in the file."""
    if not groups:
        return [g for g in GROUPS if golden.keys(f"{g}/")]
    chosen = [s.strip() for s in groups.split(",") if s.strip()]
    bad = [s for s in chosen if s not in GROUPS]
    if bad:
        raise ValueError(f"unknown group(s) {bad}; choose from {','.join(GROUPS)}.")
    return chosen


def run_checks(golden: Golden, groups: list[str]) -> list[GroupRun]:
    """Runs the selected groups; a group without arrays in the file fails."""
    runs = []
    for name in groups:
        if not golden.keys(f"{name}/"):
            run = GroupRun(golden, name, GROUP_FUNCTIONS[name][0])
            run.error = f"the file has no '{name}/' arrays"
            runs.append(run)
            continue
        runs.append(run_group(golden, name))
    return runs
