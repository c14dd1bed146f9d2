"""A server-like child process: started in its own session, waited for until it is ready, stopped with its group.

    server = ManagedProcess([...], log=tmp_path / "server.log", env=env).start()
    try:
        server.wait_until(lambda: url_answers(f"{base}/health", body=b"OK"), timeout=180)
        ...
    finally:
        server.stop()

or, the same, `with ManagedProcess([...], log=...) as server: server.wait_until(...)`.

Its own session (start_new_session=True) makes its pid the id of a process group that holds it and
every process it starts (uvicorn or gunicorn workers) and nothing else: one signal to the group ends
them all, and a Ctrl-C in the terminal reaches only this process, which then stops the group itself.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TAIL_CHARS = 3000  # of the log, in the message of a process that exited or was not ready in time


class ProcessError(RuntimeError):
    """The process exited before it was ready (`returncode` set), or was not ready in time (`returncode` None).

    The message names it and ends with the tail of its log (also in `log_tail`, for a one-line error).
    """

    def __init__(self, reason: str, returncode: int | None, log_tail: str = ""):
        super().__init__(f"{reason}; the end of its log:\n{log_tail}" if log_tail else reason)
        self.returncode, self.log_tail = returncode, log_tail


class ProcessExited(ProcessError):
    """It exited before `ready()` held."""


class NotReady(ProcessError):
    """It was still running, but `ready()` did not hold within the timeout."""


def _exists(pid: int) -> bool:
    """A process with this pid exists, a zombie not yet reaped included (tracking/stale.py's `_running` is stricter)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class ManagedProcess:
    """One command in its own session.

    `log`: the file its stdout and stderr are appended to (a restart keeps the earlier output), its
    stdin then /dev/null; None: this process's stdout, stderr and stdin (a server in the foreground).
    """

    def __init__(
        self,
        command: Sequence[str],
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ):
        self.command, self.env, self.cwd = [str(part) for part in command], env, cwd
        self.log = Path(log) if log is not None else None
        self.name = name or Path(self.command[0]).name
        self.popen: subprocess.Popen | None = None
        self._pid: int | None = None

    @classmethod
    def attach(cls, pid: int, name: str = "process") -> ManagedProcess:
        """A process group that another process started (its pid from a pid file): `running` and `stop` work on it."""
        attached = cls([name], name=name)
        attached._pid = pid
        return attached

    def start(self) -> ManagedProcess:
        if self.log is None:
            self.popen = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, start_new_session=True)
        else:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as log:  # the child keeps its own descriptor
                self.popen = subprocess.Popen(
                    self.command,
                    env=self.env,
                    cwd=self.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        self._pid = self.popen.pid
        return self

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Its exit code once it has ended (None while it runs, and always for an attached process)."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self._pid is None:
            return False
        try:
            os.waitpid(self._pid, os.WNOHANG)  # reaped if it is our child after all, so that it stops counting as alive
        except ChildProcessError:
            pass
        return _exists(self._pid)

    def log_tail(self, chars: int = TAIL_CHARS) -> str:
        if self.log is None or not self.log.is_file():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(max(0, self.log.stat().st_size - chars))
            return handle.read().decode("utf-8", "replace")

    def wait_until(self, ready: Callable[[], object], timeout: float, interval: float = 0.5) -> None:
        """Return once `ready()` is true (an OSError from it counts as not yet); raise ProcessExited if the
        process ends first, NotReady after `timeout` seconds. Checked in that order, then a pause of `interval`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            if not self.running:
                code = self.returncode
                raise ProcessExited(f"{self.name} exited with code {code} before it was ready", code, self.log_tail())
            if time.monotonic() > deadline:
                raise NotReady(f"{self.name} was not ready within {timeout:.0f} s", None, self.log_tail())
            time.sleep(interval)

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it ends (subprocess.TimeoutExpired after `timeout` s)."""
        if self.popen is None:
            raise RuntimeError(f"{self.name}: wait() needs a process this one started")
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to its group; SIGKILL to the group if it is still running `timeout` s later. Nothing if it has
        already ended. Its exit code (None for an attached process, which is not ours to reap)."""
        if not self.running:
            return self.returncode
        self._signal_group(signal.SIGTERM)
        if self.popen is not None:
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                return self.popen.wait()
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running:
            self._signal_group(signal.SIGKILL)
        return None

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group ended in the meantime
            os.killpg(self.pid, signum)

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.popen is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def url_answers(url: str, timeout: float = 2.0, body: bytes | None = None) -> bool:
    """Whether GET `url` answers 200 (and, with `body`, that body, spaces around it aside); False when it
    refuses, fails or answers anything else."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200 and (body is None or response.read().strip() == body)
    except (OSError, urllib.error.URLError, http.client.HTTPException):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now (bound, then closed): for a server about to start there."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
