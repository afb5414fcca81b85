"""Notebook 05 (low-bit quantization): its exercise checks, the size figure and the summary.

The checks compare a student's group-wise qparams with torch.ao's per-channel observer and a
student's GPTQ column loop with :func:`labkit.quant.lowbit.gptq` and a student's BitLinear with
:class:`labkit.quant.lowbit.BitLinear`; the figure and the summary
read the cached sweeps of :mod:`labkit.course.nb05_lowbit`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from labkit import plots, sweep
from labkit.course.nb05_lowbit import COURSE
from labkit.quant import lowbit
from labkit.utils import check_int

__all__ = [
    "reference_group_qparams",
    "check_group_qparams",
    "check_gptq_columns",
    "check_bitlinear",
    "sweep_plot",
    "size_ratio",
    "summary",
]


# --------------------------------------------------------------------------- the notebook's helpers


def reference_group_qparams(
    w: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine min-max ``(scale, zero_point)`` per group of ``group_size`` columns of ``w``.

    ``w`` is ``(out, in)``; computed by PyTorch's ``PerChannelMinMaxObserver`` on
    ``w.view(-1, group_size)``: both ``(out, in // group_size)``. The oracle of notebook 05's
    exercise 1.

    Example:
        >>> s, z = reference_group_qparams(torch.tensor([[-1.0, 2.0, 0.0, 3.0]]), 2, 2)
        >>> s.tolist(), z.tolist()  # groups [-1, 2] and [0, 3]: 3 levels of 1.0 each
        ([[1.0, 1.0]], [[1, 0]])
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    group_size = check_int("group_size", group_size, minimum=1)
    if w.ndim != 2 or w.shape[1] % group_size:
        raise ValueError(
            f"w must be 2-D with columns a multiple of group_size; got {tuple(w.shape)}"
        )
    with warnings.catch_warnings():  # torch.ao is deprecated upstream; here it is only an oracle
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import PerChannelMinMaxObserver

        obs = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
            quant_min=0, quant_max=2**bits - 1,
        )  # fmt: skip
        obs(w.detach().reshape(-1, group_size))
        scale, zp = obs.calculate_qparams()
    return scale.view(w.shape[0], -1), zp.view(w.shape[0], -1)


def check_group_qparams(
    fn: Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]],
    w: torch.Tensor,
    bits: int,
    group_size: int,
) -> None:
    """Assert that ``fn(w, bits, group_size)`` matches :func:`reference_group_qparams`.

    Both parts of ``(scale, zero_point)`` are compared: scales to 1e-5 relative, zero points
    exactly.

    Example: ``check_group_qparams(my_group_qparams, W[:64], 4, 32)``
    """
    scale, zp = fn(w, bits, group_size)
    ref_scale, ref_zp = reference_group_qparams(w, bits, group_size)
    assert scale.shape == (w.shape[0], w.shape[1] // group_size), "one scale per group"
    assert torch.allclose(scale.float(), ref_scale, rtol=1e-5), "scales differ from PyTorch's"
    assert torch.equal(zp.long(), ref_zp.long()), "zero points differ from PyTorch's"


def check_gptq_columns(
    fn: Callable[..., torch.Tensor], w: torch.Tensor, H: torch.Tensor, bits: int
):
    """Check ``fn(W, U, scale, zero_point, bits)``, a GPTQ column loop, against :func:`lowbit.gptq`.

    The grid is fixed per row: ``scale`` and ``zero_point`` (out,) are round-to-nearest's affine
    min-max qparams of each whole row (``lowbit.rtn(w, bits, in_features)``), ``U`` is
    :func:`lowbit.gptq_factor` of ``H``. The reference is ``lowbit.gptq`` with one group per row
    (its lazy batch updates add the same terms in another order, so at most 1 % of the entries,
    those near a rounding tie, may land elsewhere). Also checked: every entry is on its row's grid,
    and the output error ``trace(D H D^T)``, ``D = w - Q``, is not larger than RTN's. Raises
    AssertionError naming what is wrong. Returns (the output error of ``fn``'s Q, RTN's).
    Example: ``check_gptq_columns(my_gptq, W[:32], H, 3)``
    """
    w = w.detach().float()
    in_f = w.shape[1]
    rtn = lowbit.rtn(w, bits, in_f)
    scale, zp = rtn.scale[:, 0], rtn.zero_point[:, 0]  # (out,)
    Q = fn(w, lowbit.gptq_factor(H), scale, zp, bits)
    if not (isinstance(Q, torch.Tensor) and Q.shape == w.shape):
        raise AssertionError(f"return the quantized weight, shape {tuple(w.shape)}")
    Q = Q.detach().float()
    codes = Q / scale[:, None] + zp[:, None]  # (out, in) must be integers in the grid
    if not (torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() > -1e-3):
        raise AssertionError("every entry of Q must be (q - zero_point) * scale of its row")
    if codes.max() > 2**bits - 1 + 1e-3:
        raise AssertionError(f"codes must stay in [0, {2**bits - 1}]")
    ref = lowbit.gptq(w, H, bits, in_f).dequantize()
    off = (Q - ref).abs() > 1e-4 * scale[:, None]  # (out, in)
    if off.float().mean() > 0.01:
        raise AssertionError(
            f"{int(off.sum())} of {off.numel()} entries differ from lowbit.gptq's "
            f"(first column that differs: {int(off.any(dim=0).nonzero()[0])})"
        )

    def out_error(D: torch.Tensor) -> float:  # ||X D^T||^2 / N = trace(D H D^T)
        return float((D.double() @ H.double() * D.double()).sum())

    mine, rtn_err = out_error(w - Q), out_error(w - rtn.dequantize())
    if mine > rtn_err * (1 + 1e-4) + 1e-12:
        raise AssertionError(
            f"output error {mine:.4g} is larger than round-to-nearest's {rtn_err:.4g}"
        )
    return mine, rtn_err


def check_bitlinear(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> None:
    """Check ``fn(x, weight, bias)``, a BitNet b1.58 Linear, in forward and gradient.

    The reference: labkit's :class:`~labkit.quant.lowbit.BitLinear` (absmean ternary weights, STE)
    applied to ``x`` fake-quantized per row to int8 by ``torch.fake_quantize_per_channel_affine``
    (scale ``max|x_row| / 127``, zero point 0, whose gradient is the STE's). Output and the
    gradients of ``x``, ``weight`` and ``bias`` for a fixed upstream gradient must agree. Raises
    AssertionError naming what is wrong.
    Example: ``check_bitlinear(my_bitlinear, x, layer.weight, layer.bias)``
    """
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    ws = [weight.detach().clone().requires_grad_() for _ in range(2)]
    bs = [bias.detach().clone().requires_grad_() for _ in range(2)]
    out = fn(xs[0], ws[0], bs[0])
    n, out_f = x.shape[0], weight.shape[0]
    if not (isinstance(out, torch.Tensor) and out.shape == (n, out_f)):
        raise AssertionError(f"return the layer's output, shape ({n}, {out_f})")
    scale = xs[1].detach().abs().amax(dim=1).clamp(min=1e-5) / 127  # (N,)
    zero = torch.zeros(n, dtype=torch.int32)
    x_q = torch.fake_quantize_per_channel_affine(xs[1], scale, zero, 0, -128, 127)
    layer = lowbit.BitLinear(weight.shape[1], out_f)
    layer.weight, layer.bias = torch.nn.Parameter(ws[1]), torch.nn.Parameter(bs[1])
    ref = layer(x_q)
    if not torch.allclose(out.detach(), ref.detach(), rtol=1e-4, atol=1e-5):
        raise AssertionError("output differs from labkit's BitLinear on int8 absmax activations")
    grad = torch.randn(n, out_f, generator=torch.Generator().manual_seed(0))
    if not out.requires_grad:
        raise AssertionError("the output carries no gradient: use the straight-through estimator")
    out.backward(grad)
    ref.backward(grad)
    for name, mine, theirs in (
        ("x", xs[0].grad, xs[1].grad),
        ("weight", ws[0].grad, layer.weight.grad),
        ("bias", bs[0].grad, layer.bias.grad),
    ):
        if mine is None or not torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"gradient for {name} is not the straight-through estimator's")


def sweep_plot(
    y: str, fp32_point: Mapping[str, Any], num_weights: int
) -> Callable[[Sequence[Mapping[str, Any]], Any], None]:
    """The background of the sweep's widget: ``y`` against bytes.

    One colour per method, one line style per group size, float32 as a star and the bytes at 16 … 1
    bits per quantized weight.

    ``fp32_point``: ``{"bytes": ..., y: ...}`` of the float model; ``num_weights``: how many of its
    weights are quantized.
    Example: ``widgets.explore(recs, plot=sweep_plot("ppl", ref, n))``
    """
    other = fp32_point["bytes"] - 4 * num_weights  # bytes that quantization leaves alone

    def draw(records: Sequence[Mapping[str, Any]], ax: Any) -> None:
        plots.size_tradeoff(
            records, y, hue="method", style="group_size", reference=fp32_point, ax=ax,
            logy=y == "ppl",
        )  # fmt: skip
        plots.draw_bit_limits(ax, num_weights, other)

    return draw


def size_ratio(records: Sequence[Mapping[str, Any]], fp32_bytes: int, **where: Any) -> float:
    """How many times smaller than ``fp32_bytes`` the one record matching ``where`` is.

    Example: ``size_ratio(results["lm"], 900_000, method="rtn", bits=4, group_size=64)``
    """
    (record,) = sweep.select(records, **where)
    return fp32_bytes / record["bytes"]


def summary(
    results: Mapping[str, Any],
    fp32: Mapping[str, Mapping[str, Any]],
    lm: str = COURSE["lm"],
    classifier: str = COURSE["classifier"],
    bits: Sequence[int] = COURSE["bits"],
    group_sizes: Sequence[int | str] = COURSE["group_sizes"],
) -> str:
    """The notebook's closing figures as text.

    The 4- and 2-bit size limits and file ratios (groups of 64), the LM's perplexity RTN -> GPTQ at
    each of ``group_sizes`` x ``bits``, and ternary PTQ -> QAT.

    ``results``: :func:`course_results`'s dict; ``fp32``:
    ``{lm: {bytes, ppl}, classifier: {bytes, acc}}``.
    Example: ``print(summary(results, fp32))``
    """
    lm_recs, clf_recs, qat = results["lm"], results["classifier"], results["qat"]
    lines = []
    for b in (4, 2):
        where = {"method": "rtn", "bits": b, "group_size": 64}
        lines.append(
            f"{b} bits: limit {lowbit.compression_limit(b, 128):.2f}x at groups of 128, "
            f"{lowbit.compression_limit(b, 64):.2f}x at 64; files (scales + zero points "
            f"included): {lm} {size_ratio(lm_recs, fp32[lm]['bytes'], **where):.2f}x, "
            f"{classifier} {size_ratio(clf_recs, fp32[classifier]['bytes'], **where):.2f}x "
            "(groups of 64)"
        )
    for g in group_sizes:
        cells = []
        for b in bits:
            rtn, gptq = (
                sweep.select(lm_recs, method=m, bits=b, group_size=g)[0]["ppl"]
                for m in ("rtn", "gptq")
            )
            cells.append(f"{b} bits {rtn:.2f} -> {gptq:.2f}")
        fp32_ppl = fp32[lm]["ppl"]
        lines.append(
            f"{lm} perplexity RTN -> GPTQ, group {g}: {', '.join(cells)} (fp32 {fp32_ppl:.2f})"
        )
    lines.append(
        f"{classifier} ternary: PTQ {qat['ptq_acc']:.3f} -> QAT {qat['qat_acc']:.3f} "
        f"(fp32 {fp32[classifier]['acc']:.3f})"
    )
    return "\n".join(lines)
