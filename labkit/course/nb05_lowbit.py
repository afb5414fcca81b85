"""Notebook 05 (low-bit quantization): the cached experiments ``labkit prepare`` builds.

Two sweeps over :mod:`labkit.quant.lowbit` — bits x group size x method for the zoo's tiny GPT
(validation perplexity) and its MLP classifier (test accuracy), each against real bytes — and the
ternary quantization-aware training of the MLP. ``labkit.sweep`` caches them as
``05-lowbit-<model key>`` and ``05-qat-<model key>``: :func:`course_points` lists their points,
:func:`course_results` reads them (computing whatever is missing) and :func:`prepare` fills them
part by part. The notebook's plot, summary and exercise check live here too.

Example:
    >>> from labkit.course import nb05_lowbit
    >>> nb05_lowbit.sweep_points(bits=(2,), group_sizes=(64,))[0]
    {'method': 'rtn', 'bits': 2, 'group_size': 64}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from labkit import data, measure, models, sweep, train, utils
from labkit.course import Step
from labkit.quant import lowbit
from labkit.utils import check_choice, check_int

__all__ = [
    "COURSE",
    "METHODS",
    "SWEEP_VERSIONS",
    "calibration_ids",
    "layer_inputs",
    "quantized",
    "lm_point",
    "classifier_point",
    "qat_point",
    "sweep_points",
    "course_points",
    "course_results",
    "PARTS",
    "prepare",
    "steps",
]

COURSE: dict[str, Any] = {
    "lm": "gpt",
    "text": "pydoc",
    "classifier": "mlp",
    "dataset": "mnist1d",
    "bits": (2, 3, 4),
    "group_sizes": (16, 64, "row"),
    "calib_windows": 8,
    "calib_examples": 512,
    "qat_epochs": 10,
    "codebook_bits": {"twn": 1.58, "binary": 1},
    "lm_skip": ("lm_head",),
    "sym_group_size": 64,
    "qat_lr": 3e-3,
    "qat_batch_size": 128,
}
"""What notebook 05 shows and :func:`prepare` computes: the language model ``lm`` on ``text``
(every Linear but ``lm_skip`` quantized; GPTQ calibrated on ``calib_windows`` windows of its
block size) and the classifier on ``dataset`` (GPTQ on its first ``calib_examples`` training
inputs); RTN and GPTQ at each of ``bits`` x ``group_sizes``, symmetric RTN at groups of
``sym_group_size``, k-means and a per-layer uniform grid at each of ``bits``, ternary (TWN) and
binary at the bits per weight ``codebook_bits``; and ternary QAT of the classifier for
``qat_epochs`` (``qat_lr``, ``qat_batch_size``)."""

METHODS = ("rtn", "rtn-sym", "gptq", "kmeans", "grid", "twn", "binary")
"""The sweep's methods: ``lowbit.LowBitConfig`` methods, plus ``rtn-sym`` (symmetric RTN)."""

SWEEP_VERSIONS = {"lm": 1, "classifier": 1, "qat": 1}
"""Bump one to recompute that sweep of notebook 05."""

_LAYERWISE = ("row", "layer")  # one scale per output row / one codebook per layer
_BOOKKEEPING = ("lm", "text", "classifier", "dataset", "calib_windows", "calib_examples")


def _sweep_version(kind: str) -> str:
    """What the point functions read besides their point (the sweep's cache version)."""
    keys = {"lm": ("lm_skip", "codebook_bits"), "classifier": ("codebook_bits",)}
    keys["qat"] = ("qat_lr", "qat_batch_size")
    return utils.stable_hash(
        {"sweep": SWEEP_VERSIONS[kind], "course": {k: COURSE[k] for k in keys[kind]}}
    )


def _check_group_size(group_size: Any) -> int | str:
    if isinstance(group_size, str):
        return check_choice("group_size", group_size, _LAYERWISE)
    return check_int("group_size", group_size, minimum=1)


def calibration_ids(text: data.TextData, block_size: int, windows: int) -> torch.Tensor:
    """GPTQ calibration token ids from the first training characters of ``text``.

    The first ``windows * block_size`` training characters of ``text``, one window per row:
    ``(windows, block_size)``.

    Example: ``calibration_ids(data.load("pydoc"), 64, 8).shape  # (8, 64)``
    """
    windows = check_int("windows", windows, minimum=1)
    block_size = check_int("block_size", block_size, minimum=1)
    tokens = text.train[: windows * block_size]
    if tokens.numel() < windows * block_size:
        raise ValueError(f"windows must fit the training split; got {windows} x {block_size}")
    return tokens.view(windows, block_size)  # (windows, block_size)


def layer_inputs(model: nn.Module, layer_name: str, inputs: torch.Tensor) -> torch.Tensor:
    """What the Linear ``layer_name`` of ``model`` receives on ``inputs``: ``(tokens, in)``.

    Example: ``X = layer_inputs(gpt, "transformer.h.1.mlp.c_proj", ids)  # (B * T, 256)``
    """
    layer = model.get_submodule(layer_name)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer_name must name an nn.Linear; got {type(layer).__name__}")
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        hook.remove()
    return captured[0].reshape(-1, layer.in_features)  # (tokens, in)


def quantized(
    model: nn.Module,
    method: str,
    bits: int,
    group_size: int | str,
    calib_data: Any = None,
    skip: Sequence[str] = (),
) -> nn.Module:
    """A copy of ``model`` with packed low-bit Linear layers (``lowbit.quantize``).

    ``method``: one of :data:`METHODS` (``rtn-sym`` is symmetric RTN; ``twn`` and ``binary``
    ignore ``bits``); ``group_size``: input columns per scale, ``"row"`` (one scale per output
    row) or ``"layer"`` (codebook methods: one table per layer); ``calib_data``: inputs for GPTQ.
    Example: ``quantized(mlp, "gptq", 3, 64, X[:512])``
    """
    check_choice("method", method, METHODS)
    group_size = _check_group_size(group_size)
    config = lowbit.LowBitConfig(
        bits=4 if method in ("twn", "binary") else bits,
        group_size=None if group_size in _LAYERWISE else group_size,
        symmetric=method == "rtn-sym",
        method="rtn" if method == "rtn-sym" else method,
        skip=tuple(skip),
    )
    return lowbit.quantize(model, config, calib_data)


def _sizes(q: nn.Module) -> dict[str, int]:
    return {"bytes": measure.model_bytes(q), "weight_bytes": lowbit.weight_bytes(q)["bytes"]}


def lm_point(
    method: str,
    bits: int,
    group_size: int | str,
    lm: str = COURSE["lm"],
    text: str = COURSE["text"],
    calib_windows: int = COURSE["calib_windows"],
) -> dict[str, Any]:
    """One point of sweep ``05-lowbit-<lm key>``: the zoo's ``lm`` on ``text``, quantized.

    Every Linear but ``COURSE["lm_skip"]`` (the tied ``lm_head``) is quantized (:func:`quantized`,
    GPTQ calibrated on :func:`calibration_ids`). Returns the file's ``bytes``, the packed
    ``weight_bytes`` and the validation perplexity ``ppl`` (``train.evaluate_lm``).
    Example: ``lm_point("gptq", 3, 64)["ppl"]``
    """
    corpus = data.load(text)
    model = models.pretrained(lm, text)
    calib = calibration_ids(corpus, model.config.block_size, calib_windows)
    q = quantized(model, method, bits, group_size, calib, skip=COURSE["lm_skip"])
    return {**_sizes(q), "ppl": train.evaluate_lm(q, corpus)["ppl"]}


def classifier_point(
    method: str,
    bits: int,
    group_size: int | str,
    classifier: str = COURSE["classifier"],
    dataset: str = COURSE["dataset"],
    calib_examples: int = COURSE["calib_examples"],
) -> dict[str, Any]:
    """One point of sweep ``05-lowbit-<classifier key>``: the zoo's ``classifier``, quantized.

    All its Linear layers are quantized (GPTQ on the first ``calib_examples`` training inputs).
    Returns ``bytes``, ``weight_bytes`` and the test accuracy ``acc``.
    Example: ``classifier_point("rtn", 4, 64)["acc"]``
    """
    ds = data.load(dataset)
    calib = ds.X_train[: check_int("calib_examples", calib_examples, minimum=1)]
    q = quantized(models.pretrained(classifier, dataset), method, bits, group_size, calib)
    return {**_sizes(q), "acc": train.evaluate(q, ds)["acc"]}


def qat_point(
    num_epochs: int, classifier: str = COURSE["classifier"], dataset: str = COURSE["dataset"]
) -> dict[str, Any]:
    """Ternary QAT (BitNet b1.58 style) of the zoo's ``classifier`` for ``num_epochs`` (seed 0).

    ``lowbit.to_bitlinear`` then ``train.fit``; returns the test accuracy of absmean ternary PTQ
    of the float model (``ptq_acc``), of the trained model packed (``qat_acc``) and unpacked
    (``train_acc``), and the packed file's ``bytes``.
    Example: ``qat_point(10)["qat_acc"]``
    """
    num_epochs = check_int("num_epochs", num_epochs, minimum=1)
    ds = data.load(dataset)
    model = models.pretrained(classifier, dataset)
    bit_model = lowbit.to_bitlinear(model)
    train.fit(
        bit_model, ds, num_epochs=num_epochs, lr=COURSE["qat_lr"],
        batch_size=COURSE["qat_batch_size"], val=False, progress=False, seed=0,
    )  # fmt: skip
    absmean = lowbit.LowBitConfig(method="absmean")
    packed = lowbit.quantize(bit_model, absmean)
    return {
        "ptq_acc": train.evaluate(lowbit.quantize(model, absmean), ds)["acc"],
        "qat_acc": train.evaluate(packed, ds)["acc"],
        "train_acc": train.evaluate(bit_model, ds)["acc"],
        "bytes": measure.model_bytes(packed),
    }


def sweep_points(
    bits: Sequence[int] = COURSE["bits"], group_sizes: Sequence[int | str] = COURSE["group_sizes"]
) -> list[dict[str, Any]]:
    """The sweep's (method, bits, group size) points, the same for both models.

    RTN and GPTQ at ``bits`` x ``group_sizes``; symmetric RTN at ``COURSE["sym_group_size"]``;
    k-means and the per-layer grid at ``bits`` (``group_size="layer"``); TWN and binary once each
    (their ``bits`` is the bits per weight of ``COURSE["codebook_bits"]``).
    Example: ``len(sweep_points())  # 29``
    """
    bits = [check_int("bits", b, minimum=2, maximum=8) for b in bits]
    group_sizes = [_check_group_size(g) for g in group_sizes]
    points = [
        {"method": m, "bits": b, "group_size": g}
        for m in ("rtn", "gptq")
        for b in bits
        for g in group_sizes
    ]
    points += [
        {"method": "rtn-sym", "bits": b, "group_size": COURSE["sym_group_size"]} for b in bits
    ]
    points += [
        {"method": m, "bits": b, "group_size": "layer"} for m in ("kmeans", "grid") for b in bits
    ]
    points += [
        {"method": m, "bits": b, "group_size": "layer"} for m, b in COURSE["codebook_bits"].items()
    ]
    return points


def course_points(
    bits: Sequence[int] = COURSE["bits"],
    group_sizes: Sequence[int | str] = COURSE["group_sizes"],
    calib_windows: int = COURSE["calib_windows"],
    qat_epochs: int = COURSE["qat_epochs"],
    *,
    lm: str = COURSE["lm"],
    text: str = COURSE["text"],
    classifier: str = COURSE["classifier"],
    dataset: str = COURSE["dataset"],
) -> dict[str, list[dict]]:
    """The points of notebook 05's sweeps: ``lm``, ``classifier`` and ``qat``.

    ``lm`` and ``classifier``: :func:`sweep_points` with the model each point quantizes; ``qat``:
    one point.

    Example: ``course_points()["qat"]  # [{'num_epochs': 10, 'classifier': 'mlp', ...}]``
    """
    calib_windows = check_int("calib_windows", calib_windows, minimum=1)
    base = sweep_points(bits, group_sizes)
    lm_keys = {"lm": lm, "text": text, "calib_windows": calib_windows}
    clf_keys = {"classifier": classifier, "dataset": dataset}
    return {
        "lm": [{**p, **lm_keys} for p in base],
        "classifier": [{**p, **clf_keys, "calib_examples": COURSE["calib_examples"]} for p in base],
        "qat": [{"num_epochs": check_int("qat_epochs", qat_epochs, minimum=1), **clf_keys}],
    }


_SWEEPS: dict[str, Callable[..., dict]] = {
    "lm": lm_point,
    "classifier": classifier_point,
    "qat": qat_point,
}


def _sweep(kind: str, points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    """Run one sweep; its name carries the model's zoo key (the same for all its points)."""
    if not points:
        return []
    p = points[0]
    model = (p["lm"], p["text"]) if kind == "lm" else (p["classifier"], p["dataset"])
    prefix = "05-qat" if kind == "qat" else "05-lowbit"
    records = sweep.run(
        _SWEEPS[kind],
        points,
        name=f"{prefix}-{models.cache_key(*model)}",
        version=_sweep_version(kind),
        progress=progress,
    )
    return [{k: v for k, v in r.items() if k not in _BOOKKEEPING} for r in records]


def course_results(
    lm: str = COURSE["lm"],
    text: str = COURSE["text"],
    classifier: str = COURSE["classifier"],
    dataset: str = COURSE["dataset"],
    *,
    bits: Sequence[int] = COURSE["bits"],
    group_sizes: Sequence[int | str] = COURSE["group_sizes"],
    calib_windows: int = COURSE["calib_windows"],
    qat_epochs: int = COURSE["qat_epochs"],
    progress: bool | None = None,
) -> dict[str, Any]:
    """Records of notebook 05's sweeps (``lm``, ``classifier``, ``qat``), computed where missing.

    ``lm`` and ``classifier``: one record per :func:`sweep_points` point
    (``method, bits, group_size, bytes, weight_bytes`` and ``ppl`` or ``acc``); ``qat``: the one
    :func:`qat_point` record.

    Instant at the defaults after ``labkit prepare``; other parameters compute their points once
    (cached on disk by ``sweep.run``).
    Example: ``results = course_results(); results["lm"][0]["ppl"]``
    """
    points = course_points(
        bits, group_sizes, calib_windows, qat_epochs,
        lm=lm, text=text, classifier=classifier, dataset=dataset,
    )  # fmt: skip
    out: dict[str, Any] = {kind: _sweep(kind, pts, progress) for kind, pts in points.items()}
    out["qat"] = out["qat"][0]
    return out


PARTS = ("lm", "classifier")
"""The units of :func:`prepare`, one per zoo model read: the language model's sweep (GPTQ
included: the longer part) and the classifier's sweep with its ternary QAT. ``labkit prepare``
runs them as steps, each after its model."""


def _part(kind: str) -> str:
    return "lm" if kind == "lm" else "classifier"


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 05 shows, at its default parameters.

    ``parts``: some of :data:`PARTS` (default: all). Part of ``labkit prepare``; instant when
    cached. Returns the records of each part.
    Example: ``records = prepare(["classifier"])["classifier"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    out: dict[str, list[dict]] = {}
    for part in parts:
        out[part] = []
        for kind, pts in points.items():
            if _part(kind) == part:
                out[part] += _sweep(kind, pts, progress)
    return out


def steps() -> list[Step]:
    """Low-bit sweeps of the tiny GPT (RTN, GPTQ, codebooks) and the MLP, and ternary QAT."""
    needs = {
        "lm": f"model:{COURSE['lm']}/{COURSE['text']}",
        "classifier": f"model:{COURSE['classifier']}/{COURSE['dataset']}",
    }
    costs = {"lm": 12.0, "classifier": 4.0}  # seconds on one core, cold
    return [
        Step(
            f"lowbit:{part}",
            "labkit.course.nb05_lowbit:prepare",
            {"parts": [part]},
            needs=(needs[part],),
            cost=costs[part],
        )
        for part in PARTS
    ]
