"""Verified checkpoints, and files written so they are never seen half-written.

`CheckpointKeeper` saves `ckpt-<step>` in three stages: write (TensorFlow's writer fills temporary
files and renames them), verify (read every tensor back: the index, every data shard and the
checksums), publish (rewrite the `checkpoint` state file, atomically, to name it). Only then are
old checkpoints beyond `max_to_keep` deleted, never the newest intact one. At start-up it verifies
the checkpoints newest first, reports each damaged one by file name, sets it aside
(`<file>.corrupt`) and resumes from the newest intact one. A reader that follows the state file
(the eval job) therefore only ever sees published, verified checkpoints. JSON results follow the
same rule via `write_json`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile

import tensorflow as tf


class CheckpointError(RuntimeError):
    """A checkpoint could not be read for the reason given."""


PREFIX = "ckpt"
_STEP = re.compile(r"^" + PREFIX + r"-(\d+)$")
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def step_of(path: str) -> int | None:
    """N of a `.../ckpt-N` prefix, else None."""
    m = _STEP.match(os.path.basename(path))
    return int(m.group(1)) if m else None


def verify(path: str) -> None:
    """Raises CheckpointError naming the damaged file unless the checkpoint at prefix `path` is
    complete: its index readable, every data shard present, every tensor readable with a matching
    checksum. Reads the whole checkpoint once (the cost of a restore)."""
    index = path + ".index"
    if not tf.io.gfile.exists(index):
        raise CheckpointError(f"{index} is missing")
    shards = [f for f in tf.io.gfile.glob(path + ".data-*") if _SHARD.search(f)]
    if shards:
        total = int(_SHARD.search(shards[0]).group(2))
        for i in range(total):
            name = f"{path}.data-{i:05d}-of-{total:05d}"
            if name not in shards:
                raise CheckpointError(f"{name} is missing (shard {i + 1} of {total})")
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as e:  # TF raises OpError subclasses or plain errors depending on the defect
        raise CheckpointError(f"{index} cannot be read ({first_line(e)})") from e
    data = ", ".join(os.path.basename(s) for s in sorted(shards)) or path + ".data-*"
    try:
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except Exception as e:  # truncated data: IndexError; flipped bytes: a checksum OpError
        raise CheckpointError(f"{os.path.dirname(path)}/{data} cannot be read "
                              f"({first_line(e)})") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


class CheckpointKeeper:
    """Saves, verifies, publishes, prunes and restores the `ckpt-<step>` checkpoints of one folder.

    Args:
      checkpoint: the tf.train.Checkpoint to save and restore.
      directory: the run's model_dir.
      max_to_keep: checkpoints kept on disk (>= 1); the newest intact one is never deleted.
      print_fn: where warnings about damaged checkpoints go.

    `latest_checkpoint` is the newest published checkpoint, as tf.train.latest_checkpoint sees it.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 5,
                 print_fn=print):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.checkpoint = checkpoint
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.print_fn = print_fn

    @property
    def latest_checkpoint(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def candidates(self, stated=None) -> list[str]:
        """Every `ckpt-N` prefix with an index file or named by the state file (`stated`, read
        when None), newest first."""
        found = {f[:-len(".index")] for f in tf.io.gfile.glob(
            os.path.join(self.directory, PREFIX + "-*.index"))}
        for path in self._state_paths() if stated is None else stated:
            found.add(path)
        return sorted((p for p in found if step_of(p) is not None), key=step_of, reverse=True)

    def _state_paths(self) -> list[str]:
        """The checkpoints the state file names (absolute); [] when it is absent or unreadable."""
        try:
            state = tf.train.get_checkpoint_state(self.directory)
        except Exception as e:  # a damaged state file: report it, rebuild it from the files
            self._warn(f"{os.path.join(self.directory, 'checkpoint')} cannot be parsed "
                       f"({first_line(e)}); rebuilding it from the checkpoint files")
            self._state_damaged = True
            return []
        if state is None:
            if tf.io.gfile.exists(os.path.join(self.directory, "checkpoint")):
                self._warn(f"{os.path.join(self.directory, 'checkpoint')} cannot be parsed; "
                           "rebuilding it from the checkpoint files")
                self._state_damaged = True
            return []
        paths = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
        return [p if os.path.isabs(p) or "://" in p else os.path.join(self.directory, p)
                for p in paths if p]

    def _warn(self, message: str) -> None:
        self.print_fn(f"warning: {message}", flush=True)

    def _set_aside(self, path: str) -> None:
        """Renames the files of a damaged checkpoint to `<file>.corrupt` (kept for inspection,
        invisible to every reader)."""
        for f in tf.io.gfile.glob(path + ".*"):
            if not f.endswith(".corrupt"):
                tf.io.gfile.rename(f, f + ".corrupt", overwrite=True)

    def _publish(self, intact: list[str]) -> None:
        """Rewrites the state file (atomically) to list `intact`, newest first, or removes it."""
        state = os.path.join(self.directory, "checkpoint")
        if not intact:
            if tf.io.gfile.exists(state):
                tf.io.gfile.remove(state)
            return
        names = [os.path.basename(p) for p in sorted(intact, key=step_of)]
        # The CheckpointState text proto tf.train.latest_checkpoint reads, names relative to the
        # folder; written to a temporary file and renamed, so readers see the old or the new one.
        text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
            f'all_model_checkpoint_paths: "{n}"\n' for n in names)
        tmp = os.path.join(self.directory, ".checkpoint.tmp")
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, state, overwrite=True)

    def intact(self) -> list[str]:
        """The intact checkpoints, newest first. Damaged ones (and a state file naming a
        checkpoint that is not there) are reported by file name and set aside, and the state file
        is rewritten to name only intact ones. Stops verifying at the newest intact one: older
        ones were verified when they were saved."""
        self._state_damaged = False
        stated = set(self._state_paths())
        good, changed = [], self._state_damaged
        for path in self.candidates(stated):
            if good:
                if tf.io.gfile.exists(path + ".index"):
                    good.append(path)
                else:
                    changed = True
                continue
            try:
                verify(path)
            except CheckpointError as e:
                where = "named by the state file but " if path in stated and not \
                    tf.io.gfile.exists(path + ".index") else ""
                self._warn(f"checkpoint {os.path.basename(path)} is {where}damaged: {e}; "
                           "skipping it and falling back to an older one")
                self._set_aside(path)
                changed = True
                continue
            good.append(path)
        if changed or (good and self.latest_checkpoint != good[0]):
            self._publish(good)
        return good

    def restore_latest(self) -> str | None:
        """Restores the newest intact checkpoint; returns its path, or None when there is none.

        Everything in the current object graph must be found in it (a resume is exact or it
        fails): another algorithm's or model size's checkpoint raises CheckpointError saying so.
        """
        good = self.intact()
        if not good:
            return None
        path = good[0]
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(
                f"Cannot resume from {path}: it does not match this model ({e}). "
                "Pass a fresh --model_dir, or the flags the run was started with.") from e
        return path

    def save(self, checkpoint_number: int) -> str:
        """Writes `ckpt-<checkpoint_number>`, verifies it, publishes it, then prunes old ones.

        A failed write (disk full, permissions, preemption of the storage) removes what it left
        and raises CheckpointError; the previously published checkpoint is untouched.
        """
        tf.io.gfile.makedirs(self.directory)
        prefix = os.path.join(self.directory, f"{PREFIX}-{checkpoint_number}")
        previous = self.latest_checkpoint
        try:
            self.checkpoint.save_counter.assign_add(1)  # as Checkpoint.save: one more save
            path = self.checkpoint.write(prefix)
            verify(path)
        except (OSError, tf.errors.OpError, CheckpointError) as e:
            self._remove(prefix)
            full = isinstance(e, OSError) and e.errno == errno.ENOSPC or \
                isinstance(e, tf.errors.ResourceExhaustedError) or "No space left" in str(e)
            cause = "the disk is full" if full else first_line(e)
            kept = (f"the previous checkpoint {os.path.basename(previous)} is intact and a "
                    "rerun resumes from it" if previous else "no earlier checkpoint exists")
            raise CheckpointError(
                f"Could not save checkpoint {prefix} ({cause}); {kept}. Free space or fix "
                f"{self.directory}, then rerun the same command.") from e
        kept = [p for p in self.candidates() if p != path and tf.io.gfile.exists(p + ".index")]
        kept = [path] + kept[:self.max_to_keep - 1]
        self._publish(kept)
        for old in self.candidates():
            if old not in kept and tf.io.gfile.exists(old + ".index"):
                self._remove(old)
        return path

    @staticmethod
    def _remove(prefix: str) -> None:
        for f in tf.io.gfile.glob(prefix + ".*"):
            if not f.endswith(".corrupt"):
                tf.io.gfile.remove(f)
        temp = prefix + "_temp"
        if tf.io.gfile.isdir(temp):  # the writer's staging folder, left by an interrupted save
            tf.io.gfile.rmtree(temp)


def resolve(path: str) -> str:
    """The ckpt-N prefix `path` names: itself, or the newest checkpoint of a directory (its
    `checkpoint` state file). Raises CheckpointError when there is none."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"No checkpoint in directory {path}; pass a ckpt-N prefix or a "
                                  "directory whose 'checkpoint' file names one.")
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise CheckpointError(f"No checkpoint at {path} (missing {path}.index); pass a ckpt-N "
                              "prefix or a directory that holds one.")
    return path


def restore_partial(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores what `checkpoint` and the file at `path` have in common (fine-tuning, evaluation).

    Raises CheckpointError when no variable of the model was found at all, the usual sign of a wrong
    path or another model's checkpoint.
    """
    path = resolve(path)
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
