"""Named configs of cbyol: the small-scale CPU default and the paper's ImageNet runs.

The values live in common/presets.py (one table for the four algorithms); `python cbyol/train.py
--config=NAME` selects one, and flags given on the command line override it.
"""
from common import presets

PRESETS = presets.for_algorithm("cbyol")
DEFAULT = presets.small_name("cbyol")
