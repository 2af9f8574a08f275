"""Fault injection through a real process, where the signal and the exit status are the point:
SIGTERM during training checkpoints at the next step and exits 0."""
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "simclr"  # any trainer: the signal handling lives in common's loop


def _command(model_dir, steps):
    return [sys.executable, os.path.join(ROOT, PACKAGE, "train.py"), f"--model_dir={model_dir}",
            f"--train_steps={steps}", "--mode=train", "--train_batch_size=16",
            "--train_split=train[:1024]", "--image_size=16", "--width_multiplier=0.0625",
            "--proj_head_hidden_dim=16", "--proj_out_dim=8", "--checkpoint_steps=100000",
            "--train_summary_steps=100000", "--jit_compile=false"]


def test_sigterm_checkpoints_exits_0_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # 5000 steps in one compiled loop: the run is stopped by the signal, far from any boundary.
    proc = subprocess.Popen(_command(run, 5000), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(300, proc.kill)  # a hung run fails the test instead of CI
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("start-up") or re.match(r"^step \d+/", line):
                proc.send_signal(signal.SIGTERM)  # training is under way (handler installed)
                break
        lines += proc.stdout.readlines()
        code = proc.wait()
    finally:
        timer.cancel()
    log = "".join(lines)
    assert code == 0, log[-3000:]
    m = re.search(r"SIGTERM received: stopped at step (\d+) of 5000 with checkpoint (\S+);", log)
    assert m, log[-3000:]
    step = int(m.group(1))
    assert 1 <= step < 5000 and m.group(2).endswith(f"ckpt-{step}")
    assert (run / f"ckpt-{step}.index").exists()
    assert "probe on" not in log  # the evaluation after training is skipped

    # The same command resumes from it (exactness: test_faults.py's in-process SIGTERM test).
    from common.training import checkpoints
    checkpoints.verify(str(run / f"ckpt-{step}"))
    assert open(run / "checkpoint").read().startswith(f'model_checkpoint_path: "ckpt-{step}"')
