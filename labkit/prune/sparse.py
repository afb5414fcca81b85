"""Sparse storage: the real bytes of a pruned tensor or model once its zeros are left out.

A pruned weight is still a dense tensor full of zeros; it only gets smaller when it is *encoded*.
This module writes the encodings you could ship and reads them back:

- ``"dense"``: every value (the baseline);
- ``"bitmask"``: one bit per entry (non-zero or not), then the non-zero values;
- ``"csr"``: compressed sparse rows of the tensor viewed as (rows, cols): row pointers, column
  indices and the non-zero values; indices use the smallest of uint8 / uint16 / uint32 that fits
  (or the width you ask for).

What a round trip keeps: ``"dense"`` every bit. ``"bitmask"`` and ``"csr"`` every non-zero entry
bit for bit (subnormals, ±inf and NaN payloads included, whatever ``torch.set_flush_denormal``
says, since zeros are found on the bit patterns), and every zero as a zero, but not the *sign* of a
zero: −0.0 is left out like +0.0 and read back as +0.0. The two compare equal, so ``torch.equal``
holds, and a layer's outputs can differ at most in the sign of an exactly zero result; the bit
pattern, ``1 / x`` (−inf vs +inf) and ``copysign`` tell them apart. Keeping that sign would cost
a bit per zero, and about half the zeros of a tensor pruned with ``torch.nn.utils.prune`` are −0.0
(a negative weight times a 0 mask).

Every encoding starts with a small header (format, dtype, shape, index widths), so
``from_sparse_bytes`` needs nothing else. ``sparse_nbytes`` predicts ``len(to_sparse_bytes(...))``
from the shape and the non-zero count, and ``break_even_density`` says where sparse storage stops
paying: a bitmask costs 1/32 byte per fp32 entry, so it wins whenever more than ~3% of the entries
are zero; CSR with 2-byte indices must drop a third of them.

Example:
    >>> import torch
    >>> from labkit.prune import sparse
    >>> w = torch.tensor([[0.0, 1.5, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]])
    >>> blob = sparse.to_sparse_bytes(w, format="csr")
    >>> torch.equal(sparse.from_sparse_bytes(blob), w)
    True
    >>> len(blob) == sparse.sparse_nbytes(w.shape, 3, "csr")
    True
"""

from __future__ import annotations

import copy
import math
import struct
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from labkit.utils import ArgumentTypeError, check_choice

__all__ = [
    "FORMATS",
    "to_sparse_bytes",
    "from_sparse_bytes",
    "sparse_nbytes",
    "break_even_density",
    "effective_state_dict",
    "pack_state_dict",
    "unpack_state_dict",
    "sparse_model_bytes",
    "SparseLinear",
    "to_sparse_linear",
]

FORMATS = ("dense", "bitmask", "csr")
"""Tensor encodings. ``pack_state_dict`` also takes ``"auto"``: the smallest one per tensor."""

_FORMAT_CODE = {"dense": 0, "bitmask": 1, "csr": 2}
_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)
_INDEX = {8: np.uint8, 16: np.uint16, 32: np.uint32}
_HEADER = struct.Struct("<BBBBB")  # format, dtype, ndim, row-pointer bits, column-index bits
_MAGIC = b"LKSD1"  # a packed state dict


# --------------------------------------------------------------------------- one tensor


def to_sparse_bytes(
    tensor: Tensor, format: str = "bitmask", index_bits: int | None = None
) -> bytes:
    """Encode ``tensor`` as ``format`` ('dense', 'bitmask', 'csr'); exact but for zeros' signs.

    Entries equal to zero (+0.0 or −0.0, found on the bit patterns) are left out; every other
    entry is stored bit for bit, so the round trip is bit-exact except that −0.0 comes back as
    +0.0 (see the module doc). The dense format keeps every bit.

    CSR views the tensor as (shape[0], rest) (a 0-d or 1-d tensor as one row). ``index_bits``
    (8, 16 or 32) fixes the width of the CSR column indices; None picks the smallest that fits
    (row pointers always do). Values keep the tensor's dtype. The length is
    ``sparse_nbytes(shape, nnz, ...)``.

    Example: ``len(to_sparse_bytes(torch.zeros(100, 100), "bitmask"))  # 1263``
    """
    check_choice("format", format, FORMATS)
    if not isinstance(tensor, Tensor):
        raise ArgumentTypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    check_choice("tensor dtype", tensor.dtype, _DTYPES)
    t = tensor.detach().cpu().contiguous()
    shape = tuple(t.shape)
    if format == "dense":
        return _header(format, t.dtype, shape, 0, 0) + _raw(t.reshape(-1))
    flat = t.reshape(-1)  # (n,)
    keep = _nonzero(flat)  # (n,) bool
    values = flat[keep]  # (nnz,)
    if format == "bitmask":
        bits = np.packbits(keep.numpy(), bitorder="little")  # (ceil(n / 8),) uint8
        return _header(format, t.dtype, shape, 0, 0) + bits.tobytes() + _raw(values)
    rows, cols = _rows_cols(shape)
    ptr_bits, idx_bits = _csr_bits(len(values), cols, index_bits)
    keep2 = keep.reshape(rows, cols)  # (rows, cols)
    counts = keep2.sum(dim=1).numpy()  # (rows,)
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(_INDEX[ptr_bits])  # (rows + 1,)
    col_idx = keep2.nonzero()[:, 1].numpy().astype(_INDEX[idx_bits])  # (nnz,) row-major order
    header = _header(format, t.dtype, shape, ptr_bits, idx_bits)
    return header + row_ptr.tobytes() + col_idx.tobytes() + _raw(values)


def from_sparse_bytes(payload: bytes) -> Tensor:
    """Decode what :func:`to_sparse_bytes` wrote back into a dense CPU tensor.

    Bit-exact but for the sign of zeros (a left-out −0.0 is read back as +0.0).

    Example: ``torch.equal(from_sparse_bytes(to_sparse_bytes(w, "csr")), w)  # True``
    """
    try:
        return _decode(memoryview(payload))
    except (struct.error, IndexError, ValueError, RuntimeError) as err:
        if isinstance(err, ValueError) and str(err).startswith("payload"):
            raise
        raise ValueError(f"payload must be bytes written by to_sparse_bytes; {err}") from None


def sparse_nbytes(
    shape: Sequence[int],
    nnz: int,
    format: str = "bitmask",
    dtype: torch.dtype = torch.float32,
    index_bits: int | None = None,
) -> int:
    """Bytes of ``to_sparse_bytes`` for a tensor of ``shape`` with ``nnz`` non-zeros (a formula).

    dense: header + n × itemsize; bitmask: header + ceil(n / 8) + nnz × itemsize;
    csr: header + (rows + 1) × pointer bytes + nnz × (index bytes + itemsize).
    Example: ``sparse_nbytes((300, 64), 1920, "csr")  # 10 % density: 10,215 vs 76,813 dense``
    """
    check_choice("format", format, FORMATS)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if not 0 <= nnz <= n:
        raise ValueError(f"nnz must be an integer in [0, {n}]; got {nnz!r}")
    size = torch.empty((), dtype=dtype).element_size()
    head = _HEADER.size + 4 * len(shape)
    if format == "dense":
        return head + n * size
    if format == "bitmask":
        return head + (n + 7) // 8 + nnz * size
    rows, cols = _rows_cols(shape)
    ptr_bits, idx_bits = _csr_bits(nnz, cols, index_bits)
    return head + (rows + 1) * ptr_bits // 8 + nnz * (idx_bits // 8 + size)


def break_even_density(
    format: str = "bitmask", dtype: torch.dtype = torch.float32, index_bits: int = 16
) -> float:
    """The fraction of non-zeros below which ``format`` beats dense storage (large tensors).

    bitmask: 1 - 1 / (8 × itemsize) (fp32: 0.969); csr: itemsize / (itemsize + index bytes)
    (fp32 with 16-bit indices: 0.667), ignoring the header and row pointers.
    Example: ``break_even_density("csr", torch.float32, 8)  # 0.8``
    """
    check_choice("format", format, ("bitmask", "csr"))
    check_choice("index_bits", index_bits, tuple(_INDEX))
    size = torch.empty((), dtype=dtype).element_size()
    if format == "bitmask":
        return 1.0 - 1.0 / (8 * size)
    return size / (size + index_bits // 8)


# --------------------------------------------------------------------------- a whole model


def effective_state_dict(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with pruning masks folded in: ``weight = weight_orig * weight_mask``.

    A model pruned with ``torch.nn.utils.prune`` saves ``weight_orig`` and ``weight_mask``; what
    you ship is their product under the plain name. Other entries pass through unchanged.
    Example: ``effective_state_dict(pruned)["net.1.weight"]``
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            out[key[: -len("_orig")]] = value * state[key[: -len("_orig")] + "_mask"]
        else:
            out[key] = value
    return out


def pack_state_dict(
    model_or_state: nn.Module | Mapping[str, Tensor],
    format: str = "bitmask",
    index_bits: int | None = None,
) -> bytes:
    """One self-describing blob holding every tensor of the (effective) state dict.

    Weight matrices and kernels (floating point, 2-D or more) use ``format``; ``"auto"`` picks the
    smallest encoding per tensor; biases, norms and buffers are stored dense. Layout: a magic
    string, a count, then per tensor (name length, name, encoding length, encoding).
    Example: ``len(pack_state_dict(pruned, "csr"))``
    """
    check_choice("format", format, (*FORMATS, "auto"))
    parts = [_MAGIC]
    state = effective_state_dict(model_or_state)
    parts.append(struct.pack("<I", len(state)))
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2 and format != "dense":
            options = FORMATS if format == "auto" else (format,)
            blob = min((to_sparse_bytes(value, f, index_bits) for f in options), key=len)
        else:
            blob = to_sparse_bytes(value, "dense")
        name = key.encode()
        parts += [struct.pack("<H", len(name)), name, struct.pack("<I", len(blob)), blob]
    return b"".join(parts)


def unpack_state_dict(payload: bytes) -> dict[str, Tensor]:
    """Read :func:`pack_state_dict`'s blob back: ``{name: dense tensor}`` (load_state_dict-ready).

    Example: ``fresh.load_state_dict(unpack_state_dict(blob))``
    """
    view = memoryview(payload)
    if bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise ValueError("payload must be bytes written by pack_state_dict; bad magic")
    (count,) = struct.unpack_from("<I", view, len(_MAGIC))
    pos, out = len(_MAGIC) + 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", view, pos)
        name = bytes(view[pos + 2 : pos + 2 + n]).decode()
        (m,) = struct.unpack_from("<I", view, pos + 2 + n)
        start = pos + 6 + n
        out[name] = from_sparse_bytes(bytes(view[start : start + m]))
        pos = start + m
    return out


def sparse_model_bytes(
    model: nn.Module, format: str = "bitmask", index_bits: int | None = None
) -> int:
    """Real bytes of the model shipped as ``pack_state_dict(model, format)``.

    Compare with ``labkit.measure.model_bytes`` (``torch.save`` of the dense state dict).
    Example: ``sparse_model_bytes(pruned, "auto")``
    """
    return len(pack_state_dict(model, format, index_bits))


# --------------------------------------------------------------------------- sparse compute


class SparseLinear(nn.Module):
    """A Linear layer computing with its weight in CSR form (``torch.sparse.mm``).

    Dense kernels do the same work whatever the zeros; a sparse kernel skips them but pays for
    index look-ups, so it only wins at high sparsity (time it: ``measure.compare_latency``).
    Example: ``SparseLinear(pruned_linear)(x)  # same output as the dense layer``
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()  # the effective weight (masks applied)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            self.register_buffer("weight_csr", weight.to_sparse_csr())  # (out, in) CSR
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (N, in)
        y = torch.sparse.mm(self.weight_csr, flat.T).T  # (N, out)
        if self.bias is not None:
            y = y + self.bias  # (N, out)
        return y.reshape(*x.shape[:-1], self.out_features)  # (..., out)


def to_sparse_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (inference only), every ``nn.Linear`` replaced by :class:`SparseLinear`.

    Pruning masks are folded first.
    Example: ``measure.compare_latency({"dense": m, "csr": to_sparse_linear(m)}, X)``
    """
    model = copy.deepcopy(_detached(model))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear):
            if hasattr(m, "weight_mask"):
                nn.utils.prune.remove(m, "weight")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SparseLinear(m))
    return model.eval()


def _detached(model: nn.Module) -> nn.Module:
    """Replace the cached ``weight`` of pruned layers by a detached copy so deepcopy works."""
    for m in model.modules():
        if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
            m.weight = m.weight.detach()
    return model


# --------------------------------------------------------------------------- primitives


def _header(format: str, dtype: torch.dtype, shape: tuple[int, ...], ptr: int, idx: int) -> bytes:
    head = _HEADER.pack(_FORMAT_CODE[format], _DTYPES.index(dtype), len(shape), ptr, idx)
    return head + struct.pack(f"<{len(shape)}I", *shape)


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _nonzero(flat: Tensor) -> Tensor:
    """True where an entry is not ±0, decided on the bits: a float comparison ``x != 0`` treats
    subnormals as zero when the CPU flushes denormals (``torch.set_flush_denormal(True)``)."""
    if not flat.is_floating_point():
        return flat != 0  # (n,) bool
    bits = flat.view(_SAME_WIDTH_INT[flat.element_size()])  # (n,) the raw bit patterns
    sign = torch.tensor(1, dtype=bits.dtype) << (8 * flat.element_size() - 1)  # the sign bit
    return (bits & ~sign) != 0  # (n,) bool: every bit but the sign


def _raw(t: Tensor) -> bytes:
    """The bytes of a 1-D tensor in native (little-endian) order, any dtype incl. bfloat16."""
    return t.contiguous().view(torch.uint8).numpy().tobytes()  # (n * itemsize,)


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _fits(value: int) -> int:
    return next(bits for bits in _INDEX if value < 2**bits)


def _csr_bits(nnz: int, cols: int, index_bits: int | None) -> tuple[int, int]:
    """(row-pointer bits, column-index bits): the smallest that fit; ``index_bits`` fixes the
    column indices (the rows + 1 pointers always take the smallest width that holds ``nnz``)."""
    ptr, idx = _fits(nnz), _fits(max(cols - 1, 0))
    if index_bits is None:
        return ptr, idx
    check_choice("index_bits", index_bits, (None, *_INDEX))
    if index_bits < idx:
        raise ValueError(f"index_bits must be at least {idx} for {cols} columns; got {index_bits}")
    return ptr, index_bits


def _decode(view: memoryview) -> Tensor:
    fmt_code, dtype_code, ndim, ptr_bits, idx_bits = _HEADER.unpack_from(view, 0)
    fmt = {v: k for k, v in _FORMAT_CODE.items()}.get(fmt_code)
    if fmt is None or dtype_code >= len(_DTYPES):
        raise ValueError("payload must be bytes written by to_sparse_bytes; unknown format/dtype")
    dtype = _DTYPES[dtype_code]
    shape = struct.unpack_from(f"<{ndim}I", view, _HEADER.size)
    pos = _HEADER.size + 4 * ndim
    n = math.prod(shape)
    size = torch.empty((), dtype=dtype).element_size()

    def values(start: int, count: int) -> Tensor:
        chunk = bytearray(view[start : start + count * size])
        if len(chunk) != count * size:
            raise ValueError("payload must be bytes written by to_sparse_bytes; truncated")
        return (
            torch.frombuffer(chunk, dtype=torch.uint8).view(dtype)
            if count
            else (torch.empty(0, dtype=dtype))
        )

    if fmt == "dense":
        return values(pos, n).reshape(shape)
    flat = torch.zeros(n, dtype=dtype)  # (n,)
    if fmt == "bitmask":
        nbytes = (n + 7) // 8
        bits = np.frombuffer(view[pos : pos + nbytes], dtype=np.uint8)
        keep = np.unpackbits(bits, count=n, bitorder="little").astype(bool)  # (n,)
        flat[torch.from_numpy(keep)] = values(pos + nbytes, int(keep.sum()))
        return flat.reshape(shape)
    rows, cols = _rows_cols(shape)
    ptr = np.frombuffer(view[pos : pos + (rows + 1) * ptr_bits // 8], dtype=_INDEX[ptr_bits])
    nnz = int(ptr[-1])
    pos += (rows + 1) * ptr_bits // 8
    col = np.frombuffer(view[pos : pos + nnz * idx_bits // 8], dtype=_INDEX[idx_bits])
    row = np.repeat(np.arange(rows), np.diff(ptr.astype(np.int64)))  # (nnz,)
    where = torch.from_numpy(row * cols + col.astype(np.int64))  # (nnz,) flat positions
    flat[where] = values(pos + nnz * idx_bits // 8, nnz)
    return flat.reshape(shape)
