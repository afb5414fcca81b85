"""The shipped-file format: a compact, self-describing file holding one inference-ready zoo model.

A shipped file is what a compressed model costs on disk, so its length is the "real bytes" of a
model. :func:`to_bytes` (or :func:`save`) writes it and :func:`from_bytes` (or :func:`load`) reads
it back into a plain zoo model that computes what the compressed model did:

* the model is made inference-ready first: pruning masks and BatchNorm are folded into the weights;
* float tensors go through ``sparse.pack_state_dict`` (dense, bitmask or CSR, whichever is
  smallest);
* quantized weights (``quant`` weight-only layers, ``lowbit`` uniform layers) are integer codes
  packed ``bits`` each (``quant.pack_bits``), with a 1-bit mask of the non-zero codes followed by
  only those codes when that is smaller (:func:`code_bytes`, :func:`mask_saving`), plus float
  scales (and zero points when asymmetric) per group;
* layout: a magic line, the header's length, a JSON header (zoo name, config, quantized layers),
  then the packed tensors.

Example:
    >>> from labkit import ship
    >>> ship.code_bytes(1000, 500, 4)
    375
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labkit import measure, models, prune, quant, utils
from labkit.prune import sparse
from labkit.quant import lowbit
from labkit.utils import check_int, check_number

__all__ = [
    "code_bytes",
    "mask_saving",
    "to_bytes",
    "from_bytes",
    "save",
    "load",
    "identify",
    "skeleton",
]

_MAGIC = b"LKCAP1\n"


def identify(model: nn.Module) -> tuple[str, Any]:
    """The zoo name and config of a model built by ``models.build``, or a one-line ValueError."""
    config = getattr(model, "config", None)
    for name, cls in models.CONFIGS.items():
        if type(config) is cls and isinstance(model, models.MODELS[name]):
            return name, config
    raise ValueError(
        f"model must be a labkit zoo model built by models.build (MLP, CNN1d, ...); got "
        f"{type(model).__name__}"
    )


def skeleton(name: str, config: Any) -> nn.Module:
    """The inference structure a shipped model loads into: built from config, BatchNorm folded."""
    return quant.fold_bn_(models.build(name, config).eval())


def _grid(m: nn.Module) -> dict[str, Any] | None:
    """A quantized layer as unsigned ``codes`` (out, cols), ``zero`` codes and ``scale`` per group
    (out, G), ``bits``, ``group_size`` (None for non-quantized layers)."""
    if isinstance(m, quant.FakeQuantLayer):
        c = m.config
        if c.act_bits is not None:
            raise ValueError(
                "model must quantize weights only to be shipped (QuantConfig(act_bits=None)); "
                f"got act_bits={c.act_bits}"
            )
        w = m.layer.weight.detach()
        axis = 0 if c.granularity == "per_channel" else None
        scale, zp = m.weight_qparams()
        offset = 2 ** (c.bits - 1) if c.symmetric else 0  # signed codes -> unsigned
        q = quant.quantize_affine(w, scale, zp, c.bits, c.symmetric, axis).to(torch.int64)
        rows = w.shape[0]
        return {
            "codes": q.reshape(rows, -1) + offset,
            "bits": c.bits,
            "shape": list(w.shape),
            "scale": scale.float().reshape(-1, 1).expand(rows, 1).contiguous(),
            "zero": (zp.reshape(-1, 1).expand(rows, 1) + offset).to(torch.int64),
            "group_size": w[0].numel(),
            "symmetric": c.symmetric,
            "bias": m.layer.bias,
        }
    if isinstance(m, lowbit.PackedLinear):
        if m.kind != "uniform":
            raise ValueError(f"model must use uniform low-bit layers to be shipped; got {m.kind}")
        shape = (m.out_features, m.scale.shape[1])
        zero = (
            torch.full(shape, 2 ** (m.bits - 1), dtype=torch.int64)
            if m.symmetric
            else quant.unpack_bits(m.zero_point, m.bits, m.scale.numel()).view(shape)
        )
        return {
            "codes": m.codes(),
            "bits": m.bits,
            "shape": [m.out_features, m.in_features],
            "scale": m.scale,
            "zero": zero,
            "group_size": m.group_size,
            "symmetric": m.symmetric,
            "bias": m.bias,
        }
    return None


def _per_entry(t: Tensor, group_size: int, cols: int) -> Tensor:
    return t.repeat_interleave(group_size, dim=1)[:, :cols]  # (out, G) -> (out, cols)


def code_bytes(numel: int, nnz: int, bits: int) -> int:
    """Bytes of ``numel`` quantized weights, ``nnz`` of them not zero, at ``bits`` per code.

    Packed densely, ``ceil(numel * bits / 8)``, or as a 1-bit mask of the non-zeros followed by
    their codes, ``ceil(numel / 8) + ceil(nnz * bits / 8)``, whichever is smaller (the shipped
    file's choice, layer by layer).
    Example: ``code_bytes(1000, 500, 4)  # 375, not 500``
    """
    numel = check_int("numel", numel, minimum=0)
    nnz = check_int("nnz", nnz, minimum=0, maximum=numel)
    bits = check_int("bits", bits, minimum=1, maximum=8)
    return min(math.ceil(numel * bits / 8), math.ceil(numel / 8) + math.ceil(nnz * bits / 8))


def mask_saving(density: float, bits: int) -> float:
    """The fraction of the dense codes' bytes saved by a 1-bit mask of the non-zero weights.

    The mask is followed by the non-zero weights' codes. When a fraction ``density`` of ``numel``
    weights is non-zero at ``bits`` per code:
    dense ``numel * bits`` bits, masked ``numel + density * numel * bits`` bits, so the saving is
    ``1 - density - 1 / bits`` (negative: the mask costs more than it saves). :func:`code_bytes` is
    the same up to rounding to whole bytes.
    Example: ``mask_saving(0.5, 8)  # 0.375``
    """
    density = check_number("density", density, minimum=0.0, maximum=1.0)
    bits = check_int("bits", bits, minimum=1, maximum=8)
    return 1.0 - density - 1.0 / bits


def _pack(codes: Tensor, zero: Tensor, bits: int) -> tuple[Tensor, int | None]:
    """:func:`code_bytes`' choice: the codes packed ``bits`` each, or a 1-bit mask of the codes
    that are not the zero code followed by those codes. Returns the bytes and the count of
    stored codes (None: dense)."""
    keep = codes != zero  # (out, cols) the weights that are not exactly zero
    nnz = int(keep.sum())
    dense = quant.pack_bits(codes, bits)
    if code_bytes(codes.numel(), nnz, bits) == dense.numel():
        return dense, None
    return torch.cat([quant.pack_bits(keep, 1), quant.pack_bits(codes[keep], bits)]), nnz


def _unpack(blob: Tensor, zero: Tensor, bits: int, nnz: int | None) -> Tensor:
    n = zero.numel()
    if nnz is None:
        return quant.unpack_bits(blob, bits, n).view(zero.shape)
    mask_bytes = math.ceil(n / 8)
    keep = quant.unpack_bits(blob[:mask_bytes], 1, n).view(zero.shape).bool()
    codes = zero.clone()
    codes[keep] = quant.unpack_bits(blob[mask_bytes:], bits, nnz)
    return codes


def to_bytes(model: nn.Module) -> bytes:
    """The model as shipped, as bytes; read back with :func:`from_bytes`.

    BatchNorm folded, pruning masks folded, float tensors through
    ``sparse.pack_state_dict(..., "auto")``, quantized weights (``quant`` weight-only layers or
    ``lowbit`` uniform layers) as packed codes (+ a 1-bit non-zero mask when smaller), float scales
    and biases. Layout: magic, header length, JSON header (zoo name, config, quantized layers), the
    packed tensors.
    Example: ``len(to_bytes(model))  # the real bytes of what is shipped``
    """
    model = quant.fold_bn_(prune.remove_(prune.copy_model(model)).eval())
    name, config = identify(model)
    tensors: dict[str, Tensor] = {}
    layers: dict[str, dict] = {}
    for lname, m in model.named_modules():
        rec = _grid(m)
        if rec is None:
            continue
        blob, nnz = _pack(
            rec["codes"],
            _per_entry(rec["zero"], rec["group_size"], rec["codes"].shape[1]),
            rec["bits"],
        )
        tensors[f"{lname}.weight.codes"] = blob
        tensors[f"{lname}.weight.scale"] = rec["scale"].detach()
        if not rec["symmetric"]:
            tensors[f"{lname}.weight.zero"] = quant.pack_bits(rec["zero"], rec["bits"])
        if rec["bias"] is not None:
            tensors[f"{lname}.bias"] = rec["bias"].detach()
        layers[lname] = {k: rec[k] for k in ("bits", "shape", "group_size", "symmetric")}
        layers[lname]["nnz"] = nnz
    inside = tuple(f"{n}." for n in layers)
    for key, value in model.state_dict().items():
        if not key.startswith(inside):
            tensors[key] = value
    loaded = {k for k in tensors if ".weight." not in k} | {f"{n}.weight" for n in layers}
    expected = set(skeleton(name, config).state_dict())
    if loaded != expected:
        raise ValueError(
            f"model must keep the architecture of models.build({name!r}, config) (quantize "
            f"with BatchNorm folded); got tensors {sorted(loaded ^ expected)} that do not match"
        )
    header = {"model": name, "config": dataclasses.asdict(config), "quantized": layers}
    header = json.dumps(header, separators=(",", ":")).encode()
    return (
        _MAGIC + struct.pack("<I", len(header)) + header + sparse.pack_state_dict(tensors, "auto")
    )


def from_bytes(payload: bytes) -> nn.Module:
    """The model :func:`to_bytes` wrote, as a plain zoo model (eval mode, BatchNorm folded).

    Its quantized weights hold their dequantized values, so it computes what the quantized model
    did.
    Example: ``model = from_bytes(to_bytes(qmodel))``
    """
    if not isinstance(payload, (bytes, bytearray)) or not payload.startswith(_MAGIC):
        raise ValueError("payload must be bytes written by ship.to_bytes; bad magic")
    try:
        (n,) = struct.unpack_from("<I", payload, len(_MAGIC))
        start = len(_MAGIC) + 4
        header = json.loads(payload[start : start + n])
        tensors = sparse.unpack_state_dict(bytes(payload[start + n :]))
        name = header["model"]
        model = skeleton(name, models.CONFIGS[name](**header["config"]))
        for lname, spec in header["quantized"].items():
            scale = tensors.pop(f"{lname}.weight.scale").float()  # (out, G)
            rows, cols = spec["shape"][0], math.prod(spec["shape"][1:])
            zero = (
                torch.full(scale.shape, 2 ** (spec["bits"] - 1), dtype=torch.int64)
                if spec["symmetric"]
                else quant.unpack_bits(
                    tensors.pop(f"{lname}.weight.zero"), spec["bits"], scale.numel()
                ).view(scale.shape)
            )
            zero = _per_entry(zero, spec["group_size"], cols)  # (out, cols)
            codes = _unpack(tensors.pop(f"{lname}.weight.codes"), zero, spec["bits"], spec["nnz"])
            weight = (codes.float() - zero.float()) * _per_entry(scale, spec["group_size"], cols)
            tensors[f"{lname}.weight"] = weight.view(rows, *spec["shape"][1:])
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError, struct.error) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"payload must be a complete file written by ship.to_bytes; {first}"
        ) from None
    return model.eval()


def save(model: nn.Module, path: str | Path) -> Path:
    """Write :func:`to_bytes` of ``model`` to ``path`` (atomically); returns the path.

    Example: ``save(compressed, "submission.lkc")``
    """
    return utils.atomic_write_bytes(path, to_bytes(model))


def load(path: str | Path) -> nn.Module:
    """The model in a file written by :func:`save`. Example: ``model = load("submission.lkc")``"""
    measure.file_bytes(path)  # a one-line error for a missing path
    return from_bytes(Path(path).read_bytes())
