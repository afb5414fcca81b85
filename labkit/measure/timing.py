"""Latency: interleaved timing loop, same-run comparisons, best fp32 baseline, a test workload."""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from labkit.measure.compute import Inputs, _as_args, _eval_mode
from labkit.utils import check_choice, check_int, check_number, num_threads

# --------------------------------------------------------------------------- latency


def _check_timing(threads: int | None, warmup: int, repeats: int, min_time_s: float | None):
    if threads is not None:
        check_int("threads", threads, minimum=1, maximum=max(os.cpu_count() or 1, 1))
    check_int("warmup", warmup, minimum=0)
    check_int("repeats", repeats, minimum=1)
    if min_time_s is not None and (
        isinstance(min_time_s, bool)
        or not isinstance(min_time_s, (int, float))
        or not 0 <= min_time_s < math.inf
    ):
        raise ValueError(f"min_time_s must be None or a number >= 0 (seconds); got {min_time_s!r}")


def _layout(args: tuple[Tensor, ...], channels_last: bool) -> tuple[Tensor, ...]:
    if not channels_last:
        return args
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args
    )


def _sync(args: tuple[Tensor, ...]) -> None:
    if any(a.is_cuda for a in args):
        torch.cuda.synchronize()


def _stats(times_s: list[float]) -> dict[str, Any]:
    ms = np.asarray(times_s) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "repeats": len(times_s),
    }


def _time_variants(
    variants: dict[str, tuple[nn.Module, tuple[Tensor, ...]]],
    *,
    threads: int | None,
    warmup: int,
    repeats: int,
    min_time_s: float | None,
) -> tuple[dict[str, list[float]], int]:
    """Time each variant once per round, rotating who goes first; return seconds, threads used."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc_enabled = gc.isenabled()
    try:
        with num_threads(threads), _eval_mode(*(m for m, _ in variants.values())):
            used = torch.get_num_threads()
            for name in names:
                model, args = variants[name]
                for _ in range(warmup):
                    model(*args)
                _sync(args)
            gc.collect()
            gc.disable()  # a collection inside one timed call would be charged to that variant
            start = time.perf_counter()
            rounds = 0
            while rounds < repeats or (
                min_time_s is not None and time.perf_counter() - start < min_time_s
            ):
                shift = rounds % len(names)
                for name in names[shift:] + names[:shift]:
                    model, args = variants[name]
                    t0 = time.perf_counter()
                    model(*args)
                    _sync(args)
                    times[name].append(time.perf_counter() - t0)
                rounds += 1
    finally:
        if gc_enabled:
            gc.enable()
    return times, used


def _variant(model: nn.Module, args: tuple[Tensor, ...], channels_last: bool):
    if channels_last:  # never mutate the caller's model
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return model, _layout(args, channels_last)


def latency(
    model: nn.Module,
    inputs: Inputs,
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
    channels_last: bool = False,
    min_time_s: float | None = None,
) -> dict[str, Any]:
    """Wall-clock latency of ``model(inputs)`` in milliseconds (eval mode, ``no_grad``).

    ``threads`` sets ``torch.set_num_threads`` for this call only (restored even on error; None =
    current setting). ``channels_last`` runs a deep copy of the model and the 4-D inputs in
    ``torch.channels_last`` (the caller's model is untouched). Each of ``repeats`` calls is timed
    with ``time.perf_counter`` after ``warmup`` untimed calls; with ``min_time_s`` it keeps
    repeating until that many seconds have passed. Returns ``median_ms, p10_ms, p90_ms, mean_ms,
    min_ms, repeats, threads, batch_size, channels_last``. Report the median; to claim a speedup,
    use :func:`compare_latency` against :func:`best_fp32_baseline` in the same run. On a busy
    machine, ``threads`` above the idle core count makes OpenMP wait on preempted threads and the
    median explodes (milliseconds become hundreds); measure with ``threads=1`` there.

    Example: ``latency(model, X[:1], threads=2)["median_ms"]``
    """
    result = compare_latency(
        {"model": model},
        inputs,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        channels_last=channels_last,
        min_time_s=min_time_s,
    )["model"]
    del result["speedup"]  # always 1.0 against itself
    return result


def compare_latency(
    models: Mapping[str, nn.Module],
    inputs: Inputs,
    *,
    baseline: str | None = None,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
    channels_last: bool | Mapping[str, bool] = False,
    min_time_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of several variants measured in the same run, interleaved round-robin.

    Every round times each model once (rotating the order), so slow drifts of a shared machine
    (other jobs, thermal throttling) hit all variants equally. Each result is :func:`latency`'s
    dict plus ``speedup`` = baseline median / this median (> 1 is faster). ``baseline`` names a
    key of ``models`` (default: the first). ``channels_last`` is one bool for all or a
    ``{name: bool}`` mapping (missing names run NCHW).

    Example: ``compare_latency({"fp32": model, "pruned": small}, X[:1], baseline="fp32")``
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}; got " + repr(models))
    names = list(models)
    baseline = names[0] if baseline is None else check_choice("baseline", baseline, names)
    _check_timing(threads, warmup, repeats, min_time_s)
    if isinstance(channels_last, Mapping):
        for key in channels_last:
            check_choice("channels_last key", key, names)
        layouts = {n: bool(channels_last.get(n, False)) for n in names}
    else:
        layouts = dict.fromkeys(names, bool(channels_last))
    args = _as_args(inputs)
    batch_size = args[0].shape[0] if args[0].dim() > 0 else 1
    variants = {n: _variant(models[n], args, layouts[n]) for n in names}
    times, used = _time_variants(
        variants, threads=threads, warmup=warmup, repeats=repeats, min_time_s=min_time_s
    )
    results = {
        n: {
            **_stats(times[n]),
            "threads": used,
            "batch_size": int(batch_size),
            "channels_last": layouts[n],
        }
        for n in names
    }
    base = results[baseline]["median_ms"]
    for r in results.values():
        r["speedup"] = base / r["median_ms"] if r["median_ms"] > 0 else math.inf
    return results


def best_fp32_baseline(
    model: nn.Module,
    inputs: Inputs,
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
    min_time_s: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """The faster memory layout for ``model`` on this machine, and its latency dict.

    For a model with ``nn.Conv2d`` fed 4-D inputs, NCHW and channels_last are timed interleaved
    (:func:`compare_latency`) and the faster is returned as ``("nchw" | "channels_last", timings)``;
    ``timings["layouts"]`` holds both medians. Other models have no layout choice:
    ``("default", latency(...))``. Every speed claim in the course compares against this.

    Example: ``layout, base = best_fp32_baseline(model, X[:1], threads=2)``
    """
    kw = {"threads": threads, "warmup": warmup, "repeats": repeats, "min_time_s": min_time_s}
    args = _as_args(inputs)
    has_conv2d = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if not (has_conv2d and any(a.dim() == 4 for a in args)):
        return "default", latency(model, inputs, **kw)
    results = compare_latency(
        {"nchw": model, "channels_last": model},
        inputs,
        baseline="nchw",
        channels_last={"channels_last": True},
        **kw,
    )
    best = min(results, key=lambda n: results[n]["median_ms"])
    return best, {**results[best], "layouts": {n: r["median_ms"] for n, r in results.items()}}


# --------------------------------------------------------------------------- a workload to time


class ScriptedWorkload(nn.Module):
    """A stand-in model whose every call sleeps a scripted time: a known workload to test a timer.

    Call ``k`` (counting from 0) sleeps ``first_ms[k]`` milliseconds for the first
    ``len(first_ms)`` calls (the one-time costs warm-up absorbs), then cycles through
    ``steady_ms`` (``(5, 5, 5, 5, 200)``: every fifth call is held up, as by another program on a
    shared core). The input is returned unchanged. The buffer ``calls`` counts the calls made, so
    it travels with the module; :meth:`delay_ms` tells the scripted time of any call. A call
    lasts at least its scripted time (``time.sleep`` never returns early) and on a busy machine a
    little longer.

    Example:
        >>> w = ScriptedWorkload(steady_ms=(1.0, 3.0), first_ms=(10.0,))
        >>> [w.delay_ms(k) for k in range(5)]
        [10.0, 1.0, 3.0, 1.0, 3.0]
        >>> w(torch.ones(2)).tolist(), int(w.calls)
        ([1.0, 1.0], 1)
    """

    calls: Tensor

    def __init__(self, steady_ms: Sequence[float] = (1.0,), first_ms: Sequence[float] = ()):
        super().__init__()
        if isinstance(steady_ms, (str, bytes)) or not isinstance(steady_ms, Sequence):
            raise ValueError(
                f"steady_ms must be a sequence of milliseconds >= 0; got {steady_ms!r}"
            )
        if not steady_ms:
            raise ValueError("steady_ms must hold at least one delay (milliseconds >= 0); got ()")
        if isinstance(first_ms, (str, bytes)) or not isinstance(first_ms, Sequence):
            raise ValueError(f"first_ms must be a sequence of milliseconds >= 0; got {first_ms!r}")
        self.steady_ms = tuple(check_number("steady_ms", v, minimum=0) for v in steady_ms)
        self.first_ms = tuple(check_number("first_ms", v, minimum=0) for v in first_ms)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def delay_ms(self, k: int) -> float:
        """The scripted duration of call ``k`` (0-based) in milliseconds."""
        k = check_int("k", k, minimum=0)
        if k < len(self.first_ms):
            return self.first_ms[k]
        return self.steady_ms[(k - len(self.first_ms)) % len(self.steady_ms)]

    def forward(self, x: Tensor) -> Tensor:
        """Sleep the next call's scripted time, count the call, return ``x``."""
        time.sleep(self.delay_ms(int(self.calls)) / 1000)
        with torch.no_grad():
            self.calls += 1
        return x
