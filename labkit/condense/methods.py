"""One entry point: a condensed training set by method name."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from labkit.condense.checks import _check_X, check_labels
from labkit.condense.coresets import (
    class_means,
    herding,
    kcenter_greedy,
    kmeans_centroids,
    random_select,
)
from labkit.condense.synthetic import distribution_matching, gradient_matching
from labkit.utils import check_choice

METHODS = ("random", "herding", "kcenter", "means", "kmeans", "dm", "gm")
"""Names ``condense`` accepts: three coresets, two non-learned baselines, two learned sets."""


def condense(
    method: str,
    X: Tensor,
    y: Tensor,
    ipc: int,
    *,
    features: Tensor | None = None,
    seed: int = 0,
    augment: int = 0,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """A condensed training set ``(X_s, y_s)`` of ``ipc`` images per class by ``method``.

    ``method``: 'random', 'herding', 'kcenter' (coresets: need ``features`` (N, D) for the last
    two), 'means' (``ipc`` must be 1), 'kmeans', 'dm' or 'gm' (learned; ``augment`` and
    ``options`` go to ``distribution_matching`` / ``gradient_matching``).
    Example: ``X_s, y_s = condense("dm", X, y, 10, augment=1, num_iters=100)``
    """
    check_choice("method", method, METHODS)
    X = _check_X(X)
    y = check_labels(y, len(X))
    if method in ("herding", "kcenter") and features is None:
        raise ValueError(f"features must be given for method {method!r}; got None")
    if method == "means" and ipc != 1:
        raise ValueError(f"ipc must be 1 for method 'means'; got {ipc!r}")
    if options and method not in ("kmeans", "dm", "gm"):
        raise ValueError(f"options are only for 'kmeans', 'dm' and 'gm'; got {sorted(options)}")
    if method == "random":
        idx = random_select(y, ipc, seed)
    elif method == "herding":
        idx = herding(features, y, ipc)
    elif method == "kcenter":
        idx = kcenter_greedy(features, y, ipc)
    elif method == "means":
        return class_means(X, y)
    elif method == "kmeans":
        return kmeans_centroids(X, y, ipc, seed=seed, **options)
    elif method == "dm":
        return distribution_matching(X, y, ipc, augment=augment, seed=seed, **options)
    else:
        return gradient_matching(X, y, ipc, augment=augment, seed=seed, **options)
    return X[idx].clone(), y[idx].clone()
