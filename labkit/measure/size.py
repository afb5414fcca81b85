"""Model size: parameter and non-zero counts, real serialized bytes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
