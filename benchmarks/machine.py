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
# Whether int8 has a dot-product instruction decides what int8 buys: with it (VNNI on x86,
# sdot on ARM) an int8 multiply-add costs a fraction of a float one; without it (AVX2 only,
# Cortex-A72 as in the Raspberry Pi 4) int8 kernels widen to 16 bits and gain far less.
INT8_DOT_PRODUCT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                    "amx_int8": "AMX", "asimddp": "sdot (ARMv8.2 dotprod)"}
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
        "cpu_class": cpu_class(platform.machine(), flags),
        "all_flags": sorted(flags),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30,
                           1) if hasattr(os, "sysconf") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def cpu_class(architecture: str, flags: set[str]) -> str:
    """`x86_64 with int8 dot product (AVX-512 VNNI, AMX)`, `x86_64 without int8 dot
    product (AVX2)`, `aarch64 with int8 dot product (sdot ...)`, ..."""
    dot = [name for flag, name in INT8_DOT_PRODUCT.items() if flag in flags]
    if dot:
        return f"{architecture} with int8 dot product ({', '.join(dot)})"
    widest = next((f.upper() for f in ("avx512f", "avx2", "avx", "asimd") if f in flags), None)
    return f"{architecture} without int8 dot product" + (f" ({widest})" if widest else "")


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found
