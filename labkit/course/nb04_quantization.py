"""Notebook 04 (8-bit quantization): the cached experiments ``labkit prepare`` builds, the
``torch.ao`` reference checks and an exercise's check the notebook runs (its figures and the tables
of sections 2-4: :mod:`labkit.course.nb04_figures`).

Three sweeps over one pretrained zoo model (``COURSE["model"]`` on ``COURSE["dataset"]``), cached
by ``labkit.sweep`` as ``04-ptq-<model>-<dataset>``, ``04-qat-<model>-<dataset>`` and
``04-int8-<dataset>``:

- ``ptq``: post-training quantization (:func:`ptq_point`): weight = activation bits x weight
  granularity x calibration method; accuracy and the packed bytes a deployment stores.
- ``qat``: quantization-aware training (:func:`qat_point`) at the low bit widths, in two settings.
- ``int8``: real int8 kernels (:func:`int8_point`, ``torch.ao``): accuracy and serialized bytes.

:func:`course_points` lists their points, :func:`course_results` reads them (computing whatever is
missing, for any model, dataset or grid the notebook's parameters ask for) and :func:`prepare`
fills the cache at the notebook's defaults. Timings are never cached: they belong to the run.

Example:
    >>> from labkit.course import nb04_quantization as experiments
    >>> experiments.course_points()["qat"][0]
    {'bits': 2, 'granularity': 'per_tensor', 'calibration': 'minmax'}
    >>> results = experiments.course_results()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labkit import data, measure, models, quant, sweep, train, utils
from labkit.course import Step
from labkit.quant import int8 as quant_int8
from labkit.quant import integer as quant_integer
from labkit.utils import check_choice, check_int

__all__ = [
    "COURSE",
    "SWEEP_VERSIONS",
    "ptq_point",
    "qat_point",
    "int8_point",
    "course_points",
    "is_default",
    "ptq_sweep",
    "qat_sweep",
    "int8_sweep",
    "qat_against_ptq",
    "course_results",
    "PARTS",
    "prepare",
    "steps",
    "int8_speedup",
    "torch_ao_qparams",
    "check_per_channel_scales",
    "torch_ao_agreement",
]

COURSE: dict[str, Any] = {
    "model": "dscnn",
    "dataset": "digits",
    "calib_samples": 512,
    "ptq_bits": (2, 3, 4, 5, 6, 7, 8),
    "granularities": quant.GRANULARITIES,
    "calibrations": quant.CALIBRATIONS,
    "qat_bits": (2, 3, 4, 5),
    "qat_epochs": 3,
    "qat_lr": 1e-3,
    "qat_settings": (("per_tensor", "minmax"), ("per_channel", "mse")),
    "int8": (("lenet", "static"), ("mlp", "static"), ("mlp", "dynamic")),
    "layer": "blocks.1.pointwise.0",
}
"""What notebook 04 shows by default and :func:`prepare` computes: the zoo's depthwise-separable
CNN on 8x8 digits, activation ranges calibrated on ``calib_samples`` training images; PTQ at
``ptq_bits`` (weights = activations) for every granularity and calibration; QAT at ``qat_bits``,
``qat_epochs`` epochs at learning rate ``qat_lr``, in the ``qat_settings`` (granularity,
calibration): the simplest and the one PTQ recommends; real int8 versions of the model (static)
and of the ``int8`` (zoo model, mode) pairs; ``layer``: the layer whose weights and inputs the
notebook plots (the first quantizable layer when the model has no such layer)."""

SWEEP_VERSIONS = {"ptq": 1, "qat": 1, "int8": 1}
"""Bump one to recompute that sweep of notebook 04."""


def _run(
    kind: str, fn: Any, points: Sequence[dict], name: str, keys: Sequence[str], progress: Any
) -> list[dict]:
    """``sweep.run`` of one of the three sweeps, versioned by the pretrained models' cache keys
    and the sweep's entry in :data:`SWEEP_VERSIONS`."""
    version = utils.stable_hash({"models": list(keys), "sweep": SWEEP_VERSIONS[kind]})
    return sweep.run(fn, points, name=name, version=version, progress=progress)


# --------------------------------------------------------------------------- one sweep point each


def ptq_point(
    bits: int,
    granularity: str,
    calibration: str,
    *,
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
) -> dict[str, Any]:
    """One point of sweep ``04-ptq``: the pretrained ``model`` quantized after training.

    ``quant.quantize`` with weights and activations at ``bits``, ``granularity`` weight scales and
    ``calibration`` on the first ``calib_samples`` training inputs (BatchNorm folded). Returns the
    test ``acc``, ``bytes`` (``quant.packed_bytes``: the file a deployment stores) and ``payload``
    (the packed tensors' own bytes, without the file's container).
    Example: ``ptq_point(8, "per_channel", "minmax")["acc"]``
    """
    ds = data.load(dataset)
    config = quant.QuantConfig(
        bits=bits, act_bits=bits, granularity=granularity, calibration=calibration
    )
    qmodel = quant.quantize(
        models.pretrained(model, dataset), config, ds, num_samples=calib_samples
    )
    return {
        "acc": train.evaluate(qmodel, ds)["acc"],
        "bytes": quant.packed_bytes(qmodel),
        "payload": sum(t.nbytes for t in quant.packed_state_dict(qmodel).values()),
    }


def qat_point(
    bits: int,
    granularity: str,
    calibration: str,
    *,
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
    num_epochs: int = COURSE["qat_epochs"],
    lr: float = COURSE["qat_lr"],
) -> dict[str, Any]:
    """One point of sweep ``04-qat``: ``quant.qat`` from the PTQ model of the same setting.

    Weights = activations at ``bits``, fine-tuned ``num_epochs`` at ``lr`` (seed 0). Returns the
    test accuracy ``qat_acc``.
    Example: ``qat_point(2, "per_channel", "mse")["qat_acc"]``
    """
    ds = data.load(dataset)
    config = quant.QuantConfig(
        bits=bits, act_bits=bits, granularity=granularity, calibration=calibration
    )
    qmodel = quant.qat(
        models.pretrained(model, dataset),
        ds,
        config,
        num_epochs=num_epochs,
        lr=lr,
        num_samples=calib_samples,
        progress=False,
    )
    return {"qat_acc": train.evaluate(qmodel, ds)["acc"]}


def int8_point(
    model: str,
    mode: str,
    *,
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
) -> dict[str, Any]:
    """One point of sweep ``04-int8``: the pretrained ``model`` on real int8 kernels.

    ``quant.int8.to_int8`` in ``mode`` ("static": calibrated on the first ``calib_samples``
    training inputs; "dynamic"). Returns ``fp32_acc``, ``int8_acc``, the serialized
    ``fp32_bytes`` and ``int8_bytes`` (``measure.model_bytes``) and their ``ratio``.
    Example: ``int8_point("mlp", "dynamic")["ratio"]``
    """
    ds = data.load(dataset)
    float_model = models.pretrained(model, dataset)
    X_calib = ds.X_train[:calib_samples]  # (calib_samples, *input_shape)
    qmodel = quant_int8.to_int8(float_model, X_calib[:8], mode=mode, calib_data=X_calib)
    with quant_int8.quiet():
        int8_acc = train.evaluate(qmodel, ds)["acc"]
    fp32_bytes, int8_bytes = measure.model_bytes(float_model), measure.model_bytes(qmodel)
    return {
        "fp32_acc": train.evaluate(float_model, ds)["acc"],
        "int8_acc": int8_acc,
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "ratio": fp32_bytes / int8_bytes,
    }


# --------------------------------------------------------------------------- cached sweeps


def course_points(
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    qat_bits: Sequence[int] = COURSE["qat_bits"],
) -> dict[str, list[dict]]:
    """The sweep points of notebook 04: ``ptq``, ``qat`` and ``int8``.

    ``ptq``: every bit width, granularity and calibration; ``qat``: ``qat_bits`` x
    ``COURSE["qat_settings"]``; ``int8``: ``model`` static, then each ``COURSE["int8"]`` pair the
    zoo holds for ``dataset``, each once.
    Example: ``len(course_points()["ptq"])  # 7 bit widths x 2 granularities x 3 calibrations``
    """
    qat_bits = [check_int("qat_bits", b, minimum=2, maximum=8) for b in qat_bits]
    if not qat_bits:
        raise ValueError("qat_bits must hold at least one bit width; got none")
    pairs = [(model, "static")]
    pairs += [(m, mode) for m, mode in COURSE["int8"] if (m, dataset) in models.RECIPES]
    return {
        "ptq": sweep.grid(
            bits=list(COURSE["ptq_bits"]),
            granularity=list(COURSE["granularities"]),
            calibration=list(COURSE["calibrations"]),
        ),
        "qat": [
            {"bits": b, "granularity": g, "calibration": c}
            for b in qat_bits
            for g, c in COURSE["qat_settings"]
        ],
        "int8": [{"model": m, "mode": mode} for m, mode in dict.fromkeys(pairs)],
    }


def is_default(**params: Any) -> bool:
    """Whether every parameter given has its ``COURSE`` value.

    The notebook checks the claims its text makes (which describe the defaults) only then.
    Example: ``is_default(model="dscnn", dataset="digits")  # True``
    """
    unknown = sorted(set(params) - set(COURSE))
    if unknown:
        raise ValueError(f"params must be keys of COURSE ({', '.join(COURSE)}); got {unknown}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return all(COURSE[k] == v for k, v in tuples.items())


def ptq_sweep(
    points: Sequence[dict],
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
    progress: bool | None = None,
) -> list[dict]:
    """``sweep.run(ptq_point, points)`` for ``model`` on ``dataset``, cached on disk.

    The sweep is ``04-ptq-<model>-<dataset>``.
    Example: ``ptq_sweep(course_points()["ptq"])``
    """
    calib_samples = check_int("calib_samples", calib_samples, minimum=1)
    fn = functools.partial(ptq_point, model=model, dataset=dataset, calib_samples=calib_samples)
    keys = [models.cache_key(model, dataset)]
    return _run("ptq", fn, points, f"04-ptq-{model}-{dataset}", keys, progress)


def qat_sweep(
    points: Sequence[dict],
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
    num_epochs: int = COURSE["qat_epochs"],
    progress: bool | None = None,
) -> list[dict]:
    """``sweep.run(qat_point, points)``, cached on disk as sweep ``04-qat-<model>-<dataset>``.

    Example: ``qat_sweep(course_points()["qat"], num_epochs=3)``
    """
    calib_samples = check_int("calib_samples", calib_samples, minimum=1)
    num_epochs = check_int("num_epochs", num_epochs, minimum=1)
    fn = functools.partial(
        qat_point, model=model, dataset=dataset, calib_samples=calib_samples, num_epochs=num_epochs
    )
    keys = [models.cache_key(model, dataset)]
    return _run("qat", fn, points, f"04-qat-{model}-{dataset}", keys, progress)


def int8_sweep(
    points: Sequence[dict],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
    progress: bool | None = None,
) -> list[dict]:
    """``sweep.run(int8_point, points)``, cached on disk as sweep ``04-int8-<dataset>``.

    Example: ``int8_sweep(course_points()["int8"])``
    """
    calib_samples = check_int("calib_samples", calib_samples, minimum=1)
    fn = functools.partial(int8_point, dataset=dataset, calib_samples=calib_samples)
    keys = sorted({models.cache_key(p["model"], dataset) for p in points})
    return _run("int8", fn, points, f"04-int8-{dataset}", keys, progress)


def qat_against_ptq(qat: Sequence[Mapping], ptq: Sequence[Mapping]) -> list[dict]:
    """Each QAT record with the accuracy of its PTQ and of the best and worst PTQ setting.

    ``ptq_acc``: the PTQ of the same bits, granularity and calibration; ``best_ptq`` /
    ``worst_ptq``: the most and least accurate PTQ setting at its bit width.
    Example: ``qat_against_ptq(results["qat"], results["ptq"])[0]["best_ptq"]``
    """
    acc = {(r["bits"], r["granularity"], r["calibration"]): r["acc"] for r in ptq}
    out = []
    for r in qat:
        at_bits = [a for (b, *_), a in acc.items() if b == r["bits"]]
        if not at_bits:
            raise ValueError(f"ptq must hold records at {r['bits']} bits; got none")
        setting = r["bits"], r["granularity"], r["calibration"]
        out.append(
            {**r, "ptq_acc": acc[setting], "best_ptq": max(at_bits), "worst_ptq": min(at_bits)}
        )
    return out


def course_results(
    model: str = COURSE["model"],
    dataset: str = COURSE["dataset"],
    calib_samples: int = COURSE["calib_samples"],
    qat_bits: Sequence[int] = COURSE["qat_bits"],
    qat_epochs: int = COURSE["qat_epochs"],
    progress: bool | None = None,
) -> dict[str, list[dict]]:
    """Records of the three sweeps at :func:`course_points`, computed where missing.

    Instant at the defaults after ``labkit prepare``. ``qat`` records carry the PTQ comparison of
    :func:`qat_against_ptq`.
    Example: ``results = course_results("dscnn", "digits"); results["ptq"][0]["acc"]``
    """
    points = course_points(model, dataset, qat_bits)
    ptq = ptq_sweep(points["ptq"], model, dataset, calib_samples, progress)
    qat = qat_sweep(points["qat"], model, dataset, calib_samples, qat_epochs, progress)
    return {
        "ptq": ptq,
        "qat": qat_against_ptq(qat, ptq),
        "int8": int8_sweep(points["int8"], dataset, calib_samples, progress),
    }


PARTS = ("ptq", "qat", "int8")
"""The units of :func:`prepare`, one per sweep; ``labkit prepare`` runs them as parallel steps."""


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 04 shows, at its default parameters.

    ``parts``: some of :data:`PARTS` (default: all). Part of ``labkit prepare``. Returns the
    records of each part.
    Example: ``records = prepare(["ptq"])["ptq"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    run = {"ptq": ptq_sweep, "qat": qat_sweep, "int8": int8_sweep}
    return {part: run[part](points[part], progress=progress) for part in parts}


def steps() -> list[Step]:
    """Post-training quantization, quantization-aware training and real int8 models."""
    model = f"model:{COURSE['model']}/{COURSE['dataset']}"
    int8_models = {f"model:{m}/{COURSE['dataset']}" for m, _ in COURSE["int8"]} - {model}
    needs = {"ptq": (model,), "qat": (model,), "int8": (model, *sorted(int8_models))}
    costs = {"ptq": 4.0, "qat": 5.0, "int8": 1.0}  # seconds, one core, cold
    return [
        Step(
            f"quant8:{part}",
            "labkit.course.nb04_quantization:prepare",
            {"parts": [part]},
            needs=needs[part],
            cost=costs[part],
        )
        for part in PARTS
    ]


# --------------------------------------------------------------------------- int8 timings


def int8_speedup(rows: Sequence[Mapping]) -> float:
    """The best fp32 median latency over the best int8 one (> 1: int8 is faster).

    Computed from ``quant.int8.compare_speed``'s rows.
    Example: ``int8_speedup(compare_speed(model, {"int8": q}, X))``
    """
    best = {fp32: min(r["median_ms"] for r in rows if r["fp32"] == fp32) for fp32 in (True, False)}
    return best[True] / best[False]


# --------------------------------------------------------------------------- torch.ao as the oracle


def torch_ao_qparams(x_min: float, x_max: float, bits: int) -> tuple[float, int]:
    """``(scale, zero_point)`` of ``torch.ao``'s ``MinMaxObserver`` for a range ``[x_min, x_max]``.

    On the unsigned grid ``[0, 2^bits - 1]``: the reference of notebook 04's exercise 1.
    Example: ``torch_ao_qparams(-1.0, 3.0, 8)  # (0.01568..., 64)``
    """
    with quant_int8.quiet():  # torch.ao is deprecated upstream; it serves as an oracle here
        from torch.ao.quantization.observer import MinMaxObserver

        obs = MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=2**bits - 1)
        obs(torch.tensor([x_min, x_max]))
        scale, zp = obs.calculate_qparams()
    return scale.item(), int(zp.item())


def check_per_channel_scales(fn: Callable[[Tensor, int], Tensor], w: Tensor, bits: int) -> None:
    """The check of notebook 04's exercise 3 (symmetric per-channel weight scales).

    ``fn(w, bits)`` must return one symmetric scale per output channel (dim 0) such that
    ``torch.fake_quantize_per_channel_affine`` on the signed ``bits`` grid rounds every weight to
    within half a step (nothing clipped) and puts each channel's largest ``|w|`` on the top code.
    Raises AssertionError naming what is wrong.

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, -0.5], [0.1, 0.2]])
        >>> check_per_channel_scales(lambda w, bits: w.abs().amax(dim=1) / 127, w, 8)
    """
    w = w.detach()
    scales = fn(w, bits)
    if not (isinstance(scales, Tensor) and scales.shape == (w.shape[0],)):
        raise AssertionError(f"one scale per channel: expected shape ({w.shape[0]},)")
    qmax = 2 ** (bits - 1) - 1
    zp = torch.zeros(w.shape[0], dtype=torch.int32)
    w_q = torch.fake_quantize_per_channel_affine(w, scales.float(), zp, 0, -qmax - 1, qmax)
    err = (w_q - w).abs().flatten(1).amax(dim=1)  # (C_out,) largest error per channel
    if not torch.all(err <= scales / 2 * 1.0001):
        raise AssertionError("no clipping: error at most half a step")
    top = torch.round(w.abs().flatten(1).amax(dim=1) / scales)  # (C_out,)
    if not torch.all(top == qmax):
        raise AssertionError("each channel's largest |w| must land on the top code")


def torch_ao_agreement(model: nn.Module, ds: Any, backend: str = "qnnpack") -> dict[str, Any]:
    """``quant.integer.to_integer(model, ds)`` against the same network on ``torch.ao``.

    Runs it with single and with gemmlowp's double rounding, against the same network on
    ``torch.ao``'s ``backend`` kernels, on the test inputs: the fraction of logit codes identical to
    torch.ao's (``exact``, ``gemmlowp_exact``), the largest difference in codes (``max_diff``,
    ``gemmlowp_max_diff``), and the test accuracy of each (``acc``, ``ao_acc``, ``gemmlowp_acc``).
    Example: ``torch_ao_agreement(models.pretrained("dscnn", "digits"), ds)["exact"]  # 1.0``
    """
    int_model = quant_integer.to_integer(model, ds, rounding="single")
    gemmlowp = quant_integer.to_integer(model, ds, rounding="double")
    ao_model = quant_integer.torch_ao_reference(int_model, backend)
    q_test = int_model.quantize_input(ds.X_test)  # uint8 codes of the test inputs
    ao_codes = ao_model.forward_int(q_test).int()
    out: dict[str, Any] = {"ao_acc": train.evaluate(ao_model, ds)["acc"]}
    for prefix, m in (("", int_model), ("gemmlowp_", gemmlowp)):
        codes = m.forward_int(q_test).int()
        out[f"{prefix}exact"] = (codes == ao_codes).float().mean().item()
        out[f"{prefix}max_diff"] = (codes - ao_codes).abs().max().item()
        out[f"{prefix}acc"] = train.evaluate(m, ds)["acc"]
    return out
