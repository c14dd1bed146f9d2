"""MNIST MLP: a DVC pipeline with every run in MLflow."""

import importlib.util
import os
import sys

__version__ = "0.1.0"

# MKL's strict reproducibility mode: its matrix multiplies give the same bits whatever the thread count, so
# training may use every core (docs/reproducibility.md: 1.05x the time on one thread). MKL reads the variable
# at its first call, which nothing in this package makes before this line has run.
MKL_CBWR = "AUTO,STRICT"
os.environ.setdefault("MKL_CBWR", MKL_CBWR)

# A stage started by a Python without the project's packages (`dvc` outside the venv runs the
# system `python`) would end in a ModuleNotFoundError traceback deep in an import.
_missing = [name for name in ("torch", "pydantic", "yaml") if importlib.util.find_spec(name) is None]
if _missing:
    sys.exit(
        f"mnist-mlp: error: {sys.executable} lacks {', '.join(_missing)}; run inside the project's venv: "
        "`source .venv/bin/activate` (`make install` creates it)"
    )
