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

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

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
    "check_shrink_conv_pair",
    "batch_of",
    "pruned_variants",
    "time_variants",
    "latency_curve",
    "results_markdown",
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
    """The dense MLP for ``seed``: the recipe's seed is the cached pretrained model; other seeds
    are trained once (``train_mlp``) and kept on disk (``cache_dir("prune")``), so parallel sweep
    workers and later sweeps load them. Callers prune copies, never this model.
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
    """Magnitude-prune the dense MLP of ``seed`` to ``amount`` (``scope`` "layer" or "global"),
    fine-tune ``num_epochs`` with the masks held at zero. Returns test accuracies before
    (``acc_pruned``) and after (``acc``) fine-tuning, ``nonzero`` weights, and the model's bytes in
    every sparse encoding (``bytes_dense``, ``bytes_bitmask``, ``bytes_csr``, ``bytes_auto``).
    ``key`` names the pretrained weights for the cache only.
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
    """Prune the dense MLP of ``seed`` to ``amount`` with ``prune.prune_finetune`` (``schedule``
    "oneshot" or "gradual" in ``num_stages`` cubic stages, ``num_epochs`` in total).
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
    """The lottery-ticket experiment (``prune.lottery_ticket``) on a fresh MLP of the recipe's
    architecture, seeded with ``seed``: test accuracies ``{dense, rewind, random, sparsity}``.
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
    """Remove ``amount`` of the neurons of every hidden layer of the dense MLP of ``seed``
    (``ps.prune_channels``), fine-tune ``num_epochs``, and train the same smaller architecture from
    scratch with the full dense recipe (the fair baseline). Returns ``hidden`` (the new widths),
    ``params``, ``bytes`` (dense encoding), ``acc_pruned``, ``acc`` and ``acc_scratch``.
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
    """Ablation importance of every head of the pretrained digits ViT (``pt.head_importance``):
    the validation-loss increase when that head alone is removed. Computed once per process and
    ``key`` (the ViT's cache key). Example: ``head_scores(models.cache_key("vit", "digits"))``
    """
    return pt.head_importance(models.pretrained("vit", "digits"), data.load("digits"), "ablation")


def surgery(key: str, change: str, amount: float, num_epochs: int, lr: float) -> dict[str, Any]:
    """Cut the pretrained digits ViT, then fine-tune ``num_epochs`` (seed 0). ``change="heads"``:
    remove the ``amount`` least important heads (``head_scores``, ``pt.prune_heads``);
    ``change="block"``: skip residual block number ``amount`` (``pt.drop_layers``). Returns
    ``params``, ``bytes``, ``acc_cut`` (before fine-tuning) and ``acc``.
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
    """Records of :func:`unstructured` at ``points``, cached on disk as sweep
    ``prune-unstructured`` (version: the MLP's cache key). ``jobs``: worker processes for the
    missing points. Example: ``unstructured_sweep(course_points()["unstructured"])``
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
    """Records of :func:`surgery` at ``points``, cached on disk as sweep ``prune-vit`` (version:
    the digits ViT's cache key). Example: ``vit_sweep(course_points()["vit"])``
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
    """The sweep points notebook 03 builds from its parameters (``DATASET``, ``SEEDS``, ``AMOUNTS``,
    ``FT_EPOCHS``, ``FT_LR``, ``CHANNEL_AMOUNTS``), one list per part of :data:`PARTS`.
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


# --------------------------------------------------------------------------- the notebook's checks


def check_shrink_conv_pair(
    shrink: Callable[[nn.Conv2d, nn.Conv2d, float], tuple[nn.Conv2d, nn.Conv2d]],
    conv1: nn.Conv2d,
    conv2: nn.Conv2d,
    amount: float,
    x: Tensor,
) -> None:
    """Check ``shrink(conv1, conv2, amount)`` (exercise 3) against ``torch.nn.utils.prune``.

    The small ``conv1`` must keep exactly the filters ``prune.ln_structured(n=1, dim=0)`` keeps, in
    order, the small ``conv2`` the matching input channels, and the pair must compute on ``x``
    (B, C, H, W) what the big pair computes with the dropped filters (and biases) zeroed, through
    a ReLU. Raises AssertionError naming what differs.

    Example:
        >>> def shrink(c1, c2, amount):  # keeps every filter: right only when none is dropped
        ...     return c1, c2
        >>> c1, c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1)
        >>> check_shrink_conv_pair(shrink, c1, c2, 0.0, torch.randn(1, 1, 5, 5))
    """
    s1, s2 = shrink(conv1, conv2, amount)
    ref = copy.deepcopy(conv1)  # the filters torch's L1 structured pruning keeps
    torch_prune.ln_structured(ref, "weight", amount=amount, n=1, dim=0)
    kept = ref.weight_mask.flatten(1).amax(dim=1).nonzero().flatten()  # (kept,)
    if not (s1.out_channels == len(kept) and s2.in_channels == len(kept)):
        raise AssertionError(f"{len(kept)} filters should remain")
    if not torch.equal(s1.weight, conv1.weight[kept]):
        raise AssertionError("not the filters ln_structured keeps")
    masked = copy.deepcopy(conv1)  # same shape, dropped filters zeroed
    with torch.no_grad():
        drop = torch.ones(conv1.out_channels, dtype=torch.bool)
        drop[kept] = False
        masked.weight[drop] = 0
        if masked.bias is not None:
            masked.bias[drop] = 0
    expected = conv2(torch.relu(masked(x)))
    if not torch.allclose(s2(torch.relu(s1(x))), expected, atol=1e-5):
        raise AssertionError("outputs differ")


# --------------------------------------------------------------------------- the speed section


def batch_of(X: Tensor, n: int) -> Tensor:
    """A batch of ``n`` inputs from ``X``, repeating its samples in order if it holds fewer.

    ``X``: (N, *input_shape); returns (n, *input_shape).

    Example:
        >>> batch_of(torch.arange(3), 5)
        tensor([0, 1, 2, 0, 1])
    """
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor; got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError("X must hold at least one sample; got none")
    n = check_int("n", n, minimum=1)
    return X[torch.arange(n) % len(X)]  # (n, *input_shape), repeating samples if needed


def pruned_variants(
    model: nn.Module, channel_amounts: Sequence[float], sparsity: float = 0.9
) -> dict[str, nn.Module]:
    """The variants timed in section 9: dense, unstructured, and channel-pruned copies of ``model``.

    ``"dense"`` is ``model`` itself; ``f"{sparsity:.0%} unstructured"`` is the global magnitude
    pruning with its masks folded in (a dense matrix full of zeros); ``f"{a:.0%} channels"`` is
    ``ps.prune_channels(model, a)`` for each of ``channel_amounts``, in that order.

    Example:
        >>> mlp = models.build("mlp", in_features=8, hidden=(16,), num_classes=3)
        >>> list(pruned_variants(mlp, [0.5]))
        ['dense', '90% unstructured', '50% channels']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    return {
        "dense": model,
        f"{sparsity:.0%} unstructured": prune.remove(prune.magnitude(model, sparsity, "global")),
        **{f"{a:.0%} channels": ps.prune_channels(model, a) for a in channel_amounts},
    }


def time_variants(
    groups: Mapping[str, tuple[Mapping[str, nn.Module], Tensor]],
    batches: Sequence[int],
    threads: int | None = None,
    repeats: int = 30,
    min_time_s: float = 0.3,
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``measure.compare_latency`` of each group's variants at each batch size.

    ``groups[name] = (variants, X)``: the models to compare (the first is the baseline of
    ``speedup``) and the inputs a batch is drawn from (``batch_of``). Returns
    ``{(name, variant, batch): result}`` in group, batch, variant order; each result is
    ``compare_latency``'s (``median_ms``, ``speedup``, ...).
    Example: ``time_variants({"mlp": (pruned_variants(mlp, [0.5]), X)}, [1, 256])``
    """
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"groups must be a mapping name -> (variants, X); got {type(groups).__name__}"
        )
    timings = {}
    for name, (variants, X) in groups.items():
        for batch in batches:
            result = measure.compare_latency(
                variants,
                batch_of(X, batch),
                threads=threads,
                repeats=repeats,
                min_time_s=min_time_s,
            )
            for variant, r in result.items():
                timings[(name, variant, batch)] = r
    return timings


def latency_curve(
    latency_ms: Mapping[str, float],
    dense_acc: float,
    summary: Sequence[Mapping[str, Any]],
    channel_summary: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Accuracy against measured latency, one record per model (``plots.accuracy_vs_size``).

    ``latency_ms``: the median latency of each of ``pruned_variants``' names; ``dense_acc``: the
    dense model's accuracy; ``summary``: the unstructured sweep's mean rows (its global, 90 % row
    is used); ``channel_summary``: the structured sweep's mean rows (``amount``, ``acc``,
    ``acc_scratch``). Returns ``{"method", "latency_ms", "acc"}`` records.

    Example:
        >>> curve = latency_curve({"dense": 2.0, "90% unstructured": 2.0, "50% channels": 1.0},
        ...                       0.9, [{"scope": "global", "amount": 0.9, "acc": 0.88}],
        ...                       [{"amount": 0.5, "acc": 0.89, "acc_scratch": 0.87}])
        >>> [(r["latency_ms"], r["acc"]) for r in curve]
        [(2.0, 0.9), (2.0, 0.88), (1.0, 0.89), (1.0, 0.87)]
    """
    points = [{"method": "dense", "latency_ms": latency_ms["dense"], "acc": dense_acc}]
    points += [
        {"method": "unstructured (masked dense)", "latency_ms": latency_ms["90% unstructured"],
         "acc": r["acc"]}
        for r in sweep.select(summary, scope="global", amount=0.9)
    ]  # fmt: skip
    for method, acc in (("channels pruned + fine-tuned", "acc"),
                        ("smaller dense, from scratch", "acc_scratch")):  # fmt: skip
        points += [
            {"method": method, "latency_ms": latency_ms[f"{r['amount']:.0%} channels"],
             "acc": r[acc]}
            for r in channel_summary
        ]  # fmt: skip
    return points


def results_markdown(
    best: Mapping[str, Any],
    best_layer: Mapping[str, Any],
    dense: Mapping[str, Any],
    dense_bytes: float,
    timings: Mapping[tuple[str, str, int], Mapping[str, Any]],
    channel_summary: Sequence[Mapping[str, Any]],
    *,
    seeds: int,
    threads: int,
    batch: int,
) -> str:
    """Section 11's paragraph, "what pruning bought here", in Markdown.

    ``best``/``best_layer``: the global and layer-wise summary rows at the largest sparsity
    within one point of dense; ``dense``: the dense row (``acc_pruned``, ``acc_pruned_std``);
    ``dense_bytes``: its packed bytes; ``timings``: ``time_variants`` of the ``"mlp"`` and
    ``"dscnn"`` groups at batch 1 and ``batch``; ``channel_summary``: the structured sweep's rows
    (the last: the most neurons removed); ``seeds``, ``threads``: how the run was made.
    Example: ``display(Markdown(results_markdown(best, best_layer, dense, ..., batch=256)))``
    """
    seeds, threads = check_int("seeds", seeds, minimum=1), check_int("threads", threads, minimum=1)
    half = timings[("dscnn", "50% channels", batch)]
    half_mlp = timings[("mlp", "50% channels", batch)]
    masked = timings[("mlp", "90% unstructured", batch)]
    masked_cnn = timings[("dscnn", "90% unstructured", batch)]
    one = {m: timings[(m, "50% channels", 1)]["speedup"] for m in ("dscnn", "mlp")}
    cut = channel_summary[-1]  # the most neurons removed
    return (
        f"**This run** ({seeds} seeds, {threads} thread(s)): the globally pruned and "
        f"fine-tuned MLP stayed within one point of the dense accuracy up to "
        f"**{best['amount']:.0%} sparsity** ({best['acc']:.1%} ± {best['acc_std']:.1%} against "
        f"{dense['acc_pruned']:.1%} ± {dense['acc_pruned_std']:.1%} dense; layer-wise pruning "
        f"held to {best_layer['amount']:.0%}). Shipped with the sparse encoding it takes "
        f"**{dense_bytes / best['bytes_auto']:.1f}× fewer bytes** ({best['bytes_auto']:,.0f} "
        f"against {dense_bytes:,.0f}). Removing **half of the channels** made the DSCNN "
        f"**{half['speedup']:.2f}×** and the MLP **{half_mlp['speedup']:.2f}×** faster at batch "
        f"{batch} ({one['dscnn']:.2f}× and {one['mlp']:.2f}× at batch 1); 90 % "
        f"unstructured sparsity gave {masked['speedup']:.2f}× (MLP) and "
        f"{masked_cnn['speedup']:.2f}× (DSCNN). With {cut['amount']:.0%} of the neurons removed, "
        f"the fine-tuned MLP reached {cut['acc']:.1%} and the same small MLP trained from scratch "
        f"{cut['acc_scratch']:.1%}."
    )
