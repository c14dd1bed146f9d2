"""What made a run besides its params, data and code: the CPU kind, the kernels torch chose, the versions.

On the CPU, the same params give the same model bytes only on the same kind of CPU. MKL picks its
matrix-multiply kernels by vendor and instruction set, and its fixed branches (MKL_CBWR) other than
COMPATIBLE are for Intel processors only; torch picks its own kernels by instruction set
(docs/reproducibility.md has the measurements). So every run records its maker, and a committed
dvc.lock is checked bit for bit only on the CPU kind that made it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch

VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_kind() -> str:
    """The vendor and the instruction set torch's kernels use here, e.g. 'Intel AVX512' or 'AMD AVX2':
    what decides a CPU run's last bits."""
    vendor = _cpuinfo().get("vendor_id", platform.machine())
    return f"{VENDORS.get(vendor, vendor)} {torch.backends.cpu.get_cpu_capability()}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def made_by(device: torch.device) -> dict[str, str]:
    """What made a run: the device, CPU model and kind, the versions of torch, MLflow, DVC and Python, and MKL's
    reproducibility mode (mnist_mlp.MKL_CBWR unless the environment set another)."""
    made = {
        "device": str(device),
        "cpu": _cpuinfo().get("model name", platform.processor() or platform.machine()),
        "cpu_kind": cpu_kind(),
        "torch": torch.__version__,
        "mlflow": _version("mlflow"),
        "dvc": _version("dvc"),
        "python": platform.python_version(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "unset"),
    }
    if device.type == "cuda":
        made["gpu"] = torch.cuda.get_device_name(device)
    return made
