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
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "check_kd_loss",
    "forward_blocks",
    "check_init_from_teacher",
    "seed_diffs",
    "spread",
    "main_claims",
    "small_data_markdown",
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


# --------------------------------------------------------------------------- the notebook's checks


def _require(condition: Any, message: str) -> None:
    """Raise AssertionError(message) unless ``condition`` (a graded check, even under -O)."""
    if not condition:
        raise AssertionError(message)


def check_kd_loss(kd_loss: Callable[..., Tensor], s: Tensor, t: Tensor, y: Tensor) -> None:
    """Check ``kd_loss(s, t, y, T, alpha)`` (exercise 2) against PyTorch's own functions.

    ``s``, ``t``: (B, C) student and teacher logits; ``y``: (B,) labels. The reference is
    ``alpha * T**2 * F.kl_div(..., reduction="batchmean") + (1 - alpha) * F.cross_entropy``, at
    four (T, alpha) settings; then the gradient of the soft term at T = 4 must be
    ``T * (p_s - p_t) / B``. Raises AssertionError naming what differs.

    Example:
        >>> s, t = torch.randn(4, 3), torch.randn(4, 3)
        >>> check_kd_loss(lambda *a: distill.kd_loss(*a[:3], temperature=a[3], alpha=a[4]),
        ...               s, t, torch.tensor([0, 1, 2, 0]))
    """
    for T, alpha in [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (8.0, 1.0)]:
        ours = kd_loss(s, t, y, T, alpha)
        _require(ours.dim() == 0, "return a scalar tensor")
        kl = F.kl_div(
            F.log_softmax(s / T, -1),
            F.log_softmax(t / T, -1),
            reduction="batchmean",
            log_target=True,
        )
        reference = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s, y)
        _require(torch.allclose(ours, reference, atol=1e-5), f"T={T}, alpha={alpha}")
    s_req = s.clone().requires_grad_()
    (grad,) = torch.autograd.grad(kd_loss(s_req, t, y, 4.0, 1.0), s_req)  # (B, C)
    expected = 4.0 * (torch.softmax(s / 4.0, -1) - torch.softmax(t / 4.0, -1)) / len(s)
    _require(torch.allclose(grad, expected, atol=1e-6), "gradient must be T * (p_s - p_t) / B")


def forward_blocks(model: nn.Module, layers: Sequence[int], idx: Tensor) -> Tensor:
    """A GPT's logits computed by hand through its blocks ``layers`` only, in that order.

    The token and position embeddings, then ``model.transformer.h[i]`` for each ``i`` in
    ``layers``, then ``ln_f`` and ``lm_head``: what a student initialised from those teacher
    blocks must compute. ``idx``: (B, T) token ids; returns (B, T, vocab) logits.

    Example:
        >>> gpt = models.GPT(models.GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_head=1,
        ...                                   n_embd=8)).eval()
        >>> idx = torch.tensor([[0, 1, 2, 3]])
        >>> torch.allclose(forward_blocks(gpt, [0, 1], idx), gpt(idx), atol=1e-6)
        True
    """
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.shape[1]))  # (B, T, D)
    for i in layers:
        x = model.transformer.h[i](x)
    return model.lm_head(model.transformer.ln_f(x))  # (B, T, vocab)


def check_init_from_teacher(
    init_from_teacher: Callable[[nn.Module, list[int]], nn.Module],
    teacher: nn.Module,
    idx: Tensor,
    layers: Sequence[int] = (0, 2),
) -> None:
    """Check ``init_from_teacher(teacher, layers)`` (exercise 4) against the teacher by hand.

    The student must be a new model with ``len(layers)`` blocks whose logits on ``idx`` (B, T)
    are ``forward_blocks(teacher, layers, idx)``, and the teacher must not change. Raises
    AssertionError naming what differs.

    Example:
        >>> gpt = models.GPT(models.GPTConfig(vocab_size=5, block_size=4, n_layer=3, n_head=1,
        ...                                   n_embd=8)).eval()
        >>> check_init_from_teacher(distill.init_from_teacher, gpt, torch.tensor([[0, 1, 2, 3]]))
    """
    layers = list(layers)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    small = init_from_teacher(teacher, layers)
    _require(
        small is not teacher
        and small.config.n_layer == len(layers)
        and len(small.transformer.h) == len(layers),
        f"a new model with {len(layers)} blocks expected",
    )
    _require(
        torch.allclose(small(idx), forward_blocks(teacher, layers, idx), atol=1e-6),
        f"student != blocks {', '.join(map(str, layers))}",
    )
    for k, v in teacher.state_dict().items():
        _require(torch.equal(v, before[k]), f"the teacher changed: {k}")


# --------------------------------------------------------------------------- the notebook's figures


def seed_diffs(
    records: Sequence[Mapping[str, Any]],
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    key: str = "acc",
) -> list[float]:
    """``key`` of the runs matching ``a`` minus that of the runs matching ``b``, seed by seed.

    ``a`` and ``b`` select records (``sweep.select(records, **a)``); the two selections must hold
    the same seeds, each once. Runs of one seed start from the same weights, so their difference
    is the effect without the seed-to-seed spread. Returns one difference per seed, in seed order.

    Example:
        >>> runs = [{"method": m, "seed": s, "acc": acc}
        ...         for m, s, acc in [("x", 0, 0.5), ("x", 1, 0.75), ("y", 1, 0.5), ("y", 0, 0.25)]]
        >>> seed_diffs(runs, {"method": "x"}, {"method": "y"})
        [0.25, 0.25]
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a str; got {type(key).__name__}")
    by_seed = []
    for name, where in (("a", a), ("b", b)):
        if not isinstance(where, Mapping):
            raise TypeError(
                f"{name} must be a mapping of record fields; got {type(where).__name__}"
            )
        runs = sweep.select(records, **where)
        seeds = [r["seed"] for r in runs]
        if not runs or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name} must select one run per seed; got seeds {seeds}")
        by_seed.append({r["seed"]: r[key] for r in runs})
    if sorted(by_seed[0]) != sorted(by_seed[1]):
        raise ValueError(f"a and b must select the same seeds; got {sorted(by_seed[0])} and "
                         f"{sorted(by_seed[1])}")  # fmt: skip
    return [by_seed[0][seed] - by_seed[1][seed] for seed in sorted(by_seed[0])]


def spread(diffs: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation (over seeds), min and max of per-seed differences, in points.

    ``diffs`` are accuracy differences (fractions); the results are x 100. The standard deviation
    is the sample one (n - 1), NaN for a single difference.

    Example:
        >>> spread([0.25, 0.75])
        (50.0, 35.355..., 25.0, 75.0)
    """
    if len(diffs) == 0:
        raise ValueError("diffs must hold at least one difference; got none")
    d = 100 * torch.tensor(list(diffs), dtype=torch.float64)
    std = d.std().item() if len(d) > 1 else float("nan")
    return d.mean().item(), std, d.min().item(), d.max().item()


def main_claims(
    acc: Mapping[str, Mapping[str, float]],
    teacher_acc: float,
    labels_effect: Sequence[float],
    soft_effect: Sequence[float],
) -> dict[str, bool]:
    """The claims of section 3 that hold on any seed or machine, each sentence -> whether it holds.

    ``acc``: the summary row of each of ``METHODS`` (``acc``, ``gap_closed``); ``labels_effect``:
    ``transfer_hard`` minus ``scratch`` seed by seed; ``soft_effect``: ``transfer_soft`` minus
    ``transfer_hard`` (see ``seed_diffs``).

    Example:
        >>> acc = {"scratch": {"acc": 0.6}, "kd_same": {"acc": 0.62},
        ...        "transfer_hard": {"acc": 0.7, "gap_closed": 0.4}}
        >>> claims = main_claims(acc, 0.9, [0.1, 0.1], [0.01, -0.01])
        >>> len(claims), all(claims.values())
        (7, True)
    """
    if not labels_effect or not soft_effect:
        raise ValueError(
            "labels_effect and soft_effect must hold one difference per seed; got none"
        )
    kd_same_gain = acc["kd_same"]["acc"] - acc["scratch"]["acc"]
    return {
        "the CNN teacher beats the scratch MLP by more than 10 points":
            teacher_acc > acc["scratch"]["acc"] + 0.10,
        "the transfer set's hard teacher labels gain > 5 points over scratch on every seed":
            min(labels_effect) > 0.05,
        "those hard labels alone close more than a quarter of the gap":
            acc["transfer_hard"]["gap_closed"] > 0.25,
        "soft targets gain less than 2 points over them on average":
            sum(soft_effect) / len(soft_effect) < 0.02,
        "soft and hard differ by less than 3 points on every seed":
            max(abs(d) for d in soft_effect) < 0.03,
        "same-data KD gains less than half of what the transfer set's hard labels gain":
            kd_same_gain < 0.5 * min(labels_effect),
        "same-data KD moves the mean by less than 6 points": abs(kd_same_gain) < 0.06,
    }  # fmt: skip


def small_data_markdown(
    runs: Mapping[tuple[str, int], Sequence[float]],
    soft_gain: Mapping[int, Sequence[float]],
    seeds: int,
    temperature: float,
) -> str:
    """The paragraph of section 4 (soft vs hard teacher targets on few inputs), in Markdown.

    ``runs[targets, num_inputs]``: the test accuracy of each seed; ``soft_gain[num_inputs]``: the
    ``spread`` of soft minus hard, seed by seed (points); ``seeds``: how many seeds;
    ``temperature``: that of the soft targets. Compares the fewest inputs with the most, and
    adds how far soft targets on few inputs stay from hard labels on all of them when the most
    are at least four times the fewest.

    Example:
        >>> runs = {("soft", 10): [0.5], ("hard", 10): [0.25], ("soft", 40): [0.75],
        ...         ("hard", 40): [0.8]}
        >>> text = small_data_markdown(runs, {10: spread([0.25]), 40: spread([-0.05])}, 1, 4.0)
        >>> "do not help: they cost 5.0 points" in text
        True
    """
    check_int("seeds", seeds, minimum=1)
    if not soft_gain:
        raise ValueError("soft_gain must hold at least one number of inputs; got none")
    fewest, most = min(soft_gain), max(soft_gain)
    lines = [
        f"* {n:,} inputs: soft − hard **{g[0]:+.1f} ± {g[1]:.1f} points** "
        f"(range {g[2]:+.1f} to {g[3]:+.1f})"
        for n, g in soft_gain.items()
    ]
    verdict = "do not help: they cost" if soft_gain[most][0] < 0 else "help less: they add"
    soft_few, hard_all = runs["soft", fewest], runs["hard", most]
    return (
        f"Soft over hard teacher targets, seed by seed (mean ± std over {seeds} seeds):\n\n"
        + "\n".join(lines)
        + f"\n\nWith {fewest:,} inputs every soft-target student beats every hard-label one. "
        f"With {most:,}, soft targets at T = {temperature:g} {verdict} "
        f"{abs(soft_gain[most][0]):.1f} points on average."
        + (
            " Unlike the speech experiment, the soft targets do not make up for the missing "
            f"inputs: with {fewest:,} inputs the soft-target students reach "
            f"{sum(soft_few) / len(soft_few):.1%}, the hard-label "
            f"students that see all {most:,} reach "
            f"{sum(hard_all) / len(hard_all):.1%}."
            if most >= 4 * fewest
            else ""
        )
    )
