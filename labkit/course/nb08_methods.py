"""Notebook 08's comparison: every single method of notebooks 02-06, measured like the pipeline.

The pipeline of :mod:`labkit.course.nb08_capstone` is plotted against the methods the earlier
notebooks measured on MNIST-1D (:func:`earlier_points`: distilled MLP students, dynamic widths,
post-training quantization alone, :func:`single_methods`) and against notebook 03's pruning of
digits (:func:`pruning_points`). Accuracies come from the cached sweeps; bytes are those of the
shipped file (:mod:`labkit.ship`), as the pipeline's are.

Example:
    >>> from labkit.course import nb08_methods
    >>> sorted(nb08_methods.METHOD_NAMES)
    ['ptq', 'rtn']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from labkit import data, measure, models, plots, quant, ship, sweep, train
from labkit.course import nb02_distillation, nb03_pruning, nb06_dynamic
from labkit.course.nb08_capstone import DATASET, TEACHER, VERSION, _arch, _build_arch, _qconfig
from labkit.quant import lowbit

__all__ = [
    "METHOD_NAMES",
    "single_methods",
    "earlier_points",
    "pruning_points",
    "plot_against_earlier",
]

METHOD_NAMES = {"ptq": "CNN teacher, PTQ (04)", "rtn": "MLP, low-bit RTN (05)"}
"""The legend name of each post-training method of :func:`single_methods`."""


def _method_point(method: str, bits: int) -> dict[str, Any]:
    """One single method on MNIST-1D: ``ptq`` (notebook 04: per-channel weight quantization of
    the teacher) or ``rtn`` (notebook 05: group-wise round-to-nearest, groups of 64, of the zoo
    MLP). Accuracy, bytes and MACs of the shipped model."""
    ds = data.load(DATASET)
    if method == "ptq":
        model = quant.quantize(models.pretrained(*TEACHER), _qconfig(bits))
    else:
        config = lowbit.LowBitConfig(bits=bits, group_size=64)
        model = lowbit.quantize(models.pretrained("mlp", DATASET), config)
    payload = ship.to_bytes(model)
    shipped = ship.from_bytes(payload)
    return {
        "acc": train.evaluate(shipped, ds, device="cpu")["acc"],
        "bytes": len(payload),
        "macs": measure.macs(shipped, ds.X_test[:1]),
        "arch": _arch(shipped),
    }


def single_methods(progress: bool | None = None) -> list[dict]:
    """Post-training quantization alone on MNIST-1D, as notebooks 04 and 05 apply it.

    No training, so cheap: the teacher per channel at 8, 6, 5, 4, 3 bits and the zoo MLP group-wise
    at 4, 3, 2 bits. Cached as sweep ``08-capstone-methods`` (``labkit prepare`` fills it).
    Example: ``sweep.to_table(single_methods())``
    """
    points = [{"method": "ptq", "bits": b} for b in (8, 6, 5, 4, 3)]
    points += [{"method": "rtn", "bits": b} for b in (4, 3, 2)]
    version = f"{VERSION}-{models.cache_key(*TEACHER)}-{models.cache_key('mlp', DATASET)}"
    return sweep.run(
        _method_point, points, name="08-capstone-methods", version=version, progress=progress
    )


def _architecture_bytes(name: str, widths: Sequence[int]) -> tuple[int, str]:
    """Shipped bytes of a dense fp32 model of that shape (its size does not depend on the
    values: no weight of a trained dense model is exactly zero), and its ``arch`` string."""
    arch = f"{name} {'-'.join(str(int(w)) for w in widths)}"
    return len(ship.to_bytes(_build_arch(arch))), arch


def _point(method: str, point: str, acc: float, size: int, **extra: Any) -> dict[str, Any]:
    return {"method": method, "point": point, "acc": acc, "bytes": size, **extra}


def earlier_points(progress: bool | None = None) -> list[dict]:
    """Every single method of the earlier notebooks that was measured on MNIST-1D, as records.

    Records ``method, point, acc, bytes, macs, arch``: the MLP students of notebook 02 (scratch and
    distilled, per width), the static and slimmable CNN widths of notebook 06, and
    :func:`single_methods`. Accuracies come from the cached sweeps (nothing is retrained when
    ``labkit prepare`` has run); bytes are those of the shipped file, like the pipeline's.
    Example: ``plots.accuracy_vs_size(earlier_points(), hue="method")``
    """
    out = []
    for r in nb02_distillation.mnist1d_sweep(nb02_distillation.course_points()["width"], progress):
        size, arch = _architecture_bytes("mlp", [r["width"]])
        method = "MLP distilled (02)" if r["method"] == "transfer_soft" else "MLP scratch (02)"
        out.append(_point(method, f"width {r['width']}", r["acc"], size, macs=r["macs"], arch=arch))
    for r in nb06_dynamic.course_results(progress=progress)["width"]:
        size, arch = _architecture_bytes("cnn1d", r["channels"])
        method, point = f"CNN {r['method']} width (06)", f"{r['width']:.0%}"
        out.append(_point(method, point, r["acc"], size, macs=r["macs"], arch=arch))
    for r in single_methods(progress):
        method, point = METHOD_NAMES[r["method"]], f"{r['bits']} bits"
        out.append(_point(method, point, r["acc"], r["bytes"], macs=r["macs"], arch=r["arch"]))
    return out


def pruning_points() -> list[dict]:
    """Notebook 03's pruning sweeps as records ``method, point, acc, bytes``, from their cache.

    The sweeps ran on digits (not MNIST-1D): the MLP pruned globally and fine-tuned (sparse bytes,
    mean of the seeds) and with whole neurons removed (dense bytes).
    Example: ``plots.accuracy_vs_size(pruning_points(), hue="method")``
    """
    points = nb03_pruning.course_points()
    unstructured = nb03_pruning.unstructured_sweep(points["unstructured"])
    unstructured = sweep.mean_std(unstructured, ["scope", "amount"], ["acc", "bytes_auto"])
    structured = nb03_pruning.structured_sweep(points["structured"])
    structured = sweep.mean_std(structured, "amount", ["acc", "bytes"])
    out = [
        _point("unstructured, global (03)", f"{r['amount']:.0%}", r["acc"], r["bytes_auto"])
        for r in unstructured
        if r["scope"] == "global"
    ]
    out += [
        _point("neurons removed (03)", f"{r['amount']:.0%}", r["acc"], r["bytes"])
        for r in structured
    ]
    return out


def plot_against_earlier(points: Sequence[dict], pipeline: str = "pipeline (08)") -> Figure:
    """Two panels: the pipeline against the earlier methods, and notebook 03's pruning of digits.

    ``points`` (the pipeline's stages, method ``pipeline``, and :func:`earlier_points`) as accuracy
    against shipped bytes, the pipeline's stages annotated; beside it, notebook 03's pruning of
    digits (:func:`pruning_points`).
    Example: ``plot_against_earlier(stage_points + earlier_points())``
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    plots.accuracy_vs_size(
        points,
        x="bytes",
        y="acc",
        hue="method",
        ax=left,
        annotate=lambda r: r["point"] if r["method"] == pipeline else "",
        title="MNIST-1D: accuracy vs shipped bytes",
    )
    left.set_ylim(0.5, 1.0)
    plots.accuracy_vs_size(
        pruning_points(),
        x="bytes",
        y="acc",
        hue="method",
        ax=right,
        title="digits (notebook 03): pruning alone",
    )
    right.set_ylim(0.8, 1.0)
    fig.tight_layout()
    return fig
