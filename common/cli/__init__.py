"""The command line every algorithm's `train.py` runs.

- `settings`: the configuration dataclasses (their fields are the flags) and the tree utilities
  (`with_overrides`, `problems`, `differences`).
- `presets`: the bases of every named preset (the paper's ImageNet recipe, the small CPU default,
  the release's defaults).
- `flags`: absl flags generated from a configuration, and the explicit overrides read back.
- `job`: `TrainerSpec` and `run`, the job itself (checks, config.json, train / eval / fine-tune).
"""
