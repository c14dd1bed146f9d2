"""What the tests must leave as they found it: every file of the checkout, but for caches of Python and tools."""

from __future__ import annotations

import os
from pathlib import Path

from support.paths import ROOT

# made by Python, pytest and ruff themselves, or the venv and git's own folder: not a test's doing
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = (".egg-info",)


def snapshot(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime in ns)} of every file under `root`, but for SKIPPED_DIRS."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(SKIPPED_SUFFIXES)]
        for name in names:
            path = Path(folder) / name
            try:
                stat = path.lstat()
            except FileNotFoundError:  # removed while walking
                continue
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def checkout_changes(before: dict, after: dict) -> list[str]:
    """'added X', 'removed X', 'changed X' lines, sorted by path."""
    lines = [f"added {path}" for path in after.keys() - before.keys()]
    lines += [f"removed {path}" for path in before.keys() - after.keys()]
    lines += [f"changed {path}" for path in before.keys() & after.keys() if before[path] != after[path]]
    return sorted(lines, key=lambda line: line.split(" ", 1)[1])
