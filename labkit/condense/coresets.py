"""Coresets and non-learned baselines: which real images to keep, or which averages to make.

``random_select``, ``herding`` and ``kcenter_greedy`` return indices into the training set;
``class_means`` and ``kmeans_centroids`` make new images without learning; ``features`` is the
feature space herding and k-center pick in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from labkit.condense.checks import _check_ipc, _check_X, check_labels, class_counts
from labkit.condense.networks import embed
from labkit.condense.protocol import train_on
from labkit.utils import check_int

# --------------------------------------------------------------------------- coresets


def random_select(y: Tensor, ipc: int, seed: int = 0) -> Tensor:
    """Indices of ``ipc`` samples per class drawn uniformly without replacement, class by class.

    Deterministic given ``seed``. Example: ``random_select(data.y_train, 10, seed=0)  # (100,)``
    """
    y = check_labels(y)
    ipc = _check_ipc(ipc, y)
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in class_counts(y):
        members = torch.nonzero(y == c).flatten()  # (n_c,)
        picks.append(members[torch.randperm(len(members), generator=g)[:ipc]])
    return torch.cat(picks)  # (C * ipc,)


def herding_class(features: Tensor, k: int) -> Tensor:
    """Herding for one class: ``k`` row indices of ``features`` (n, D), picked greedily so the mean
    of the picks stays as close as possible to the mean of all rows (Welling 2009; iCaRL).

    Step t picks ``argmin_i || mu - (sum of picks + f_i) / t ||`` over rows not yet picked (ties:
    the lowest index); the first pick is the row closest to the mean.
    Example: ``herding_class(torch.randn(50, 8), 5)  # tensor of 5 distinct indices``
    """
    features = _check_X(features, "features", dims=2)
    k = check_int("k", k, minimum=1, maximum=len(features))
    F64 = features.double()
    mu = F64.mean(dim=0)  # (D,)
    total = torch.zeros_like(mu)  # (D,) sum of the picks so far
    free = torch.ones(len(F64), dtype=torch.bool)
    picks = []
    for t in range(1, k + 1):
        dist = ((mu - (total + F64) / t) ** 2).sum(dim=1)  # (n,)
        dist[~free] = float("inf")
        i = int(torch.argmin(dist))
        picks.append(i)
        free[i] = False
        total += F64[i]
    return torch.tensor(picks, dtype=torch.long)


def herding(features: Tensor, y: Tensor, ipc: int) -> Tensor:
    """Indices of ``ipc`` samples per class chosen by herding on ``features`` (N, D).

    ``features`` is an embedding of the training images (``embed(model, X)``, or the pixels).
    Example: ``idx = herding(embed(model, X), y, ipc=10)  # (C * 10,)``
    """
    features = _check_X(features, "features", dims=2)
    y = check_labels(y, len(features))
    ipc = _check_ipc(ipc, y)
    picks = []
    for c in class_counts(y):
        members = torch.nonzero(y == c).flatten()  # (n_c,)
        picks.append(members[herding_class(features[members], ipc)])
    return torch.cat(picks)


def kcenter_step(features: Tensor, selected: Sequence[int] | Tensor) -> int:
    """One k-center greedy step: the row of ``features`` (n, D) whose Euclidean distance to its
    nearest selected row is largest (ties: the lowest index). ``selected`` must be non-empty.

    Example: ``kcenter_step(torch.tensor([[0.0], [1.0], [5.0]]), [0])  # 2``
    """
    features = _check_X(features, "features", dims=2)
    idx = torch.as_tensor(selected, dtype=torch.long).flatten()
    if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(features):
        raise ValueError(f"selected must be non-empty row indices < {len(features)}; got {idx}")
    F64 = features.double()
    nearest = torch.cdist(F64, F64[idx]).amin(dim=1)  # (n,) distance to the nearest pick
    nearest[idx] = -1.0
    return int(torch.argmax(nearest))


def kcenter_greedy(features: Tensor, y: Tensor, ipc: int) -> Tensor:
    """Indices of ``ipc`` samples per class by k-center greedy (Sener & Savarese 2018): start at the
    sample closest to the class mean, then repeatedly add the sample farthest from all picks. This
    covers the class (a 2-approximation of the smallest covering radius) and favours its outliers.

    Example: ``idx = kcenter_greedy(embed(model, X), y, ipc=10)  # (C * 10,)``
    """
    features = _check_X(features, "features", dims=2)
    y = check_labels(y, len(features))
    ipc = _check_ipc(ipc, y)
    picks = []
    for c in class_counts(y):
        members = torch.nonzero(y == c).flatten()  # (n_c,)
        Fc = features[members].double()  # (n_c, D)
        first = int(torch.argmin(((Fc - Fc.mean(dim=0)) ** 2).sum(dim=1)))
        chosen = [first]
        nearest = torch.cdist(Fc, Fc[first : first + 1]).flatten()  # (n_c,), updated per pick
        for _ in range(ipc - 1):
            masked = nearest.clone()
            masked[chosen] = -1.0
            i = int(torch.argmax(masked))
            chosen.append(i)
            nearest = torch.minimum(nearest, torch.cdist(Fc, Fc[i : i + 1]).flatten())
        picks.append(members[torch.tensor(chosen)])
    return torch.cat(picks)


# --------------------------------------------------------------------------- baselines


def class_means(X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One image per class: the mean of its training images. Returns ``(X_s, y_s)``.

    Example: ``X_s, y_s = class_means(data.X_train, data.y_train)  # (10, 1, 8, 8), (10,)``
    """
    X = _check_X(X)
    y = check_labels(y, len(X))
    classes = list(class_counts(y))
    X_s = torch.stack([X[y == c].mean(dim=0) for c in classes])  # (C, *shape)
    return X_s, torch.tensor(classes, dtype=torch.long)


def kmeans_centroids(
    X: Tensor, y: Tensor, ipc: int, seed: int = 0, num_iters: int = 50
) -> tuple[Tensor, Tensor]:
    """``ipc`` k-means centroids per class (k-means++ start, then Lloyd's iterations on the pixels).

    A centroid is the mean of the images nearest to it: a "class mean" for each mode of the class.
    Deterministic given ``seed``. Example: ``X_s, y_s = kmeans_centroids(X, y, ipc=10)``
    """
    X = _check_X(X)
    y = check_labels(y, len(X))
    ipc = _check_ipc(ipc, y)
    seed = check_int("seed", seed, minimum=0)
    num_iters = check_int("num_iters", num_iters, minimum=0)
    g = torch.Generator().manual_seed(seed)
    out, labels = [], []
    for c in class_counts(y):
        P = X[y == c].flatten(1).double()  # (n_c, D)
        centers = _kmeans_pp(P, ipc, g)  # (ipc, D)
        centers = _lloyd(P, centers, num_iters)
        out.append(centers.to(X.dtype).view(ipc, *X.shape[1:]))
        labels += [c] * ipc
    return torch.cat(out), torch.tensor(labels, dtype=torch.long)


def _kmeans_pp(P: Tensor, k: int, g: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability ∝ squared distance to the nearest
    centre so far."""
    centers = [P[int(torch.randint(len(P), (1,), generator=g))]]
    d2 = ((P - centers[0]) ** 2).sum(dim=1)  # (n,)
    for _ in range(k - 1):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1 / len(d2))
        i = int(torch.multinomial(probs, 1, generator=g))
        centers.append(P[i])
        d2 = torch.minimum(d2, ((P - P[i]) ** 2).sum(dim=1))
    return torch.stack(centers)  # (k, D)


def _lloyd(P: Tensor, centers: Tensor, num_iters: int) -> Tensor:
    """Lloyd's iterations from ``centers`` (k, D); an empty cluster keeps its centre."""
    for _ in range(num_iters):
        assign = torch.cdist(P, centers).argmin(dim=1)  # (n,)
        new = centers.clone()
        for j in range(len(centers)):
            members = P[assign == j]
            if len(members):
                new[j] = members.mean(dim=0)
        if torch.equal(new, centers):
            break
        centers = new
    return centers


# --------------------------------------------------------------------------- feature space


@functools.lru_cache(maxsize=4)
def features(dataset: str = "digits", num_steps: int = 200, seed: int = 0) -> Tensor:
    """The feature space of herding and k-center: ``embed`` of the training images by an
    ``eval_model('mlp')`` trained on the full training set (``num_steps`` steps, ``seed``).
    Memoised per arguments; do not modify the result in place.

    Example: ``F_train = features("digits")  # (1257, 128)``
    """
    from labkit import data as data_mod

    ds = data_mod.load(dataset)
    model = train_on(
        ds.X_train, ds.y_train, num_classes=ds.num_classes, num_steps=num_steps, seed=seed
    )
    return embed(model, ds.X_train)
