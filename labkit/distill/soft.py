"""Soft targets (Hinton et al., 2015): temperature-softened teacher outputs, the KD loss, and a
classifier trained on them, optionally on a transfer set of unlabelled inputs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import train
from labkit.data import as_xy
from labkit.utils import check_choice, check_fraction, check_int

__all__ = [
    "TARGETS",
    "check_temperature",
    "softened",
    "kd_loss",
    "gap_closed",
    "transfer_inputs",
    "distill",
]

TARGETS = ("soft", "hard")
"""What the student learns from the teacher: its softened distribution, or its argmax label."""


def check_temperature(value: Any) -> float:
    """``value`` as a float softmax temperature, or a one-line ValueError unless it is > 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a number > 0; got {value!r}")
    return float(value)


def _alpha(value: Any) -> float:
    return check_fraction("alpha", value, inclusive_high=True)


# --------------------------------------------------------------------------- soft targets


def softened(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The temperature-softened distribution ``softmax(logits / T)`` over the last dimension.

    ``T = 1`` is the ordinary softmax; larger ``T`` flattens it toward uniform and shows how the
    model ranks the wrong classes (the "dark knowledge"); the argmax never changes.
    Example: ``softened(torch.tensor([2.0, 1.0, 0.0]), 4.0)  # tensor([0.41, 0.32, 0.25])``
    """
    temperature = check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)  # (..., C)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    y: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton's distillation loss, averaged over samples (nats).

    ``alpha * T² * KL(softened(teacher, T) || softened(student, T)) + (1 - alpha) *
    CE(student, y)``.

    The ``T²`` keeps the soft term's gradients the same size whatever the temperature (they scale
    as ``1/T²`` otherwise), so ``alpha`` means the same at every ``T``. Logits are (B, C) or
    (B, T, C) (flattened to rows); ``y`` holds class ids, and ``-1`` marks an unlabelled sample
    (soft term only). ``y`` may be None only when ``alpha == 1``. A teacher logit of ``-inf``
    (a class it rules out) contributes ``0 log 0 = 0``, as in ``F.kl_div``.
    Example: ``loss = kd_loss(student(X), teacher_logits, y, temperature=4.0, alpha=0.9)``
    """
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(student_logits.shape)}; "
            f"got {tuple(teacher_logits.shape)}"
        )
    C = student_logits.shape[-1]
    s = student_logits.reshape(-1, C)  # (N, C)
    t = teacher_logits.reshape(-1, C).detach()  # (N, C), no gradient into the teacher
    log_p_s = F.log_softmax(s / temperature, dim=-1)  # (N, C)
    log_p_t = F.log_softmax(t / temperature, dim=-1)  # (N, C)
    p_t = log_p_t.exp()  # (N, C)
    # p log(p / q) with 0 log 0 = 0 (the xlogy convention of F.kl_div): a class the teacher rules
    # out (logit -inf, p = 0) adds nothing, where 0 * (-inf - log q) would be NaN
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))  # (N, C)
    kl = terms.sum(dim=-1)  # (N,) KL per sample
    loss = alpha * temperature**2 * kl.mean()
    if alpha < 1.0:
        if y is None:
            raise ValueError("y must be given when alpha < 1 (the hard-label term needs labels)")
        y = y.reshape(-1)  # (N,)
        if y.shape[0] != s.shape[0]:
            raise ValueError(f"y must hold {s.shape[0]} labels, one per row; got {y.shape[0]}")
        labelled = y >= 0  # (N,)
        ce = F.cross_entropy(s, y.clamp(min=0), reduction="none") * labelled  # (N,)
        loss = loss + (1.0 - alpha) * ce.sum() / s.shape[0]
    return loss


def gap_closed(student_acc: float, scratch_acc: float, teacher_acc: float) -> float:
    """The fraction of the teacher-scratch accuracy gap a distilled student closes.

    0: no better than training the student alone; 1: as good as the teacher.
    Example: ``gap_closed(0.80, 0.65, 0.95)  # 0.5``
    """
    if teacher_acc == scratch_acc:
        raise ValueError(f"teacher_acc must differ from scratch_acc; both are {teacher_acc}")
    return (student_acc - scratch_acc) / (teacher_acc - scratch_acc)


def transfer_inputs(dataset: str, num_samples: int, seed: int) -> Tensor:
    """Extra *unlabelled* inputs for a transfer set, from a freshly generated ``dataset``.

    Every split of the new ``dataset``, labels thrown away. ``seed`` must differ from the training
    data's so the inputs are new.

    Only generated datasets can make more samples (``mnist1d``); generation is cached on disk.
    Example: ``X_extra = transfer_inputs("mnist1d", 20_000, seed=1)  # (20000, 1, 40)``
    """
    from labkit import data as data_mod

    check_choice("dataset", dataset, ("mnist1d",))
    check_int("num_samples", num_samples, minimum=100)
    extra = data_mod.load(dataset, num_samples=num_samples, seed=check_int("seed", seed, minimum=0))
    return torch.cat([extra.X_train, extra.X_val, extra.X_test])  # (num_samples, *input_shape)


def _packed_loss(
    student_logits: Tensor, packed: Tensor, *, targets: str, temperature: float, alpha: float
) -> Tensor:
    """The loss ``distill`` hands to ``train.fit``: ``packed`` = [label or -1, teacher logits]."""
    y = packed[:, 0].long()  # (B,) true label, -1 when unlabelled
    teacher_logits = packed[:, 1:]  # (B, C)
    if targets == "soft":
        return kd_loss(student_logits, teacher_logits, y, temperature=temperature, alpha=alpha)
    hard = F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))  # teacher's labels
    if alpha == 1.0:
        return alpha * hard
    labelled = y >= 0  # (B,)
    ce = F.cross_entropy(student_logits, y.clamp(min=0), reduction="none") * labelled  # (B,)
    return alpha * hard + (1.0 - alpha) * ce.sum() / len(y)


def distill(
    student: nn.Module,
    teacher: nn.Module | Tensor,
    data: Any,
    *,
    transfer: Tensor | None = None,
    targets: str = "soft",
    temperature: float = 4.0,
    alpha: float = 0.9,
    num_epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> train.History:
    """Train ``student`` in place to imitate ``teacher`` on ``data`` (plus a transfer set).

    The teacher's logits are computed once (eval mode) for the training inputs followed by the
    ``transfer`` inputs (unlabelled: soft term only); pass a Tensor as ``teacher`` to reuse them.
    ``targets='soft'``: ``kd_loss`` with ``temperature`` and ``alpha``; ``'hard'``: cross-entropy
    on the teacher's argmax labels, weighted by ``alpha`` against the true labels. The rest is
    ``train.fit`` (seeded, deterministic); returns its History.
    Example: ``distill(student, models.pretrained("cnn1d", "mnist1d"), load("mnist1d"))``
    """
    check_choice("targets", targets, TARGETS)
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    X, y = as_xy(data, "train")
    if transfer is not None:
        if not isinstance(transfer, Tensor) or transfer.shape[1:] != X.shape[1:]:
            shape = tuple(getattr(transfer, "shape", ()))
            raise ValueError(
                f"transfer must be a Tensor of inputs shaped "
                f"(M, {', '.join(map(str, X.shape[1:]))}); got {type(transfer).__name__} {shape}"
            )
        X = torch.cat([X, transfer])  # (N + M, ...)
        y = torch.cat([y, torch.full((len(transfer),), -1, dtype=y.dtype)])  # (N + M,)
    if isinstance(teacher, Tensor):
        if teacher.dim() != 2 or len(teacher) != len(X):
            raise ValueError(
                f"teacher logits must have shape ({len(X)}, num_classes) for the training + "
                f"transfer inputs; got {tuple(teacher.shape)}"
            )
        teacher_logits = teacher.float()
    elif isinstance(teacher, nn.Module):
        teacher_logits = train.predict_logits(teacher, X, device=device)  # (N + M, C)
    else:
        raise ValueError(f"teacher must be an nn.Module or a Tensor; got {type(teacher).__name__}")
    packed = torch.cat([y.float()[:, None], teacher_logits], dim=1)  # (N + M, 1 + C)
    loss_fn = functools.partial(_packed_loss, targets=targets, temperature=temperature, alpha=alpha)
    return train.fit(
        student,
        (X, packed),
        val=False,
        num_epochs=num_epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        optimizer=optimizer,
        schedule=schedule,
        loss_fn=loss_fn,
        seed=seed,
        device=device,
        progress=progress,
    )
