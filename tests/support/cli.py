"""Commands as a user types them: `mnist-mlp ...` in this process, or any command as a subprocess."""

from __future__ import annotations

import subprocess
from pathlib import Path


def cli_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mnist-mlp ...` in this process (a subprocess would spend seconds importing torch):
    (exit code, stdout, stderr)."""
    from mnist_mlp.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`cmd` in `cwd`, output captured; with `check`, a non-zero exit fails the test showing both streams."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
