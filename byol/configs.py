"""Named configs of byol: the small-scale CPU default and the paper's ImageNet runs.

The values live in common/presets.py (one table for the four algorithms); `python byol/train.py
--config=NAME` selects one, and flags given on the command line override it.
"""
from common import presets

PRESETS = presets.for_algorithm("byol")
DEFAULT = presets.small_name("byol")
