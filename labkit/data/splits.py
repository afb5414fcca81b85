"""Deterministic stratified train/val/test splits of the embedded array datasets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from labkit import utils
from labkit.data.containers import ArrayData

_DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _split_embedded(
    name: str, X: np.ndarray, y: np.ndarray, num_samples: int | None, seed: int
) -> ArrayData:
    """Stratified test (20 %) / val (10 %) / train split, then optionally subsample train."""
    n = len(y)
    test, val, train = _stratified_split(y, [_ceil_percent(n, 20), _ceil_percent(n, 10)], seed)
    if num_samples is not None:
        utils.check_int("num_samples", num_samples, minimum=1, maximum=len(train))
        train = train[_stratified_split(y[train], [num_samples], seed + 1)[0]]
    X_t, y_t = torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(y)
    parts = [t for idx in (train, val, test) for t in (X_t[idx], y_t[idx].long())]
    return ArrayData(
        name, *parts, num_classes=10, input_shape=tuple(X.shape[1:]), classes=_DIGIT_CLASSES
    )


def _ceil_percent(n: int, percent: int) -> int:
    return (n * percent + 99) // 100


def _stratified_split(y: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Split indices 0..N-1 into parts of ``sizes`` plus a last part with the rest.

    Each class is spread over the parts in proportion to its count (largest remainder, ties to the
    smaller class), members drawn by a seeded shuffle; each part comes back sorted.
    """
    rng = np.random.default_rng(seed)
    labels, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels))
    left = counts.copy()
    allocations = []
    for size in sizes:
        quota = counts * size / len(y)
        take = np.minimum(np.floor(quota).astype(np.int64), left)
        frac = quota - take
        while take.sum() < size:
            order = np.lexsort((np.arange(len(labels)), -frac))  # biggest remainder first
            c = next(c for c in order if take[c] < left[c])
            take[c] += 1
            frac[c] -= 1.0
        left -= take
        allocations.append(take)
    allocations.append(left)
    parts: list[list[np.ndarray]] = [[] for _ in allocations]
    for c in range(len(labels)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        bounds = np.cumsum([0] + [int(a[c]) for a in allocations])
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            part.append(members[lo:hi])
    return [np.sort(np.concatenate(p)) for p in parts]
