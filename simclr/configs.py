"""Named configs of simclr: the small-scale CPU default and the paper's ImageNet runs.

The values live in common/presets.py (one table for the four algorithms); `python simclr/train.py
--config=NAME` selects one, and flags given on the command line override it.
"""
from common import presets

PRESETS = presets.for_algorithm("simclr")
DEFAULT = presets.small_name("simclr")
