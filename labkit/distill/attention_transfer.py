"""Attention transfer (after TinyBERT, Jiao et al., 2020): recompute every attention matrix of a
GPT/ViT and match the student's to the teacher's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import models
from labkit.distill.layers import select_layers

__all__ = ["attention_maps", "attention_loss"]


# --------------------------------------------------------------------------- attention (TinyBERT)


def _attention_modules(model: nn.Module) -> list[models.SelfAttention]:
    found = [m for m in model.modules() if isinstance(m, models.SelfAttention)]
    if not found:
        raise ValueError(
            f"model must contain labkit SelfAttention layers (GPT, ViT); got {type(model).__name__}"
        )
    return found


def _attention_probs(attn: models.SelfAttention, x: Tensor) -> Tensor:
    """The attention matrix softmax(q k^T / sqrt(D)) of one SelfAttention for its input x."""
    B, T, C = x.shape
    H = attn.heads
    q, k, _ = attn.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
    q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)  # (B, H, T, T)
    if attn.causal:
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1)  # (B, H, T, T), rows sum to 1


@contextlib.contextmanager
def _attention_recorder(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each SelfAttention's attention matrix (in model order) during forward passes."""
    maps: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        maps.append(_attention_probs(module, inputs[0]))

    handles = [m.register_forward_pre_hook(hook) for m in _attention_modules(model)]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run ``model`` on ``x``; return its output and every attention matrix, one per layer.

    Each map is (B, H, T, T) with rows summing to 1 (causal models: zero above the diagonal),
    recomputed from the layer's own q/k projections, so gradients flow through it.
    Example: ``logits, maps = attention_maps(gpt, idx)  # maps[0].shape == (B, 4, T, T)``
    """
    with _attention_recorder(model) as maps:
        out = model(x)
    return out, list(maps)


def attention_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    layer_map: Sequence[int] | None = None,
) -> Tensor:
    """Attention transfer after TinyBERT: how far student attention maps are from the teacher's.

    The mean squared error between each student attention map and the teacher map it is paired with,
    averaged over every entry and over the pairs.

    What is matched: the attention *probabilities* ``softmax(q k^T / sqrt(D))`` of
    ``attention_maps`` (rows sum to 1; a causal model's masked entries are 0 on both sides and
    add nothing). TinyBERT (Jiao et al., 2020, section 3.1) instead matches the unnormalised scores
    ``q k^T / sqrt(D)`` before the softmax. Matching probabilities is weaker: a zero loss here
    means the scores agree up to a constant per row (softmax ignores such shifts), and the
    ``-inf`` a causal mask puts in the scores never enters the loss.

    ``layer_map[i]`` is the teacher layer for student layer ``i``. The default,
    ``select_layers(N, M)``, is the map ``init_from_teacher`` uses by default: each student block
    is compared with the block it was initialised from. (TinyBERT's own uniform map pairs student
    layer ``i`` with the last teacher layer of its group, ``(i + 1) * N // M - 1``; pass it
    explicitly.) When head counts differ, the maps are averaged over heads first.
    Example: ``attention_loss(attention_maps(s, x)[1], attention_maps(t, x)[1])``
    """
    M, N = len(student_maps), len(teacher_maps)
    if M == 0 or N == 0:
        raise ValueError(f"maps must be non-empty lists; got {M} student and {N} teacher maps")
    if layer_map is None and M > N:
        raise ValueError(
            f"layer_map must be given when student_maps ({M}) outnumber teacher's ({N})"
        )
    layer_map = select_layers(N, M) if layer_map is None else list(layer_map)
    if len(layer_map) != M or not all(isinstance(j, int) and 0 <= j < N for j in layer_map):
        raise ValueError(
            f"layer_map must list {M} teacher layer indices in [0, {N - 1}]; got {layer_map}"
        )
    total = student_maps[0].new_zeros(())
    for s, j in zip(student_maps, layer_map):
        t = teacher_maps[j].detach()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1), t.mean(dim=1)  # (B, T, T) head-averaged
        if s.shape != t.shape:
            raise ValueError(
                f"maps must match in shape; got student {tuple(s.shape)}, teacher {tuple(t.shape)}"
            )
        total = total + F.mse_loss(s, t)
    return total / M
