"""Kernel sets: the environment that selects them, what torch dispatches to, the Makefile."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import kernels

ROOT = Path(__file__).resolve().parent.parent
_PROBE = "import json; from labkit import kernels; print(json.dumps(kernels.current()))"


def _current_in(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_env_sets_or_clears_the_three_variables():
    base = {"PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert kernels.env("native", base) == {"PATH": "/bin"}
    generic = kernels.env("default", base)
    assert generic["ATEN_CPU_CAPABILITY"] == "default" and generic["PATH"] == "/bin"
    assert generic["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert base["ATEN_CPU_CAPABILITY"] == "avx2"  # the base is not modified
    with pytest.raises(ValueError, match="^name must be one of"):
        kernels.env("avx1024")


@pytest.mark.parametrize("name", ["native", "default"])
def test_a_new_process_runs_the_kernel_set_it_asks_for(name):
    got = _current_in(kernels.env(name))
    assert got["kernel_set"] == name
    if name == "default":  # every x86 and ARM CPU can run the generic kernels
        assert got["capability"] == "DEFAULT"
        assert kernels.available("default")
    else:
        assert got["variables"] == {}


def test_avx2_is_available_exactly_when_torch_dispatches_to_it():
    got = _current_in(kernels.env("avx2"))
    assert kernels.available("avx2") == (got["capability"] == "AVX2")
    assert kernels.available("native")


def test_a_partial_setting_is_reported_as_custom():
    env = {**kernels.env("native"), "ATEN_CPU_CAPABILITY": "default"}
    got = _current_in(env)
    assert got["kernel_set"] == "custom" and got["capability"] == "DEFAULT"


def test_the_makefile_uses_the_same_kernel_sets():
    makefile = (ROOT / "Makefile").read_text()
    for name, variables in kernels.KERNEL_SETS.items():
        if not variables:
            continue
        line = re.search(rf"^KERNELS_{name}\s*:=\s*(.*)$", makefile, re.M)
        assert line, f"Makefile lacks KERNELS_{name}"
        assert dict(v.split("=", 1) for v in line.group(1).split()) == variables


def test_capability_reads_a_new_process():
    assert kernels.capability(kernels.env("default")) == "DEFAULT"
    assert (
        kernels.capability(kernels.env("native"))
        == _current_in(kernels.env("native"))["capability"]
    )
