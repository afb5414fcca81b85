"""Transformer surgery: remove attention heads and whole residual blocks, for real.

A head is a slice of the attention's ``c_attn`` rows (its q, k, v) and of the ``c_proj`` columns;
pruning it rebuilds both layers smaller (``PrunedSelfAttention``), so the saved bytes and the
skipped work are real. Its *masked* twin (``mask_heads``: the head's ``c_proj`` columns zeroed)
computes the same output. A residual block ``x + f(x)`` can go altogether (``drop_layers``): the
stream just skips it. Works on the zoo's ``ViT`` and ``GPT`` (and any module with ``c_attn``,
``c_proj`` and ``heads``).

Example:
    >>> from labkit import models
    >>> from labkit.prune import transformer as pt
    >>> vit = models.build("vit", dim=32, depth=2)
    >>> small = pt.prune_heads(vit, {"blocks.0.attn": [1, 3]})
    >>> small.blocks[0].attn.heads, pt.drop_layers(vit, [1]).config.depth
    (2, 1)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.prune.unstructured import amount_to_count, copy_model, remove_
from labkit.utils import check_choice

__all__ = [
    "PrunedSelfAttention",
    "attention_modules",
    "head_importance",
    "select_heads",
    "prune_heads",
    "mask_heads",
    "drop_layers",
]


# --------------------------------------------------------------------------- attention heads


class PrunedSelfAttention(nn.Module):
    """Self-attention with ``heads`` heads of size ``head_dim``.

    The inner width ``heads * head_dim`` may be smaller than the residual width (after head
    pruning).

    Same computation as ``labkit.models.SelfAttention`` restricted to the kept heads.
    """

    def __init__(self, attn: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        dim = attn.c_proj.out_features
        H = attn.heads if hasattr(attn, "heads") else attn.num_heads
        D = (attn.c_attn.out_features // 3) // H
        keep = torch.as_tensor(list(keep), dtype=torch.long)
        self.heads, self.head_dim = len(keep), D
        self.dropout, self.causal = attn.dropout, attn.causal
        cols = (keep[:, None] * D + torch.arange(D)).reshape(-1)  # (heads * D,) inner features
        inner = H * D
        rows = torch.cat([cols, cols + inner, cols + 2 * inner])  # q, k, v rows of c_attn
        bias = attn.c_attn.bias is not None
        with warnings.catch_warnings():  # no heads left: zero-size layers, nothing to initialise
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.c_attn = nn.Linear(dim, 3 * len(cols), bias=bias)
            self.c_proj = nn.Linear(len(cols), dim, bias=attn.c_proj.bias is not None)
        with torch.no_grad():
            self.c_attn.weight.copy_(attn.c_attn.weight[rows])
            if bias:
                self.c_attn.bias.copy_(attn.c_attn.bias[rows])
            self.c_proj.weight.copy_(attn.c_proj.weight[:, cols])
            if self.c_proj.bias is not None:
                self.c_proj.bias.copy_(attn.c_proj.bias)
        self.resid_dropout = copy_model(attn.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        if H == 0:
            return self.resid_dropout(self.c_proj(x.new_zeros(B, T, 0)))  # the bias only
        q, k, v = self.c_attn(x).split(H * D, dim=2)  # 3 x (B, T, H*D)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)  # (B,H,T,D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.resid_dropout(self.c_proj(y))  # (B, T, dim)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the self-attention layers (``c_attn`` + ``c_proj`` + head count)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "c_attn", None), nn.Linear)
        and isinstance(getattr(m, "c_proj", None), nn.Linear)
        and hasattr(m, "heads")
    }


def head_importance(
    model: nn.Module, data: Any = None, importance: str = "l1", split: str = "val"
) -> dict[str, Tensor]:
    """A score per head, higher = more important: ``{attention name: (heads,) tensor}``.

    ``"l1"``: the L1 norm of the head's slice of the output projection (data-free);
    ``"ablation"``: the rise in ``data``'s loss on ``split`` when that head alone is removed.
    Example: ``head_importance(vit, load("digits"), "ablation")``
    """
    check_choice("importance", importance, ("l1", "ablation"))
    out = {}
    attns = attention_modules(model)
    if importance == "ablation":
        from labkit import train

        if data is None:
            raise ValueError("data must be given for importance='ablation'; got None")
        base = train.evaluate(model, data, split=split)["loss"]
    for name, m in attns.items():
        H, dim = _heads(m), m.c_proj.out_features
        if importance == "l1":
            w = m.c_proj.weight.detach().abs().reshape(dim, H, -1)  # (dim, H, D)
            out[name] = w.sum(dim=(0, 2))  # (H,)
        else:
            scores = [
                train.evaluate(mask_heads(model, {name: [h]}), data, split=split)["loss"] - base
                for h in range(H)
            ]
            out[name] = torch.tensor(scores)
    return out


def select_heads(scores: Mapping[str, Tensor], amount: int | float) -> dict[str, list[int]]:
    """The ``amount`` lowest-scoring heads over all layers: ``{attention name: [head, ...]}``.

    Example: ``select_heads(head_importance(vit), 0.5)``
    """
    flat = [(float(s), name, h) for name, t in scores.items() for h, s in enumerate(t.tolist())]
    k = amount_to_count(amount, len(flat))
    chosen = sorted(flat)[:k]
    out: dict[str, list[int]] = {name: [] for name in scores}
    for _, name, h in chosen:
        out[name].append(h)
    return {name: sorted(v) for name, v in out.items()}


def prune_heads(
    model: nn.Module, heads: Mapping[str, Sequence[int]] | int | float, importance: str = "l1"
) -> nn.Module:
    """A copy with attention heads removed: ``{attention name: [heads to drop]}``, or an amount.

    An amount drops that share of all heads, the lowest :func:`head_importance` (``"l1"``) first.
    Each pruned attention becomes a :class:`PrunedSelfAttention` with fewer, smaller matrices.
    Example: ``prune_heads(vit, {"blocks.0.attn": [1, 3]})``
    """
    model = remove_(copy_model(model))
    attns = attention_modules(model)
    if not isinstance(heads, Mapping):
        heads = select_heads(head_importance(model, importance=importance), heads)
    _check_heads(attns, heads)
    for name, drop in heads.items():
        m = attns[name]
        keep = [h for h in range(_heads(m)) if h not in set(drop)]
        _set_module(model, name, PrunedSelfAttention(m, keep))
    return model


def mask_heads(model: nn.Module, heads: Mapping[str, Sequence[int]]) -> nn.Module:
    """Same shape as ``model``, the heads' columns of the output projection set to zero.

    Example: ``mask_heads(vit, {"blocks.0.attn": [1]})``
    """
    model = copy_model(model)
    attns = attention_modules(model)
    _check_heads(attns, heads)
    with torch.no_grad():
        for name, drop in heads.items():
            m = attns[name]
            D = m.c_proj.in_features // _heads(m)
            for h in drop:
                m.c_proj.weight[:, h * D : (h + 1) * D] = 0
    return model


def _heads(m: nn.Module) -> int:
    return m.heads


def _check_heads(attns: Mapping[str, nn.Module], heads: Mapping[str, Sequence[int]]) -> None:
    for name, drop in heads.items():
        if name not in attns:
            raise ValueError(
                f"heads keys must be attention layers ({', '.join(attns)}); got {name!r}"
            )
        H = _heads(attns[name])
        if any(not 0 <= h < H for h in drop):
            raise ValueError(f"heads[{name!r}] must be head indices in [0, {H}); got {list(drop)}")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# --------------------------------------------------------------------------- whole layers


def drop_layers(model: nn.Module, layers: Sequence[int], container: str | None = None) -> nn.Module:
    """A copy without the residual blocks ``layers`` (indices into the block list).

    ``container`` names the ``nn.ModuleList`` of blocks (default: the longest ModuleList, e.g.
    ViT ``blocks`` or GPT ``transformer.h``). Only residual blocks can go without changing shapes.
    The config's ``depth`` / ``n_layer`` is updated. Example: ``drop_layers(vit, [3])``
    """
    model = copy_model(model)
    lists = {n: m for n, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    if container is None:
        if not lists:
            raise ValueError("model must hold an nn.ModuleList of residual blocks; found none")
        container = max(lists, key=lambda n: len(lists[n]))
    check_choice("container", container, tuple(lists))
    blocks = lists[container]
    bad = [i for i in layers if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers must be indices in [0, {len(blocks)}); got {list(layers)}")
    drop = {i % len(blocks) for i in layers}
    _set_module(model, container, nn.ModuleList([b for i, b in enumerate(blocks) if i not in drop]))
    cfg = getattr(model, "config", None)
    for key in ("depth", "n_layer"):
        if dataclasses.is_dataclass(cfg) and hasattr(cfg, key):
            model.config = dataclasses.replace(cfg, **{key: len(blocks) - len(drop)})
    return model
