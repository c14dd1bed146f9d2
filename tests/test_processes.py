"""ops/processes.py: a child in its own session, waited for, stopped with its whole group."""

from __future__ import annotations

import os
import sys
import time

import pytest

from ops.processes import ManagedProcess, NotReady, ProcessExited

SLEEPER = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)",
]


def test_stop_ends_the_process_and_every_process_it_started(tmp_path):
    log = tmp_path / "sleeper.log"
    with ManagedProcess(SLEEPER, log=log) as sleeper:
        sleeper.wait_until(lambda: "up" in log.read_text(), timeout=30, interval=0.05)
        group = ManagedProcess.attach(sleeper.pid, name="group")
        assert sleeper.running and group.running
    assert not sleeper.running and sleeper.returncode == -15  # SIGTERM
    deadline = time.monotonic() + 10  # the grandchild got the signal too; it is reaped by init a moment later
    while _group_alive(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(sleeper.pid), "a process of the group outlived stop()"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_process_that_exits_before_it_is_ready_raises_with_its_log(tmp_path):
    failing = ManagedProcess(
        [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"], log=tmp_path / "f.log"
    ).start()
    with pytest.raises(ProcessExited) as raised:
        failing.wait_until(lambda: False, timeout=30, interval=0.05)
    assert raised.value.returncode == 3 and "cannot bind" in raised.value.log_tail


def test_a_process_not_ready_in_time_raises_and_still_stops(tmp_path):
    with ManagedProcess(SLEEPER, log=tmp_path / "s.log") as sleeper:
        with pytest.raises(NotReady):
            sleeper.wait_until(lambda: False, timeout=0.3, interval=0.05)
        assert sleeper.running
    assert not sleeper.running
