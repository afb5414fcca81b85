"""What ``labkit prepare`` builds, and how: every pretrained zoo entry and every cached sweep a
notebook reads, scheduled as steps with dependencies over worker processes.

A step is a ``module:function`` call with keyword arguments, the names of the steps it needs
first, and a rough cost (seconds on one core): the step heading the longest chain starts first.
With ``jobs=2`` on a 2-core laptop the cold cache builds in a little over half the time of one
process: each worker trains one model or sweep with one thread, which is also how small models
train fastest.

Example:
    >>> from labkit import course
    >>> [s.name for s in course.steps()][:2]
    ['data:digits', 'data:mnist1d']
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.utils import check_int, num_threads

__all__ = ["Step", "steps", "prepare", "default_jobs", "usable_cores"]


@dataclass(frozen=True)
class Step:
    """One unit of ``labkit prepare``.

    ``target`` is ``"module:function"``, called with ``kwargs`` after every step named in ``needs``
    has finished. ``cost`` orders ready steps (longest first).
    """

    name: str
    target: str
    kwargs: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    cost: float = 10.0


# Rough single-thread training seconds measured on a 2-core laptop; only the order depends on them.
_MODEL_COST = {"gpt/pydoc": 120.0, "gpt_w64/pydoc": 25.0, "vit/digits": 22.0, "cnn1d/mnist1d": 20.0}
_DATASETS = ("digits", "mnist1d", "pydoc")


# One module per notebook with cached experiments; each defines ``steps()``: its part of
# ``labkit prepare``, in the order the scheduler lists them.
COURSE_MODULES = (
    "nb00_basics",
    "nb02_distillation",
    "nb03_pruning",
    "nb04_quantization",
    "nb05_lowbit",
    "nb06_dynamic",
    "nb07_condense",
    "nb08_capstone",
)


def _course_steps() -> list[Step]:
    """The notebooks' cached sweeps, each after the models it reads: every course module's
    ``steps()``, in :data:`COURSE_MODULES` order."""
    out: list[Step] = []
    for name in COURSE_MODULES:
        out += importlib.import_module(f"labkit.course.{name}").steps()
    return out


def steps(only: Sequence[str] | None = None) -> list[Step]:
    """Every step of ``labkit prepare`` in a valid order: datasets, zoo models, course sweeps.

    ``only``: zoo entries ``"name/dataset"`` — just those models (and their datasets), no sweeps.
    Example: ``[s.name for s in steps(["lenet/digits"])]  # ['data:digits', 'model:lenet/digits']``
    """
    from labkit import models

    entries = sorted(models.RECIPES)
    if only is not None:
        chosen = models.select_entries(list(only))
        entries = [e for e in entries if e in chosen]
    used = {d for _, d in entries}
    out = [
        Step(f"data:{d}", "labkit.data:load", {"name": d}, cost=5.0)
        for d in _DATASETS
        if d in used or only is None
    ]
    for name, dataset in entries:
        key = f"{name}/{dataset}"
        out.append(
            Step(
                f"model:{key}",
                "labkit.course:_prepare_model",
                {"name": name, "dataset": dataset},
                needs=(f"data:{dataset}",) if dataset in _DATASETS else (),
                cost=_MODEL_COST.get(key, 10.0),
            )
        )
    if only is None:
        out += _course_steps()
    return out


def default_jobs() -> int:
    """Worker processes for ``prepare``: the usable CPU cores, at most 2 (``LABKIT_JOBS`` wins)."""
    env = os.environ.get("LABKIT_JOBS")
    if env:
        return check_int("LABKIT_JOBS", int(env) if env.isdigit() else env, minimum=1)
    return max(1, min(2, usable_cores()))


def usable_cores() -> int:
    """The CPU cores this process may run on. Example: ``usable_cores()  # 2 on a 2-core laptop``"""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _prepare_model(name: str, dataset: str, progress: bool | None = None) -> dict:
    from labkit import models

    row = models.prepare([(name, dataset)], progress=progress, threads=1)[0]
    return {"cached": row["cached"], "metrics": row["metrics"]}


def _call(target: str, kwargs: dict, progress: bool | None) -> tuple[Any, float]:
    """Run one step (in this or a worker process); return its summary and wall seconds."""

    module_name, fn_name = target.split(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module_name), fn_name)
    kwargs = dict(kwargs)
    if "progress" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        kwargs["progress"] = progress
    start = time.perf_counter()
    with num_threads(1):
        result = fn(**kwargs)
    summary = result if target == "labkit.course:_prepare_model" else None
    return summary, time.perf_counter() - start


def _check_graph(plan: Sequence[Step]) -> None:
    names = [s.name for s in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"steps must have unique names; got {names}")
    for s in plan:
        for need in s.needs:
            if need not in names:
                raise ValueError(f"step {s.name!r} needs {need!r}, which is not a step")
    done: set[str] = set()
    while len(done) < len(plan):  # every step must become ready at some point
        ready = {s.name for s in plan if s.name not in done and set(s.needs) <= done}
        if not ready:
            stuck = sorted(s.name for s in plan if s.name not in done)
            raise ValueError(f"steps must not need each other in a cycle; stuck: {stuck}")
        done |= ready


def _critical_path(plan: Sequence[Step]) -> dict[str, float]:
    """Each step's cost plus the longest chain of steps waiting for it: the highest starts first."""
    rank: dict[str, float] = {}
    for step in reversed(_topological(plan)):
        after = [rank[s.name] for s in plan if step.name in s.needs]
        rank[step.name] = step.cost + max(after, default=0.0)
    return rank


def _topological(plan: Sequence[Step]) -> list[Step]:
    out: list[Step] = []
    done: set[str] = set()
    while len(out) < len(plan):
        for step in plan:
            if step.name not in done and set(step.needs) <= done:
                out.append(step)
                done.add(step.name)
    return out


def prepare(
    plan: Sequence[Step] | None = None,
    jobs: int | None = None,
    progress: bool | None = None,
    report: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``plan`` (default: ``steps()``) with ``jobs`` worker processes.

    ``jobs`` defaults to ``default_jobs()``; 1 runs everything in this process. Returns one record
    per step, in completion order: ``name, seconds`` and for models ``cached, metrics``.
    ``report(record)`` is called as each step finishes. A failing step stops the run with its error.

    Example: ``prepare(jobs=2)  # the whole course cache``
    """
    plan = list(steps() if plan is None else plan)
    _check_graph(plan)
    jobs = default_jobs() if jobs is None else check_int("jobs", jobs, minimum=1)
    if jobs > 1:
        progress = False  # bars from several processes would interleave; one line per step instead
    done: set[str] = set()
    records: list[dict] = []

    def finish(step: Step, summary: Any, seconds: float) -> None:
        record = {"name": step.name, "seconds": seconds, **(summary or {})}
        records.append(record)
        done.add(step.name)
        if report is not None:
            report(record)

    pending = list(plan)
    rank = _critical_path(plan)

    def ready() -> list[Step]:
        out = [s for s in pending if all(n in done for n in s.needs)]
        return sorted(out, key=lambda s: -rank[s.name])

    if jobs == 1:
        while pending:
            step = ready()[0]  # the graph is checked, so some step is always ready
            pending.remove(step)
            try:
                summary, seconds = _call(step.target, step.kwargs, progress)
            except Exception as err:
                raise RuntimeError(f"labkit prepare: step {step.name} failed: {err}") from err
            finish(step, summary, seconds)
        return records

    context = multiprocessing.get_context("spawn")  # no fork after torch started its threads
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        running: dict[cf.Future, Step] = {}
        while pending or running:
            for step in ready()[: jobs - len(running)]:
                pending.remove(step)
                running[pool.submit(_call, step.target, step.kwargs, progress)] = step
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                step = running.pop(future)
                try:
                    summary, seconds = future.result()
                except Exception as err:
                    for other in running:
                        other.cancel()
                    raise RuntimeError(f"labkit prepare: step {step.name} failed: {err}") from err
                finish(step, summary, seconds)
    return records
