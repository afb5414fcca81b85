"""The evaluation protocol: train fresh models on a set, test them, count the set's bytes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.condense.augment import shift
from labkit.condense.checks import _check_X, _positive, check_labels
from labkit.condense.networks import ARCHS, eval_model
from labkit.utils import check_choice, check_int


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
