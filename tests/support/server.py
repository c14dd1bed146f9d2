"""A real MLflow tracking server for tests: `mlflow server` on a fresh PostgreSQL database, on a free port.

Needs the machine set up by `make server-deps` (PostgreSQL running, the `mlflow` role with CREATEDB, its
password in the environment or the secrets file). Each server gets its own database, dropped afterwards
(ops.server.scratch_server), so tests never see the team's runs nor leave theirs behind.

    pg_server                                            # conftest.py's module-scoped fixture: a ServerProcess
    with tracking_server(folder, auth=True) as server:   # your own lifetime
        server.uri, server.restart(), server.stop()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import server


@contextlib.contextmanager
def tracking_server(folder: Path, auth: bool = False) -> Iterator[server.ServerProcess]:
    try:
        with server.scratch_server(folder, auth=auth, timeout=300) as started:
            yield started
    except server.ServerError as exc:
        pytest.fail(f"the server tests need `make server-deps` (as root) first: {exc}")
