"""Notebook 02 (knowledge distillation): the cached experiments ``labkit prepare`` builds.

Three run functions over the techniques of :mod:`labkit.distill`, each cached on disk through
``labkit.sweep.run`` by a ``*_sweep`` wrapper:

- ``mnist1d_run`` (sweep ``02-distill-mnist1d``): an MLP student of the 1-D CNN teacher, trained
  by one of ``METHODS`` (scratch, same-data KD, a transfer set with hard or soft teacher labels).
- ``small_data_run`` (sweep ``02-distill-small``): hard vs soft teacher targets on a few inputs.
- ``gpt_run`` (sweep ``02-distill-gpt``): a half-depth GPT student by one of ``GPT_METHODS``.

``COURSE`` holds the grids the notebook shows, ``course_points`` turns them into sweep points,
``prepare`` computes them part by part and ``steps`` lists them for ``labkit prepare``.

Example:
    >>> from labkit.course import nb02_distillation
    >>> sorted(nb02_distillation.course_points())
    ['gpt', 'main', 'small', 'temperature', 'width']
    >>> nb02_distillation.course_points()["main"][0]
    {'method': 'scratch', 'seed': 0}
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from labkit import data, distill, measure, models, sweep, train, utils
from labkit.course import Step
from labkit.utils import check_choice, check_int

__all__ = [
    "TEACHER",
    "METHODS",
    "GPT_METHODS",
    "COURSE",
    "PARTS",
    "mnist1d_run",
    "small_data_run",
    "gpt_run",
    "mnist1d_sweep",
    "small_sweep",
    "gpt_sweep",
    "course_points",
    "prepare",
    "steps",
]

TEACHER_STEP = "model:cnn1d/mnist1d"

METHODS = ("scratch", "kd_same", "transfer_hard", "transfer_soft")
"""The four ways ``mnist1d_run`` trains the MLP student.

The student alone; soft KD on the same 7,000 inputs; a transfer set labelled with the teacher's
hard labels; the same transfer set with its soft labels."""

TEACHER = ("cnn1d", "mnist1d")
"""The pretrained teacher of the mnist1d experiments (the zoo's 1-D CNN)."""

TRANSFER = MappingProxyType({"num_samples": 20_000, "seed": 1})
"""The transfer set: ``distill.transfer_inputs("mnist1d", **TRANSFER)``, generated once by
``labkit prepare`` and shared with notebook 08."""


@functools.lru_cache(maxsize=4)
def _mnist1d_setup(transfer_samples: int) -> tuple[Any, Tensor, Tensor]:
    """(data, inputs = train + transfer, teacher logits for them), computed once per process."""
    mnist = data.load("mnist1d")
    X = torch.cat(
        [mnist.X_train, distill.transfer_inputs("mnist1d", transfer_samples, TRANSFER["seed"])]
    )
    with utils.num_threads(1):
        logits = train.predict_logits(models.pretrained(*TEACHER), X, device="cpu")  # (N + M, 10)
    return mnist, X, logits


def mnist1d_run(
    method: str,
    seed: int = 0,
    width: int = 256,
    temperature: float = 2.0,
    alpha: float = 0.9,
    steps_epochs: int = 60,
    transfer_samples: int = TRANSFER["num_samples"],
    lr: float = 1e-2,
) -> dict:
    """One point of sweep ``02-distill-mnist1d``: an MLP student trained by ``method``.

    The student has one hidden layer of ``width``; ``method`` is one of ``METHODS``. Returns its
    test accuracy, parameters, MACs per sample and fp32 bytes. Every method takes the same number
    of optimizer steps: ``steps_epochs`` epochs of the 7,000 training inputs at batch 256
    (transfer-set runs go through their larger set fewer times). Deterministic given ``seed``
    (weights and batch order).
    Example: ``mnist1d_run("transfer_soft", seed=0)["acc"]``
    """
    check_choice("method", method, METHODS)
    check_int("width", width, minimum=1)
    check_int("steps_epochs", steps_epochs, minimum=1)
    mnist, X_all, logits = _mnist1d_setup(
        check_int("transfer_samples", transfer_samples, minimum=100)
    )
    n = len(mnist.X_train)
    with utils.seeded(check_int("seed", seed, minimum=0)):
        student = models.build("mlp", in_features=40, hidden=(width,))
    batch_size = 256
    steps = steps_epochs * math.ceil(n / batch_size)
    common = dict(lr=lr, batch_size=batch_size, seed=seed, device="cpu", progress=False)
    with utils.num_threads(1):
        if method == "scratch":
            train.fit(student, mnist, val=False, num_epochs=steps_epochs, optimizer="adamw",
                      schedule="cosine", **common)  # fmt: skip
        elif method == "kd_same":
            distill.distill(student, logits[:n], mnist, num_epochs=steps_epochs,
                            temperature=temperature, alpha=alpha, **common)  # fmt: skip
        else:
            epochs = max(1, round(steps / math.ceil(len(X_all) / batch_size)))
            distill.distill(student, logits, mnist, transfer=X_all[n:], num_epochs=epochs,
                            targets="hard" if method == "transfer_hard" else "soft",
                            temperature=temperature, alpha=alpha, **common)  # fmt: skip
        acc = train.evaluate(student, mnist, device="cpu")["acc"]
    return {
        "acc": acc,
        "params": measure.count_params(student),
        "macs": measure.macs(student, mnist.X_test[:1]),
        "bytes": measure.model_bytes(student),
    }


@functools.lru_cache(maxsize=1)
def _mnist1d_train_logits() -> tuple[Any, Tensor]:
    """(data, teacher logits for its 7,000 training inputs), computed once per process."""
    mnist = data.load("mnist1d")
    with utils.num_threads(1):
        teacher = models.pretrained(*TEACHER)
        logits = train.predict_logits(teacher, mnist.X_train, device="cpu")  # (N, 10)
    return mnist, logits


def small_data_run(
    targets: str,
    num_inputs: int,
    seed: int = 0,
    width: int = 256,
    temperature: float = 8.0,
    num_steps: int = 300,
    lr: float = 1e-2,
) -> dict:
    """One point of sweep ``02-distill-small``: an MLP student taught on few inputs.

    The student sees only the first ``num_inputs`` training signals and is taught by the teacher
    alone (``alpha = 1``): its argmax labels (``targets='hard'``) or its distribution softened at
    ``temperature`` (``'soft'``). Returns the test accuracy and the parameter count. The setting
    of Hinton, Vinyals & Dean (2015, section 6): with few inputs the soft targets carry much more
    information per input than a label. Every run takes about ``num_steps`` optimizer steps at batch
    ``min(256, num_inputs)``, whatever ``num_inputs`` is. Deterministic given ``seed``.
    Example: ``small_data_run("soft", 350)["acc"]``
    """
    check_choice("targets", targets, distill.TARGETS)
    check_int("width", width, minimum=1)
    check_int("num_steps", num_steps, minimum=1)
    mnist, logits = _mnist1d_train_logits()
    n = check_int("num_inputs", num_inputs, minimum=1, maximum=len(mnist.X_train))
    with utils.seeded(check_int("seed", seed, minimum=0)):
        student = models.build("mlp", in_features=40, hidden=(width,))
    batch_size = min(256, n)
    epochs = max(1, round(num_steps / math.ceil(n / batch_size)))
    subset = (mnist.X_train[:n], mnist.y_train[:n])  # the true labels are not used (alpha = 1)
    with utils.num_threads(1):
        distill.distill(student, logits[:n], subset, targets=targets, temperature=temperature,
                        alpha=1.0, num_epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        device="cpu", progress=False)  # fmt: skip
        acc = train.evaluate(student, mnist, device="cpu")["acc"]
    return {"acc": acc, "params": measure.count_params(student)}


GPT_METHODS = ("scratch", "init", "init_kd", "init_kd_attn")
"""The four ways ``gpt_run`` trains a GPT student with half the teacher's blocks.

Random init; the teacher blocks ``select_layers`` picks (every other one) then plain training;
that init plus soft targets; plus attention maps, each student block against the teacher block it
was initialised from."""


def gpt_run(method: str, seed: int = 0, num_steps: int = 200, temperature: float = 1.0) -> dict:
    """One point of sweep ``02-distill-gpt``: a half-depth GPT student trained by ``method``.

    The teacher is the pretrained ``gpt``/``pydoc``; ``method`` is one of ``GPT_METHODS``,
    trained for ``num_steps`` steps. Returns the student's validation loss (nats/char, on the whole
    validation split), perplexity and parameter count. Deterministic given ``seed``.
    Example: ``gpt_run("init_kd", num_steps=200)["ppl"]``
    """
    check_choice("method", method, GPT_METHODS)
    check_int("seed", seed, minimum=0)
    text = data.load("pydoc")
    with utils.num_threads(1):
        teacher = models.pretrained("gpt", "pydoc")
        layers = distill.select_layers(teacher.config.n_layer, max(1, teacher.config.n_layer // 2))
        if method == "scratch":
            with utils.seeded(seed):
                student = models.GPT(dataclasses.replace(teacher.config, n_layer=len(layers)))
        else:
            student = distill.init_from_teacher(teacher, layers)
        distill.distill_lm(
            student,
            teacher,
            text,
            num_steps=num_steps,
            temperature=temperature,
            alpha=0.5 if method.startswith("init_kd") else 0.0,
            attention_weight=1.0 if method == "init_kd_attn" else 0.0,
            layer_map=layers,  # each block against the teacher block it was initialised from
            seed=seed,
            eval_batches=1,  # the in-training curve is not returned: keep it cheap
            device="cpu",
            progress=False,
        )
        result = train.evaluate_lm(student, text, device="cpu")
    return {**result, "params": measure.count_params(student)}


# --------------------------------------------------------------------------- cached sweeps

COURSE = {
    "seeds": 3,
    "temperatures": (1.0, 2.0, 8.0),
    "alphas": (0.9,),
    "widths": (32, 64, 128, 256),
    "gpt_steps": 30,
    "small_inputs": (350, 1400, 7000),
    "small_temperature": 8.0,
}
"""The grids notebook 02 shows; ``prepare`` computes exactly these so the notebook only reads.

12 + 2 + 6 MLP students (the temperature and width sweeps reuse the main sweep's runs), four
30-step GPT students and 18 short small-data students (5 %, 20 % and all of the training inputs,
hard vs soft)."""


def _spelled_out(point: dict) -> dict:
    """``point`` with every ``mnist1d_run`` default filled in (how the sweep caches it)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(mnist1d_run).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **point}


def mnist1d_sweep(points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    """``sweep.run(mnist1d_run, points)``, cached on disk as sweep ``02-distill-mnist1d``.

    The cache is invalidated when the teacher's cache key changes.
    Example: ``mnist1d_sweep(sweep.grid(method=list(METHODS), seed=[0, 1, 2]))``
    """
    version = models.cache_key(*TEACHER)
    # Every point spelled out in full, so one run shared by two sweeps (say the width sweep's
    # 256-wide student and the main sweep's seed 0) is trained once and cached once.
    points = [_spelled_out(point) for point in points]
    return sweep.run(
        mnist1d_run, points, name="02-distill-mnist1d", version=version, progress=progress
    )


def small_sweep(points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    """``sweep.run(small_data_run, points)``, cached on disk as sweep ``02-distill-small``.

    The cache is invalidated when the teacher's cache key changes.
    Example: ``small_sweep(sweep.grid(targets=["hard", "soft"], num_inputs=[350]))``
    """
    version = models.cache_key(*TEACHER)
    return sweep.run(
        small_data_run, points, name="02-distill-small", version=version, progress=progress
    )


def gpt_sweep(points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    """``sweep.run(gpt_run, points)``, cached on disk as sweep ``02-distill-gpt``.

    Example: ``gpt_sweep(sweep.grid(method=list(GPT_METHODS), num_steps=[30]))``
    """
    version = models.cache_key("gpt", "pydoc")
    return sweep.run(gpt_run, points, name="02-distill-gpt", version=version, progress=progress)


def course_points(
    seeds: int = COURSE["seeds"],
    temperatures: Sequence[float] = COURSE["temperatures"],
    alphas: Sequence[float] = COURSE["alphas"],
    widths: Sequence[int] = COURSE["widths"],
    gpt_steps: int = COURSE["gpt_steps"],
    small_inputs: Sequence[int] = COURSE["small_inputs"],
    small_temperature: float = COURSE["small_temperature"],
) -> dict[str, list[dict]]:
    """The sweep points of notebook 02: ``main``, ``temperature``, ``width``, ``gpt``, ``small``.

    ``main``: every method x seed; ``temperature``: soft transfer-set KD over temperature x
    alpha; ``width``: scratch vs distilled per width; ``gpt``: every GPT method; ``small``: hard
    vs soft teacher targets on ``small_inputs`` training signals x seed.
    Example: ``course_points()["main"][0]  # {'method': 'scratch', 'seed': 0}``
    """
    seeds = list(range(check_int("seeds", seeds, minimum=1)))
    return {
        "main": sweep.grid(method=list(METHODS), seed=seeds),
        "temperature": sweep.grid(
            method=["transfer_soft"],
            temperature=[float(t) for t in temperatures],
            alpha=[float(a) for a in alphas],
        ),  # fmt: skip
        "width": sweep.grid(method=["scratch", "transfer_soft"], width=list(widths)),
        "gpt": sweep.grid(
            method=list(GPT_METHODS), num_steps=[check_int("gpt_steps", gpt_steps, minimum=1)]
        ),
        "small": sweep.grid(
            targets=list(distill.TARGETS),
            num_inputs=[check_int("small_inputs", n, minimum=1) for n in small_inputs],
            temperature=[distill.check_temperature(small_temperature)],
            seed=seeds,
        ),
    }


PARTS = ("main", "temperature", "width", "gpt", "small")
"""The sweeps of notebook 02, which ``labkit prepare`` may compute in separate worker processes."""


def _part_points(points: dict[str, list[dict]], key: str) -> list[dict]:
    """The points part ``key`` computes: its own, less those the ``main`` part also holds.

    Those are the seed-0 students at the main setting, so two worker processes never train the
    same run.
    """
    if key in ("main", "gpt", "small"):
        return points[key]
    shared = [_spelled_out(p) for p in points["main"]]
    return [p for p in points[key] if _spelled_out(p) not in shared]


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 02 shows, at its default parameters.

    ``parts``: some of ``PARTS`` (default: all). ``temperature`` and ``width`` leave the points
    they share with ``main`` to it, so each returns the records of its other points; run
    ``main`` too for the complete sweeps (``labkit prepare`` runs every part). Generates the
    transfer set on first use. Part of ``labkit prepare``.
    Example: ``records = prepare(["main"])["main"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    out = {}
    sweep_fns = {"gpt": gpt_sweep, "small": small_sweep}
    for key in parts:
        out[key] = sweep_fns.get(key, mnist1d_sweep)(_part_points(points, key), progress)
    return out


def steps() -> list[Step]:
    """The transfer set, then the MNIST-1D student sweeps and the half-depth GPT students."""
    transfer = Step(
        "distill:transfer",
        "labkit.distill:transfer_inputs",
        {"dataset": "mnist1d", **TRANSFER},
        cost=8.0,
    )
    cost = {"main": 45.0, "temperature": 9.0, "width": 19.0, "gpt": 20.0, "small": 6.0}
    needs = {"gpt": ("model:gpt/pydoc",), "small": (TEACHER_STEP,)}
    parts = [
        Step(
            f"distill:{part}",
            "labkit.course.nb02_distillation:prepare",
            {"parts": [part]},
            needs=needs.get(part, (TEACHER_STEP, "distill:transfer")),
            cost=cost[part],
        )
        for part in cost
    ]
    return [transfer, *parts]
