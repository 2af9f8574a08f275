"""Flags generated from a configuration tree, and the explicit overrides read back from them.

Each leaf of the default preset's `Experiment` becomes one absl flag of the same name, with the
preset's value as the default shown by `--helpfull`. Only flags given on the command line count as
overrides: the chosen preset supplies everything else, and nothing is ever written into the flags.
A flag that a trainer's configuration does not have is not defined, so absl refuses it by name.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from absl import flags

from common.cli import settings


@dataclasses.dataclass(frozen=True)
class Alias:
    """A release flag that spells another flag's values differently (e.g. --ft_proj_selector=-1 for
    --probe_input=projection): `values` maps the alias's values to the target's."""
    name: str
    target: str
    values: dict
    help: str


ALIASES = (
    Alias("ft_proj_selector", "probe_input", {0: "backbone", -1: "projection"},
          "The release's name for --probe_input: 0 = backbone feature, -1 = projection output."),
)


class FlagError(ValueError):
    """A flag value or combination that cannot run as asked, with the fix in the message."""


def _define(flag_values: flags.FlagValues, leaf: settings.Leaf, default) -> None:
    kw = dict(name=leaf.flag, default=default, help=leaf.help, flag_values=flag_values)
    if leaf.type is bool:
        flags.DEFINE_boolean(**kw)
    elif leaf.choices is not None and all(isinstance(c, str) for c in leaf.choices):
        flags.DEFINE_enum(enum_values=list(leaf.choices), **kw)
    elif leaf.type is int:
        flags.DEFINE_integer(**kw)
    elif leaf.type is float:
        flags.DEFINE_float(**kw)
    else:  # str and optional str
        flags.DEFINE_string(**kw)


def define(flag_values: flags.FlagValues, presets: dict, default_preset: str) -> None:
    """Defines --config (the preset names), one flag per leaf of the default preset, and the aliases
    whose target exists."""
    flags.DEFINE_enum("config", default_preset, sorted(presets),
                      "Named preset: the small-scale default or a paper config; flags given on the "
                      "command line override it.", flag_values=flag_values)
    flags.DEFINE_boolean("print_config", False, "Print the resolved configuration (preset + "
                         "flags) as JSON and exit without writing anything.",
                         flag_values=flag_values)
    default = presets[default_preset]
    index = settings.leaf_index(default)
    for leaf in index.values():
        _define(flag_values, leaf, settings.get_path(default, leaf.path))
    for alias in ALIASES:
        if alias.target in index:
            flags.DEFINE_integer(alias.name, None, alias.help, flag_values=flag_values)


def overrides(flag_values: flags.FlagValues, config) -> dict:
    """{flag: value} of the config flags given on the command line, aliases translated."""
    index = settings.leaf_index(config)
    out = {name: flag_values[name].value for name in index if flag_values[name].present}
    for alias in ALIASES:
        if alias.target not in index or not flag_values[alias.name].present:
            continue
        value = flag_values[alias.name].value
        if value not in alias.values:
            raise FlagError(f"--{alias.name}={value}: accepted values are "
                            f"{', '.join(str(v) for v in alias.values)}.")
        if alias.target in out and out[alias.target] != alias.values[value]:
            raise FlagError(f"--{alias.name}={value} and --{alias.target}={out[alias.target]} "
                            "disagree; pass only one.")
        out[alias.target] = alias.values[value]
    return out


def resolve(flag_values: flags.FlagValues, presets: dict,
            warn: Callable[[str], None]) -> tuple[str, settings.Experiment]:
    """(preset name, the preset with the command line's overrides), after every check.

    Raises FlagError listing every problem found; warnings go to `warn`.
    """
    name = flag_values["config"].value
    config = settings.with_overrides(presets[name], **overrides(flag_values, presets[name]))
    errors, warnings = settings.problems(config)
    if errors:
        raise FlagError("Invalid flags:\n  " + "\n  ".join(errors))
    for w in warnings:
        warn(w)
    return name, config


def parse_overrides(args: list[str], presets: dict, preset: str, trainer: str) -> dict:
    """{flag: value} of a trainer's flags given as `--name=value` items to another command (tools
    that write a run of a trainer), parsed by the very flag definitions the trainer uses; `trainer`
    is its package name, for the messages.

    Raises FlagError naming an unknown flag, a bad value or a stray argument."""
    fv = flags.FlagValues()
    define(fv, presets, preset)
    try:
        rest = fv(["tool", *args])
    except flags.Error as e:
        raise FlagError(f"{e}; the {trainer} trainer's flags: python {trainer}/train.py "
                        "--helpfull.") from e
    if len(rest) > 1:
        raise FlagError(f"unexpected arguments {rest[1:]}; trainer flags look like --name=value.")
    return overrides(fv, presets[preset])
