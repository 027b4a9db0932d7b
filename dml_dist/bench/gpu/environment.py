"""What ``bench gpu`` runs on: device, versions, and which optional packages it can use.

Optional packages are looked up without importing them (``importlib.util.find_spec``): Ray or
DeepSpeed take seconds to import, and a package that is found but fails to import (faiss-gpu
without its CUDA libraries, say) is reported by the section that uses it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any

import torch
import torch.distributed

OPTIONAL_PACKAGES = {
    "deepspeed": "deepspeed",
    "faiss": None,  # faiss-cpu, faiss-gpu, faiss-gpu-cu12, ...: the distribution is looked up
    "ray": "ray",
    "webdataset": "webdataset",
    "prometheus_client": "prometheus-client",
    "yaml": "PyYAML",
}
"""Import name -> distribution name of the dependencies that ``bench gpu`` can do without."""

PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (HBM3); the name reads "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
]
"""Dense bf16 tensor-core peak per GPU model (NVIDIA data sheets, without sparsity), matched in
this order against the device name; the first match wins, so specific names come first."""


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the named GPU, None when it is not in ``PEAK_BF16_TFLOPS``."""
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment in device_name:
            return tflops
    return None


def optional_packages() -> dict[str, str | None]:
    """Import name -> installed version, or None where the package cannot be found."""
    found: dict[str, str | None] = {}
    for module, distribution in OPTIONAL_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            found[module] = None
            continue
        names = [distribution] if distribution else importlib.metadata.packages_distributions().get(module, [])
        versions = [f"{name} {_version(name)}" for name in names]
        found[module] = ", ".join(versions) or "found"
    return found


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def describe(device: torch.device) -> dict[str, Any]:
    """The environment section of the report."""
    import timm

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu_count": os.cpu_count(),
        "optional_packages": optional_packages(),
    }
    if device.type != "cuda":
        return {**info, "device": "cpu", "num_gpus": 0, "cuda": None, "nccl": None, "bf16_supported": False}
    props = torch.cuda.get_device_properties(device)
    nccl = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
    return {
        **info,
        "device": props.name,
        "num_gpus": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 2),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "nccl": ".".join(str(part) for part in nccl) if isinstance(nccl, tuple) else nccl,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "peak_bf16_tflops": peak_bf16_tflops(props.name),
    }
