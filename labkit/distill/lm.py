"""``distill_lm``: a character language model student trained on the teacher's soft targets,
optionally matching its attention maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labkit import train, utils
from labkit.distill.attention_transfer import attention_loss, attention_maps
from labkit.distill.soft import _alpha, check_temperature, kd_loss

__all__ = ["distill_lm"]


def distill_lm(
    student: nn.Module,
    teacher: nn.Module,
    text: Any,
    *,
    num_steps: int = 300,
    temperature: float = 1.0,
    alpha: float = 0.5,
    attention_weight: float = 0.0,
    layer_map: Sequence[int] | None = None,
    batch_size: int = 32,
    block_size: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    grad_clip: float | None = 1.0,
    seed: int = 0,
    eval_batches: int = 4,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> train.History:
    """Distil a character model in place, on soft targets and optionally on attention maps.

    ``kd_loss`` on every position's next-character logits plus ``attention_weight * attention_loss``
    between the attention maps. ``layer_map``: the teacher block each student block is compared with
    (default ``select_layers``, the default init of ``init_from_teacher``; pass the ``layers`` the
    student was initialised from).

    The training loop is ``train.fit_lm`` with this loss (``loss_fn``): batches, seeding, AdamW,
    clipping and the History (validation loss in nats/char at 10 points and the end).
    ``alpha=0`` with ``attention_weight=0`` is plain training.
    Example: ``distill_lm(init_from_teacher(gpt), gpt, load("pydoc"), num_steps=300)``
    """
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    if isinstance(attention_weight, bool) or not (
        isinstance(attention_weight, (int, float)) and attention_weight >= 0
    ):
        raise ValueError(f"attention_weight must be a number >= 0; got {attention_weight!r}")
    use_maps = attention_weight > 0

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:  # x, y: (B, T)
        with torch.no_grad():
            t_logits, t_maps = attention_maps(teacher, x) if use_maps else (teacher(x), [])
        s_logits, s_maps = attention_maps(model, x) if use_maps else (model(x), [])
        loss = kd_loss(s_logits, t_logits, y, temperature=temperature, alpha=alpha)
        if use_maps:
            loss = loss + attention_weight * attention_loss(s_maps, t_maps, layer_map)
        return loss

    dev = utils.get_device(device)
    with utils.on_device(teacher, dev, training=False):
        return train.fit_lm(
            student, text, num_steps=num_steps, batch_size=batch_size, block_size=block_size, lr=lr,
            weight_decay=weight_decay, optimizer="adamw", schedule=schedule, grad_clip=grad_clip,
            seed=seed, eval_batches=eval_batches, device=dev, progress=progress, loss_fn=loss_fn,
        )  # fmt: skip
