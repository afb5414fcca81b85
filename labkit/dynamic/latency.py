"""Batch-1 latency of early-exit inference: per exit path, and averaged over real samples."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from labkit import measure, utils
from labkit.dynamic.exits import EarlyExit, EarlyExitCNN1d
from labkit.utils import check_choice, check_int


def exit_latency(
    model: EarlyExitCNN1d,
    exit_fraction: Sequence[float],
    criterion: str = "max_prob",
    *,
    plain: nn.Module | None = None,
    x: Tensor | None = None,
    threads: int | None = 1,
    repeats: int = 100,
    warmup: int = 10,
) -> dict[str, Any]:
    """Batch-1 latency of early-exit inference against the full network, measured with
    ``measure.compare_latency``: :class:`EarlyExit` forced to leave at each exit (per-exit
    thresholds 2.0 = never, 0.0 = always, so the rejected heads' tests are timed too) and
    ``plain`` (default: ``model.to_plain()``, the same weights without heads), interleaved in one
    run on ``x`` (default: zeros of the model's input shape). The time of a path does not depend
    on the weights, only on where the sample leaves; the mean weights each exit's median by
    ``exit_fraction`` (e.g. ``exit_report(...)["exit_fraction"]``). Returns ``exit_ms`` (per
    exit), ``full_ms``, ``mean_ms`` and ``speedup`` (full / mean).

    Example: ``exit_latency(model, exit_report(cached, y, 0.8, macs)["exit_fraction"])``
    """
    n = model.num_exits
    share = [float(f) for f in exit_fraction]
    if len(share) != n or any(not f >= 0 for f in share) or abs(sum(share) - 1) > 1e-6:
        raise ValueError(f"exit_fraction must be {n} shares >= 0 summing to 1; got {exit_fraction}")
    if x is None:
        x = torch.zeros(1, model.config.in_channels, model.config.length)
    model.eval()
    plain = (plain if plain is not None else model.to_plain()).eval()
    variants: dict[str, nn.Module] = {"full": plain}
    for i in range(n):  # leave at exit i: never at the heads before it, always at it
        forced = [2.0] * i + [0.0] * (n - 1 - i)
        variants[f"exit {i + 1}"] = EarlyExit(model, forced, criterion)
    times = measure.compare_latency(
        variants, x, threads=threads, repeats=repeats, warmup=warmup, baseline="full"
    )
    exit_ms = [times[f"exit {i + 1}"]["median_ms"] for i in range(n)]
    mean = sum(f * t for f, t in zip(share, exit_ms))
    full = times["full"]["median_ms"]
    return {"exit_ms": exit_ms, "full_ms": full, "mean_ms": mean, "speedup": full / mean}


@torch.no_grad()
def per_sample_latency(
    variants: Mapping[str, nn.Module],
    X: Tensor,
    *,
    baseline: str | None = None,
    threads: int | None = 1,
    rounds: int = 3,
    warmup: int = 20,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency averaged over the samples in ``X``: every sample goes through every model,
    interleaved (the order rotates), ``rounds`` times. An early-exit model's time depends on the
    input, so the mean over a test set is its honest figure (a direct check of
    :func:`exit_latency`). Returns per model ``mean_ms``, ``median_ms`` (of the per-sample means)
    and ``speedup`` (baseline mean / this mean).

    Example: ``per_sample_latency({"full": plain, "exit": EarlyExit(m, 0.9)}, X_test[:200])``
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty dict {name: nn.Module}")
    names = list(variants)
    baseline = names[0] if baseline is None else check_choice("baseline", baseline, names)
    check_int("rounds", rounds, minimum=1)
    check_int("warmup", warmup, minimum=0)
    if threads is not None:
        check_int("threads", threads, minimum=1)
    times = {n: np.zeros((rounds, len(X))) for n in names}
    gc_on = gc.isenabled()
    modes = {n: m.training for n, m in variants.items()}
    try:
        with utils.num_threads(threads):
            for m in variants.values():
                m.eval()
            for n in names:
                for i in range(warmup):
                    variants[n](X[i % len(X)][None])
            gc.collect()
            gc.disable()
            for r in range(rounds):
                for i in range(len(X)):
                    x = X[i][None]  # (1, ...)
                    shift = (r * len(X) + i) % len(names)
                    for n in names[shift:] + names[:shift]:
                        t0 = time.perf_counter()
                        variants[n](x)
                        times[n][r, i] = time.perf_counter() - t0
    finally:
        if gc_on:
            gc.enable()
        for n, m in variants.items():
            m.train(modes[n])
    per_sample = {n: times[n].mean(axis=0) * 1e3 for n in names}  # (N,) ms
    base = float(per_sample[baseline].mean())
    return {
        n: {
            "mean_ms": float(v.mean()),
            "median_ms": float(np.median(v)),
            "speedup": base / float(v.mean()),
        }
        for n, v in per_sample.items()
    }
