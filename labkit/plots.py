"""Plots of sweep records: accuracy versus size with its Pareto frontier, and plain lines.

matplotlib only; every function draws on ``ax`` (or a new figure) and returns the Axes, never
calls ``plt.show()``. Sizes are shown in decimal units, 1 KB = 1000 B and 1 MB = 10^6 B, the way
model and file sizes are usually quoted (``format_bytes(..., binary=True)`` gives KiB/MiB).

Example:
    >>> from labkit import plots
    >>> plots.format_bytes(1500)
    '1.5 KB'
    >>> ax = plots.accuracy_vs_size(records, hue="method")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from matplotlib.ticker import FuncFormatter, LogFormatter

from labkit import sweep

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "accuracy_vs_size",
    "line",
    "format_bytes",
    "axis_label",
    "size_tradeoff",
    "draw_bit_limits",
    "is_bytes_key",
]

_DECIMAL = ("B", "KB", "MB", "GB", "TB", "PB")
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

# Axis labels (with units) for the keys measure.summary and the sweeps produce.
_LABELS = {
    "bytes": "Model size (1 KB = 1000 B)",
    "payload_bytes": "Payload size (1 KB = 1000 B)",
    "acc": "Accuracy (%)",
    "params": "Parameters (count)",
    "nonzero": "Non-zero parameters (count)",
    "macs": "MACs per sample (count)",
    "flops": "FLOPs per sample (count)",
    "latency_ms": "Latency (ms)",
    "loss": "Loss (nats)",
    "ppl": "Perplexity",
    "bits": "Bits per weight",
    "amount": "Fraction pruned",
    "seconds": "Time (s)",
}

_LINE = {"marker": "o", "markersize": 4, "linewidth": 1.2}
_FRONTIER = {"color": "0.25", "linestyle": "--", "linewidth": 1.0, "zorder": 1}


def format_bytes(n: float, *, binary: bool = False) -> str:
    """A byte count as text with 3 significant digits: decimal units by default (1 KB = 1000 B).

    Example: ``format_bytes(1500)  # '1.5 KB'``; ``format_bytes(1536, binary=True)  # '1.5 KiB'``
    """
    if isinstance(n, bool) or not isinstance(n, Real) or math.isnan(n) or n < 0 or math.isinf(n):
        raise ValueError(f"n must be a non-negative finite number of bytes; got {n!r}")
    base, units = (1024.0, _BINARY) if binary else (1000.0, _DECIMAL)
    value, i = float(n), 0
    while i < len(units) - 1 and float(f"{value:.3g}") >= 1000:  # 3 digits, never "1e+03"
        value /= base
        i += 1
    return f"{value:.3g} {units[i]}"


def axis_label(key: str) -> str:
    """The axis label, with units, used for a record key (the key itself when unknown).

    Example: ``axis_label("latency_ms")  # 'Latency (ms)'``
    """
    return _LABELS.get(key, key)


def accuracy_vs_size(
    records: Sequence[Mapping[str, Any]],
    x: str = "bytes",
    y: str = "acc",
    hue: str | None = "method",
    ax: Axes | None = None,
    logx: bool = True,
    frontier: bool = True,
    annotate: str | Callable[[Mapping[str, Any]], str] | None = None,
    title: str | None = None,
) -> Axes:
    """Accuracy versus size: one line per ``hue`` value and the Pareto frontier over all points.

    Each line is sorted by x; the frontier is a dashed step line. Byte keys get KB/MB ticks;
    fractions in [0, 1] for ``acc`` are shown in percent. ``hue`` absent from the records (or None)
    draws one series; ``annotate`` (a key, or a function of the record) labels each point.

    Example: ``accuracy_vs_size(sweep.run(fn, points), hue="method", annotate="amount")``
    """
    records = _prepare(records, x, y, hue)
    for rec in records:
        sweep.record_number(rec[x], x)
    ax = _axes(ax)
    for label, members in _series(records, hue):
        members = sorted(members, key=lambda r: r[x])
        xs, ys = [r[x] for r in members], [r[y] for r in members]
        ax.plot(xs, ys, label=label, **_LINE)
    if frontier:
        front = sweep.pareto_front(records, x=x, y=y)
        ax.step(
            [r[x] for r in front],
            [r[y] for r in front],
            where="post",
            label="Pareto frontier",
            **_FRONTIER,
        )
    if annotate is not None:
        text = annotate if callable(annotate) else (lambda r: _short(r.get(annotate)))
        for rec in records:
            ax.annotate(
                text(rec),
                (rec[x], rec[y]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="0.3",
            )
    _decorate(ax, records, x, y, logx)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=hue if _has(records, hue) else None, fontsize=8, title_fontsize=8)
    if title is not None:
        ax.set_title(title)
    return ax


def line(
    records: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    hue: str | None = None,
    ax: Axes | None = None,
    logx: bool = False,
    errorbars: str | None = None,
) -> Axes:
    """A line per ``hue`` value of ``y`` against ``x`` (sorted by x), with optional error bars.

    The error bars come from the key ``errorbars`` (e.g. ``"acc_std"`` from ``sweep.mean_std``).

    Example: ``line(sweep.mean_std(records, "width", "acc"), "width", "acc", errorbars="acc_std")``
    """
    records = _prepare(records, x, y, hue)
    if errorbars is not None:
        sweep.check_keys(records, [errorbars])
    ax = _axes(ax)
    for label, members in _series(records, hue):
        if all(isinstance(r[x], Real) for r in members):
            members = sorted(members, key=lambda r: r[x])
        xs, ys = [r[x] for r in members], [r[y] for r in members]
        if errorbars is None:
            ax.plot(xs, ys, label=label, **_LINE)
        else:
            err = [r[errorbars] for r in members]
            err = [0.0 if e is None or e != e else e for e in err]  # NaN (one seed): no bar
            ax.errorbar(xs, ys, yerr=err, label=label, capsize=3, **_LINE)
    _decorate(ax, records, x, y, logx)
    if _has(records, hue):
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    return ax


_STYLES = (("-", "solid"), ("--", "dashed"), (":", "dotted"), ("-.", "dash-dot"))


def size_tradeoff(
    records: Sequence[Mapping[str, Any]],
    y: str,
    hue: str = "method",
    style: str = "group_size",
    *,
    x: str = "bytes",
    reference: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    logy: bool = False,
) -> Axes:
    """Quality ``y`` against size ``x`` (log scale), a line per (hue, style) pair.

    One colour per ``hue`` value, one line style per ``style`` value (solid, dashed, dotted,
    dash-dot, in order of appearance, then again), a line through each (hue, style) pair's points
    sorted by ``x``; ``reference`` (a record with ``x`` and ``y``, e.g. the float model) is a black
    star.

    Example: ``size_tradeoff(records, "ppl", reference={"bytes": 9e5, "ppl": 4.1}, logy=True)``
    """
    records = _prepare(records, x, y, hue)
    sweep.check_keys(records, [style])
    ax = _axes(ax)
    styles = {v: _STYLES[i % len(_STYLES)] for i, v in enumerate(sweep.unique(records, style))}
    for i, h in enumerate(sweep.unique(records, hue)):
        label: str | None = _short(h)  # one legend entry per hue value
        for value, (ls, _) in styles.items():
            members = sorted(sweep.select(records, **{hue: h, style: value}), key=lambda r: r[x])
            if members:
                xs, ys = [r[x] for r in members], [r[y] for r in members]
                ax.plot(xs, ys, ls, marker="o", ms=4, lw=1, color=f"C{i}", label=label)
                label = None
    if reference is not None:
        ax.plot([reference[x]], [reference[y]], "k*", markersize=12, label="fp32")
    _decorate(ax, records, x, y, logx=True)
    if logy:
        ax.set_yscale("log")
    names = ", ".join(f"{_short(v)} {name}" for v, (_, name) in styles.items())
    ax.set_title(f"{style}: {names}", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    return ax


# --------------------------------------------------------------------------- helpers


def _prepare(records: Any, x: str, y: str, hue: str | None) -> list[Mapping[str, Any]]:
    records = sweep.check_records(records)
    if not records:
        raise ValueError("records must be a non-empty list of dicts; got an empty list")
    sweep.check_keys(records, [x, y])
    if hue is not None and not isinstance(hue, str):
        raise ValueError(f"hue must be None or a record key; got {hue!r}")
    for rec in records:
        sweep.record_number(rec[y], y)
    return records


def _has(records: Sequence[Mapping[str, Any]], key: str | None) -> bool:
    return key is not None and any(key in rec for rec in records)


def _series(
    records: Sequence[Mapping[str, Any]], hue: str | None
) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """(label, records) per hue value in order of first appearance; one unlabeled series if none."""
    if not _has(records, hue):
        return [("_nolegend_", list(records))]
    out: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        out.setdefault(_short(rec.get(hue)), []).append(rec)
    return list(out.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "(none)" if value is None else str(value)


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only here: notebooks then show the figure at the cell's end

    _, ax = plt.subplots(figsize=(6, 4))
    return ax


def is_bytes_key(key: str) -> bool:
    """Whether a record key holds bytes (``"bytes"`` or ``"*_bytes"``): its axis prints KB/MB."""
    return key == "bytes" or key.endswith("_bytes")


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (or KB/MB) on the ticks LogFormatter would label."""

    def __init__(self, text: Callable[[float], str], labelOnlyBase: bool = True) -> None:
        super().__init__(labelOnlyBase=labelOnlyBase)
        self.text = text

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.text(x) if x > 0 and super().__call__(x, pos) else ""


def _decorate(ax: Axes, records: Sequence[Mapping[str, Any]], x: str, y: str, logx: bool) -> None:
    xs = [r[x] for r in records]
    if logx:
        bad = [v for v in xs if not isinstance(v, Real) or not v > 0]
        if bad:
            raise ValueError(f"logx=True needs positive numbers in {x!r}; got {bad[0]!r}")
        ax.set_xscale("log")
    text = (lambda v: format_bytes(max(v, 0.0))) if is_bytes_key(x) else (lambda v: f"{v:g}")
    if logx:
        ax.xaxis.set_major_formatter(_PlainLogFormatter(text))
        ax.xaxis.set_minor_formatter(_PlainLogFormatter(text, labelOnlyBase=False))
    elif is_bytes_key(x):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: text(v)))
    ys = [r[y] for r in records]
    if y == "acc" and all(0.0 <= v <= 1.0 for v in ys if not math.isnan(v)):  # a fraction
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}"))
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.grid(True, which="major", alpha=0.3)


def draw_bit_limits(
    ax: Any, num_weights: int, other_bytes: int = 0, bits=(16, 8, 4, 2, 1.58, 1)
) -> None:
    """Vertical lines at the size ``other_bytes + num_weights * b / 8`` for each ``b`` in ``bits``.

    Each line is the model if each quantized weight took exactly ``b`` bits and nothing else
    changed.

    Example: ``draw_bit_limits(ax, 786432, other_bytes=fp32_bytes - 4 * 786432)``
    """
    for b in bits:
        x = other_bytes + num_weights * b / 8
        ax.axvline(x, color="0.55", lw=0.8, ls=":", zorder=0)
        ax.annotate(f"{b:g} b/w", (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=7, color="0.4", va="top", ha="right")  # fmt: skip
