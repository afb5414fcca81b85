"""The exams (notebooks 98 and 99): the numbers of a paper, drawn from a seed.

An exam's questions read their shapes, sizes and settings from ``paper(EXAM_SEED)``, and its tests
compute the expected answers from references (PyTorch, labkit's tested functions) for whatever
numbers were drawn; so an instructor makes a fresh paper by changing ``EXAM_SEED`` and the exam
stays gradable. Nothing is cached: an exam trains nothing and runs in seconds.

Example:
    >>> from labkit.course import nb99_exam as exam
    >>> P = exam.paper(7)
    >>> sorted(P)[:3]
    ['affine', 'amdahl', 'block']
"""

from __future__ import annotations

import random
from typing import Any

from labkit.utils import check_int

__all__ = ["DTYPE_BYTES", "ask", "paper"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
"""Bytes per element of the dtypes a question may name."""


def _mlp(r: random.Random) -> dict[str, Any]:
    sizes = (
        r.choice([64, 128, 256, 784]),
        r.choice([200, 256, 300, 512, 1024]),
        r.choice([64, 100, 128, 256]),
        r.choice([2, 10, 35, 100]),
    )
    return {"sizes": sizes, "dtype": r.choice(["float16", "bfloat16", "float32"])}


def _conv(r: random.Random) -> dict[str, Any]:
    k = r.choice([1, 3, 5, 7])
    return {
        "c_in": r.choice([3, 8, 16, 32, 64]),
        "c_out": r.choice([16, 24, 32, 64, 96]),
        "k": k,
        "size": r.choice([14, 17, 28, 32, 56]),
        "stride": r.choice([1, 2]),
        "padding": r.choice(sorted({0, k // 2})),
    }


def _separable(r: random.Random) -> dict[str, Any]:
    return {
        "c_in": r.choice([16, 32, 48, 64]),
        "c_out": r.choice([32, 64, 96, 128]),
        "k": r.choice([3, 5]),
        "size": r.choice([14, 16, 28, 32]),
    }


def _kv(r: random.Random) -> dict[str, Any]:
    return {
        "n_layer": r.choice([12, 16, 24, 32, 40]),
        "n_head": r.choice([8, 12, 16, 32]),
        "head_dim": r.choice([64, 80, 128]),
        "seq_len": r.choice([1024, 2048, 4096, 8192]),
        "batch": r.choice([1, 4, 8, 16]),
        "dtype": r.choice(["float16", "bfloat16", "float32", "int8"]),
    }


def _amdahl(r: random.Random) -> dict[str, Any]:
    stages = {
        "embedding and norms": r.randint(2, 12),
        "attention": r.randint(10, 60),
        "MLP": r.randint(20, 90),
        "data loading": r.randint(5, 40),
    }
    return {"ms": stages, "stage": r.choice(["attention", "MLP"]), "factor": r.choice([2, 3, 4, 8])}


def _layer(r: random.Random) -> dict[str, Any]:
    return {
        "out_features": r.choice([64, 96, 128, 256, 384]),
        "in_features": r.choice([128, 200, 256, 512, 768]),
        "sparsity": r.choice([0.3, 0.5, 0.6, 0.75, 0.9]),
        "bits": r.choice([2, 3, 4, 6, 8]),
    }


def _affine(r: random.Random) -> dict[str, Any]:
    return {
        "x_min": -round(r.uniform(0.05, 4.0), 2),
        "x_max": round(r.uniform(0.5, 8.0), 2),
        "bits": 8,
    }


def _exits(r: random.Random) -> dict[str, Any]:
    first = r.randint(300, 700)
    second = r.randint(50, 1000 - first - 50)
    base = r.randint(2, 9) * 1000
    macs = [base, base * 2 + r.randint(1, 9) * 100, base * 3 + r.randint(10, 99) * 100]
    return {"counts": [first, second, 1000 - first - second], "macs": macs}


def _moe(r: random.Random) -> dict[str, Any]:
    return {
        "dim": r.choice([16, 32, 64, 128]),
        "hidden": r.choice([64, 128, 256, 512]),
        "n_experts": r.choice([4, 8, 16, 32]),
        "top_k": r.choice([1, 2]),
    }


def _block(r: random.Random) -> dict[str, Any]:
    d = r.choice([64, 96, 128, 256, 384, 512])
    return {"d_model": d, "d_ff": d * r.choice([2, 4]), "n_head": r.choice([2, 4, 8])}


def _synthetic(r: random.Random) -> dict[str, Any]:
    return {
        "classes": r.choice([10, 20, 100]),
        "ipc": r.choice([1, 5, 10, 50]),
        "channels": r.choice([1, 3]),
        "size": r.choice([8, 16, 28, 32]),
        "dtype": r.choice(["float16", "float32"]),
    }


def _csr(r: random.Random) -> dict[str, Any]:
    return {"dtype": r.choice(["float32", "float16"]), "index_bits": r.choice([8, 16, 32])}


_DRAWS = {
    "affine": _affine,
    "amdahl": _amdahl,
    "block": _block,
    "conv": _conv,
    "csr": _csr,
    "exits": _exits,
    "kv": _kv,
    "layer": _layer,
    "mlp": _mlp,
    "moe": _moe,
    "separable": _separable,
    "synthetic": _synthetic,
}


def paper(seed: int) -> dict[str, dict[str, Any]]:
    """The numbers of one exam paper, drawn from ``seed`` (plain data: ints, floats, strings).

    One entry per kind of question (``"mlp"``, ``"conv"``, ``"kv"``, ``"amdahl"``, ``"layer"``,
    ``"affine"``, ``"exits"``, ``"moe"``, ``"block"``, ``"separable"``, ``"synthetic"``, ``"csr"``),
    each drawn from its own stream, so a question's numbers do not move when another kind is added.
    The same seed gives the same paper on every machine and Python.

    Example: ``paper(2026)["kv"]  # {'n_layer': ..., 'n_head': ..., 'dtype': ...}``
    """
    seed = check_int("seed", seed, minimum=0)
    return {name: draw(random.Random(f"{seed}/{name}")) for name, draw in _DRAWS.items()}


def ask(text: str) -> None:
    """Show a question (markdown ``text`` with the paper's numbers filled in) in the notebook.

    Example: ``ask(f"**A3 (2 points).** A decoder with {P['kv']['n_layer']} layers ...")``
    """
    from IPython.display import Markdown, display

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty markdown string; got {text!r}")
    display(Markdown(text))
