"""Interrupting a training run the hard way, as a crash or a killed job would."""

import json
import signal
import subprocess
import time


def kill_after_first_epoch(argv, out, env, timeout=300, poll=0.1):
    """Start `argv`, SIGKILL it once `out`/state.json records a finished epoch (or after
    `timeout` seconds), and return the epoch its state.json holds then."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["epoch"]
