"""Notebook 08 (capstone): the compression pipeline, its cached experiments and the challenge.

This module composes the technique modules for notebook 08:

* **The pipeline** (Deep Compression style, on MNIST-1D): the zoo's 1-D CNN teacher is distilled
  into a thinner CNN on notebook 02's transfer set (``distill.distill``), a fraction of its weights
  is pruned and fine-tuned with the masks held (``prune``), then its weights are quantized per
  channel to 8 bits (``quant``, post-training) and to a few bits (quantization-aware training with
  the pruned weights held at zero). :func:`pipeline` trains once and caches the weights; every
  stage is measured on its shipped file (:mod:`labkit.ship`) read back.
* **The other methods** (:mod:`labkit.course.nb08_methods`): the single methods of notebooks
  02-06, read from their cached sweeps, in the same shipped-file bytes.
* **The challenge** (:func:`check`): the size of a submitted file on disk and the accuracy of
  the model loaded back from it on MNIST-1D's validation split, and the points
  :func:`challenge_score` gives them (:data:`CHALLENGE`). Grading evaluates the same file on
  fresh signals that exist only in the grader's process (:func:`hidden_split`).

Example:
    >>> from labkit.course import nb08_capstone
    >>> nb08_capstone.STAGES
    ('fp32', 'distilled', 'pruned', 'int8', 'lowbit')
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from labkit import data, distill, measure, models, prune, quant, ship, train, utils
from labkit.course import Step, nb02_distillation
from labkit.utils import check_choice, check_fraction, check_int, check_number

__all__ = [
    "DATASET",
    "TEACHER",
    "STAGES",
    "CHALLENGE",
    "HIDDEN_SAMPLES",
    "TRANSFER",
    "VERSION",
    "PipelineConfig",
    "Pipeline",
    "train_stages",
    "pipeline",
    "stage_records",
    "int8_kernels",
    "latency",
    "challenge_score",
    "check",
    "hidden_split",
    "prepare",
    "steps",
]

DATASET = "mnist1d"
TEACHER = nb02_distillation.TEACHER
"""The model the pipeline compresses and the challenge hands out: the zoo's CNN1d on MNIST-1D."""

STAGES = ("fp32", "distilled", "pruned", "int8", "lowbit")
"""The pipeline's stages in order; each is a model measured (and shipped) on its own."""

CHALLENGE = MappingProxyType({"budget_bytes": 8_000, "a_min": 0.90, "a_ref": 0.95, "points": 4})
"""The graded challenge, scored continuously (:func:`challenge_score`): a shipped file of at most
``budget_bytes`` earns ``points * clip((acc - a_min) / (a_ref - a_min), 0, 1)`` for the accuracy
``acc`` of the model read back from it on a hidden split (:func:`hidden_split`); a larger file
earns 0. The teacher as it is earns 0 (its file is six times the budget); so does a model at or
below ``a_min``."""

HIDDEN_SAMPLES = 10_000
"""Signals in the hidden split: the standard error of an accuracy near 0.95 on it is
``sqrt(0.95 * 0.05 / 10_000)``, about 0.0022 (0.18 of the challenge's 4 points)."""

TRANSFER = nb02_distillation.TRANSFER
"""Notebook 02's transfer set, which the distilled student learns from."""

VERSION = 1
"""Bump to invalidate what this module caches (pipeline weights, single-method records)."""


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class PipelineConfig:
    """The knobs of the pipeline.

    ``channels``: the student CNN1d; distillation runs ``distill_epochs`` over train + transfer set
    at ``temperature``/``alpha``; ``amount`` of the weights are pruned (one global threshold) and
    fine-tuned ``prune_epochs`` with distillation; the low-bit stage is ``bits`` per weight, per
    channel, fine-tuned ``qat_epochs`` at ``qat_lr``.
    Example: ``PipelineConfig(channels=(8, 8, 8), amount=0.7)``
    """

    channels: tuple[int, ...] = (16, 16, 16)
    distill_epochs: int = 6
    temperature: float = 4.0
    alpha: float = 0.9
    amount: float = 0.5
    prune_epochs: int = 2
    bits: int = 4
    qat_epochs: int = 1
    lr: float = 1e-2
    qat_lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        channels = tuple(self.channels) if isinstance(self.channels, (tuple, list)) else ()
        if not channels or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels
        ):
            raise ValueError(f"channels must be a tuple of positive ints; got {self.channels!r}")
        object.__setattr__(self, "channels", channels)
        for name in ("distill_epochs", "prune_epochs", "qat_epochs", "batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("bits", self.bits, minimum=2, maximum=7)
        check_int("seed", self.seed, minimum=0)
        check_fraction("amount", self.amount)
        check_fraction("alpha", self.alpha, inclusive_high=True)
        for name in ("temperature", "lr", "qat_lr"):
            check_number(name, getattr(self, name), minimum=0, min_open=True)


@dataclass
class Pipeline:
    """The stage models, the CPU seconds each trained stage took, and the config.

    The stage models are in ``STAGES`` order, in eval mode; the CPU seconds are those each trained
    stage took when it was trained (measured once, cached).
    Example: ``pipe.stages["int8"]``
    """

    stages: dict[str, nn.Module]
    cpu_seconds: dict[str, float]
    config: PipelineConfig


def _qconfig(bits: int) -> quant.QuantConfig:
    """Weight-only, per-channel, symmetric: zero stays exactly zero, so pruned weights stay out."""
    return quant.QuantConfig(bits=bits, act_bits=None, granularity="per_channel", symmetric=True)


def _student(teacher: nn.Module, config: PipelineConfig) -> nn.Module:
    with utils.seeded(config.seed):  # seeded init without touching the global RNG
        return models.CNN1d(dataclasses.replace(teacher.config, channels=config.channels))


def train_stages(
    teacher: nn.Module,
    ds: Any,
    transfer: Tensor,
    config: PipelineConfig | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, dict], dict[str, float]]:
    """Train the pipeline's three trained stages (nothing cached).

    The stages: the distilled student, the pruned + fine-tuned student (masks folded) and the
    ``bits``-bit QAT model. Returns their state dicts and the CPU seconds each took
    (``time.process_time``; distillation includes the teacher's logits on the transfer set). ``ds``
    is ArrayData; one torch thread.
    Example: ``states, seconds = train_stages(teacher, data.load("mnist1d"), X_transfer)``
    """
    config = PipelineConfig() if config is None else config
    kd = dict(
        transfer=transfer,
        temperature=config.temperature,
        alpha=config.alpha,
        batch_size=config.batch_size,
        seed=config.seed,
        device="cpu",
        progress=progress,
    )
    seconds: dict[str, float] = {}
    with utils.num_threads(1):
        start = time.process_time()
        X = torch.cat([ds.X_train, transfer])  # (N + M, *input_shape)
        logits = train.predict_logits(teacher, X, device="cpu")  # (N + M, classes), once
        student = _student(teacher, config)
        distill.distill(student, logits, ds, num_epochs=config.distill_epochs, lr=config.lr, **kd)
        seconds["distilled"] = time.process_time() - start

        start = time.process_time()
        pruned = prune.magnitude(student.eval(), config.amount, scope="global")
        distill.distill(pruned, logits, ds, num_epochs=config.prune_epochs, lr=config.lr, **kd)
        prune.remove_(pruned)
        seconds["pruned"] = time.process_time() - start

        start = time.process_time()
        low = quant.quantize(pruned.eval(), _qconfig(config.bits))
        with quant.hold_zeros(low):
            distill.distill(low, logits, ds, num_epochs=config.qat_epochs, lr=config.qat_lr, **kd)
        seconds["lowbit"] = time.process_time() - start
    states = {
        "distilled": student.state_dict(),
        "pruned": pruned.state_dict(),
        "lowbit": low.state_dict(),
    }
    return states, seconds


def _inputs() -> tuple[nn.Module, Any]:
    return models.pretrained(*TEACHER), data.load(DATASET)


def _transfer() -> Tensor:
    return distill.transfer_inputs(DATASET, **TRANSFER)


def _read_cache(path: Path) -> tuple[dict | None, dict | None]:
    """(states, sidecar) from a verified cache file, else (None, None) (a warning if unusable)."""
    if not path.exists():
        return None, None
    try:
        return utils.load_verified(path)
    except Exception as err:  # noqa: BLE001 - any unreadable cache means retrain
        warnings.warn(
            f"labkit: cached pipeline {path.name} is unusable ({err}); retraining", stacklevel=3
        )
        return None, None


def pipeline(config: PipelineConfig | None = None, progress: bool | None = None) -> Pipeline:
    """The five stage models of :data:`STAGES`.

    The teacher, and its distilled, pruned, 8-bit and low-bit successors. The trained stages come
    from the disk cache (``cache_dir("capstone")``, keyed by the config, the teacher's weights and
    this module's version; verified by sha256) or are trained once by :func:`train_stages`; the
    8-bit stage is post-training quantization.
    Example: ``pipe = pipeline(); pipe.stages["lowbit"]``
    """
    config = PipelineConfig() if config is None else config
    if not isinstance(config, PipelineConfig):
        raise ValueError(f"config must be a PipelineConfig; got {type(config).__name__}")
    teacher, ds = _inputs()
    key = utils.stable_hash(
        {
            "config": config,
            "teacher": models.cache_key(*TEACHER),
            "transfer": dict(TRANSFER),
            "v": VERSION,
            "torch": torch.__version__,
        }
    )
    path = utils.cache_dir("capstone") / f"pipeline-{key}.pt"
    states, info = _read_cache(path)
    if states is None:
        states, seconds = train_stages(teacher, ds, _transfer(), config, progress)
        info = utils.save_verified(states, path, {"key": key, "cpu_seconds": seconds})
    student, pruned = _student(teacher, config), _student(teacher, config)
    student.load_state_dict(states["distilled"])
    pruned.load_state_dict(states["pruned"])
    low = quant.quantize(pruned.eval(), _qconfig(config.bits))
    low.load_state_dict(states["lowbit"])
    stages = {
        "fp32": teacher,
        "distilled": student.eval(),
        "pruned": pruned,
        "int8": quant.quantize(pruned, _qconfig(8)),
        "lowbit": low.eval(),
    }
    return Pipeline(stages, dict(info["cpu_seconds"]), config)


def _arch(model: nn.Module) -> str:
    """``"cnn1d 16-16-16"``: the zoo name and the widths, enough to rebuild the shape for timing."""
    name, config = ship.identify(model)
    widths = config.channels if name != "mlp" else config.hidden
    return f"{name} {'-'.join(map(str, widths))}"


def _build_arch(arch: str) -> nn.Module:
    """A fresh, BatchNorm-folded model of the shape :func:`_arch` names (random weights)."""
    name, widths = arch.split(" ")
    field = "hidden" if name == "mlp" else "channels"
    shape = {field: tuple(int(w) for w in widths.split("-"))}
    return ship.skeleton(name, models.config_for(name, DATASET, **shape))


def stage_records(pipe: Pipeline, ds: Any, stages: Sequence[str] = STAGES) -> list[dict]:
    """One record per stage, all measured on the SHIPPED model (the file read back).

    ``acc`` on ``ds``'s test split, ``bytes`` (the file's length), ``macs`` per sample (dense
    kernels: zeros are multiplied too), ``nonzero`` weights and biases, ``params``, ``arch``.
    Example: ``sweep.to_table(stage_records(pipe, data.load("mnist1d")))``
    """
    stages = [check_choice("stage", s, STAGES) for s in stages]
    rows = []
    for stage in stages:
        payload = ship.to_bytes(pipe.stages[stage])
        shipped = ship.from_bytes(payload)
        rows.append(
            {
                "stage": stage,
                "acc": train.evaluate(shipped, ds, device="cpu")["acc"],
                "bytes": len(payload),
                "macs": measure.macs(shipped, ds.X_test[:1]),
                "nonzero": measure.count_nonzero(shipped),
                "params": measure.count_params(shipped),
                "arch": _arch(shipped),
            }
        )
    return rows


# --------------------------------------------------------------------------- latency


def int8_kernels(pipe: Pipeline, ds: Any, num_samples: int = 512) -> nn.Module:
    """The pruned stage on real int8 kernels: what the 8-bit stage runs as, for speed.

    ``quant.int8``, static: int8 weights per channel AND int8 activations calibrated on
    ``num_samples`` training inputs.
    Example: ``kernels = int8_kernels(pipe, data.load("mnist1d"))``
    """
    from labkit.quant import int8 as quant_int8

    shipped = ship.from_bytes(ship.to_bytes(pipe.stages["pruned"]))
    X = ds.X_train[:num_samples]  # (num_samples, *input_shape)
    return quant_int8.to_int8(shipped, X[:8], mode="static", calib_data=X)


def latency(
    pipe: Pipeline,
    records: Sequence[Mapping[str, Any]],
    x: Tensor,
    int8: nn.Module,
    *,
    threads: int | None = None,
    repeats: int = 30,
    min_time_s: float | None = None,
) -> dict[str, dict]:
    """Latency of every stage as deployed and of every architecture in ``records``, on ``x``.

    Measured on the batch ``x``, in ONE interleaved ``measure.compare_latency`` run against the best
    fp32 teacher (``measure.best_fp32_baseline`` picks its layout). Stages run the shipped file read
    back (float kernels; weight values do not change their speed), except ``int8``: the real int8
    kernels of :func:`int8_kernels`. Keys ``"stage <name>"`` and ``"arch <arch>"``; each value is
    ``compare_latency``'s dict (``median_ms``, ``speedup`` vs the teacher, ...).
    Example: ``latency(pipe, stage_records(pipe, ds), ds.X_test[:256], int8_kernels(pipe, ds))``
    """
    from labkit.quant import int8 as quant_int8

    variants = {f"stage {s}": ship.from_bytes(ship.to_bytes(m)) for s, m in pipe.stages.items()}
    variants["stage int8"] = int8
    for arch in sorted({r["arch"] for r in records}):
        variants[f"arch {arch}"] = _build_arch(arch)
    layout, _ = measure.best_fp32_baseline(variants["stage fp32"], x, threads=threads)
    with quant_int8.quiet():
        return measure.compare_latency(
            variants,
            x,
            baseline="stage fp32",
            threads=threads,
            repeats=repeats,
            channels_last={"stage fp32": layout == "channels_last"},
            min_time_s=min_time_s,
        )


# --------------------------------------------------------------------------- the challenge


def challenge_score(
    acc: float,
    size: int,
    *,
    budget_bytes: int = CHALLENGE["budget_bytes"],
    a_min: float = CHALLENGE["a_min"],
    a_ref: float = CHALLENGE["a_ref"],
    points: float = CHALLENGE["points"],
) -> float:
    """The challenge's points for a file of ``size`` bytes whose model reaches accuracy ``acc``.

    ``points * clip((acc - a_min) / (a_ref - a_min), 0, 1)`` when ``size <= budget_bytes``,
    else 0: nothing at or below ``a_min``, all of it from ``a_ref`` up, linear in between.
    Example: ``challenge_score(0.93, 7_500)  # 4 * (0.93 - 0.90) / 0.05 = 2.4``
    """
    acc = check_number("acc", acc, minimum=0.0, maximum=1.0)
    size = check_int("size", size, minimum=0)
    budget_bytes = check_int("budget_bytes", budget_bytes, minimum=1)
    a_min = check_number("a_min", a_min, minimum=0.0, maximum=1.0)
    a_ref = check_number("a_ref", a_ref, minimum=0.0, maximum=1.0)
    points = check_number("points", points, minimum=0.0, min_open=True)
    if a_ref <= a_min:
        raise ValueError(f"a_ref must be greater than a_min ({a_min}); got {a_ref}")
    if size > budget_bytes:
        return 0.0
    return points * min(max((acc - a_min) / (a_ref - a_min), 0.0), 1.0)


def hidden_split(seed: int, num_samples: int = HIDDEN_SAMPLES) -> tuple[Tensor, Tensor]:
    """Fresh MNIST-1D signals ``(X (N, 1, 40), y (N,))``, generated here and never cached.

    The same generator with the same settings as the course's data (``data.load("mnist1d")``),
    so the same distribution, under another ``seed``: the grader draws them in its own process,
    so a submission's process can neither read them (they are written to no file) nor train on
    them. ``seed`` must not be one of the course's own (0: train/val/test, 1: the transfer set).
    Example: ``X, y = hidden_split(seed=12345, num_samples=1_000)``
    """
    from labkit.data.mnist1d import generate  # the generator, without its disk cache

    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    if seed in (0, TRANSFER["seed"]):
        raise ValueError(
            f"seed must differ from the course's data seeds 0 and {TRANSFER['seed']}; got {seed}"
        )
    num_samples = check_int("num_samples", num_samples, minimum=100)
    if num_samples % 10:
        raise ValueError(f"num_samples must be a multiple of 10; got {num_samples}")
    X, y = generate(num_samples, seed)  # (N, 40) float32, (N,) int64
    return torch.from_numpy(X)[:, None, :], torch.from_numpy(y)


def check(
    path: str | Path,
    budget_bytes: int = CHALLENGE["budget_bytes"],
    *,
    heldout: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Check a submitted file: its size on disk, the accuracy of the model loaded from it, points.

    The model is loaded back from the file and its accuracy measured on ``heldout`` ``(X, y)``
    (default: MNIST-1D's validation split, never used for training); ``points`` is
    :func:`challenge_score` of that accuracy and size: on the validation split, an estimate of
    the grade, which grading computes on a hidden split (:func:`hidden_split`) instead.
    Returns ``bytes, acc, budget_bytes, fits, points``.
    Example: ``check(ship.save(compressed, "submission.lkc"))["points"]``
    """
    budget_bytes = check_int("budget_bytes", budget_bytes, minimum=1)
    size = measure.file_bytes(path)
    model = ship.load(path)
    X, y = data.load(DATASET).split("val") if heldout is None else heldout
    acc = train.evaluate(model, (X, y), device="cpu")["acc"]
    return {
        "bytes": size,
        "acc": acc,
        "budget_bytes": budget_bytes,
        "fits": size <= budget_bytes,
        "points": challenge_score(acc, size, budget_bytes=budget_bytes),
    }


# --------------------------------------------------------------------------- labkit prepare


def prepare(progress: bool | None = None) -> dict[str, Any]:
    """Train (or verify cached) the pipeline at its default config; part of ``labkit prepare``.

    Also computes the single-method records.
    Example: ``prepare()["cpu_seconds"]``
    """
    from labkit.course.nb08_methods import single_methods  # it reads this module's helpers

    pipe = pipeline(progress=progress)
    return {"cpu_seconds": pipe.cpu_seconds, "single_methods": len(single_methods(progress))}


def steps() -> list[Step]:
    """The compression pipeline, after the models and the transfer set it reads."""
    return [
        Step(
            "capstone",
            "labkit.course.nb08_capstone:prepare",
            needs=("model:cnn1d/mnist1d", "model:mlp/mnist1d", "distill:transfer"),
            cost=15.0,
        )
    ]
