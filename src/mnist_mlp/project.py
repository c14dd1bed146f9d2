"""Where the project is, and how a command line reports a failure the user can fix."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_mlp.errors import UserError


def repo_root(start: Path | None = None) -> Path:
    """DVC_ROOT when DVC runs us (experiments run in a temp copy), else the nearest folder with `.dvc/`."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def _fail(name: str, exc: UserError) -> None:
    for line in str(exc).splitlines():
        print(f"{name}: error: {line}", file=sys.stderr)
    sys.exit(1)


def run_cli(
    name: str, main: Callable[[], object], explain: Callable[[BaseException], UserError | None] | None = None
) -> None:
    """Run `main`; a known failure prints `name: error: ...` and exits 1, Ctrl-C/SIGTERM exits 130. `explain`
    turns another exception into a known failure, or None (e.g. tracking.failures.store_failure: a locked or
    damaged store surfaces as SQLAlchemy's error from deep inside MLflow)."""
    try:
        main()
    except UserError as exc:
        _fail(name, exc)
    except Exception as exc:
        known = explain(exc) if explain else None
        if known is None:
            raise
        _fail(name, known)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; outputs of earlier runs are left as they were", file=sys.stderr)
        sys.exit(130)
