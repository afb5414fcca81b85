"""CPU kernel sets: which vectorised kernels torch dispatches to, and how to pick another.

The same seed and recipe give slightly different floating-point results on an AVX-512, an AVX2 or
a plain CPU, because torch (ATen), oneDNN and MKL each pick kernels by the instructions the CPU
has. Three environment variables let one machine run the kernels of a lesser one, so a figure can
be checked on every kernel set a student's laptop may use:

    ATEN_CPU_CAPABILITY      torch's own kernels: default | avx2 | avx512
    ONEDNN_MAX_CPU_ISA       oneDNN (convolutions, int8): SSE41 | AVX2 | AVX512_CORE ...
    MKL_ENABLE_INSTRUCTIONS  MKL (matrix products): SSE4_2 | AVX2 | AVX512

They are read when torch loads, so they apply to a new process: ``make test-portable`` and
``labkit bench --kernels`` start one with ``env(name)``.

Example:
    >>> from labkit import kernels
    >>> kernels.env("default")["ATEN_CPU_CAPABILITY"]
    'default'
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from labkit.utils import check_choice

__all__ = ["KERNEL_SETS", "env", "current", "capability", "available"]

KERNEL_SETS: dict[str, dict[str, str]] = {
    "native": {},  # whatever this CPU supports best
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "default": {  # generic (non-vectorised) ATen kernels, SSE-level oneDNN and MKL
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
"""Kernel set name -> the environment variables that select it (``native``: none)."""

_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def env(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A process environment that runs the ``name`` kernel set.

    It starts from ``base`` (default ``os.environ``); ``native`` removes the three variables.
    Example: ``subprocess.run(cmd, env=env("avx2"))``
    """
    check_choice("name", name, tuple(KERNEL_SETS))
    out = {k: v for k, v in (os.environ if base is None else base).items() if k not in _VARS}
    out.update(KERNEL_SETS[name])
    return out


def current() -> dict[str, Any]:
    """This process's kernels: ``kernel_set``, ``capability`` and the variables.

    ``kernel_set`` is the name its environment asks for (``native`` when none); ``capability`` is
    what torch actually dispatches to, e.g. ``AVX512``.
    Example: ``current()["capability"]  # 'AVX2'``
    """
    import torch

    asked = {k: os.environ[k] for k in _VARS if k in os.environ}
    name = next((n for n, v in KERNEL_SETS.items() if v and v == asked), None)
    if name is None:
        name = "native" if not asked else "custom"
    return {
        "kernel_set": name,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "variables": asked,
    }


def capability(environ: dict[str, str] | None = None) -> str:
    """What torch dispatches to (e.g. ``AVX2``) in a new process with ``environ``.

    ``environ`` defaults to this process's; the variables are read when torch loads.
    Example: ``capability(env("default"))``
    """
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=environ, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def available(name: str) -> bool:
    """Whether this CPU can run the ``name`` kernel set.

    It can when torch, started in a new process with ``env(name)``, dispatches to that capability
    (it silently falls back when the CPU lacks it).
    Example: ``available("avx2")  # False on an Apple or other ARM CPU``
    """
    check_choice("name", name, tuple(KERNEL_SETS))
    if name == "native":
        return True
    return capability(env(name)).lower() == KERNEL_SETS[name]["ATEN_CPU_CAPABILITY"]
