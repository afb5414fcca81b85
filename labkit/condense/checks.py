"""Argument checks shared by the package: labels, sample tensors, images per class, rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labkit.utils import check_int


def check_labels(y: Any, n: int | None = None, name: str = "y") -> Tensor:
    """``y`` as a 1-D int64 tensor of labels >= 0 (length ``n`` if given), else ValueError."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype not in (torch.int32, torch.int64):
        shown = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor of labels; got {shown}")
    if n is not None and len(y) != n:
        raise ValueError(f"{name} must hold one label per sample ({n}); got {len(y)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0; got {int(y.min())}")
    return y.long()


def _check_X(X: Any, name: str = "X", dims: int | None = None) -> Tensor:
    if not isinstance(X, Tensor) or not X.is_floating_point() or X.dim() < 2 or len(X) == 0:
        shown = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
        raise ValueError(f"{name} must be a non-empty float tensor (N, ...); got {shown}")
    if dims is not None and X.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions; got shape {tuple(X.shape)}")
    return X


def class_counts(y: Tensor) -> dict[int, int]:
    """``{class: count}`` of the labels present, classes in increasing order.

    Example: ``class_counts(torch.tensor([0, 2, 2]))  # {0: 1, 2: 2}``
    """
    y = check_labels(y)
    values, counts = torch.unique(y, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _check_ipc(ipc: Any, y: Tensor) -> int:
    counts = class_counts(y)
    fewest = min(counts.values())
    return check_int("ipc", ipc, minimum=1, maximum=fewest)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return float(value)
