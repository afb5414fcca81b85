"""One bit packer: unsigned codes of 1 to 8 bits packed into bytes, and back."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.utils import check_int

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned integer codes (values < 2^bits) into bytes, ``bits`` per code.

    One little-endian bit stream, the first code in the lowest bits: two 4-bit codes per byte (low
    nibble first), four 2-bit codes, eight 1-bit codes; 3-bit codes run across byte boundaries (8
    codes in 3 bytes). ``n`` codes take ``ceil(n * bits / 8)`` bytes (uint8), the end padded with
    zero bits. Vectorised per chunk of ``lcm(bits, 8)`` bits. Inverse: :func:`unpack_bits`.
    Example: ``pack_bits(torch.tensor([1, 2, 3, 0]), 2)  # tensor([57], dtype=torch.uint8)``
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    codes = codes.flatten().to(torch.int64)  # (n,)
    n = codes.numel()
    if n and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must be integers in [0, {2**bits - 1}]; got values outside")
    per = math.lcm(bits, 8) // bits  # codes per chunk
    nbytes = math.lcm(bits, 8) // 8  # bytes per chunk
    chunks = F.pad(codes, (0, -n % per)).view(-1, per)  # (C, per)
    value = (chunks << (bits * torch.arange(per))).sum(dim=1)  # (C,) <= 56 bits, no overlap
    out = (value[:, None] >> (8 * torch.arange(nbytes))) & 255  # (C, nbytes)
    return out.flatten()[: math.ceil(n * bits / 8)].to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """The first ``numel`` codes stored by :func:`pack_bits`, int64, shape ``(numel,)``.

    Example: ``unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 4)  # tensor([1, 2, 3, 0])``
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    numel = check_int("numel", numel, minimum=0)
    per, nbytes = math.lcm(bits, 8) // bits, math.lcm(bits, 8) // 8
    needed = math.ceil(numel * bits / 8)
    if packed.numel() < needed:
        raise ValueError(f"packed must hold {needed} bytes; got {packed.numel()}")
    raw = packed.flatten().to(torch.int64)
    raw = F.pad(raw, (0, -raw.numel() % nbytes)).view(-1, nbytes)  # (C, nbytes)
    value = (raw << (8 * torch.arange(nbytes))).sum(dim=1)  # (C,)
    codes = (value[:, None] >> (bits * torch.arange(per))) & (2**bits - 1)  # (C, per)
    return codes.flatten()[:numel]
