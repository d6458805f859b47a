"""The execution setting that depends on the device, not on the data: the training
precision (``LearnConfig.precision="auto"``).

bf16 autocast only pays where the hardware computes in bf16. On a CPU with native bf16
(AVX512-BF16 or AMX) bf16 + ``channels_last_3d`` halved a training step (52 ms against
103 ms in fp32, AMD EPYC, ``benchmarks/bench_train.py``); on an AVX-512 Xeon without
it, oneDNN emulates bf16 and the same step took 1.8-2.6x *longer* than in fp32 (base
width 8, patch 32x48x48, batch 2, 2 threads: fp32 + channels_last 124 ms, fp32 175 ms,
bf16 + channels_last 325 ms). So the engine asks the CPU and falls back to fp32 where
bf16 would be emulated. On CUDA: bf16 where the card supports it, else fp32.
``channels_last_3d`` paid in both precisions and stays on by default.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from .config import LearnConfig

__all__ = ["cpu_has_native_bf16", "resolve_execution"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: a flag in /proc/cpuinfo; elsewhere
    assumed not, so that fp32 is the safe choice)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_execution(learn: LearnConfig, device: torch.device) -> tuple[LearnConfig, str]:
    """``learn`` with ``precision="auto"`` decided for ``device``, and one line saying
    what was chosen and why (a precision set by the caller is kept)."""
    if learn.precision != "auto":
        return learn, f"precision {learn.precision}: set in LearnConfig"
    if device.type == "cuda":
        fast = bool(torch.cuda.is_bf16_supported())
        why = "the GPU computes bf16" if fast else "this GPU has no bf16"
    else:
        fast = cpu_has_native_bf16()
        why = (
            "this CPU computes bf16 natively (AVX512-BF16 / AMX)"
            if fast
            else "this CPU has no native bf16 (AVX512-BF16 / AMX): emulated bf16 measured ~2x slower than fp32"
        )
    precision = "bf16" if fast else "fp32"
    return replace(learn, precision=precision), f"precision {precision}: {why}"
