"""Hints (FitNets, Romero et al., 2015): regress a student feature onto a teacher feature."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import utils
from labkit.utils import check_int

__all__ = ["capture", "HintLoss", "fit_hints"]


# --------------------------------------------------------------------------- hints (FitNets)


@contextlib.contextmanager
def capture(model: nn.Module, layers: str | Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules during forward passes inside the block.

    Yields a dict ``name -> output`` refreshed by every forward; hooks are removed afterwards.
    Gradients flow through the recorded tensors (they are the real activations).
    Example: ``with capture(model, "net.2") as feats: model(X); h = feats["net.2"]``
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            shown = ", ".join(n for n in modules if n)
            raise ValueError(f"layers must name submodules of the model ({shown}); got {name!r}")
    store: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            store[name] = output

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class HintLoss(nn.Module):
    """FitNets' hint loss: how well a projection of the student's feature matches the teacher's.

    The mean squared error between a learned linear projection of the student's feature and the
    teacher's feature, both flattened per sample.

    The projection (the "regressor") lets a thin student match a wide teacher layer; it is
    trained with the student and thrown away after. ``student_dim`` / ``teacher_dim`` are the
    flattened feature sizes. Example: ``hint = HintLoss(100, 160); hint(h_s, h_t).backward()``
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        check_int("student_dim", student_dim, minimum=1)
        check_int("teacher_dim", teacher_dim, minimum=1)
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        s = student_feat.flatten(1)  # (B, student_dim)
        t = teacher_feat.flatten(1).detach()  # (B, teacher_dim)
        if s.shape[1] != self.proj.in_features or t.shape[1] != self.proj.out_features:
            raise ValueError(
                f"features must flatten to ({self.proj.in_features}, {self.proj.out_features}) "
                f"per sample; got ({s.shape[1]}, {t.shape[1]})"
            )
        return F.mse_loss(self.proj(s), t)  # scalar


def fit_hints(
    student: nn.Module,
    teacher: nn.Module,
    X: Tensor,
    *,
    student_layer: str,
    teacher_layer: str,
    num_epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[HintLoss, list[float]]:
    """FitNets stage 1: train ``student`` and a projection to predict a teacher layer's output.

    ``student`` is trained in place, up to ``student_layer``, so that the student's
    ``student_layer`` output predicts the teacher's ``teacher_layer`` output.

    Returns the trained ``HintLoss`` and the mean hint loss per epoch. Seeded: the init of the
    projection and the batch order come from ``seed``; torch's global RNG is left alone.
    Example: ``fit_hints(mlp, cnn, X, student_layer="net.2", teacher_layer="features")``
    """
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    was = teacher.training
    teacher.eval()
    with torch.no_grad(), capture(teacher, teacher_layer) as feats:
        chunks = [
            _run(teacher, X[i : i + 1024], feats, teacher_layer) for i in range(0, len(X), 1024)
        ]
    teacher.train(was)
    t_feat = torch.cat(chunks)  # (N, *teacher feature shape)
    with torch.no_grad(), capture(student, student_layer) as feats:
        s_dim = _run(student, X[:1], feats, student_layer).flatten(1).shape[1]
    with utils.seeded(seed):
        hint = HintLoss(s_dim, t_feat[0].numel())
    params = list(student.parameters()) + list(hint.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    was = student.training
    student.train()
    with capture(student, student_layer) as feats:
        for _ in range(num_epochs):
            order = torch.randperm(len(X), generator=generator)  # (N,)
            total = 0.0
            for i in range(0, len(X), batch_size):
                idx = order[i : i + batch_size]
                loss = hint(_run(student, X[idx], feats, student_layer), t_feat[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / len(X))
    student.train(was)
    return hint, losses


def _run(model: nn.Module, X: Tensor, feats: dict[str, Tensor], layer: str) -> Tensor:
    model(X)
    return feats[layer]
