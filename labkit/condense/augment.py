"""Differentiable pixel shifts: the augmentation of training and of the learned sets."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.utils import check_int


def shift(
    x: Tensor,
    max_shift: int = 1,
    generator: torch.Generator | None = None,
    *,
    same: bool = False,
) -> Tensor:
    """Translate each image of ``x`` (B, C, H, W) by its own random (dy, dx) in
    [-max_shift, max_shift]², filling with zeros (``same=True``: one (dy, dx) for the whole
    batch). Differentiable in ``x``, so synthetic images can be learned through it.
    ``max_shift=0`` returns ``x`` itself.

    Example: ``shift(torch.rand(4, 1, 8, 8), 1, torch.Generator().manual_seed(0))``
    """
    _check_images(x)
    s = check_int("max_shift", max_shift, minimum=0, maximum=min(x.shape[2:]) - 1)
    if s == 0:
        return x
    n = 1 if same else len(x)
    dy = torch.randint(-s, s + 1, (n,), generator=generator).expand(len(x))  # (B,)
    dx = torch.randint(-s, s + 1, (n,), generator=generator).expand(len(x))  # (B,)
    return translate(x, dy, dx)


def translate(x: Tensor, dy: int | Tensor, dx: int | Tensor) -> Tensor:
    """Move the images of ``x`` (B, C, H, W) down by ``dy`` and right by ``dx`` pixels (negative:
    up / left), filling with zeros; ``dy``/``dx`` are ints or (B,) int tensors, one per image.
    One gather from the zero-padded images, so it is differentiable in ``x``.

    Example: ``translate(torch.eye(3).view(1, 1, 3, 3), 0, 1)  # the diagonal moved right``
    """
    _check_images(x)
    B, _, H, W = x.shape
    dy = torch.as_tensor(dy, dtype=torch.long).expand(B).to(x.device)  # (B,)
    dx = torch.as_tensor(dx, dtype=torch.long).expand(B).to(x.device)  # (B,)
    s = int(max(dy.abs().max(), dx.abs().max())) if B else 0
    if s >= min(H, W):
        raise ValueError(f"dy and dx must be smaller than the image size {(H, W)}; got {s}")
    padded = F.pad(x, (s, s, s, s)).permute(0, 2, 3, 1)  # (B, H + 2s, W + 2s, C)
    # output pixel (i, j) reads input (i - dy, j - dx): the image moves by (dy, dx)
    rows = torch.arange(H, device=x.device) + s - dy.unsqueeze(1)  # (B, H)
    cols = torch.arange(W, device=x.device) + s - dx.unsqueeze(1)  # (B, W)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    out = padded[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)  # (B, C, H, W)


def _check_images(x: Any) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shown = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, H, W) tensor; got {shown}")


def _same_shift(real: Tensor, syn: Tensor, max_shift: int, g: torch.Generator) -> tuple:
    """Both batches moved by one random (dy, dx): the two sides of the match see the same view."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    return translate(real, dy, dx), translate(syn, dy, dx)
