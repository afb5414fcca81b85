"""Honest measurements: parameters, real bytes, MACs/FLOPs, latency against the best fp32 baseline.

Three rules the course keeps:

* **Size means real bytes.** :func:`model_bytes` is the length of ``torch.save(state_dict)``,
  not ``4 × params``. "Would be" sizes (fp16, int8) are labelled ``estimated_*`` in
  :func:`bytes_report`.
* **Work means counted MACs.** :func:`flops` asks PyTorch's ``FlopCounterMode``;
  :func:`macs_by_hand` re-derives the Linear/Conv part from closed-form formulas, so the two
  check each other.
* **Speed means latency measured in the same run against the best fp32 baseline.**
  :func:`compare_latency` interleaves variants so machine drift hits all of them equally, and
  :func:`best_fp32_baseline` picks NCHW or channels_last, whichever is faster here, for conv nets.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from labkit import measure
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> measure.count_params(model), measure.macs(model, torch.randn(1, 1, 8, 8))
    (650, 640)
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.data import as_xy
from labkit.utils import check_choice, check_int, check_number, num_threads

__all__ = [
    "count_params",
    "count_nonzero",
    "model_bytes",
    "payload_bytes",
    "file_bytes",
    "bytes_report",
    "flops",
    "macs",
    "flops_by_module",
    "linear_macs",
    "conv1d_macs",
    "conv2d_macs",
    "conv_output_size",
    "macs_by_hand",
    "latency",
    "compare_latency",
    "best_fp32_baseline",
    "summary",
    "energy_estimate_j",
]

Inputs = Tensor | Sequence[Tensor]

# --------------------------------------------------------------------------- counting parameters


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (shared/tied parameters counted once).

    A model pruned with ``torch.nn.utils.prune`` still has all of its ``weight_orig`` entries, so
    this is the dense count; see :func:`count_nonzero` for what survives pruning.

    Example: ``count_params(nn.Linear(64, 10))  # 650``
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_nonzero(model: nn.Module, include_buffers: bool = False) -> int:
    """Number of non-zero entries in the *effective* parameters (what the forward pass uses).

    For a module pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) the
    effective weight is ``weight_orig * weight_mask``; for ``torch.nn.utils.parametrize`` it is the
    parametrized ``module.weight``. Buffers (BatchNorm statistics) are left out unless
    ``include_buffers``; pruning masks are never counted.

    Example: ``count_nonzero(model)  # 650 dense, 330 after pruning half of 640 weights``
    """
    total = 0
    seen: set[int] = set()

    def add(t: Tensor) -> None:
        nonlocal total
        if id(t) not in seen:
            seen.add(id(t))
            total += int(torch.count_nonzero(t.detach()).item())

    for module in model.modules():
        if isinstance(module, nn.utils.parametrize.ParametrizationList):
            continue  # its `original` is reached through the owning module's effective tensor
        buffers = dict(module.named_buffers(recurse=False))
        for name, p in module.named_parameters(recurse=False):
            mask = buffers.get(f"{name[:-5]}_mask") if name.endswith("_orig") else None
            if mask is not None:
                total += int(torch.count_nonzero((p * mask).detach()).item())  # prune's formula
            else:
                add(p)
        if nn.utils.parametrize.is_parametrized(module):
            for name in module.parametrizations:
                total += int(torch.count_nonzero(getattr(module, name).detach()).item())
        if include_buffers:
            for name, b in buffers.items():
                if not (name.endswith("_mask") and f"{name[:-5]}_orig" in module._parameters):
                    add(b)
    return total


# --------------------------------------------------------------------------- bytes


def model_bytes(model: nn.Module) -> int:
    """REAL size in bytes: the length of ``torch.save(model.state_dict())`` written to memory.

    This is what lands on disk (zip container, pickled keys, alignment padding included). A model
    pruned with ``torch.nn.utils.prune`` stores ``weight_orig`` AND ``weight_mask``, so it is
    BIGGER than the dense model until the mask is folded in (``prune.remove``) and the zeros are
    stored sparsely or packed. That is the honest point: zeros save nothing until encoded.
    A file written by ``torch.save(sd, "name.pt")`` differs by a few bytes per tensor, because the
    zip records carry the file stem ("name/data/0") where the in-memory save uses "archive/...".

    Example: ``model_bytes(nn.Linear(64, 10))  # 4389: 2600 bytes of weights + the zip container``
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def payload_bytes(model: nn.Module) -> int:
    """Bytes of tensor data in the state_dict, without the container: ``model_bytes - overhead``.

    Parameters and buffers alike: a BatchNorm adds its running mean and variance and an int64
    batch counter, which an inference with the BatchNorm folded into the conv never reads
    (``count_params`` of the folded model counts what it does read). Each storage is counted
    once (tied weights share one); nested containers such as the packed params of ``torch.ao``
    quantized modules are searched too. For fp32 this is ``4 × entries``.

    Example: ``payload_bytes(nn.Linear(64, 10))  # 2600 == 4 * 650``
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in _tensors(model.state_dict()):
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if storage.data_ptr() == 0 or key not in seen:  # size-0 storages all have data_ptr 0
            seen.add(key)
            total += storage.nbytes()  # torch.save writes the whole storage, even for a view
    return total


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a file on disk in bytes.

    Example: ``file_bytes("model.pt")``
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path must be an existing file; got {str(path)!r}")
    return p.stat().st_size


def bytes_report(model: nn.Module) -> dict[str, int]:
    """Real sizes next to "would be" estimates, all in bytes.

    ``serialized_bytes`` (= :func:`model_bytes`) and ``payload_bytes`` are measured;
    ``container_bytes`` is their difference. ``estimated_{fp32,fp16,int8}_bytes`` are simply
    ``params × {4, 2, 1}``: no scales, zero points, buffers or container, so they are lower bounds,
    not sizes. ``params`` is dense (pruned entries included), ``nonzero`` the effective count.

    Example: ``bytes_report(model)["serialized_bytes"]``
    """
    params = count_params(model)
    serialized = model_bytes(model)
    payload = payload_bytes(model)
    return {
        "serialized_bytes": serialized,
        "payload_bytes": payload,
        "container_bytes": serialized - payload,
        "params": params,
        "nonzero": count_nonzero(model),
        "estimated_fp32_bytes": 4 * params,
        "estimated_fp16_bytes": 2 * params,
        "estimated_int8_bytes": params,
    }


# --------------------------------------------------------------------------- FLOPs / MACs


def _as_args(inputs: Inputs) -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs:
        return tuple(inputs)
    raise ValueError(f"inputs must be a Tensor or a tuple of Tensors; got {type(inputs).__name__}")


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode + no_grad for the block; each model's training flag is restored afterwards."""
    flags = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    # q (..., L, E) @ k^T (..., E, S) then (..., L, S) @ v (..., S, Ev): 2 FLOPs per MAC.
    # Like PyTorch's own CUDA formula, a causal mask is not discounted.
    batch = math.prod(q[:-2])
    return 2 * batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _flop_counter() -> FlopCounterMode:
    # On CPU, F.scaled_dot_product_attention runs `_scaled_dot_product_flash_attention_for_cpu`,
    # which the counter does not know (it would count 0); register the standard formula for it.
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={op: _sdpa_flops} if op else None)


def _count(model: nn.Module, inputs: Inputs) -> FlopCounterMode:
    args = _as_args(inputs)
    counter = _flop_counter()
    with _eval_mode(model), counter:
        model(*args)
    return counter


def flops(model: nn.Module, inputs: Inputs) -> int:
    """FLOPs of one forward pass on ``inputs`` (the whole batch), by ``FlopCounterMode``.

    Counted: matmuls and convolutions at 2 FLOPs per multiply-accumulate, and attention
    (``F.scaled_dot_product_attention``, also on CPU). Not counted: bias adds, BatchNorm,
    activations, pooling, softmax — elementwise work that is small next to the matmuls. Runs in
    eval mode under ``no_grad``; the model's training flag is restored.

    Example: ``flops(nn.Linear(64, 10), torch.randn(1, 64))  # 1280``
    """
    return _count(model, inputs).get_total_flops()


def macs(model: nn.Module, inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass on ``inputs``: ``flops(model, inputs) // 2``.

    Example: ``macs(nn.Linear(64, 10), torch.randn(1, 64))  # 640``
    """
    return flops(model, inputs) // 2


def flops_by_module(model: nn.Module, inputs: Inputs) -> dict[str, int]:
    """FLOPs per top-level child module (``model.named_children()`` order), summing to the total.

    FLOPs done directly in ``model.forward`` (not inside a child) appear under ``"(self)"``.

    Example: ``flops_by_module(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), torch.randn(1, 8))``
    ``# {'0': 64, '1': 0}``
    """
    counter = _count(model, inputs)
    counts = counter.get_flop_counts()  # keyed by module path: "ViT.blocks.0.attn"

    def subtree(key: str, module: nn.Module) -> int:
        if key in counts:
            return sum(counts[key].values())
        # containers that never run (ModuleList, ModuleDict) get no key: add up their children
        return sum(subtree(f"{key}.{n}", child) for n, child in module.named_children())

    root = type(model).__name__
    out = {name: subtree(f"{root}.{name}", child) for name, child in model.named_children()}
    rest = counter.get_total_flops() - sum(out.values())
    if rest:
        out["(self)"] = rest
    return out


def _pair(name: str, value: int | Sequence[int], n: int) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != n:
        raise ValueError(f"{name} must be an int or a tuple of {n} ints; got {value!r}")
    return tuple(check_int(name, v, minimum=1) for v in values)


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    check_int("groups", groups, minimum=1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups must divide in_channels={in_channels} and out_channels={out_channels}; "
            f"got {groups}"
        )


def linear_macs(in_features: int, out_features: int, batch: int = 1, tokens: int = 1) -> int:
    """MACs of ``nn.Linear(in_features, out_features)`` on ``(batch, tokens, in_features)``.

    Each of the ``batch·tokens·out_features`` outputs is a dot product of length ``in_features``;
    the bias add is not a MAC.

    Example: ``linear_macs(64, 10, batch=32)  # 20480``
    """
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        check_int(name, v, minimum=1)
    check_int("batch", batch, minimum=0)
    check_int("tokens", tokens, minimum=0)
    return batch * tokens * in_features * out_features


def conv2d_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    out_h: int,
    out_w: int,
    groups: int = 1,
    batch: int = 1,
) -> int:
    """MACs of ``nn.Conv2d`` producing a ``(batch, out_channels, out_h, out_w)`` output.

    Each output value sums ``in_channels/groups × kh × kw`` products (depthwise: groups =
    in_channels, so just ``kh × kw``). Stride, padding and dilation enter only through
    ``out_h, out_w`` (see :func:`conv_output_size`); padded zeros are multiplied too.

    Example: ``conv2d_macs(1, 6, 3, 8, 8)  # 3456``
    """
    check_int("in_channels", in_channels, minimum=1)
    check_int("out_channels", out_channels, minimum=1)
    _check_groups(in_channels, out_channels, groups)
    kh, kw = _pair("kernel_size", kernel_size, 2)
    check_int("out_h", out_h, minimum=0)
    check_int("out_w", out_w, minimum=0)
    check_int("batch", batch, minimum=0)
    return batch * out_channels * out_h * out_w * (in_channels // groups) * kh * kw


def conv1d_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int],
    out_len: int,
    groups: int = 1,
    batch: int = 1,
) -> int:
    """MACs of ``nn.Conv1d`` producing a ``(batch, out_channels, out_len)`` output.

    Example: ``conv1d_macs(1, 32, 5, 40)  # 6400``
    """
    check_int("in_channels", in_channels, minimum=1)
    check_int("out_channels", out_channels, minimum=1)
    _check_groups(in_channels, out_channels, groups)
    (k,) = _pair("kernel_size", kernel_size, 1)
    check_int("out_len", out_len, minimum=0)
    check_int("batch", batch, minimum=0)
    return batch * out_channels * out_len * (in_channels // groups) * k


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor formula).

    ``floor((size + 2·padding − dilation·(kernel_size − 1) − 1) / stride) + 1``

    Example: ``conv_output_size(28, 5, stride=2, padding=2)  # 14``
    """
    check_int("size", size, minimum=1)
    check_int("kernel_size", kernel_size, minimum=1)
    check_int("stride", stride, minimum=1)
    check_int("padding", padding, minimum=0)
    check_int("dilation", dilation, minimum=1)
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(
            f"kernel_size must fit in size + 2*padding; got size={size}, padding={padding}, "
            f"kernel_size={kernel_size}, dilation={dilation}"
        )
    return out


def macs_by_hand(model: nn.Module, inputs: Inputs) -> int:
    """MACs of the Linear/Conv1d/Conv2d layers, from hand formulas and the actual output shapes.

    A forward hook on each such layer adds ``output.numel() × (in/groups) × kernel`` (Linear:
    ``output.numel() × in_features``). Bias adds are not MACs, and FlopCounterMode ignores them
    too, so for models made only of these layers (plus elementwise ops) this equals
    :func:`macs`. Attention matmuls (``q @ k^T``, SDPA) are NOT seen here but are in :func:`macs`.

    Example: ``macs_by_hand(nn.Conv2d(1, 6, 3, padding=1), torch.randn(1, 1, 8, 8))  # 3456``
    """
    total = 0

    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:  # Conv1d / Conv2d
            per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
            total += output.numel() * per_output

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    try:
        with _eval_mode(model):
            model(*_as_args(inputs))
    finally:
        for h in handles:
            h.remove()
    return total


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


def energy_estimate_j(latency_ms: float, watts: float = 15.0) -> float:
    """ESTIMATED energy per call in joules: ``latency_ms / 1000 × watts``.

    Assumes the device draws a constant ``watts`` for the whole call (15 W ≈ a laptop CPU package
    under load) and nothing when idle. Real power depends on the chip, the clock and the work; use
    this to compare variants on one machine, never as a measurement.

    Example: ``energy_estimate_j(2.0)  # 0.03 J``
    """
    latency_ms = check_number("latency_ms", latency_ms, minimum=0)
    return latency_ms / 1000.0 * check_number("watts", watts, minimum=0)


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
