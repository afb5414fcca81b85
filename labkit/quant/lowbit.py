"""Low-bit weights: 4/3/2 bits with group-wise scales, ternary and binary, GPTQ, k-means codebooks.

Weight-only quantization stores each ``nn.Linear`` weight as small integer codes plus a little
metadata, and turns it back into float on the fly. Everything here produces real bytes:

* **Group-wise uniform** (:func:`rtn`): each output row is cut into groups of ``group_size``
  input columns; every group gets its own scale (float16) and, when affine, its own zero point
  (stored at ``bits`` bits). Round to nearest (RTN) is the baseline.
* **GPTQ-style rounding** (:func:`gptq`): quantize one column at a time and push each column's
  rounding error onto the columns not yet quantized, weighted by the inverse Hessian
  ``H = X^T X / N`` of the layer's calibration inputs. Minimises ``||X W^T - X Ŵ^T||``.
* **Codebooks** (:func:`kmeans_codebook`, :func:`ternarize`, :func:`binarize`,
  :func:`absmean_ternary`): a layer-wide table of float16 levels, each weight stores an index.
  Ternary codes pack five per byte in base 3 (1.6 bits per weight; the limit is log2(3) = 1.58).
* **Packing** (:func:`labkit.pack_bits`): ``bits`` per code as a little-endian bit stream,
  so two 4-bit or four 2-bit codes share a byte and 3-bit codes run across byte boundaries (8
  codes in 3 bytes).
* :class:`PackedLinear` keeps only the packed codes, the scales/zero points (or the codebook) and
  the bias, and dequantizes in ``forward``; ``measure.model_bytes`` of a quantized model is its
  real size. :class:`BitLinear` trains ternary weights (BitNet b1.58) with a straight-through
  estimator.

Example:
    >>> from labkit import models
    >>> from labkit.quant import lowbit
    >>> qmodel = lowbit.quantize(models.pretrained("mlp", "digits"),
    ...                          lowbit.LowBitConfig(bits=4, group_size=64))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.quant.codes import (
    GroupQuant,
    _dequantize_groups,
    absmean_ternary,
    binarize,
    fake_quantize_groups,
    gptq,
    gptq_factor,
    group_qparams,
    hessian,
    kmeans_codebook,
    rtn,
    ternarize,
)
from labkit.quant.packing import pack_bits, unpack_bits
from labkit.utils import ArgumentTypeError, check_choice, check_int

__all__ = [
    "METHODS",
    "LowBitConfig",
    "GroupQuant",
    "PackedLinear",
    "BitLinear",
    "quantize",
    "quantize_",
    "to_bitlinear",
    "packed_layers",
    "bits_per_weight",
    "compression_limit",
    "weight_bytes",
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
    "pack_ternary",
    "unpack_ternary",
]

METHODS = ("rtn", "gptq", "kmeans", "grid", "twn", "absmean", "binary")
"""rtn/gptq: group-wise uniform grid; kmeans: 2^bits-level k-means codebook per layer; grid:
2^bits evenly spaced levels over the layer's [min, max] (k-means' starting point: a uniform grid
with one range per layer); twn/absmean: ternary; binary: sign x mean|w| (XNOR-Net's binary
weights, one scale per layer)."""


@dataclass(frozen=True)
class LowBitConfig:
    """How to quantize every ``nn.Linear`` weight of a model (biases stay float32).

    ``bits`` (2–8) applies to ``rtn``, ``gptq``, ``kmeans`` and ``grid``; ``group_size`` (input
    columns per scale; None: one scale per output row) and ``symmetric`` to ``rtn`` and ``gptq``.
    ``twn``, ``absmean`` and ``binary`` ignore the three. ``damp`` is GPTQ's Hessian dampening (a
    fraction of its mean diagonal). ``skip``: names of Linear layers left in float (e.g.
    ``("lm_head",)``).
    Example: ``LowBitConfig(bits=3, group_size=64, method="gptq")``
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    method: str = "rtn"
    damp: float = 0.01
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_int("bits", self.bits, minimum=2, maximum=8)
        if self.group_size is not None:
            check_int("group_size", self.group_size, minimum=1)
        check_choice("symmetric", self.symmetric, (True, False))
        check_choice("method", self.method, METHODS)
        d = self.damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ValueError(f"damp must be a number in [0, 1); got {d!r}")
        if isinstance(self.skip, str) or not all(isinstance(s, str) for s in self.skip):
            raise ValueError(f"skip must be a tuple of layer names; got {self.skip!r}")
        object.__setattr__(self, "skip", tuple(self.skip))


# --------------------------------------------------------------------------- the packed layer


class PackedLinear(nn.Module):
    """A Linear layer that stores packed low-bit weights and dequantizes them in ``forward``.

    ``kind="uniform"``: buffers ``packed`` (codes, ``bits`` each), ``scale`` (out, G) float16 and,
    unless symmetric, ``zero_point`` (packed at ``bits``). ``kind="codebook"``: ``packed`` and a
    layer-wide ``codebook`` (levels,) float16; three levels pack in base 3 (five per byte).
    Build one with :meth:`from_group_quant` or :meth:`from_codebook`.
    Example: ``PackedLinear.from_group_quant(rtn(layer.weight, 4, 64), layer.bias)(x)``
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kind: str = "uniform",
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = False,
        levels: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        self.kind = check_choice("kind", kind, ("uniform", "codebook"))
        self.symmetric = symmetric
        n = in_features * out_features
        if kind == "uniform":
            self.bits = check_int("bits", bits, minimum=2, maximum=8)
            self.group_size = in_features if group_size is None else group_size
            groups = math.ceil(in_features / self.group_size)
            self.register_buffer("packed", torch.zeros(_nbytes(n, bits), dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.float16))
            if not symmetric:
                zp_bytes = _nbytes(out_features * groups, bits)
                self.register_buffer("zero_point", torch.zeros(zp_bytes, dtype=torch.uint8))
        else:
            self.levels = check_int("levels", levels, minimum=2, maximum=256)
            self.bits = max(1, math.ceil(math.log2(self.levels)))
            size = math.ceil(n / 5) if self.levels == 3 else _nbytes(n, self.bits)
            self.register_buffer("packed", torch.zeros(size, dtype=torch.uint8))
            self.register_buffer("codebook", torch.zeros(self.levels, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_group_quant(cls, gq: GroupQuant, bias: Tensor | None = None) -> PackedLinear:
        """Pack a :class:`GroupQuant` (and a float bias). Example: see the class docstring."""
        out_f, in_f = gq.codes.shape
        layer = cls(in_f, out_f, kind="uniform", bits=gq.bits, group_size=gq.group_size,
                    symmetric=gq.symmetric, bias=bias is not None)  # fmt: skip
        layer.packed.copy_(pack_bits(gq.codes, gq.bits))
        layer.scale.copy_(gq.scale.half())
        if not gq.symmetric:
            layer.zero_point.copy_(pack_bits(gq.zero_point, gq.bits))
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    @classmethod
    def from_codebook(
        cls, codes: Tensor, codebook: Tensor, bias: Tensor | None = None
    ) -> PackedLinear:
        """Pack indices ``codes`` (out, in) into the float16 ``codebook`` (levels,).

        Example: ``PackedLinear.from_codebook(*kmeans_codebook(w, 3)[::-1], bias)``
        """
        out_f, in_f = codes.shape
        layer = cls(in_f, out_f, kind="codebook", levels=codebook.numel(), bias=bias is not None)
        if layer.levels == 3:
            layer.packed.copy_(pack_ternary(codes))
        else:
            layer.packed.copy_(pack_bits(codes, layer.bits))
        layer.codebook.copy_(codebook.half())
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    def codes(self) -> Tensor:
        """The unpacked codes, int64 (out, in)."""
        n, shape = self.in_features * self.out_features, (self.out_features, self.in_features)
        if self.kind == "codebook" and self.levels == 3:
            return unpack_ternary(self.packed, n).view(shape)
        return unpack_bits(self.packed, self.bits, n).view(shape)

    def dequantize(self) -> Tensor:
        """The float32 weight (out, in) this layer computes with."""
        codes = self.codes()  # (out, in)
        if self.kind == "codebook":
            return self.codebook.float()[codes]  # (out, in)
        if self.symmetric:
            zp = torch.full(self.scale.shape, 2 ** (self.bits - 1), dtype=torch.int64)
        else:
            zp = unpack_bits(self.zero_point, self.bits, self.scale.numel()).view(self.scale.shape)
        return _dequantize_groups(codes, self.scale.float(), zp, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)  # (..., out_features)

    def stored_bits(self) -> int:
        """Bits of the weight's storage: packed codes + scales + zero points (or codebook)."""
        extra = self.codebook if self.kind == "codebook" else self.scale
        total = self.packed.nbytes + extra.nbytes
        if self.kind == "uniform" and not self.symmetric:
            total += self.zero_point.nbytes
        return 8 * total

    def extra_repr(self) -> str:
        what = (f"{self.bits}-bit, group {self.group_size}, "
                f"{'symmetric' if self.symmetric else 'affine'}") if self.kind == "uniform" \
            else f"codebook of {self.levels}"  # fmt: skip
        return f"in_features={self.in_features}, out_features={self.out_features}, {what}"


def packed_layers(model: nn.Module) -> dict[str, PackedLinear]:
    """The model's PackedLinear layers by name. Example: ``list(packed_layers(qmodel))``"""
    return {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Weights the packed layers hold: ``numel``, ``fp32_bytes`` and ``bytes``.

    ``fp32_bytes``: 4 per weight; ``bytes``: packed codes + scales + zero points/codebooks, biases
    excluded.

    Example: ``r = weight_bytes(qmodel); r["fp32_bytes"] / r["bytes"]  # ~14.9 at 2 bits``
    """
    layers = packed_layers(model).values()
    numel = sum(m.in_features * m.out_features for m in layers)
    stored = sum(m.stored_bits() for m in layers) // 8
    return {"numel": numel, "fp32_bytes": 4 * numel, "bytes": stored}


# --------------------------------------------------------------------------- model transforms


@torch.no_grad()
def quantize(
    model: nn.Module, config: LowBitConfig | None = None, calib_data: Any = None
) -> nn.Module:
    """A new model whose Linear layers are :class:`PackedLinear` (see :func:`quantize_`).

    Example: ``qmodel = quantize(model, LowBitConfig(bits=3, method="gptq"), X_calib)``
    """
    return quantize_(copy.deepcopy(model), config, calib_data)


@torch.no_grad()
def quantize_(
    model: nn.Module, config: LowBitConfig | None = None, calib_data: Any = None
) -> nn.Module:
    """In place: replace every ``nn.Linear`` (except ``config.skip``) by a PackedLinear.

    ``calib_data`` (``gptq`` only): a batch of model inputs (a tensor: images, or token ids (B, T)).
    GPTQ runs layer by layer in module order, each Hessian taken from the inputs the layer sees
    with every earlier layer already quantized (a few hundred tokens or samples suffice).
    Returns ``model`` in eval mode. Example: ``quantize_(model, LowBitConfig(method="twn"))``
    """
    config = LowBitConfig() if config is None else config
    if not isinstance(config, LowBitConfig):
        raise ArgumentTypeError(f"config must be a LowBitConfig; got {type(config).__name__}")
    if config.method == "gptq" and not torch.is_tensor(calib_data):
        raise ValueError("calib_data must be a tensor of model inputs when method='gptq'")
    model.eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    unknown = [s for s in config.skip if s not in names]
    if unknown:
        raise ValueError(f"skip must name Linear layers of the model; got {unknown}")
    for name in names:
        if name in config.skip:
            continue
        layer = model.get_submodule(name)
        H = _layer_hessian(model, layer, calib_data) if config.method == "gptq" else None
        _set_submodule(model, name, _pack_layer(layer, config, H))
    return model


def _pack_layer(layer: nn.Linear, config: LowBitConfig, H: Tensor | None) -> PackedLinear:
    w, c = layer.weight.detach().float(), config  # (out, in)
    if c.method in ("rtn", "gptq"):
        gs = c.group_size or w.shape[1]
        gq = rtn(w, c.bits, gs, c.symmetric) if H is None else gptq(w, H, c.bits, gs, c.symmetric,
                                                                     damp=c.damp)  # fmt: skip
        return PackedLinear.from_group_quant(gq, layer.bias)
    if c.method in ("kmeans", "grid"):
        codebook, codes = kmeans_codebook(w, c.bits, num_iters=30 if c.method == "kmeans" else 0)
        return PackedLinear.from_codebook(codes, codebook, layer.bias)
    fn = {"twn": ternarize, "absmean": absmean_ternary, "binary": binarize}[c.method]
    signs, alpha = fn(w)
    if c.method == "binary":
        return PackedLinear.from_codebook((signs > 0).long(), alpha * torch.tensor([-1.0, 1.0]),
                                          layer.bias)  # fmt: skip
    return PackedLinear.from_codebook(signs.long() + 1, alpha * torch.tensor([-1.0, 0.0, 1.0]),
                                      layer.bias)  # fmt: skip


def _layer_hessian(model: nn.Module, layer: nn.Module, calib_data: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        model(calib_data)
    finally:
        handle.remove()
    X = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])  # (N, in)
    return hessian(X)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------- ternary training


class BitLinear(nn.Linear):
    """BitNet b1.58-style Linear: latent float weights, ternary absmean weights in ``forward``.

    Forward uses ``gamma * clamp(round(w / gamma), -1, 1)`` with ``gamma = mean|w|`` (float16,
    as :class:`PackedLinear` stores it); backward is the straight-through estimator
    ``w + (w_q - w).detach()``: the gradient reaches the latent weights unchanged. Inputs stay
    float (weights-only, unlike the paper's 8-bit activations).
    Example: ``to_bitlinear(model)`` swaps every Linear for one of these.
    """

    def forward(self, x: Tensor) -> Tensor:
        signs, gamma = absmean_ternary(self.weight)
        w_q = signs.to(self.weight.dtype) * gamma  # (out, in) values in {-gamma, 0, gamma}
        w = self.weight + (w_q - self.weight).detach()  # STE: forward w_q, gradient to weight
        return F.linear(x, w, self.bias)  # (..., out_features)


def to_bitlinear(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """A new model with every ``nn.Linear`` (except ``skip``) a :class:`BitLinear` (same weights).

    Train it with ``train.fit``, then pack it with ``quantize(.., LowBitConfig(method="absmean"))``.
    Example: ``bit_model = to_bitlinear(models.pretrained("mlp", "digits"))``
    """
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if type(m) is nn.Linear and name not in skip:
            new = BitLinear(m.in_features, m.out_features, bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
            _set_submodule(model, name, new)
    return model


# --------------------------------------------------------------------------- sizes


def bits_per_weight(
    bits: int, group_size: int | None, symmetric: bool = False, in_features: int | None = None
) -> float:
    """Stored bits per weight of a group-wise layer: ``bits + (16 + zp_bits) / group_size``.

    A float16 scale per group, plus a ``bits``-bit zero point when affine; ``group_size=None``
    means one group per row of ``in_features``. Example: ``bits_per_weight(2, 128)  # 2.140625``
    """
    g = in_features if group_size is None else group_size
    if g is None:
        raise ValueError("in_features must be given when group_size is None; got None")
    return bits + (16 + (0 if symmetric else bits)) / g


def compression_limit(bits: int, group_size: int | None, symmetric: bool = False, **kw) -> float:
    """The best size ratio vs float32 with these scales: ``32 / bits_per_weight(...)``.

    Example: ``compression_limit(2, 128)  # 14.95 (16x without scales)``
    """
    return 32 / bits_per_weight(bits, group_size, symmetric, **kw)


def _nbytes(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def pack_ternary(codes: Tensor) -> Tensor:
    """Pack codes in {0, 1, 2} five per byte in base 3.

    The byte is ``c0 + 3 c1 + 9 c2 + 27 c3 + 81 c4`` <= 242: 1.6 bits per weight, against log2(3) =
    1.585 for any ternary code.

    Example: ``pack_ternary(torch.tensor([2, 1, 0, 0, 1]))  # tensor([86])``
    """
    codes = codes.flatten().to(torch.int64)  # (n,)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 2):
        raise ValueError("codes must be integers in [0, 2]; got values outside")
    chunks = F.pad(codes, (0, -codes.numel() % 5)).view(-1, 5)  # (C, 5)
    return (chunks * 3 ** torch.arange(5)).sum(dim=1).to(torch.uint8)  # (C,)


def unpack_ternary(packed: Tensor, numel: int) -> Tensor:
    """The first ``numel`` codes stored by :func:`pack_ternary`, int64 (numel,).

    Example: ``unpack_ternary(torch.tensor([86], dtype=torch.uint8), 5)  # tensor([2, 1, 0, 0, 1])``
    """
    numel = check_int("numel", numel, minimum=0)
    raw = packed.flatten().to(torch.int64)  # (C,)
    return ((raw[:, None] // 3 ** torch.arange(5)) % 3).flatten()[:numel]  # (numel,)
