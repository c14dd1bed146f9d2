"""core/machine.py: what made a run is recorded, and the CPU kind follows the kernels torch really uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata

import torch

from mnist_mlp.core import machine


def test_made_by_names_the_device_cpu_kind_and_versions():
    made = machine.made_by(torch.device("cpu"))
    assert made["device"] == "cpu" and made["torch"] == torch.__version__
    assert made["mlflow"] == metadata.version("mlflow") and made["dvc"] == metadata.version("dvc")
    assert made["cpu_kind"] == machine.cpu_kind() and made["cpu"]
    assert re.fullmatch(r"\S+ (DEFAULT|AVX2|AVX512|ZVECTOR|SVE\d*)", made["cpu_kind"])


def test_the_cpu_kind_is_the_instruction_set_torch_runs_not_the_one_the_cpu_has():
    """ATEN_CPU_CAPABILITY moves torch to other kernels (other last bits): the kind follows it."""
    code = "from mnist_mlp.core.machine import cpu_kind; print(cpu_kind())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    kind = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert kind.endswith(" DEFAULT") and kind.split()[0] == machine.cpu_kind().split()[0]
