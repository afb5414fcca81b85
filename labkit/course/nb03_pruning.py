"""Notebook 03 (pruning): the cached experiments ``labkit prepare`` builds.

One run function per sweep point, and one ``*_sweep`` wrapper per sweep that runs it through
``labkit.sweep.run`` with a disk cache:

- ``unstructured``: magnitude-prune the MLP (layer-wise or global), fine-tune with the masks held,
  measure accuracy, non-zeros and the real bytes of every sparse encoding.
- ``schedules``: one-shot against gradual (cubic) pruning, the same total epochs.
- ``ticket``: the lottery-ticket experiment (rewind to the init against a fresh random init).
- ``structured``: remove MLP neurons, fine-tune, and train the same small shape from scratch.
- ``surgery``: remove ViT attention heads (by ablation score) or a whole block, then fine-tune.

The run functions live at module level so that ``sweep.run`` can compute missing points in
worker processes. Every point carries ``key``, the pretrained model's cache key, so a changed
recipe gets fresh results; ``course_points`` gives the grids the notebook shows by default,
``prepare`` computes them ahead, and ``steps`` lists them for ``labkit prepare``.

Example:
    >>> from labkit.course import nb03_pruning
    >>> points = nb03_pruning.course_points()
    >>> sorted(points)
    ['lottery', 'schedules', 'structured', 'unstructured', 'vit']
    >>> len(points["unstructured"])  # 3 seeds x 2 scopes x 8 sparsities
    48
    >>> records = nb03_pruning.unstructured_sweep(points["unstructured"][:1])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from labkit import data, measure, models, prune, sweep, train, utils
from labkit.course import Step
from labkit.prune import sparse
from labkit.prune import structured as ps
from labkit.prune import transformer as pt
from labkit.utils import check_choice, check_int

__all__ = [
    "train_mlp",
    "dense_mlp",
    "unstructured",
    "schedules",
    "ticket",
    "structured",
    "head_scores",
    "surgery",
    "unstructured_sweep",
    "schedules_sweep",
    "lottery_sweep",
    "structured_sweep",
    "vit_sweep",
    "COURSE",
    "course_points",
    "PARTS",
    "prepare",
    "steps",
]


# --------------------------------------------------------------------------- dense models


def train_mlp(dataset: str, seed: int, config: models.MLPConfig | None = None) -> nn.Module:
    """The registered MLP recipe (``models.RECIPES``), trained from scratch with ``seed``.

    ``config`` replaces the recipe's architecture (e.g. a channel-pruned model's smaller one).
    Example: ``model = train_mlp("digits", seed=1)``
    """
    recipe = models.RECIPES[("mlp", dataset)]
    recipe = dataclasses.replace(recipe, seed=seed, config=config or recipe.config)
    return models.train_recipe(recipe, dataset, progress=False)


@functools.cache
def dense_mlp(dataset: str, seed: int) -> nn.Module:
    """The dense MLP for ``seed``, trained once and kept on disk.

    The recipe's seed is the cached pretrained model; other seeds are trained once (``train_mlp``)
    and kept on disk (``cache_dir("prune")``), so parallel sweep workers and later sweeps load them.
    Callers prune copies, never this model.
    Example: ``dense_mlp("digits", 1)``
    """
    recipe = models.RECIPES[("mlp", dataset)]
    if seed == recipe.seed:
        return models.pretrained("mlp", dataset)
    key = utils.stable_hash(
        {"mlp": models.cache_key("mlp", dataset), "seed": seed, "torch": torch.__version__}
    )
    path = utils.cache_dir("prune") / f"mlp-{dataset}-seed{seed}-{key}.pt"
    if path.exists():
        try:
            with torch.random.fork_rng(devices=[]):  # leave the global RNG as training would
                model = models.build("mlp", recipe.config)
            state, _ = utils.load_verified(path)  # sha256-checked against its sidecar
            model.load_state_dict(state)
            return model.eval()
        except Exception:  # noqa: BLE001 - an unreadable or unverified cache file means retrain
            path.unlink(missing_ok=True)
    model = train_mlp(dataset, seed)
    utils.save_verified(model.state_dict(), path, {"mlp": dataset, "seed": seed, "key": key})
    return model


# --------------------------------------------------------------------------- one sweep point each


def unstructured(
    key: str, dataset: str, seed: int, scope: str, amount: float, num_epochs: int, lr: float
) -> dict[str, Any]:
    """Magnitude-prune the dense MLP of ``seed`` to ``amount``, then fine-tune it.

    ``scope`` is "layer" or "global"; fine-tunes ``num_epochs`` with the masks held at zero. Returns
    test accuracies before (``acc_pruned``) and after (``acc``) fine-tuning, ``nonzero`` weights,
    and the model's bytes in every sparse encoding (``bytes_dense``, ``bytes_bitmask``,
    ``bytes_csr``, ``bytes_auto``). ``key`` names the pretrained weights for the cache only.
    Example: ``unstructured(key, "digits", 0, "global", 0.9, 5, 3e-3)["acc"]``
    """
    ds = data.load(dataset)
    model = prune.magnitude(dense_mlp(dataset, seed), amount, scope)
    acc_pruned = train.evaluate(model, ds)["acc"]
    train.fit(
        model, ds, num_epochs=num_epochs, lr=lr, seed=seed, device="cpu", val=False, progress=False
    )
    return {
        "acc_pruned": acc_pruned,
        "acc": train.evaluate(model, ds)["acc"],
        "nonzero": measure.count_nonzero(model),
        **{f"bytes_{f}": sparse.sparse_model_bytes(model, f) for f in (*sparse.FORMATS, "auto")},
    }


def schedules(
    key: str,
    dataset: str,
    seed: int,
    amount: float,
    schedule: str,
    num_epochs: int,
    num_stages: int,
    lr: float,
) -> dict[str, Any]:
    """Prune the dense MLP of ``seed`` to ``amount`` with ``prune.prune_finetune``.

    ``schedule`` is "oneshot" or "gradual" in ``num_stages`` cubic stages, ``num_epochs`` in total.
    Returns ``{acc}``.
    Example: ``schedules(key, "digits", 0, 0.95, "gradual", 8, 4, 3e-3)["acc"]``
    """
    ds = data.load(dataset)
    model, _ = prune.prune_finetune(
        dense_mlp(dataset, seed),
        ds,
        amount=amount,
        schedule=schedule,
        num_stages=num_stages,
        num_epochs=num_epochs,
        lr=lr,
        seed=seed,
    )
    return {"acc": train.evaluate(model, ds)["acc"]}


def ticket(
    key: str, dataset: str, seed: int, amount: float, rounds: int, num_epochs: int, lr: float
) -> dict[str, Any]:
    """The lottery-ticket experiment (``prune.lottery_ticket``) on a fresh MLP.

    The MLP has the recipe's architecture and is seeded with ``seed``. Returns test accuracies
    ``{dense, rewind, random, sparsity}``.
    Example: ``ticket(key, "digits", 0, 0.9, 2, 10, 3e-3)["rewind"]``
    """
    config = models.RECIPES[("mlp", dataset)].config
    return prune.lottery_ticket(
        functools.partial(models.build, "mlp", config),
        data.load(dataset),
        amount=amount,
        rounds=rounds,
        num_epochs=num_epochs,
        lr=lr,
        seed=seed,
    )


def structured(
    key: str, dataset: str, seed: int, amount: float, num_epochs: int, lr: float
) -> dict[str, Any]:
    """Remove ``amount`` of the neurons of every hidden layer of the dense MLP of ``seed``.

    Removes them with ``ps.prune_channels``, fine-tunes ``num_epochs``, and trains the same smaller
    architecture from scratch with the full dense recipe (the fair baseline). Returns ``hidden``
    (the new widths), ``params``, ``bytes`` (dense encoding), ``acc_pruned``, ``acc`` and
    ``acc_scratch``.
    Example: ``structured(key, "digits", 0, 0.5, 5, 3e-3)["hidden"]  # [150, 50]``
    """
    ds = data.load(dataset)
    small = ps.prune_channels(dense_mlp(dataset, seed), amount)
    acc_pruned = train.evaluate(small, ds)["acc"]
    train.fit(
        small, ds, num_epochs=num_epochs, lr=lr, seed=seed, device="cpu", val=False, progress=False
    )
    scratch = train_mlp(dataset, seed, small.config)
    return {
        "hidden": list(small.config.hidden),
        "params": measure.count_params(small),
        "bytes": sparse.sparse_model_bytes(small, "dense"),
        "acc_pruned": acc_pruned,
        "acc": train.evaluate(small, ds)["acc"],
        "acc_scratch": train.evaluate(scratch, ds)["acc"],
    }


@functools.cache
def head_scores(key: str) -> dict[str, torch.Tensor]:
    """Ablation importance of every head of the pretrained digits ViT (``pt.head_importance``).

    A head's score is the validation-loss increase when that head alone is removed. Computed once
    per process and ``key`` (the ViT's cache key).
    Example: ``head_scores(models.cache_key("vit", "digits"))``
    """
    return pt.head_importance(models.pretrained("vit", "digits"), data.load("digits"), "ablation")


def surgery(key: str, change: str, amount: float, num_epochs: int, lr: float) -> dict[str, Any]:
    """Cut the pretrained digits ViT, then fine-tune ``num_epochs`` (seed 0).

    ``change="heads"``: remove the ``amount`` least important heads (``head_scores``,
    ``pt.prune_heads``); ``change="block"``: skip residual block number ``amount``
    (``pt.drop_layers``). Returns ``params``, ``bytes``, ``acc_cut`` (before fine-tuning) and
    ``acc``.
    Example: ``surgery(models.cache_key("vit", "digits"), "heads", 0.5, 2, 3e-4)["acc"]``
    """
    vit, digits = models.pretrained("vit", "digits"), data.load("digits")
    if change == "heads":
        small = pt.prune_heads(vit, pt.select_heads(head_scores(key), amount))
    else:
        small = pt.drop_layers(vit, [amount])
    acc_cut = train.evaluate(small, digits)["acc"]
    train.fit(
        small, digits, num_epochs=num_epochs, lr=lr, seed=0, device="cpu", val=False, progress=False
    )
    return {
        "params": measure.count_params(small),
        "bytes": measure.model_bytes(small),
        "acc_cut": acc_cut,
        "acc": train.evaluate(small, digits)["acc"],
    }


# --------------------------------------------------------------------------- cached sweeps

_MLP_DATASETS = tuple(sorted(d for name, d in models.RECIPES if name == "mlp"))
_CHOICES = {
    "scope": ("layer", "global"),
    "schedule": ("oneshot", "gradual"),
    "change": ("heads", "block"),
}


def _check_points(fn: Callable[..., Any], points: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Points as dicts with exactly ``fn``'s parameters, each ``key`` the cache key it names."""
    if isinstance(points, (Mapping, str, bytes)) or not isinstance(points, Sequence):
        raise ValueError(f"points must be a list of dicts; got {type(points).__name__}")
    names = list(inspect.signature(fn).parameters)
    out = []
    for point in points:
        if not isinstance(point, Mapping) or sorted(point) != sorted(names):
            raise ValueError(
                f"points of {fn.__name__} must be dicts with the keys {', '.join(names)}; "
                f"got {dict(point) if isinstance(point, Mapping) else point!r}"
            )
        for axis, allowed in _CHOICES.items():
            if axis in point:
                check_choice(axis, point[axis], allowed)
        if "dataset" in point:
            check_choice("dataset", point["dataset"], _MLP_DATASETS)
            expected = models.cache_key("mlp", point["dataset"])
        else:
            expected = models.cache_key("vit", "digits")
        if point["key"] != expected:
            raise ValueError(
                f"key must be the pretrained model's cache key {expected!r}; got {point['key']!r}"
            )
        out.append(dict(point))
    return out


def _seeds_first(points: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``points``: the first point of every seed, then the rest in order. Parallel
    workers then start by training different seeds' dense models, not the same one twice."""
    firsts = {point.get("seed"): i for i, point in reversed(list(enumerate(points)))}
    head = sorted(firsts.values())
    return head + sorted(set(range(len(points))) - set(head))


def _run(
    fn: Callable[..., dict[str, Any]],
    points: Sequence[Mapping[str, Any]],
    name: str,
    jobs: int | None,
    progress: bool | None,
) -> list[dict]:
    """``sweep.run(fn, points, name=name, version=<the points' cache key>, jobs=jobs)``, in point
    order. ``jobs``: None or 1 computes in this process, more spawns that many workers."""
    jobs = 1 if jobs is None else check_int("jobs", jobs, minimum=1)
    points = _check_points(fn, points)
    by_key: dict[str, list[int]] = {}  # one run per pretrained model (one per dataset)
    for i in _seeds_first(points):
        by_key.setdefault(points[i]["key"], []).append(i)
    records: list[dict] = [{} for _ in points]
    for version, index in by_key.items():
        chosen = [points[i] for i in index]
        done = sweep.run(fn, chosen, name=name, version=version, progress=progress, jobs=jobs)
        for i, record in zip(index, done):
            records[i] = record
    return records


def unstructured_sweep(
    points: Sequence[Mapping[str, Any]], jobs: int | None = None, progress: bool | None = None
) -> list[dict]:
    """Records of :func:`unstructured` at ``points``, cached on disk.

    The sweep is ``prune-unstructured`` (version: the MLP's cache key). ``jobs``: worker processes
    for the missing points.
    Example: ``unstructured_sweep(course_points()["unstructured"])``
    """
    return _run(unstructured, points, "prune-unstructured", jobs, progress)


def schedules_sweep(
    points: Sequence[Mapping[str, Any]], jobs: int | None = None, progress: bool | None = None
) -> list[dict]:
    """Records of :func:`schedules` at ``points``, cached on disk as sweep ``prune-schedules``.

    Example: ``schedules_sweep(course_points()["schedules"])``
    """
    return _run(schedules, points, "prune-schedules", jobs, progress)


def lottery_sweep(
    points: Sequence[Mapping[str, Any]], jobs: int | None = None, progress: bool | None = None
) -> list[dict]:
    """Records of :func:`ticket` at ``points``, cached on disk as sweep ``prune-lottery``.

    Example: ``lottery_sweep(course_points()["lottery"])``
    """
    return _run(ticket, points, "prune-lottery", jobs, progress)


def structured_sweep(
    points: Sequence[Mapping[str, Any]], jobs: int | None = None, progress: bool | None = None
) -> list[dict]:
    """Records of :func:`structured` at ``points``, cached on disk as sweep ``prune-structured``.

    Example: ``structured_sweep(course_points()["structured"])``
    """
    return _run(structured, points, "prune-structured", jobs, progress)


def vit_sweep(
    points: Sequence[Mapping[str, Any]], jobs: int | None = None, progress: bool | None = None
) -> list[dict]:
    """Records of :func:`surgery` at ``points``, cached on disk as sweep ``prune-vit``.

    The sweep's version is the digits ViT's cache key.
    Example: ``vit_sweep(course_points()["vit"])``
    """
    return _run(surgery, points, "prune-vit", jobs, progress)


COURSE = {
    "dataset": "digits",
    "seeds": (0, 1, 2),
    "amounts": (0.5, 0.8, 0.85, 0.9, 0.93, 0.95, 0.99),
    "ft_epochs": 3,
    "ft_lr": 3e-3,
    "channel_amounts": (0.5, 0.9),
}
"""The parameters notebook 03 starts with; ``prepare`` computes exactly these points."""


def course_points(
    dataset: str = COURSE["dataset"],
    seeds: Sequence[int] = COURSE["seeds"],
    amounts: Sequence[float] = COURSE["amounts"],
    ft_epochs: int = COURSE["ft_epochs"],
    ft_lr: float = COURSE["ft_lr"],
    channel_amounts: Sequence[float] = COURSE["channel_amounts"],
) -> dict[str, list[dict]]:
    """The sweep points notebook 03 builds from its parameters, one list per part of :data:`PARTS`.

    The parameters: ``DATASET``, ``SEEDS``, ``AMOUNTS``, ``FT_EPOCHS``, ``FT_LR``,
    ``CHANNEL_AMOUNTS``.
    Example: ``course_points()["vit"][0]  # {'key': ..., 'change': 'heads', 'amount': 0.25, ..}``
    """
    check_choice("dataset", dataset, _MLP_DATASETS)
    mlp_key = models.cache_key("mlp", dataset)
    vit_key = models.cache_key("vit", "digits")
    common = {"key": [mlp_key], "dataset": [dataset], "seed": list(seeds)}
    vit = [
        {"key": vit_key, "change": "heads", "amount": a, "num_epochs": 2, "lr": 3e-4}
        for a in (0.25, 0.5, 0.75)
    ]
    vit += [
        {"key": vit_key, "change": "block", "amount": i, "num_epochs": 2, "lr": 3e-4}
        for i in range(models.RECIPES[("vit", "digits")].config.depth)
    ]
    return {
        "unstructured": sweep.grid(
            **common,
            scope=["layer", "global"],
            amount=[0.0, *amounts],
            num_epochs=[ft_epochs],
            lr=[ft_lr],
        ),
        "schedules": sweep.grid(
            **common,
            amount=[0.95, 0.97],
            schedule=["oneshot", "gradual"],
            num_epochs=[4],
            num_stages=[4],
            lr=[ft_lr],
        ),
        "lottery": sweep.grid(**common, amount=[0.9, 0.95], rounds=[2], num_epochs=[5], lr=[3e-3]),
        "structured": sweep.grid(
            **common, amount=list(channel_amounts), num_epochs=[ft_epochs], lr=[ft_lr]
        ),
        "vit": vit,
    }


PARTS = ("unstructured", "schedules", "lottery", "structured", "vit")
"""The sweeps of notebook 03, which ``labkit prepare`` may compute in separate worker processes."""

_SWEEPS = {
    "unstructured": unstructured_sweep,
    "schedules": schedules_sweep,
    "lottery": lottery_sweep,
    "structured": structured_sweep,
    "vit": vit_sweep,
}


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 03 shows, at its default parameters.

    ``parts``: some of :data:`PARTS` (default: all); each trains the pretrained model it reads
    (``mlp`` or ``vit`` on digits) if it is not cached. Part of ``labkit prepare``.
    Example: ``records = prepare(["vit"])["vit"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    return {part: _SWEEPS[part](points[part], progress=progress) for part in parts}


# --------------------------------------------------------------------------- labkit prepare

FIRST = "prune:unstructured"  # trains and saves the seed-1 and seed-2 MLPs the others reuse


def steps() -> list[Step]:
    """Unstructured, schedule, structured, lottery-ticket and ViT sweeps."""
    return [
        Step(f"prune:{part}", "labkit.course.nb03_pruning:prepare", {"parts": [part]}, needs, cost)
        for part, needs, cost in (
            ("unstructured", ("model:mlp/digits",), 20.0),
            ("schedules", ("model:mlp/digits", FIRST), 4.0),
            ("structured", ("model:mlp/digits", FIRST), 10.0),
            ("lottery", ("data:digits",), 10.0),
            ("vit", ("model:vit/digits",), 9.0),
        )
    ]
