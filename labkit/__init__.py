"""labkit: the thin helper package behind the Efficient AI Lab notebooks.

Submodules load on first use, so ``import labkit`` stays fast and has no side effects:

    >>> import labkit
    >>> labkit.seed(0)                         # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> data = labkit.data.load("digits")      # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labkit.utils import get_device, seed

__version__ = "0.1.0"

_SUBMODULES = (
    "data",
    "models",
    "train",
    "measure",
    "sweep",
    "plots",
    "widgets",
    "attention",
    "prune",
    "quant",
    "distill",
    "dynamic",
    "condense",
    "bench",
    "ship",
    "course",
    "grading",
    "utils",
    "kernels",
    "cli",
)

__all__ = ["__version__", "seed", "get_device", *_SUBMODULES]

if TYPE_CHECKING:  # pragma: no cover
    from labkit import data, measure, models, plots, sweep, train, utils, widgets  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"labkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
