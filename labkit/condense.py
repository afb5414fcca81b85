"""Dataset condensation: a few images per class that teach a model almost as well as the full set.

Three families, all working per class with ``ipc`` images per class:

- **Coresets** pick real training images: ``random_select``, ``herding`` (the running mean of the
  picks tracks the class mean in a feature space) and ``kcenter_greedy`` (each pick is the point
  farthest from the picks so far). They return indices into the training set.
- **Baselines** that make new images without learning: ``class_means`` (1 per class) and
  ``kmeans_centroids`` (``ipc`` Lloyd centroids per class).
- **Learned synthetic sets**: ``distribution_matching`` (DM, Zhao & Bilen 2023: match the mean
  embedding of real and synthetic images under freshly initialised random networks) and
  ``gradient_matching`` (DC, Zhao et al. 2021: match the gradients a network gets from real and
  synthetic images). Both optionally match through random ±1-pixel translations (``shift``,
  ``translate``: differentiable), the same shift for the real and the synthetic batch.

The evaluation protocol is ``evaluate_set``: train fresh models of one fixed architecture
(``eval_model``) on a set, for several seeds, and report the test accuracy as mean ± spread, plus
the training seconds; ``set_bytes`` gives the bytes the set takes to store. ``course_run``,
``course_sweep`` and ``prepare`` compute (and cache) what notebook 07 shows.

Example:
    >>> from labkit import condense, data
    >>> digits = data.load("digits")                                         # doctest: +SKIP
    >>> X_s, y_s = condense.class_means(digits.X_train, digits.y_train)      # doctest: +SKIP
    >>> condense.evaluate_set(X_s, y_s, digits, seeds=[0, 1])["acc"]         # doctest: +SKIP
    0.85...
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import utils
from labkit.utils import check_choice, check_int

__all__ = [
    "METHODS",
    "ARCHS",
    "check_labels",
    "class_counts",
    "random_select",
    "herding",
    "herding_class",
    "kcenter_greedy",
    "kcenter_step",
    "class_means",
    "kmeans_centroids",
    "embed",
    "convnet",
    "eval_model",
    "shift",
    "translate",
    "dm_loss",
    "distribution_matching",
    "gm_distance",
    "gradient_matching",
    "condense",
    "train_on",
    "train_many",
    "evaluate_set",
    "set_bytes",
    "COURSE",
    "features",
    "course_run",
    "course_points",
    "course_sweep",
    "PARTS",
    "prepare",
]

METHODS = ("random", "herding", "kcenter", "means", "kmeans", "dm", "gm")
"""Names ``condense`` accepts: three coresets, two non-learned baselines, two learned sets."""

ARCHS = ("mlp", "convnet")
"""Evaluation architectures of ``eval_model``."""


# --------------------------------------------------------------------------- argument checks


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


# --------------------------------------------------------------------------- networks


@torch.no_grad()
def embed(model: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate features of ``model``: the input of its last ``nn.Linear``, as (N, D) on the CPU.

    Example: ``features = embed(trained_mlp, data.X_train)  # (1257, 128)``
    """
    X = _check_X(X)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model must contain an nn.Linear head to embed with; got none")
    captured: list[Tensor] = []
    hook = linears[-1].register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(X), batch_size):
            model(X[i : i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat([f.flatten(1) for f in captured]).cpu()  # (N, D)


def convnet(
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int | None = 10,
    width: int = 32,
    depth: int = 2,
    seed: int = 0,
) -> nn.Sequential:
    """The ConvNet of the condensation papers, scaled to small images: ``depth`` blocks of
    ``Conv3x3 -> GroupNorm (instance norm) -> ReLU -> AvgPool2``, then a Linear head
    (``num_classes=None``: no head, the network is an embedding of width·(S/2^depth)² features).
    Initialised from ``seed`` without touching torch's global RNG.

    Example: ``convnet(num_classes=None, seed=3)(torch.rand(5, 1, 8, 8)).shape  # (5, 128)``
    """
    width = check_int("width", width, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    check_int("image_size", image_size, minimum=2**depth)
    seed = check_int("seed", seed, minimum=0)
    with utils.seeded(seed):
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels, size = width, size // 2
        layers.append(nn.Flatten())  # (B, width * size * size)
        if num_classes is not None:
            layers.append(nn.Linear(width * size * size, num_classes))
        return nn.Sequential(*layers)


def eval_model(
    arch: str = "mlp", in_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """The fixed evaluation architecture: 'mlp' (flatten -> 128 -> ReLU -> classes) or 'convnet'
    (``convnet(width=16)``). Initialised from ``seed``; torch's global RNG is left untouched.

    Example: ``eval_model("mlp", (1, 8, 8), 10, seed=1)``
    """
    check_choice("arch", arch, ARCHS)
    seed = check_int("seed", seed, minimum=0)
    shape = tuple(int(s) for s in in_shape)
    if arch == "convnet":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"in_shape must be (C, S, S) for 'convnet'; got {shape}")
        return convnet(shape[0], shape[1], num_classes, width=16, seed=seed)
    with utils.seeded(seed):
        features = 1
        for s in shape:
            features *= s
        return nn.Sequential(
            nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )


# --------------------------------------------------------------------------- augmentation


def shift(
    x: Tensor,
    max_shift: int = 1,
    generator: torch.Generator | None = None,
    *,
    same: bool = False,
) -> Tensor:
    """Translate each image of ``x`` (B, C, H, W) by its own random (dy, dx) in
    [-max_shift, max_shift]², filling with zeros (``same=True``: one (dy, dx) for the whole
    batch). Differentiable in ``x``, so synthetic images can be learned through it.
    ``max_shift=0`` returns ``x`` itself.

    Example: ``shift(torch.rand(4, 1, 8, 8), 1, torch.Generator().manual_seed(0))``
    """
    _check_images(x)
    s = check_int("max_shift", max_shift, minimum=0, maximum=min(x.shape[2:]) - 1)
    if s == 0:
        return x
    n = 1 if same else len(x)
    dy = torch.randint(-s, s + 1, (n,), generator=generator).expand(len(x))  # (B,)
    dx = torch.randint(-s, s + 1, (n,), generator=generator).expand(len(x))  # (B,)
    return translate(x, dy, dx)


def translate(x: Tensor, dy: int | Tensor, dx: int | Tensor) -> Tensor:
    """Move the images of ``x`` (B, C, H, W) down by ``dy`` and right by ``dx`` pixels (negative:
    up / left), filling with zeros; ``dy``/``dx`` are ints or (B,) int tensors, one per image.
    One gather from the zero-padded images, so it is differentiable in ``x``.

    Example: ``translate(torch.eye(3).view(1, 1, 3, 3), 0, 1)  # the diagonal moved right``
    """
    _check_images(x)
    B, _, H, W = x.shape
    dy = torch.as_tensor(dy, dtype=torch.long).expand(B).to(x.device)  # (B,)
    dx = torch.as_tensor(dx, dtype=torch.long).expand(B).to(x.device)  # (B,)
    s = int(max(dy.abs().max(), dx.abs().max())) if B else 0
    if s >= min(H, W):
        raise ValueError(f"dy and dx must be smaller than the image size {(H, W)}; got {s}")
    padded = F.pad(x, (s, s, s, s)).permute(0, 2, 3, 1)  # (B, H + 2s, W + 2s, C)
    # output pixel (i, j) reads input (i - dy, j - dx): the image moves by (dy, dx)
    rows = torch.arange(H, device=x.device) + s - dy.unsqueeze(1)  # (B, H)
    cols = torch.arange(W, device=x.device) + s - dx.unsqueeze(1)  # (B, W)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    out = padded[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W)


def _check_images(x: Any) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shown = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) tensor; got {shown}")


# --------------------------------------------------------------------------- distribution matching


def dm_loss(
    emb_real: Tensor, y_real: Tensor, emb_syn: Tensor, y_syn: Tensor, num_classes: int
) -> Tensor:
    """The distribution-matching loss: ``sum_c || mean(emb_real[y_real == c]) -
    mean(emb_syn[y_syn == c]) ||²`` over the classes present in both (a scalar).

    Example: ``dm_loss(net(X), y, net(X_s), y_s, 10)``
    """
    emb_real = _check_X(emb_real, "emb_real", dims=2)
    emb_syn = _check_X(emb_syn, "emb_syn", dims=2)
    y_real = check_labels(y_real, len(emb_real), "y_real")
    y_syn = check_labels(y_syn, len(emb_syn), "y_syn")
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if int(y_real.max()) >= num_classes or int(y_syn.max()) >= num_classes:
        raise ValueError(f"y_real and y_syn must hold labels < num_classes={num_classes}")
    mean_real = _class_mean(emb_real, y_real, num_classes)  # (C, D), counts (C,)
    mean_syn = _class_mean(emb_syn, y_syn, num_classes)
    both = (mean_real[1] > 0) & (mean_syn[1] > 0)  # (C,)
    return ((mean_real[0] - mean_syn[0]) ** 2).sum(dim=1)[both].sum()


def _class_mean(emb: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype).index_add(0, y, emb)  # (C, D)
    counts = torch.bincount(y, minlength=num_classes)  # (C,)
    return sums / counts.clamp(min=1).unsqueeze(1).to(emb.dtype), counts


def _init_syn(X: Tensor, y: Tensor, ipc: int, init: str, seed: int) -> tuple[Tensor, Tensor]:
    check_choice("init", init, ("real", "noise", "means"))
    if init == "real":
        idx = random_select(y, ipc, seed)
        return X[idx].clone(), y[idx].clone()
    if init == "means":
        X_m, y_m = class_means(X, y)
        return X_m.repeat_interleave(ipc, dim=0), y_m.repeat_interleave(ipc)
    g = torch.Generator().manual_seed(seed)
    classes = torch.tensor(list(class_counts(y)), dtype=torch.long)
    y_s = classes.repeat_interleave(ipc)
    return torch.rand((len(y_s), *X.shape[1:]), generator=g, dtype=X.dtype), y_s


def _real_batch(y: Tensor, per_class: int, g: torch.Generator) -> Tensor:
    """Indices of up to ``per_class`` random samples of every class."""
    picks = []
    for c in class_counts(y):
        members = torch.nonzero(y == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(picks)


def distribution_matching(
    X: Tensor,
    y: Tensor,
    ipc: int,
    *,
    iterations: int = 100,
    lr: float = 0.1,
    batch_real: int = 32,
    width: int = 16,
    augment: int = 0,
    init: str = "real",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Learn ``ipc`` synthetic images per class by distribution matching (Zhao & Bilen, WACV 2023).

    Each iteration draws a freshly initialised embedding network (``convnet`` without head), embeds
    ``batch_real`` real images per class and all synthetic images (when ``augment`` > 0 both
    batches are moved by one random shift of up to ``augment`` pixels: the siamese augmentation of
    the paper) and takes an SGD step (momentum 0.5, ``lr``) on
    the synthetic pixels against ``dm_loss``. ``init``: 'real' (random real images), 'means' or
    'noise'. Pixels are clamped to the range of ``X`` at the end. Returns ``(X_s, y_s)``.

    Example: ``X_s, y_s = distribution_matching(data.X_train, data.y_train, ipc=10, augment=1)``
    """
    X = _check_X(X, dims=4)
    y = check_labels(y, len(X))
    ipc = _check_ipc(ipc, y)
    iterations = check_int("iterations", iterations, minimum=0)
    batch_real = check_int("batch_real", batch_real, minimum=1)
    augment = check_int("augment", augment, minimum=0, maximum=min(X.shape[2:]) - 1)
    seed = check_int("seed", seed, minimum=0)
    lr = _positive("lr", lr)
    num_classes = int(y.max()) + 1
    X_s, y_s = _init_syn(X, y, ipc, init, seed)
    X_s.requires_grad_(True)
    opt = torch.optim.SGD([X_s], lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    for it in range(iterations):
        net = convnet(X.shape[1], X.shape[2], None, width=width, seed=seed * 100_003 + it)
        for p in net.parameters():
            p.requires_grad_(False)
        idx = _real_batch(y, batch_real, g)
        real, syn = X[idx], X_s
        if augment:  # one shift for real and synthetic images alike (siamese augmentation)
            real, syn = _same_shift(real, syn, augment, g)
        with torch.no_grad():
            emb_real = net(real)  # (B_real, D)
        loss = dm_loss(emb_real, y[idx], net(syn), y_s, num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return X_s.detach().clamp(float(X.min()), float(X.max())), y_s


def _same_shift(real: Tensor, syn: Tensor, max_shift: int, g: torch.Generator) -> tuple:
    """Both batches moved by one random (dy, dx): the two sides of the match see the same view."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    return translate(real, dy, dx), translate(syn, dy, dx)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- gradient matching


def gm_distance(grads_real: Sequence[Tensor], grads_syn: Sequence[Tensor]) -> Tensor:
    """The layer-wise gradient distance of dataset condensation (Zhao et al., ICLR 2021): for every
    weight tensor, flatten each output unit's gradient to a row and sum ``1 - cos`` over rows;
    biases and other 1-D tensors are skipped. Zero when each row points the same way.

    Example: ``gm_distance(torch.autograd.grad(loss_real, params), grads_syn)``
    """
    if len(grads_real) != len(grads_syn):
        raise ValueError(
            f"grads_syn must hold one tensor per real gradient ({len(grads_real)}); "
            f"got {len(grads_syn)}"
        )
    total = torch.zeros(())
    for gr, gs in zip(grads_real, grads_syn):
        if gr.shape != gs.shape:
            raise ValueError(f"gradients must have equal shapes; got {gr.shape} and {gs.shape}")
        if gr.dim() == 1:
            continue
        a, b = gr.flatten(1), gs.flatten(1)  # (out, fan_in)
        cos = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)  # (out,)
        total = total + (1 - cos).sum()
    return total


def gradient_matching(
    X: Tensor,
    y: Tensor,
    ipc: int,
    *,
    iterations: int = 20,
    outer_loop: int = 5,
    inner_loop: int = 5,
    lr: float = 0.1,
    lr_net: float = 0.01,
    batch_real: int = 64,
    width: int = 16,
    augment: int = 0,
    init: str = "real",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Learn ``ipc`` synthetic images per class by gradient matching (dataset condensation).

    ``iterations`` times: a fresh ``convnet`` (with head); then ``outer_loop`` rounds of (for each
    class: the gradient of the cross-entropy on ``batch_real`` real images and on the synthetic
    images of that class, matched with ``gm_distance``; one SGD step on the synthetic pixels) each
    followed by ``inner_loop`` SGD steps (``lr_net``) of the network on the synthetic set — so the
    images are matched along a training trajectory. ``augment``: as in ``distribution_matching``.
    A CPU-sized version of the paper's schedule.
    Example: ``X_s, y_s = gradient_matching(data.X_train, data.y_train, ipc=1, iterations=10)``
    """
    X = _check_X(X, dims=4)
    y = check_labels(y, len(X))
    ipc = _check_ipc(ipc, y)
    iterations = check_int("iterations", iterations, minimum=0)
    outer_loop = check_int("outer_loop", outer_loop, minimum=1)
    inner_loop = check_int("inner_loop", inner_loop, minimum=0)
    batch_real = check_int("batch_real", batch_real, minimum=1)
    augment = check_int("augment", augment, minimum=0, maximum=min(X.shape[2:]) - 1)
    seed = check_int("seed", seed, minimum=0)
    lr, lr_net = _positive("lr", lr), _positive("lr_net", lr_net)
    num_classes = int(y.max()) + 1
    X_s, y_s = _init_syn(X, y, ipc, init, seed)
    X_s.requires_grad_(True)
    opt = torch.optim.SGD([X_s], lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    classes = list(class_counts(y))
    by_class = {c: torch.nonzero(y == c).flatten() for c in classes}
    for it in range(iterations):
        net = convnet(X.shape[1], X.shape[2], num_classes, width=width, seed=seed * 100_003 + it)
        params = [p for p in net.parameters()]
        net_opt = torch.optim.SGD(params, lr=lr_net)
        for ol in range(outer_loop):
            loss = torch.zeros(())
            for c in classes:
                members = by_class[c]
                idx = members[torch.randperm(len(members), generator=g)[:batch_real]]
                real, syn = X[idx], X_s[y_s == c]
                if augment:
                    real, syn = _same_shift(real, syn, augment, g)
                g_real = torch.autograd.grad(F.cross_entropy(net(real), y[idx]), params)
                g_real = [t.detach() for t in g_real]
                syn_loss = F.cross_entropy(net(syn), y_s[y_s == c])
                g_syn = torch.autograd.grad(syn_loss, params, create_graph=True)
                loss = loss + gm_distance(g_real, g_syn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ol == outer_loop - 1:
                break
            syn_data = X_s.detach()
            for _ in range(inner_loop):
                batch = shift(syn_data, augment, g) if augment else syn_data
                step_loss = F.cross_entropy(net(batch), y_s)
                net_opt.zero_grad(set_to_none=True)
                step_loss.backward()
                net_opt.step()
    return X_s.detach().clamp(float(X.min()), float(X.max())), y_s


# --------------------------------------------------------------------------- one entry point


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
    Example: ``X_s, y_s = condense("dm", X, y, 10, augment=1, iterations=100)``
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


# --------------------------------------------------------------------------- evaluation


def train_on(
    X: Tensor,
    y: Tensor,
    *,
    arch: str = "mlp",
    num_classes: int = 10,
    num_steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 256,
    weight_decay: float = 5e-4,
    augment: int = 0,
    seed: int = 0,
) -> nn.Module:
    """A fresh ``eval_model(arch)`` trained on ``(X, y)`` for ``num_steps`` Adam steps of batches of
    ``min(batch_size, N)`` samples (reshuffled each pass), through ``shift`` when ``augment`` > 0.
    Deterministic given ``seed``; returns the model in eval mode.

    Example: ``model = train_on(X_s, y_s, num_steps=300, augment=1, seed=0)``
    """
    options = dict(num_steps=num_steps, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    return train_many([X], [y], [seed], arch=arch, num_classes=num_classes, augment=augment,
                      **options)[0]  # fmt: skip


def train_many(
    Xs: Sequence[Tensor],
    ys: Sequence[Tensor],
    seeds: Sequence[int],
    *,
    arch: str = "mlp",
    num_classes: int = 10,
    num_steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 256,
    weight_decay: float = 5e-4,
    augment: int = 0,
) -> list[nn.Module]:
    """``train_on`` for several (set, seed) pairs at once: model ``s`` trains on ``(Xs[s], ys[s])``
    from ``seed=seeds[s]``. Sets of one shape train the 'mlp' models side by side as one batched
    matrix product (the same result as separate runs, several times faster); otherwise one by one.

    Example: ``models = train_many([X_s] * 3, [y_s] * 3, seeds=[0, 1, 2])``
    """
    check_choice("arch", arch, ARCHS)
    if not (len(Xs) == len(ys) == len(seeds)) or len(seeds) == 0:
        raise ValueError(
            f"Xs, ys and seeds must be non-empty and of equal length; got {len(Xs)}, {len(ys)}, "
            f"{len(seeds)}"
        )
    Xs = [_check_X(X) for X in Xs]
    ys = [check_labels(y, len(X)) for X, y in zip(Xs, ys)]
    seeds = [check_int("seed", s, minimum=0) for s in seeds]
    num_steps = check_int("num_steps", num_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    augment = check_int("augment", augment, minimum=0)
    lr = _positive("lr", lr)
    models = [eval_model(arch, Xs[0].shape[1:], num_classes, seed=s) for s in seeds]
    same = all(X.shape == Xs[0].shape for X in Xs)
    groups = (
        [list(range(len(seeds)))] if arch == "mlp" and same else [[i] for i in range(len(seeds))]
    )
    for group in groups:
        _fit_group(
            [models[i] for i in group], [Xs[i] for i in group], [ys[i] for i in group],
            [seeds[i] for i in group], num_steps, lr, batch_size, weight_decay, augment,
        )  # fmt: skip
    return [m.eval() for m in models]


def _fit_group(models, Xs, ys, seeds, num_steps, lr, batch_size, weight_decay, augment) -> None:
    """Adam on the models together; an 'mlp' group runs as one batched forward (bmm)."""
    S, N = len(models), len(Xs[0])
    batched = S > 1
    if batched:  # stacked weights of the Flatten -> Linear -> ReLU -> Linear models
        W1 = torch.stack([m[1].weight.detach().T for m in models]).requires_grad_()  # (S, D, H)
        b1 = torch.stack([m[1].bias.detach() for m in models]).unsqueeze(1).requires_grad_()
        W2 = torch.stack([m[3].weight.detach().T for m in models]).requires_grad_()  # (S, H, C)
        b2 = torch.stack([m[3].bias.detach() for m in models]).unsqueeze(1).requires_grad_()
        params = [W1, b1, W2, b2]
    else:
        params = list(models[0].parameters())
        models[0].train()
    # fused: the whole Adam update in one kernel; these steps are small, so the per-tensor loop
    # of the default implementation would take a third of the time
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    batch = min(batch_size, N)
    orders = [torch.randperm(N, generator=g) for g in gens]
    pos = 0
    for _ in range(num_steps):
        if pos + batch > N:
            orders, pos = [torch.randperm(N, generator=g) for g in gens], 0
        xb, yb = [], []
        for X, y, order, g in zip(Xs, ys, orders, gens):
            idx = order[pos : pos + batch]
            xb.append(shift(X[idx], augment, g) if augment else X[idx])
            yb.append(y[idx])
        pos += batch
        if batched:
            x = torch.stack(xb).flatten(2)  # (S, B, D)
            logits = torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, x, W1)), W2)  # (S, B, C)
            loss = F.cross_entropy(logits.flatten(0, 1), torch.stack(yb).flatten(), reduction="sum")
            loss = loss / batch  # the sum over models of each model's mean loss
        else:
            loss = F.cross_entropy(models[0](xb[0]), yb[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if batched:
        with torch.no_grad():
            for s, m in enumerate(models):
                m[1].weight.copy_(W1[s].T)
                m[1].bias.copy_(b1[s, 0])
                m[3].weight.copy_(W2[s].T)
                m[3].bias.copy_(b2[s, 0])


def evaluate_set(
    X: Tensor | Sequence[Tensor],
    y: Tensor | Sequence[Tensor],
    data: Any,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    split: str = "test",
    **train_options: Any,
) -> dict[str, Any]:
    """The evaluation protocol: train a fresh model on ``(X, y)`` per seed (``train_many`` with
    ``train_options``), test on ``data``'s ``split``. ``X``/``y`` may also be lists, one set per
    seed (e.g. a new random subset per seed). Returns ``acc`` (mean, a fraction), ``acc_std``
    (sample standard deviation over seeds; 0 for one seed), ``accs`` (per seed) and ``seconds``
    (training wall time per model: the batched run's time divided by the number of seeds).

    Example: ``evaluate_set(X_s, y_s, load("digits"), seeds=[0, 1, 2], augment=1)["acc"]``
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must be a non-empty list of ints; got []")
    Xs = list(X) if isinstance(X, (list, tuple)) else [X] * len(seeds)
    ys = list(y) if isinstance(y, (list, tuple)) else [y] * len(seeds)
    X_test, y_test = data.split(split)
    start = time.perf_counter()
    models = train_many(Xs, ys, seeds, num_classes=data.num_classes, **train_options)
    seconds = (time.perf_counter() - start) / len(seeds)
    accs = []
    with torch.no_grad():
        for model in models:
            pred = model(X_test).argmax(dim=1)  # (N_test,)
            accs.append(float((pred == y_test).float().mean()))
    acc = torch.tensor(accs, dtype=torch.float64)
    return {
        "acc": float(acc.mean()),
        "acc_std": float(acc.std()) if len(accs) > 1 else 0.0,
        "accs": accs,
        "seconds": seconds,
    }


def set_bytes(X: Tensor, y: Tensor, pixel_dtype: str = "float32") -> int:
    """Bytes to store a training set: ``N x pixels`` at ``pixel_dtype`` ('uint8' for images kept in
    the dataset's 8-bit form, 'float16' or 'float32' for learned images) plus one byte per label.

    Example: ``set_bytes(X_s, y_s, "uint8")  # 10 digits: 10 * 64 + 10 = 650``
    """
    X = _check_X(X)
    y = check_labels(y, len(X))
    if len(y) and int(y.max()) > 255:
        raise ValueError(f"y must hold labels < 256 to store one byte each; got {int(y.max())}")
    size = {"uint8": 1, "float16": 2, "float32": 4}[
        check_choice("pixel_dtype", pixel_dtype, ("uint8", "float16", "float32"))
    ]
    return X[0].numel() * len(X) * size + len(y)


# --------------------------------------------------------------------------- the course sweeps

COURSE: dict[str, Any] = {
    "dataset": "digits",
    "ipcs": (1, 10, 50),
    "seeds": 3,
    "num_steps": 200,
    "dm": {"iterations": 40, "lr": 0.3},
    "gm": {"iterations": 4, "outer_loop": 3, "inner_loop": 3, "batch_real": 32},
}
"""What notebook 07 shows and ``prepare`` computes: the dataset, images per class, evaluation seeds
and Adam steps of every evaluation, and the recipes of the two learned sets (a CPU-sized budget:
DM with 40 iterations already matches its 100-iteration sets here; cold, ``prepare`` takes about
15 s of CPU time on one thread)."""

STORED = {
    "random": "uint8", "herding": "uint8", "kcenter": "uint8", "full": "uint8",
    "means": "float32", "kmeans": "float32", "dm": "float32", "gm": "float32",
}  # fmt: skip
"""How each set is stored by ``set_bytes``: real images keep the dataset's 8-bit pixels, made or
learned images keep float32 pixels."""


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


@functools.lru_cache(maxsize=8)
def _course_set(method: str, ipc: int, augment: int, dataset: str, num_steps: int) -> tuple:
    """``(X_s, y_s, seconds)`` of one non-random course set, memoised so that the points that
    evaluate one learned set in several ways learn it once."""
    from labkit import data as data_mod

    ds = data_mod.load(dataset)
    feats = features(dataset, num_steps) if method in ("herding", "kcenter") else None
    start = time.perf_counter()
    options = dict(COURSE.get(method, {}))
    X_s, y_s = condense(
        method, ds.X_train, ds.y_train, ipc, features=feats, augment=augment, **options
    )
    return X_s, y_s, time.perf_counter() - start


def course_run(
    method: str,
    ipc: int,
    augment: int = 0,
    eval_augment: int = 0,
    dataset: str = "digits",
    seeds: int = 3,
    num_steps: int = 200,
) -> dict[str, Any]:
    """One point of notebook 07's sweep: build the ``method`` set of ``ipc`` images per class
    (``method='full'``: the whole training set, ``ipc=0``), learned sets with ``augment`` pixel
    shifts and the ``COURSE`` recipe, and evaluate it (``evaluate_set``, MLP, ``seeds`` seeds,
    ``eval_augment`` shifts while training). 'random' draws a new subset per seed; the other
    methods build one set (seed 0). Returns acc, acc_std, accs, the set's bytes, images, the
    training samples one model sees, train_seconds (per model), make_seconds, and the pixels
    (rounded to 4 decimals) and labels of the set when ``ipc`` <= 10.

    Example: ``course_run("dm", 10, augment=1)["acc"]``
    """
    from labkit import data as data_mod

    check_choice("method", method, (*METHODS, "full"))
    seeds = check_int("seeds", seeds, minimum=1)
    ds = data_mod.load(dataset)
    X, y = ds.X_train, ds.y_train
    make_seconds = 0.0
    if method == "full":
        check_int("ipc", ipc, minimum=0, maximum=0)
        Xs, ys = [X] * seeds, [y] * seeds
    elif method == "random":
        sets = [condense("random", X, y, ipc, seed=s) for s in range(seeds)]
        Xs, ys = [s[0] for s in sets], [s[1] for s in sets]
    else:
        X_s, y_s, make_seconds = _course_set(method, ipc, augment, dataset, num_steps)
        Xs, ys = [X_s] * seeds, [y_s] * seeds
    result = evaluate_set(Xs, ys, ds, seeds=range(seeds), num_steps=num_steps, augment=eval_augment)
    out = {
        "acc": result["acc"],
        "acc_std": result["acc_std"],
        "accs": result["accs"],
        "bytes": set_bytes(Xs[0], ys[0], STORED[method]),
        "images": len(ys[0]),
        "samples": num_steps * min(256, len(ys[0])),
        "train_seconds": result["seconds"],
        "make_seconds": make_seconds,
    }
    if 0 < ipc <= 10:
        out["pixels"] = [round(v, 4) for v in Xs[0].flatten().tolist()]
        out["labels"] = ys[0].tolist()
    return out


def course_points(
    ipcs: Sequence[int] = COURSE["ipcs"], seeds: int = COURSE["seeds"]
) -> dict[str, list[dict]]:
    """The sweep points of notebook 07: ``main`` (every method at every ``ipc`` it allows: class
    means at 1, k-means centroids above 1, gradient matching at the smallest; and the full set as
    ``method='full', ipc=0``) and ``augment`` (at the smallest ``ipc``: DM learned through ±1-pixel
    shifts, and random / means / DM sets evaluated with shifted training). Every point spells out
    ``method, ipc, augment, eval_augment, seeds``.
    Example: ``course_points()["main"][0]  # {'method': 'random', 'ipc': 1, 'augment': 0, ..}``
    """
    from labkit import sweep

    ipcs = sorted({check_int("ipcs", i, minimum=1) for i in ipcs})
    seeds = check_int("seeds", seeds, minimum=1)
    first = ipcs[:1]
    main = sweep.grid(method=["random", "herding", "kcenter", "dm"], ipc=ipcs)
    main += [{"method": "means", "ipc": 1}] if 1 in ipcs else []
    main += [{"method": "kmeans", "ipc": i} for i in ipcs if i > 1]
    main += [{"method": "gm", "ipc": first[0]}, {"method": "full", "ipc": 0}]
    main = [{**p, "augment": 0, "eval_augment": 0, "seeds": seeds} for p in main]
    augment = sweep.grid(method=["dm"], ipc=first, augment=[1], eval_augment=[0, 1])
    augment += sweep.grid(method=["random", "dm"], ipc=first, augment=[0], eval_augment=[1])
    augment += [{"method": "means", "ipc": 1, "augment": 0, "eval_augment": 1}] if 1 in ipcs else []
    return {"main": main, "augment": [{**p, "seeds": seeds} for p in augment]}


def course_sweep(points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    """``sweep.run(course_run, points)``, cached on disk as sweep ``07-condense-digits``.

    Example: ``course_sweep(course_points()["main"])``
    """
    from labkit import sweep

    version = f"1-{utils.stable_hash(COURSE)}"  # a new recipe recomputes the sweep
    return sweep.run(
        course_run, points, name="07-condense-digits", version=version, progress=progress
    )


PARTS = ("main", "augment")
"""The parts of ``prepare``: the method x images-per-class sweep and the augmentation runs."""


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 07 shows, at its default parameters.

    ``parts``: some of ``PARTS`` (default: all). Part of ``labkit prepare``.
    Example: ``records = prepare(["main"])["main"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    return {key: course_sweep(points[key], progress) for key in parts}
