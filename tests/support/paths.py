"""Where things are: the repository the tests run from, and the venv's bin folder (dvc, mnist-mlp, mlflow)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
