"""The machine and software a benchmark ran on: figures without these are not comparable."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path

# The flags that decide which kernels the runtimes pick.
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                "asimd", "asimddp", "i8mm", "bf16", "sve")
PACKAGES = ("ai-edge-litert", "tflite-runtime", "tensorflow", "tf-keras", "numpy",
            "onnxruntime", "onnx", "tf2onnx", "openvino", "nncf")


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def describe() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "cpu_model": info.get("model name") or info.get("Hardware") or platform.processor(),
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "all_flags": sorted(flags),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30,
                           1) if hasattr(os, "sysconf") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found
