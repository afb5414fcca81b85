"""One row for the results table: accuracy, size, work and latency of a model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from labkit.data import as_xy
from labkit.measure.compute import _eval_mode, macs
from labkit.measure.size import count_nonzero, count_params, model_bytes
from labkit.measure.timing import compare_latency
from labkit.utils import check_int

# --------------------------------------------------------------------------- one-stop summary


def _accuracy(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 256) -> float:
    try:
        from labkit.train import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        return float(evaluate(model, (X, y))["acc"])
    device = _device(model)
    correct = 0
    with _eval_mode(model):
        for i in range(0, len(X), batch_size):
            logits = model(X[i : i + batch_size].to(device))  # (b, num_classes)
            correct += int((logits.argmax(-1).cpu() == y[i : i + batch_size]).sum())
    return correct / max(len(X), 1)


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def summary(
    model: nn.Module,
    data: Any,
    *,
    split: str = "test",
    latency: bool = True,
    latency_batch_size: int = 1,
    threads: int | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """One row for the results table: ``acc, params, nonzero, bytes, macs, latency_ms``.

    ``acc`` in [0, 1] on ``data.split(split)`` (or a tuple ``(X, y)``); ``bytes`` is
    :func:`model_bytes` (real, serialized); ``macs`` is per sample (measured on one sample);
    ``latency_ms`` is the median :func:`latency` at ``latency_batch_size`` (None when
    ``latency=False``, e.g. for deterministic notebook output).

    Example: ``summary(model, labkit.data.load("digits"), threads=2)``
    """
    check_int("latency_batch_size", latency_batch_size, minimum=1)
    X, y = as_xy(data, split)
    if len(X) == 0:
        raise ValueError(f"split must hold at least one sample; {split!r} is empty")
    device = _device(model)
    result = {
        "acc": _accuracy(model, X, y),
        "params": count_params(model),
        "nonzero": count_nonzero(model),
        "bytes": model_bytes(model),
        "macs": macs(model, X[:1].to(device)),
        "latency_ms": None,
    }
    if latency:
        idx = torch.arange(latency_batch_size) % len(X)  # repeat samples if the split is small
        batch = X[idx].to(device)  # (latency_batch_size, *input_shape)
        timing = compare_latency(
            {"model": model}, batch, threads=threads, channels_last=channels_last
        )  # `latency` is the flag here, so call the shared implementation
        result["latency_ms"] = timing["model"]["median_ms"]
    return result
