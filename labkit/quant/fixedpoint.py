"""Fixed-point arithmetic of integer-only inference (gemmlowp, TensorFlow Lite): the Q31 multiplier,
the rounding doubling high multiply, the rounding right shift, requantization.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.utils import check_choice

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "requantize",
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ROUNDINGS = ("double", "single")

# --------------------------------------------------------------------------- fixed-point primitives


def saturating_rounding_doubling_high_mul(a: Tensor, b: Tensor) -> Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2^31)`` for int32 a, b.

    The int64 product plus a nudge of ``2^30`` (``1 - 2^30`` when negative) is divided by ``2^31``
    with truncation toward zero, so ties round up; the one overflow, ``INT32_MIN * INT32_MIN``,
    saturates to ``INT32_MAX``. With ``b = M0`` in Q31 it multiplies ``a`` by ``M0 / 2^31``.
    Example: ``saturating_rounding_doubling_high_mul(t(2**30), t(2**30))  # 2**29``
    """
    _check_int32("a", a)
    _check_int32("b", b)
    ab = a.to(torch.int64) * b.to(torch.int64)  # exact: |ab| <= 2^62
    nudge = torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")  # C's integer division
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, INT32_MAX, high).to(torch.int32)


def rounding_divide_by_pot(x: Tensor, exponent: Tensor | int) -> Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away from 0.

    An arithmetic right shift, plus one where the bits shifted out exceed half (or reach half for
    a negative ``x``). ``exponent`` (0..31) is an int or an int tensor broadcasting against ``x``.
    Example: ``rounding_divide_by_pot(torch.tensor([5, -5], dtype=torch.int32), 1)  # [3, -3]``
    """
    _check_int32("x", x)
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    if exponent.numel() and (int(exponent.min()) < 0 or int(exponent.max()) > 31):
        raise ValueError("exponent must be an integer in [0, 31]; got values outside")
    x64 = x.to(torch.int64)
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0).to(torch.int64)
    return ((x64 >> exponent) + (remainder > threshold).to(torch.int64)).to(torch.int32)


def quantize_multiplier(multiplier: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(M0, n)`` with ``M = M0 * 2^-(31 + n)``: ``M0`` an int32 in [2^30, 2^31), ``n`` >= 0.

    That is the paper's ``M = 2^-n * M0`` with ``M0`` a Q31 number in [0.5, 1), for a real
    multiplier ``M`` in (0, 1) (one per tensor or per channel). A float32 ``M`` (24-bit mantissa)
    is represented exactly; a float64 one to within ``2^-31`` relative (one that rounds to 1.0
    gets ``M0 = 2^31 - 1``). ``M < 2^-32`` gives ``M0 = n = 0`` (every output is the zero point),
    as TensorFlow Lite does.
    Example: ``quantize_multiplier(torch.tensor(0.75))  # (tensor(1610612736), tensor(0))``
    """
    m = torch.as_tensor(multiplier)
    if not m.is_floating_point() or not bool(((m > 0) & (m < 1)).all()):
        raise ValueError("multiplier must hold real numbers in (0, 1); got values outside")
    mantissa, exponent = torch.frexp(m.double())  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * 2**31).to(torch.int64)
    carry = m0 == 2**31  # the mantissa rounded up to 1.0: 2^30 at the next exponent
    m0, n = torch.where(carry, m0 // 2, m0), -exponent.to(torch.int64) - carry.to(torch.int64)
    one = n < 0  # M rounded to 1.0 (only a float64 M within 2^-32 of 1): keep the largest M0
    m0, n = torch.where(one, INT32_MAX, m0), torch.where(one, 0, n)
    tiny = n > 31
    return torch.where(tiny, 0, m0).to(torch.int32), torch.where(tiny, 0, n)


def multiply_by_quantized_multiplier(
    acc: Tensor, m0: Tensor, n: Tensor, rounding: str = "double"
) -> Tensor:
    """``acc * M`` rounded to an int32, for ``M = M0 * 2^-(31 + n)``, in integers only.

    ``rounding="double"``: gemmlowp's ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc,
    M0), n)``, the reference code of the paper. It rounds twice (to ``2^-n``, then to an integer),
    so a value just below a half-integer, within ``2^-(n+1)``, can round up: off by one from the
    nearest integer for about one output in ``2^n``. ``rounding="single"``: ``(acc * M0 +
    2^(30+n)) >> (31 + n)`` in int64, the nearest integer (ties up), as TensorFlow Lite's
    ``TFLITE_SINGLE_ROUNDING`` build computes it.
    Example: ``multiply_by_quantized_multiplier(acc, *quantize_multiplier(torch.tensor(0.3)))``
    """
    check_choice("rounding", rounding, ROUNDINGS)
    if rounding == "double":
        return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc, m0), n)
    _check_int32("acc", acc)
    _check_int32("m0", m0)
    total = 31 + torch.as_tensor(n, dtype=torch.int64)  # 31..62: the int64 shift stays defined
    product = acc.to(torch.int64) * m0.to(torch.int64)  # exact: |product| < 2^62
    return ((product + (torch.ones_like(total) << (total - 1))) >> total).to(torch.int32)


def requantize(
    acc: Tensor,
    m0: Tensor,
    n: Tensor,
    zero_point: int,
    qmin: int = 0,
    qmax: int = 255,
    rounding: str = "double",
) -> Tensor:
    """The int32 accumulator to uint8 codes: ``clamp(z + acc * M, qmin, qmax)``, all in integers.

    A fused ReLU is ``qmin = zero_point``. Example: ``requantize(acc, m0, n, 128)``
    """
    y = multiply_by_quantized_multiplier(acc, m0, n, rounding) + zero_point  # int32
    return y.clamp(qmin, qmax).to(torch.uint8)


def _check_int32(name: str, t: Tensor) -> None:
    if t.dtype != torch.int32:
        raise ValueError(f"{name} must be an int32 tensor; got dtype {t.dtype}")
