"""How a weight matrix gets its low-bit codes: round to nearest, GPTQ, k-means codebooks,
ternary and binary levels, group-wise scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.quant.affine import qparams_from_range
from labkit.utils import check_int

__all__ = [
    "GroupQuant",
    "hessian",
    "rtn",
    "gptq",
    "gptq_factor",
    "group_qparams",
    "fake_quantize_groups",
    "kmeans_codebook",
    "ternarize",
    "binarize",
    "absmean_ternary",
]


@dataclass(frozen=True)
class GroupQuant:
    """A group-wise quantized weight: unsigned codes, scales and unsigned zero points.

    Unsigned ``codes`` (out, in) in [0, 2^bits - 1], float16-exact ``scale`` and unsigned
    ``zero_point`` (out, G) with ``G = ceil(in / group_size)``.

    Example: ``gq = rtn(w, bits=4, group_size=64); w_hat = gq.dequantize()``
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    bits: int
    group_size: int
    symmetric: bool

    def dequantize(self) -> Tensor:
        """Float weight ``(codes - zero_point) * scale``, group by group; shape (out, in)."""
        return _dequantize_groups(self.codes, self.scale, self.zero_point, self.group_size)


# --------------------------------------------------------------------------- GPTQ and RTN


def hessian(X: Tensor) -> Tensor:
    """``X^T X / N`` of a layer's inputs X (N, in): the Hessian of ``||X w - X w_hat||^2 / 2N``.

    Example: ``H = hessian(torch.randn(512, 64))  # (64, 64)``
    """
    X = X.detach().double().reshape(-1, X.shape[-1])  # (N, in)
    return (X.T @ X / len(X)).float()  # (in, in)


def rtn(w: Tensor, bits: int, group_size: int, symmetric: bool = False) -> GroupQuant:
    """Round-to-nearest group-wise quantization of ``w`` (out, in): min-max qparams per group.

    Example: ``rtn(layer.weight, bits=4, group_size=64).dequantize()``
    """
    w = w.detach().float()
    scale, zp = group_qparams(w, bits, group_size, symmetric)
    codes = _quantize_groups(w, scale, zp, bits, group_size)
    return GroupQuant(codes, scale, zp, bits, group_size, symmetric)


def gptq_factor(H: Tensor, damp: float = 0.01) -> Tensor:
    """GPTQ's ``U``: the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, float32.

    Inputs that were always 0 (``H[j, j] == 0``) get ``H[j, j] = 1`` first, so the factor exists.
    Example: ``U = gptq_factor(hessian(X))  # (in, in), U[j, j] > 0``
    """
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return U.float()


def gptq(
    w: Tensor,
    H: Tensor,
    bits: int,
    group_size: int,
    symmetric: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
) -> GroupQuant:
    """GPTQ-style quantization of ``w`` (out, in) for inputs with Hessian ``H`` (in, in).

    Columns are quantized left to right; after column ``j`` is rounded, its error ``e`` (out,) is
    spread over the later columns, ``W[:, j+1:] -= e / U[j, j] * U[j, j+1:]`` with ``U`` the upper
    Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (the optimal-brain-surgeon update, in
    the order GPTQ uses). A group's qparams are chosen when its first column is reached, from the
    already-updated weights. With ``H`` the identity this is exactly :func:`rtn`. Updates to
    columns beyond the current ``block_size`` columns are batched into one matmul per block
    (GPTQ's lazy batch updates: the same sums, in another order). Float32, as the paper.
    Example: ``gptq(w, hessian(X), bits=3, group_size=64)``
    """
    W = w.detach().float().T.contiguous()  # (in, out): column j of w is the row W[j]
    in_f, out_f = W.shape
    check_int("group_size", group_size, minimum=1)
    H = H.detach().double().clone()
    if H.shape != (in_f, in_f):
        raise ValueError(f"H must have shape ({in_f}, {in_f}); got {tuple(H.shape)}")
    W[torch.diag(H) == 0] = 0.0  # inputs that were always 0: their weights cannot matter
    U = gptq_factor(H, damp)  # (in, in) upper triangular
    groups = math.ceil(in_f / group_size)
    scale = torch.empty(out_f, groups)
    zp = torch.empty(out_f, groups, dtype=torch.int64)
    codes = torch.empty(in_f, out_f, dtype=torch.int64)
    for i1 in range(0, in_f, block_size):  # lazy batches: update later blocks once per block
        i2 = min(i1 + block_size, in_f)
        err = torch.empty(i2 - i1, out_f)  # (block, out) scaled errors of this block
        for j in range(i1, i2):
            g = j // group_size
            if j % group_size == 0:  # qparams from the weights as updated so far
                later = W[i2 : j + group_size] - U[i1:j, i2 : j + group_size].T @ err[: j - i1]
                cols = torch.cat([W[j:i2], later])[:group_size]  # (<= group_size, out)
                s_, z_ = group_qparams(cols.T, bits, cols.shape[0], symmetric)  # (out, 1)
                scale[:, g], zp[:, g] = s_[:, 0], z_[:, 0]
            s, z = scale[:, g], zp[:, g]
            q = torch.clamp(torch.round(W[j] * torch.reciprocal(s)) + z, 0, 2**bits - 1)
            codes[j] = q.long()  # (out,)
            e = (W[j] - (q - z) * s) / U[j, j]  # (out,)
            W[j + 1 : i2] -= torch.outer(U[j, j + 1 : i2], e)  # (block rest, out)
            err[j - i1] = e
        W[i2:] -= U[i1:i2, i2:].T @ err  # (in - i2, out)
    return GroupQuant(codes.T.contiguous(), scale, zp, bits, group_size, symmetric)


# --------------------------------------------------------------------------- codebooks


def kmeans_codebook(w: Tensor, bits: int, num_iters: int = 30) -> tuple[Tensor, Tensor]:
    """Deep Compression weight sharing: 1-D k-means (Lloyd) of all of ``w`` into ``2^bits`` levels.

    Linear initialisation over ``[min, max]`` (the uniform grid; Han et al. found it best), then
    ``num_iters`` rounds of assign-to-nearest / move-to-mean (``num_iters=0``: the uniform grid).
    Returns (codebook (2^bits,) float16-exact float32, sorted; codes int64 with ``w``'s shape, each
    the nearest level).
    Example: ``codebook, codes = kmeans_codebook(w, 3); w_hat = codebook[codes]``
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    num_iters = check_int("num_iters", num_iters, minimum=0)
    x = w.detach().float().flatten()  # (n,)
    k = 2**bits
    centers = torch.linspace(float(x.min()), float(x.max()), k)  # (k,)
    for _ in range(num_iters):
        codes = _nearest(x, centers)  # (n,)
        sums = torch.zeros(k).index_add_(0, codes, x)
        counts = torch.zeros(k).index_add_(0, codes, torch.ones_like(x))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centers)  # empty: stay
        if torch.equal(new, centers):
            break
        centers = new
    centers = torch.sort(centers.half().float()).values
    return centers, _nearest(x, centers).view(w.shape)


def _nearest(x: Tensor, centers: Tensor) -> Tensor:
    """Index of the nearest of the sorted ``centers`` (k,) for each value of ``x`` (n,)."""
    mids = (centers[1:] + centers[:-1]) / 2  # (k - 1,) decision boundaries
    return torch.bucketize(x, mids)  # (n,) in [0, k - 1]


def ternarize(w: Tensor, threshold: float = 0.7) -> tuple[Tensor, Tensor]:
    """Ternary weight networks (Li & Liu, 2016): ``w ~ alpha * t`` with ``t`` in {-1, 0, +1}.

    ``delta = threshold * mean|w|``; ``t = sign(w)`` where ``|w| > delta``, else 0; ``alpha`` =
    mean ``|w|`` over the kept entries (the least-squares scale for that ``t``), rounded to
    float16. Returns (t int8 with ``w``'s shape, alpha ()). Example: ``t, a = ternarize(w)``
    """
    w = w.detach().float()
    keep = w.abs() > threshold * w.abs().mean()
    alpha = (w.abs() * keep).sum() / keep.sum().clamp(min=1)
    return (torch.sign(w) * keep).to(torch.int8), alpha.half().float()


def binarize(w: Tensor) -> tuple[Tensor, Tensor]:
    """Binary weights with a scale: XNOR-Net's binary-weight approximation.

    XNOR-Net (Rastegari et al., 2016): ``w ~ alpha * sign(w)``, ``alpha = mean|w|``, the
    least-squares scale for those signs (one per layer here; the paper takes one per output filter).
    BinaryConnect (Courbariaux et al., 2015) uses ``sign(w)`` with no scale.

    ``sign(0)`` is taken as +1 so every weight is ±1. Returns (signs int8, alpha () float16-exact).
    Example: ``s, a = binarize(w); w_hat = a * s``
    """
    w = w.detach().float()
    signs = torch.where(w >= 0, 1, -1).to(torch.int8)
    return signs, w.abs().mean().half().float()


def absmean_ternary(w: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """BitNet b1.58 absmean quantizer: ``gamma = mean|w|``, ``t = clamp(round(w / gamma), -1, 1)``.

    Returns (t int8, gamma () float16-exact). Unlike :func:`ternarize` the threshold is fixed at
    ``gamma / 2`` and the scale is ``gamma`` itself. Example: ``t, g = absmean_ternary(w)``
    """
    w = w.detach().float()
    gamma = w.abs().mean()
    t = torch.clamp(torch.round(w / (gamma + eps)), -1, 1).to(torch.int8)
    return t, gamma.half().float()


# --------------------------------------------------------------------------- pure primitives


def group_qparams(
    w: Tensor, bits: int, group_size: int, symmetric: bool = False
) -> tuple[Tensor, Tensor]:
    """Min-max (scale, zero_point) of each group of ``group_size`` columns of ``w`` (out, in).

    The range of a group is widened to hold 0 (as :func:`labkit.qparams_from_range`); the
    scale is rounded UP to float16 (what is stored; no value clips), zero points are unsigned
    codes (``2^(bits-1)`` when symmetric). A last, shorter group is allowed. Shapes (out, G).
    Example: ``scale, zp = group_qparams(w, 4, 64)``
    """
    bits = check_int("bits", bits, minimum=2, maximum=8)
    group_size = check_int("group_size", group_size, minimum=1)
    g = _groups(w.detach().float(), group_size)  # (out, G, group_size), zero-padded
    lo, hi = g.amin(dim=2).clamp(max=0), g.amax(dim=2).clamp(min=0)  # (out, G)
    scale, _ = qparams_from_range(lo, hi, bits, symmetric)
    scale = _half_ceil(scale)
    if symmetric:
        return scale, torch.full_like(scale, 2 ** (bits - 1), dtype=torch.int64)
    zp = torch.clamp(-torch.round(lo / scale), 0, 2**bits - 1).to(torch.int64)
    return scale, zp


def fake_quantize_groups(w: Tensor, bits: int, group_size: int, symmetric: bool = False) -> Tensor:
    """``w`` (out, in) rounded to its group-wise grid and back to float (RTN).

    When ``group_size`` divides ``in``, equal to ``torch.fake_quantize_per_channel_affine`` on
    ``w.view(-1, group)``.

    Example: ``fake_quantize_groups(w, 3, 32)``
    """
    return rtn(w, bits, group_size, symmetric).dequantize()


def _quantize_groups(w: Tensor, scale: Tensor, zp: Tensor, bits: int, group_size: int) -> Tensor:
    out_f, in_f = w.shape
    g = _groups(w, group_size)  # (out, G, group_size)
    q = torch.round(g * torch.reciprocal(scale)[..., None]) + zp[..., None]
    q = torch.clamp(q, 0, 2**bits - 1).to(torch.int64)  # (out, G, group_size)
    return q.reshape(out_f, -1)[:, :in_f]  # (out, in)


def _dequantize_groups(codes: Tensor, scale: Tensor, zp: Tensor, group_size: int) -> Tensor:
    out_f, in_f = codes.shape
    g = _groups(codes.float(), group_size)  # (out, G, group_size)
    w = (g - zp[..., None].float()) * scale[..., None]  # (out, G, group_size)
    return w.reshape(out_f, -1)[:, :in_f]  # (out, in)


def _groups(w: Tensor, group_size: int) -> Tensor:
    out_f, in_f = w.shape
    pad = -in_f % group_size
    return F.pad(w, (0, pad)).view(out_f, -1, group_size)  # (out, G, group_size)


def _half_ceil(x: Tensor) -> Tensor:
    """The smallest float16 value >= x (as float32): a stored scale never clips."""
    h = x.half()
    h = torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, math.inf)), h)
    return h.float()
