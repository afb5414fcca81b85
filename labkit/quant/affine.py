"""The affine quantization formula and its straight-through gradient, bit-exact against PyTorch."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.utils import check_choice, check_int

__all__ = [
    "FakeQuantSTE",
    "fake_quantize_ste",
    "qrange",
    "qparams_from_range",
    "choose_qparams",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
]


# --------------------------------------------------------------------------- straight-through


class FakeQuantSTE(torch.autograd.Function):
    """Fake-quant whose backward is the straight-through estimator.

    Forward: :func:`fake_quantize_affine`. Backward: the gradient passes unchanged where the
    unclamped integer ``round(x / scale) + zero_point`` lies inside ``[qmin, qmax]`` and is zero
    outside (clipped values cannot move the output), exactly as PyTorch's fake-quant backward.
    Example: ``y = FakeQuantSTE.apply(x, scale, zp, 8, True, None)``
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits=8, symmetric=True, axis=None):  # noqa: D102
        qmin, qmax = qrange(bits, symmetric)
        s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
        q = torch.round(x * torch.reciprocal(s)) + z  # unclamped integers, as floats
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None, None


def fake_quantize_ste(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """:func:`fake_quantize_affine` with a straight-through gradient (:class:`FakeQuantSTE`).

    Example: ``w_q = fake_quantize_ste(w, scale, zp, 4, True, axis=0)``
    """
    return FakeQuantSTE.apply(x, scale, zero_point, bits, symmetric, axis)


# --------------------------------------------------------------------------- pure primitives


def qrange(bits: int = 8, symmetric: bool = True) -> tuple[int, int]:
    """The integer grid: signed ``[-2^(b-1), 2^(b-1)-1]`` if symmetric, else ``[0, 2^b - 1]``.

    Example: ``qrange(8, True)  # (-128, 127)``; ``qrange(4, False)  # (0, 15)``
    """
    check_int("bits", bits, minimum=2, maximum=8)
    check_choice("symmetric", symmetric, (True, False))
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def qparams_from_range(
    x_min: Tensor | float, x_max: Tensor | float, bits: int = 8, symmetric: bool = True
) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) that map the range ``[x_min, x_max]`` (widened to hold 0) onto the grid.

    Symmetric: ``scale = max(|x_min|, |x_max|) / (2^(b-1) - 1)``, zero_point 0, so ``±max`` land on
    ``±qmax`` (the code ``-2^(b-1)`` stays unused). Affine: ``scale = (x_max - x_min) / (2^b - 1)``,
    ``zero_point = qmin - round(x_min / scale)``, as ``torch.ao``'s MinMaxObserver. Either way 0.0
    is exactly representable and the scale is at least float32 eps. Shapes follow ``x_min``.
    Example: ``qparams_from_range(0.0, 2.55, 8, False)  # (tensor(0.0100), tensor(0))``
    """
    qmin, qmax = qrange(bits, symmetric)
    x_min = torch.as_tensor(x_min, dtype=torch.float32)
    x_max = torch.as_tensor(x_max, dtype=torch.float32)
    if bool((x_min > x_max).any()):
        raise ValueError("x_min must be <= x_max; got a range with x_min > x_max")
    min_neg = torch.clamp(x_min, max=0.0)
    max_pos = torch.clamp(x_max, min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.maximum(-min_neg, max_pos) / qmax
        return scale.clamp(min=eps), torch.zeros_like(scale, dtype=torch.int64)
    scale = ((max_pos - min_neg) / float(qmax - qmin)).clamp(min=eps)
    zero_point = qmin - torch.round(min_neg / scale).to(torch.int64)
    return scale, zero_point.clamp(qmin, qmax)


def choose_qparams(
    x: Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None
) -> tuple[Tensor, Tensor]:
    """Min-max (scale, zero_point) of ``x``: one pair (shape ``()``), or one per slice on ``axis``.

    Example: ``scale, zp = choose_qparams(conv.weight, 8, True, axis=0)  # (C_out,), (C_out,)``
    """
    if axis is None:
        return qparams_from_range(x.min(), x.max(), bits, symmetric)
    axis = check_int("axis", axis, minimum=-x.dim(), maximum=x.dim() - 1) % x.dim()
    flat = x.transpose(0, axis).reshape(x.shape[axis], -1)  # (C, rest)
    return qparams_from_range(flat.min(dim=1).values, flat.max(dim=1).values, bits, symmetric)


def quantize_affine(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """Integer codes ``clamp(round(x * (1/scale)) + zero_point, qmin, qmax)`` (int8 or uint8).

    ``round`` is half-to-even (like ``torch.round`` and C's ``nearbyint``); multiplying by the
    float32 reciprocal, not dividing, is what PyTorch's kernels do, so results match bit for bit.
    Per-channel ``scale``/``zero_point`` have shape ``(x.shape[axis],)``.
    Example: ``quantize_affine(torch.tensor([0.26]), torch.tensor(0.1), torch.tensor(0))  # [3]``
    """
    qmin, qmax = qrange(bits, symmetric)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    q = torch.clamp(torch.round(x * torch.reciprocal(s)) + z, qmin, qmax)  # same shape as x
    return q.to(torch.int8 if symmetric else torch.uint8)


def dequantize_affine(
    q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None
) -> Tensor:
    """Float values ``(q - zero_point) * scale`` of integer codes ``q``.

    Example: ``dequantize_affine(torch.tensor([3]), torch.tensor(0.1), torch.tensor(0))  # [0.3]``
    """
    s, z = _broadcast(scale, q, axis), _broadcast(zero_point, q, axis)
    return (q.float() - z.float()) * s  # same shape as q


def fake_quantize_affine(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """``dequantize_affine(quantize_affine(x))`` in float: x snapped to the nearest grid point.

    Equal, bit for bit, to ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) and
    ``torch.fake_quantize_per_channel_affine`` with ``qrange(bits, symmetric)``.
    Example: ``fake_quantize_affine(x, *choose_qparams(x, 4), bits=4)``
    """
    qmin, qmax = qrange(bits, symmetric)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    q = torch.clamp(torch.round(x * torch.reciprocal(s)) + z, qmin, qmax)  # integers, as floats
    return (q - z) * s  # same shape as x


def _broadcast(t: Tensor | float, x: Tensor, axis: int | None) -> Tensor:
    """A per-tensor qparam as a 0-d tensor; a per-channel (C,) one shaped to broadcast on axis."""
    t = torch.as_tensor(t, device=x.device)
    if axis is None:
        if t.numel() != 1:
            raise ValueError(
                f"axis must be set for per-channel qparams; got shape {tuple(t.shape)}"
            )
        return t.reshape(())
    axis = axis % x.dim()
    if t.dim() != 1 or t.numel() != x.shape[axis]:
        raise ValueError(
            f"scale and zero_point must have shape ({x.shape[axis]},) for axis={axis}; "
            f"got {tuple(t.shape)}"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.view(shape)  # broadcasts along every other dimension
