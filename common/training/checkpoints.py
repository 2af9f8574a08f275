"""Checkpoints through tf.train.CheckpointManager, and files written so they are never half-written.

TensorFlow's checkpoint writer saves into temporary files and renames them, and the manager updates
its `checkpoint` state file only after the data and index are complete, so an interrupted save leaves
the previous checkpoint as the latest one. JSON results follow the same rule via `write_json`.
"""
from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf


class CheckpointError(RuntimeError):
    """A checkpoint could not be read for the reason given."""


def make_manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 5,
                 step_counter: tf.Variable | None = None) -> tf.train.CheckpointManager:
    """A manager that names checkpoints `ckpt-<step>` in `directory`."""
    tf.io.gfile.makedirs(directory)
    return tf.train.CheckpointManager(
        checkpoint, directory, max_to_keep=max_to_keep, step_counter=step_counter)


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> str | None:
    """Restores the newest checkpoint in the manager's directory; returns its path or None.

    Everything in the current object graph must be found in the checkpoint (a resume is exact or
    it fails); a checkpoint from another algorithm or model size fails with a message saying so.
    """
    path = manager.latest_checkpoint
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise CheckpointError(
            f"Cannot resume from {path}: it does not match this model ({e}). "
            "Pass a fresh --model_dir, or the flags the run was started with.") from e
    return path


def restore_partial(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores what `checkpoint` and the file at `path` have in common (fine-tuning, evaluation).

    Raises CheckpointError when no variable of the model was found at all, the usual sign of a wrong
    path or another model's checkpoint.
    """
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"No checkpoint in directory {path}; pass a ckpt-N path or a "
                                  "model_dir that holds one.")
        path = latest
    if not tf.io.gfile.exists(path + ".index"):
        raise CheckpointError(f"No checkpoint at {path} (missing {path}.index).")
    status = checkpoint.restore(path)
    try:
        status.assert_nontrivial_match()
    except AssertionError as e:
        raise CheckpointError(f"Checkpoint {path} holds none of this model's variables.") from e
    status.expect_partial()


def write_json(path: str, obj) -> None:
    """Writes `obj` as JSON atomically: a temporary file in the same folder, then a rename."""
    directory = os.path.dirname(path) or "."
    tf.io.gfile.makedirs(directory)
    if "://" in path:  # object stores: gfile writes are already all-or-nothing
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
