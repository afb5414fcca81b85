"""Notebook 02 (distillation): its exercise checks, and the claims and paragraphs it prints.

The checks compare a student's exercise against PyTorch's own functions; the claims and
paragraphs are computed from the cached sweeps of :mod:`labkit.course.nb02_distillation`, so
every sentence the notebook prints rests on this run's numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import sweep
from labkit.distill import kd_loss as _kd_loss
from labkit.utils import check_int

__all__ = [
    "check_kd_loss",
    "check_kd_train_step",
    "forward_blocks",
    "check_init_from_teacher",
    "seed_diffs",
    "spread",
    "main_claims",
    "small_data_markdown",
]


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
        >>> from labkit import distill
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


def check_kd_train_step(
    kd_train_step: Callable[..., float],
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    temperature: float,
    alpha: float,
    num_steps: int = 3,
) -> None:
    """Check ``kd_train_step(student, teacher, optimizer, x, y, T, alpha)`` against a twin.

    A deep copy of ``student`` and its fresh ``optimizer`` takes the same ``num_steps`` steps on
    ``labkit.distill.kd_loss`` (the teacher's logits under ``torch.no_grad``). After every step
    the returned loss (a Python float) must be the twin's loss before its step, and the student's
    parameters the twin's; the teacher must not change. Raises AssertionError naming what differs.

    Example:
        >>> from labkit import distill
        >>> student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> def step(student, teacher, optimizer, x, y, T, alpha):
        ...     with torch.no_grad():
        ...         t = teacher(x)
        ...     loss = distill.kd_loss(student(x), t, y, temperature=T, alpha=alpha)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        ...     return loss.item()
        >>> opt = torch.optim.SGD(student.parameters(), lr=0.1)
        >>> check_kd_train_step(step, student, teacher, opt, torch.randn(8, 4),
        ...                     torch.randint(0, 3, (8,)), 2.0, 0.5)
    """
    twin, twin_optimizer = copy.deepcopy((student, optimizer))  # shares params with its optimizer
    frozen = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    for step in range(1, num_steps + 1):
        loss = kd_train_step(student, teacher, optimizer, x, y, temperature, alpha)
        _require(isinstance(loss, float), f"return the loss as a Python float, not {type(loss)}")
        for k, v in teacher.state_dict().items():
            _require(torch.equal(v, frozen[k]), f"step {step}: the teacher changed ({k})")
        with torch.no_grad():
            teacher_logits = teacher(x)
        reference = _kd_loss(twin(x), teacher_logits, y, temperature=temperature, alpha=alpha)
        twin_optimizer.zero_grad()
        reference.backward()
        twin_optimizer.step()
        _require(
            math.isclose(loss, reference.item(), rel_tol=1e-5, abs_tol=1e-6),
            f"step {step}: loss {loss:.6f}, the distillation loss is {reference.item():.6f}",
        )
        for (name, p), q in zip(student.named_parameters(), twin.parameters()):
            _require(
                torch.allclose(p, q, atol=1e-5),
                f"step {step}: student parameter {name} differs from the step on distill.kd_loss",
            )


def forward_blocks(model: nn.Module, layers: Sequence[int], idx: Tensor) -> Tensor:
    """A GPT's logits computed by hand through its blocks ``layers`` only, in that order.

    The token and position embeddings, then ``model.transformer.h[i]`` for each ``i`` in
    ``layers``, then ``ln_f`` and ``lm_head``: what a student initialised from those teacher
    blocks must compute. ``idx``: (B, T) token ids; returns (B, T, vocab) logits.

    Example:
        >>> from labkit import models
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
        >>> from labkit import distill, models
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
