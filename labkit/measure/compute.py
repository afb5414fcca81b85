"""Work: FLOPs/MACs by torch's FlopCounterMode and by closed-form formulas."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.utils import check_int

Inputs = Tensor | Sequence[Tensor]

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
