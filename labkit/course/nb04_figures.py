"""Notebook 04 (8-bit quantization): what its figures and tables show, computed and drawn.

The weight grid the widget of section 2 moves (:func:`weight_grid`, :func:`plot_weight_grid`), the
channel ranges of section 3 (:func:`sqnr_db`, :func:`channel_ranges`, and the same function with
spread ranges: :func:`spread_channel_ranges`, :func:`spread_table`), the calibration ranges of
section 4 (:func:`layer_inputs`, :func:`calibration_ranges`, :func:`plot_calibration`), and the
figures of the cached sweeps of
:mod:`labkit.course.nb04_quantization`: PTQ accuracy against bytes (:func:`plot_ptq`) and QAT
against the best and worst PTQ (:func:`plot_qat`); the check of the LSQ exercise of section 7
(:func:`check_lsq_fake_quant`, :func:`fit_scale`). Each plot returns its Figure or Axes and never
calls ``plt.show()``.

Example:
    >>> import torch
    >>> from labkit.course import nb04_figures as figures
    >>> figures.weight_grid(torch.tensor([-1.0, 0.2, 0.5, 1.0]), bits=2)["levels"]
    [-2.0, -1.0, 0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from labkit import plots, quant, train
from labkit.course.nb04_quantization import COURSE
from labkit.utils import check_number

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "weight_grid",
    "plot_weight_grid",
    "sqnr_db",
    "channel_ranges",
    "spread_channel_ranges",
    "spread_table",
    "layer_inputs",
    "calibration_ranges",
    "plot_calibration",
    "plot_ptq",
    "plot_qat",
    "reference_lsq",
    "check_lsq_fake_quant",
    "fit_scale",
]


def weight_grid(w: Tensor, bits: int = 4, range_fraction: float = 1.0) -> dict[str, Any]:
    """``w`` on the symmetric ``bits`` grid whose range is ``range_fraction`` of min-max.

    Returns the ``scale`` (one step), the ``levels`` (the grid's real values), the rounding ``mse``
    and the ``clipped`` fraction of values beyond the grid's last half step.
    Example: ``weight_grid(layer.weight.flatten(), bits=4, range_fraction=0.5)["mse"]``
    """
    qmin, qmax = quant.qrange(bits, symmetric=True)
    scale = w.abs().max() * range_fraction / qmax
    w_q = quant.fake_quantize_affine(w, scale, torch.tensor(0), bits, symmetric=True)
    return {
        "scale": scale.item(),
        "levels": [level * scale.item() for level in range(qmin, qmax + 1)],
        "mse": (w_q - w).square().mean().item(),
        "clipped": (w.abs() > (qmax + 0.5) * scale).float().mean().item(),
    }


def plot_weight_grid(
    w: Tensor, bits: int = 4, range_fraction: float = 1.0, name: str = "weights"
) -> Figure:
    """The histogram of ``w`` (the weights of layer ``name``) with the :func:`weight_grid` lines.

    The title gives the levels, the step, the rounding MSE and the clipped fraction.
    Example: ``widgets.live(functools.partial(plot_weight_grid, w), bits=(2, 8))``
    """
    import matplotlib.pyplot as plt  # only here: the notebook shows the figure

    grid = weight_grid(w, bits, range_fraction)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(w.numpy(), bins=150, color="0.6")
    for level in grid["levels"]:
        ax.axvline(level, color="tab:red", lw=0.6, alpha=0.7 if bits <= 5 else 0.25)
    ax.set_xlabel(f"weight value ({name})")
    ax.set_ylabel("count")
    ax.set_title(
        f"{bits} bits: {2**bits} levels, step {grid['scale']:.4f}, MSE {grid['mse']:.2e}, "
        f"clipped {grid['clipped']:.1%}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def sqnr_db(w: Tensor, bits: int, axis: int | None = None) -> float:
    """Signal-to-quantization-noise ratio in dB of ``w`` on the symmetric min-max ``bits`` grid.

    ``10 log10(sum w^2 / sum (w_q - w)^2)``, one scale for the tensor (``axis=None``) or one per
    slice along ``axis`` (0: per output channel). About +6 dB per extra bit.

    Example:
        >>> import torch
        >>> round(sqnr_db(torch.linspace(-1.0, 1.0, 1001), bits=8), 1)
        48.1
    """
    scale, zp = quant.choose_qparams(w, bits, symmetric=True, axis=axis)
    err = quant.fake_quantize_affine(w, scale, zp, bits, symmetric=True, axis=axis) - w
    return (10 * torch.log10(w.square().sum() / err.square().sum())).item()


def channel_ranges(layers: Mapping[str, nn.Module], bits: Sequence[int] = (8, 4)) -> list[dict]:
    """One row per layer of ``layers`` (name -> module with a ``weight``).

    Each row holds its weight ``shape``, ``range_ratio`` (the largest per-output-channel max ``|w|``
    over the smallest) and, for each of ``bits``, :func:`sqnr_db` per tensor (``sqnr<b>_tensor``)
    and per channel (``sqnr<b>_channel``).
    Example: ``channel_ranges({"fc": nn.Linear(4, 3)})[0]["range_ratio"]``
    """
    rows = []
    for name, layer in layers.items():
        w = layer.weight.detach()
        amax = w.abs().flatten(1).amax(dim=1)  # (C_out,) largest |w| per output channel
        sqnr = {
            f"sqnr{b}_{g}": sqnr_db(w, b, axis)
            for b in bits
            for g, axis in (("tensor", None), ("channel", 0))
        }
        shape = "x".join(map(str, w.shape))
        rows.append(
            {"layer": name, "shape": shape, "range_ratio": (amax.max() / amax.min()).item()}
        )
        rows[-1].update(sqnr)
    return rows


def spread_channel_ranges(model: nn.Module, spread: float, seed: int = 0) -> nn.Module:
    """The same function as the DSCNN ``model``, with per-channel weight ranges spread out.

    BatchNorm is folded, and the first depthwise conv's per-channel weight ranges are spread over
    ``[1, spread]``: stem output channel ``c`` shrunk by ``k_c = spread ** u_c`` (``u_c`` uniform in
    [0, 1), seeded), depthwise filter ``c`` grown by it (ReLU commutes with a positive factor). A
    new model; ``model`` is left as it was.
    Example: ``spread_channel_ranges(models.pretrained("dscnn", "digits"), 100.0)``
    """
    spread = check_number("spread", spread, minimum=1.0)
    if not (hasattr(model, "stem") and hasattr(model, "blocks")):
        raise ValueError(f"model must be a DSCNN (stem, blocks); got {type(model).__name__}")
    m = quant.fold_bn(model)
    gen = torch.Generator().manual_seed(seed)
    k = spread ** torch.rand(m.stem[0].out_channels, generator=gen)  # (C,) one factor per channel
    with torch.no_grad():
        m.stem[0].weight /= k[:, None, None, None]
        m.stem[0].bias /= k
        m.blocks[0].depthwise[0].weight *= k[:, None, None, None]
    return m


def spread_table(
    model: nn.Module,
    ds: Any,
    spreads: Sequence[float] = (1, 10, 100, 1000),
    bits: Sequence[int] = (8, 6),
) -> list[dict]:
    """One row per ``spread`` of :func:`spread_channel_ranges`, float and weight-quantized.

    Each row holds the float model's test accuracy (``fp32``) and that of its weights quantized per
    tensor and per channel at each of ``bits`` (``"W<b> per_tensor"``, ``"W<b> per_channel"``;
    activations stay float).
    Example: ``spread_table(models.pretrained("dscnn", "digits"), data.load("digits"))``
    """
    rows = []
    for spread in spreads:
        wide = spread_channel_ranges(model, spread)
        row = {"spread": spread, "fp32": train.evaluate(wide, ds)["acc"]}
        for b in bits:
            for g in ("per_tensor", "per_channel"):
                config = quant.QuantConfig(bits=b, act_bits=None, granularity=g)  # weights only
                row[f"W{b} {g}"] = train.evaluate(quant.quantize(wide, config), ds)["acc"]
        rows.append(row)
    return rows


def layer_inputs(model: nn.Module, name: str, X: Tensor) -> Tensor:
    """Every value the layer ``name`` of ``model`` receives for the inputs ``X``, flattened.

    ``model`` is taken with BatchNorm folded, as PTQ sees it.
    Example: ``layer_inputs(model, "blocks.1.pointwise.0", X)``
    """
    folded = quant.fold_bn(model)
    seen: list[Tensor] = []
    handle = folded.get_submodule(name).register_forward_hook(
        lambda module, args, out: seen.append(args[0].detach())
    )
    try:
        with torch.no_grad():
            folded(X)
    finally:
        handle.remove()
    return torch.cat([s.flatten() for s in seen])


def calibration_ranges(x: Tensor, bits: int = 4) -> list[dict]:
    """One row per calibration method (``quant.Observer`` on ``x``, affine unsigned grid).

    Each row holds the ``low`` and ``high`` of its range, the ``step`` (scale), the fake-quant
    ``mse`` on ``x`` and the ``clipped`` fraction above ``high``.
    Example: ``calibration_ranges(layer_inputs(model, name, X), bits=4)[0]["method"]  # 'minmax'``
    """
    rows = []
    for method in quant.CALIBRATIONS:
        obs = quant.Observer(method, bits=bits)
        obs.update(x)
        low, high = obs.range()
        scale, zp = obs.qparams()
        x_q = quant.fake_quantize_affine(x, scale, zp, bits, symmetric=False)
        rows.append({
            "method": method,
            "low": low.item(),
            "high": high.item(),
            "step": scale.item(),
            "mse": (x_q - x).square().mean().item(),
            "clipped": (x > high).float().mean().item(),
        })  # fmt: skip
    return rows


def plot_calibration(x: Tensor, rows: Sequence[Mapping], name: str = "inputs") -> Axes:
    """The histogram of ``x`` (log counts) with the top of each :func:`calibration_ranges` range.

    Example: ``plot_calibration(acts, calibration_ranges(acts), "blocks.1.pointwise.0")``
    """
    import matplotlib.pyplot as plt  # only here: the notebook shows the figure

    _, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(x.numpy(), bins=200, color="0.6", log=True)
    for r, color in zip(rows, ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        ax.axvline(r["high"], color=color, label=f"{r['method']}: high {r['high']:.2f}")
    ax.set_xlabel(f"input values of {name}")
    ax.set_ylabel("count (log scale)")
    ax.legend(fontsize=8)
    return ax


def plot_ptq(
    records: Sequence[Mapping], fp32_bytes: int, fp32_acc: float, model: str = COURSE["model"]
) -> Figure:
    """PTQ accuracy against packed bytes, one panel per calibration (min-max, MSE).

    A line per granularity annotated with the bits, and the fp32 model as a star and a dotted line.
    Example: ``plot_ptq(results["ptq"], measure.model_bytes(model), fp32_acc)``
    """
    import matplotlib.pyplot as plt  # only here: the notebook shows the figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, calibration in zip(axes, ("minmax", "mse")):
        chosen = [
            dict(r, method=r["granularity"]) for r in records if r["calibration"] == calibration
        ]
        title = f"{model}: W=A bits, {calibration} calibration"
        plots.accuracy_vs_size(chosen, "bytes", "acc", "method", ax, annotate="bits", title=title)
        ax.scatter(
            [fp32_bytes], [fp32_acc], marker="*", s=150, color="black", label="fp32", zorder=5
        )
        ax.axhline(fp32_acc, color="black", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_qat(records: Sequence[Mapping], fp32_acc: float, title: str | None = None) -> Axes:
    """QAT accuracy per bit width in each setting (records of ``qat_against_ptq``).

    Drawn against the best and the worst PTQ setting at that width, and fp32.
    Example: ``plot_qat(results["qat"], fp32_acc, title="QAT against PTQ")``
    """
    bits = sorted({r["bits"] for r in records})
    lines = [{"bits": b, "acc": fp32_acc, "method": "fp32"} for b in bits]
    for b in bits:
        r = next(r for r in records if r["bits"] == b)
        lines += [
            {"bits": b, "acc": r["best_ptq"], "method": "best PTQ"},
            {"bits": b, "acc": r["worst_ptq"], "method": "worst PTQ"},
        ]
    for r in records:
        setting = f"{r['granularity']} {r['calibration']}".replace("_", "-")
        label = "QAT " + setting.replace("minmax", "min-max").replace("mse", "MSE")
        lines.append({"bits": r["bits"], "acc": r["qat_acc"], "method": label})
    ax = plots.line(lines, "bits", "acc", hue="method")
    ax.set_xticks(bits)
    if title is not None:
        ax.set_title(title)
    return ax


# --------------------------------------------------------------------------- the LSQ exercise


def reference_lsq(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """PyTorch's LSQ fake-quant with zero point 0 and ``grad_factor=1.0`` (the exercise's oracle).

    Example: ``reference_lsq(x, torch.tensor([0.1], requires_grad=True), -8, 7).sum().backward()``
    """
    zero = torch.zeros(1)
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, qmin, qmax, 1.0)


def check_lsq_fake_quant(
    fn: Any, x: Tensor, grad: Tensor, scale: float, qmin: int, qmax: int, exact: bool = True
) -> None:
    """Check ``fn(x, scale, qmin, qmax)`` against :func:`reference_lsq`: output and both gradients.

    Both are run on copies of ``x`` and a one-element ``scale`` that require grad, then
    ``backward(grad)``. ``exact``: the scale is a power of two, so ``x / scale`` is exact and every
    entry must round as PyTorch's; otherwise at most 0.1 % of the entries (those within float
    rounding of a tie) may land one step away. Raises AssertionError naming what is wrong.
    Example: ``check_lsq_fake_quant(lsq_fake_quant, x, g, 0.125, -8, 7)``
    """
    a, b = (x.detach().clone().requires_grad_() for _ in range(2))
    s_a, s_b = (torch.tensor([float(scale)], requires_grad=True) for _ in range(2))
    out = fn(a, s_a, qmin, qmax)
    if not (isinstance(out, Tensor) and out.shape == x.shape):
        raise AssertionError(f"return a tensor of x's shape {tuple(x.shape)}")
    if not out.requires_grad:
        raise AssertionError("the output carries no gradient: build it from x and scale")
    out.backward(grad)
    ref = reference_lsq(b, s_b, qmin, qmax)
    ref.backward(grad)
    off = (out.detach() - ref.detach()).abs() > 1e-3 * scale  # (n,) entries rounded otherwise
    allowed = 0 if exact else max(1, x.numel() // 1000)
    if int(off.sum()) > allowed or (out.detach() - ref.detach()).abs().max() > 1.001 * scale:
        raise AssertionError(
            f"scale={scale}, grid [{qmin}, {qmax}]: output differs from PyTorch's LSQ at "
            f"{int(off.sum())} entries"
        )
    if a.grad is None or not torch.allclose(a.grad[~off], b.grad[~off], rtol=1e-5, atol=1e-6):
        raise AssertionError(f"scale={scale}: gradient for x is not the STE's (0 where clipped)")
    if s_a.grad is None:
        raise AssertionError("no gradient reached the scale")
    tol = 1e-4 * float(grad.abs().sum()) * max(-qmin, qmax) + 1.01 * float(grad[off].abs().sum())
    if abs(float(s_a.grad.sum()) - float(s_b.grad.sum())) > tol:
        raise AssertionError(
            f"scale={scale}, grid [{qmin}, {qmax}]: gradient for the scale "
            f"{float(s_a.grad.sum()):.5g}, PyTorch's LSQ {float(s_b.grad.sum()):.5g}"
        )


def fit_scale(
    fn: Any, x: Tensor, scale: float, qmin: int, qmax: int, num_steps: int = 25, lr: float = 0.05
) -> tuple[list[float], float]:
    """Train a one-element scale with Adam to lower the MSE of ``fn(x, scale, qmin, qmax)``.

    Returns (the MSE before each step and after the last, the final scale).
    Example: ``mse, s = fit_scale(reference_lsq, torch.randn(1000), 1.0, -8, 7)``
    """
    s = torch.tensor([float(scale)], requires_grad=True)
    opt = torch.optim.Adam([s], lr=lr)
    history = []
    for _ in range(num_steps):
        opt.zero_grad()
        loss = ((fn(x, s, qmin, qmax) - x) ** 2).mean()
        loss.backward()
        opt.step()
        history.append(float(loss))
    with torch.no_grad():
        history.append(float(((reference_lsq(x, s, qmin, qmax) - x) ** 2).mean()))
    return history, float(s.detach().sum())
