"""Notebook 07 (dataset distillation): the cached experiments ``labkit prepare`` builds.

``COURSE`` holds the notebook's dataset, grid and recipes; ``course_run`` builds and evaluates one
condensed set (``condense.evaluate_set``), ``course_points`` lists the notebook's sweep points,
``course_sweep`` runs them with a disk cache and ``prepare`` fills that cache.

Example:
    >>> from labkit.course import nb07_condense as experiments
    >>> records = experiments.course_sweep(experiments.course_points()["main"])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from labkit import condense, sweep, utils
from labkit import data as data_mod
from labkit.course import Step
from labkit.utils import check_choice, check_int

__all__ = [
    "COURSE",
    "STORED",
    "course_run",
    "course_points",
    "course_sweep",
    "PARTS",
    "prepare",
    "steps",
]

COURSE: dict[str, Any] = {
    "dataset": "digits",
    "ipcs": (1, 10, 50),
    "seeds": 3,
    "num_steps": 200,
    "dm": {"num_iters": 40, "lr": 0.3},
    "gm": {"num_iters": 4, "outer_loop": 3, "inner_loop": 3, "batch_real": 32},
}
"""What notebook 07 shows and ``prepare`` computes: the dataset, images per class, evaluation seeds
and Adam steps of every evaluation, and the recipes of the two learned sets, sized for a CPU: DM
with 40 iterations at learning rate 0.3 (the default of ``distribution_matching`` is 100), gradient
matching with 4 networks of 3 outer and 3 inner steps on batches of 32 real images per class."""

STORED = {
    "random": "uint8", "herding": "uint8", "kcenter": "uint8", "full": "uint8",
    "means": "float32", "kmeans": "float32", "dm": "float32", "gm": "float32",
}  # fmt: skip
"""How each set is stored by ``set_bytes``: real images keep the dataset's 8-bit pixels, made or
learned images keep float32 pixels."""


@functools.lru_cache(maxsize=8)
def _course_set(method: str, ipc: int, augment: int, dataset: str, num_steps: int) -> tuple:
    """``(X_s, y_s, seconds)`` of one non-random course set, memoised so that the points that
    evaluate one learned set in several ways learn it once."""
    ds = data_mod.load(dataset)
    feats = condense.features(dataset, num_steps) if method in ("herding", "kcenter") else None
    start = time.perf_counter()
    options = dict(COURSE.get(method, {}))
    X_s, y_s = condense.condense(
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
    """One point of notebook 07's sweep: build a set of ``ipc`` images per class and evaluate it.

    Builds the ``method`` set of ``ipc`` images per class (``method='full'``: the whole training
    set, ``ipc=0``), learned sets with ``augment`` pixel shifts and the ``COURSE`` recipe, and
    evaluates it (``evaluate_set``, MLP, ``seeds`` seeds, ``eval_augment`` shifts while training).
    'random' draws a new subset per seed; the other methods build one set (seed 0).
    Returns acc, acc_std, accs, the set's bytes, images, the training samples one model sees,
    train_seconds (per model), make_seconds, and the pixels (rounded to 4 decimals) and labels of
    the set when ``ipc`` <= 10.

    Example: ``course_run("dm", 10, augment=1)["acc"]``
    """
    check_choice("method", method, (*condense.METHODS, "full"))
    seeds = check_int("seeds", seeds, minimum=1)
    ds = data_mod.load(dataset)
    X, y = ds.X_train, ds.y_train
    make_seconds = 0.0
    if method == "full":
        check_int("ipc", ipc, minimum=0, maximum=0)
        Xs, ys = [X] * seeds, [y] * seeds
    elif method == "random":
        sets = [condense.condense("random", X, y, ipc, seed=s) for s in range(seeds)]
        Xs, ys = [s[0] for s in sets], [s[1] for s in sets]
    else:
        X_s, y_s, make_seconds = _course_set(method, ipc, augment, dataset, num_steps)
        Xs, ys = [X_s] * seeds, [y_s] * seeds
    result = condense.evaluate_set(
        Xs, ys, ds, seeds=range(seeds), num_steps=num_steps, augment=eval_augment
    )
    out = {
        "acc": result["acc"],
        "acc_std": result["acc_std"],
        "accs": result["accs"],
        "bytes": condense.set_bytes(Xs[0], ys[0], STORED[method]),
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
    """The sweep points of notebook 07: ``main`` and ``augment``.

    ``main``: every method at every ``ipc`` it allows (class means at 1, k-means centroids above 1,
    gradient matching at the smallest; and the full set as ``method='full', ipc=0``). ``augment``:
    at the smallest ``ipc``, DM learned through ±1-pixel shifts, and random / means / DM sets
    evaluated with shifted training.
    Every point spells out ``method, ipc, augment, eval_augment, seeds``.
    Example: ``course_points()["main"][0]  # {'method': 'random', 'ipc': 1, 'augment': 0, ..}``
    """
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


def steps() -> list[Step]:
    """Condensed sets and their evaluations, plain and augmented."""
    costs = {"main": 17.0, "augment": 6.0}
    return [
        Step(
            f"condense:{part}",
            "labkit.course.nb07_condense:prepare",
            {"parts": [part]},
            needs=("data:digits",),
            cost=cost,
        )
        for part, cost in costs.items()
    ]
