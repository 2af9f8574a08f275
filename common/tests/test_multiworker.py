"""Two worker processes on localhost under MultiWorkerMirroredStrategy (TF_CONFIG) train together."""
import json
import os
import socket
import subprocess
import sys

import numpy as np


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_run_training_steps_and_agree(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    worker = os.path.join(os.path.dirname(__file__), "multiworker_worker.py")
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, worker, str(i), str(tmp_path / f"{i}.npz")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    a, b = np.load(tmp_path / "0.npz"), np.load(tmp_path / "1.npz")
    assert int(a["step"]) == int(b["step"]) == 2
    assert np.isfinite(a["ssl"]) and a["ssl"] == b["ssl"]
    keys = [k for k in a.files if k.startswith("v")]
    assert keys
    for k in keys:  # synchronised training: every variable identical on both workers
        np.testing.assert_array_equal(a[k], b[k])
    # Both started from the same weights, and the steps moved them.
    for k in keys:
        np.testing.assert_array_equal(a["i" + k[1:]], b["i" + k[1:]])
    assert sum(not np.array_equal(a[k], a["i" + k[1:]]) for k in keys) > len(keys) // 2
