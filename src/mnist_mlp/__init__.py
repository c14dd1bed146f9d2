"""MNIST MLP: a DVC pipeline with every run in MLflow."""

import importlib.util
import sys

__version__ = "0.1.0"

# A stage started by a Python without the project's packages (`dvc` outside the venv runs the
# system `python`) would end in a ModuleNotFoundError traceback deep in an import.
_missing = [name for name in ("torch", "pydantic", "yaml") if importlib.util.find_spec(name) is None]
if _missing:
    sys.exit(f"mnist-mlp: error: {sys.executable} lacks {', '.join(_missing)}; run inside the project's venv: "
             "`source .venv/bin/activate` (`make install` creates it)")
