"""labkit.prune.sparse: bit-exact encodings (but for the sign of zero), byte formulas equal real
lengths, torch's CSR as oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit import measure, prune
from labkit.prune import sparse


def _sparse_tensor(shape, density, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    keep = torch.rand(shape, generator=g) < density
    return (t * keep).to(dtype)


CASES = [
    ((), 1.0),
    ((0,), 0.5),
    ((17,), 0.3),
    ((8, 64), 0.1),
    ((300, 64), 0.05),
    ((6, 1, 5, 5), 0.5),
    ((4, 3, 7), 0.0),
    ((5, 9), 1.0),
    ((2, 300), 0.2),  # more than 255 columns: 16-bit column indices
]


@pytest.mark.parametrize("fmt", sparse.FORMATS)
@pytest.mark.parametrize("shape, density", CASES)
def test_round_trip_is_exact_and_length_matches_formula(fmt, shape, density):
    t = _sparse_tensor(shape, density)
    blob = sparse.to_sparse_bytes(t, fmt)
    back = sparse.from_sparse_bytes(blob)
    assert back.shape == t.shape and back.dtype == t.dtype and torch.equal(back, t)
    assert len(blob) == sparse.sparse_nbytes(t.shape, int(torch.count_nonzero(t)), fmt)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool]
)
def test_round_trip_other_dtypes(dtype):
    t = _sparse_tensor((12, 10), 0.3, dtype=dtype)
    for fmt in sparse.FORMATS:
        blob = sparse.to_sparse_bytes(t, fmt)
        assert torch.equal(sparse.from_sparse_bytes(blob), t)
        assert len(blob) == sparse.sparse_nbytes(t.shape, int(torch.count_nonzero(t)), fmt, dtype)


_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64}
_INT_OF.update({torch.float16: torch.int16, torch.bfloat16: torch.int16})


def _awkward(dtype):
    """±0, ±subnormals, ±inf and NaNs with distinct payloads (set on the bit patterns), in dtype."""
    ints = _INT_OF[dtype]
    bits = 8 * torch.empty((), dtype=dtype).element_size()
    info = torch.finfo(dtype)
    mant = {torch.float32: 23, torch.float64: 52, torch.float16: 10, torch.bfloat16: 7}[dtype]
    exp_all = ((1 << (bits - 1 - mant)) - 1) << mant  # exponent bits all ones
    sign = -(1 << (bits - 1))  # the sign bit as a signed integer
    nan_a, nan_b = exp_all | 1, exp_all | (1 << (mant - 1)) | 3  # a signalling and a quiet payload
    raw = torch.tensor([nan_a, nan_b, sign | nan_b, 1, sign | 3], dtype=ints).view(dtype)
    normal = [info.tiny, -info.tiny, info.max, float("inf"), float("-inf"), 1.5]
    zeros = [0.0, -0.0, 0.0, -0.0]
    return torch.cat([raw, torch.tensor(normal + zeros, dtype=dtype)]).repeat(3)  # (45,)


@pytest.mark.parametrize("flush_denormal", [False, True])
@pytest.mark.parametrize("dtype", list(_INT_OF), ids=lambda d: str(d)[6:])
def test_round_trip_is_bit_exact_but_for_the_sign_of_zero(dtype, flush_denormal):
    """Every non-zero bit pattern comes back, even when the CPU flushes denormals to zero; a zero
    comes back as +0.0 whatever its sign (the documented exception)."""
    t = _awkward(dtype).reshape(5, 9)
    ints = _INT_OF[dtype]
    expected = t.view(ints).clone()
    expected[expected == torch.tensor(-0.0, dtype=dtype).view(ints)] = 0  # -0.0 -> +0.0
    assert (t.view(ints) != expected).sum() == 6  # the test does hold negative zeros
    nnz = int((expected != 0).sum())
    torch.set_flush_denormal(flush_denormal)  # the default is False
    try:
        for fmt in sparse.FORMATS:
            back = sparse.from_sparse_bytes(sparse.to_sparse_bytes(t, fmt))
            want = t.view(ints) if fmt == "dense" else expected  # dense keeps every bit
            assert torch.equal(back.view(ints), want), fmt
            if fmt != "dense":
                assert len(sparse.to_sparse_bytes(t, fmt)) == sparse.sparse_nbytes(
                    t.shape, nnz, fmt, dtype
                )
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("index_bits", [None, 16, 32])
def test_csr_layout_matches_torch_to_sparse_csr(index_bits):
    t = _sparse_tensor((40, 30), 0.4, seed=3)  # about 480 non-zeros: 16-bit row pointers
    assert 256 <= int(torch.count_nonzero(t)) < 65536
    blob = sparse.to_sparse_bytes(t, "csr", index_bits=index_bits)
    ref = t.to_sparse_csr()
    fmt, dtype, ndim, ptr_bits, idx_bits = blob[:5]
    assert (fmt, ndim) == (2, 2)
    assert (ptr_bits, idx_bits) == (16, 8 if index_bits is None else index_bits)
    pos = 5 + 4 * ndim
    ptr = np.frombuffer(blob[pos : pos + 41 * ptr_bits // 8], dtype=f"<u{ptr_bits // 8}")
    pos += 41 * ptr_bits // 8
    nnz = int(ptr[-1])
    col = np.frombuffer(blob[pos : pos + nnz * idx_bits // 8], dtype=f"<u{idx_bits // 8}")
    vals = np.frombuffer(blob[pos + nnz * idx_bits // 8 :], dtype="<f4")
    assert ptr.tolist() == ref.crow_indices().tolist()
    assert col.tolist() == ref.col_indices().tolist()
    assert np.array_equal(vals, ref.values().numpy())


def test_bitmask_layout_matches_numpy_packbits():
    t = _sparse_tensor((13, 7), 0.4, seed=5)
    blob = sparse.to_sparse_bytes(t, "bitmask")
    head = 5 + 4 * 2
    bits = np.packbits((t != 0).numpy().reshape(-1), bitorder="little")
    assert blob[head : head + len(bits)] == bits.tobytes()
    vals = np.frombuffer(blob[head + len(bits) :], dtype="<f4")
    assert np.array_equal(vals, t[t != 0].numpy())


def test_break_even_density_is_where_sparse_stops_paying():
    shape, n = (1024, 1024), 1024 * 1024
    dense = sparse.sparse_nbytes(shape, n, "dense")
    for fmt, bits in [("bitmask", 16), ("csr", 16), ("csr", 32)]:
        d = sparse.break_even_density(fmt, torch.float32, bits)
        below = sparse.sparse_nbytes(shape, int((d - 0.01) * n), fmt, index_bits=bits)
        above = sparse.sparse_nbytes(shape, int((d + 0.01) * n), fmt, index_bits=bits)
        assert below < dense < above, (fmt, bits)
    assert sparse.break_even_density("bitmask") == pytest.approx(31 / 32)
    assert sparse.break_even_density("csr", torch.float32, 8) == pytest.approx(0.8)
    assert sparse.break_even_density("bitmask", torch.int8) == pytest.approx(7 / 8)


def _pruned_model(amount=0.9):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    return prune.magnitude(model, amount, scope="global")


def test_effective_state_dict_folds_masks():
    pruned = _pruned_model()
    eff = sparse.effective_state_dict(pruned)
    ref = prune.remove(pruned).state_dict()
    assert set(eff) == set(ref)
    for k in ref:
        assert torch.equal(eff[k], ref[k])


@pytest.mark.parametrize("fmt", [*sparse.FORMATS, "auto"])
def test_packed_model_round_trip_and_real_bytes(fmt):
    pruned = _pruned_model()
    blob = sparse.pack_state_dict(pruned, fmt)
    assert len(blob) == sparse.sparse_model_bytes(pruned, fmt)
    fresh = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    ).eval()
    fresh.load_state_dict(sparse.unpack_state_dict(blob))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh(x), prune.remove(pruned).eval()(x))
    # expected size: the per-tensor encodings plus the container's per-entry framing
    state = sparse.effective_state_dict(pruned)
    expected = len(b"LKSD1") + 4
    for k, v in state.items():
        big = v.is_floating_point() and v.dim() >= 2 and fmt != "dense"
        options = (sparse.FORMATS if fmt == "auto" else (fmt,)) if big else ("dense",)
        nnz = int(torch.count_nonzero(v))
        expected += (
            2
            + len(k.encode())
            + 4
            + min(sparse.sparse_nbytes(v.shape, nnz, f, v.dtype) for f in options)
        )
    assert len(blob) == expected


def test_sparse_storage_beats_torch_save_only_when_sparse():
    pruned = _pruned_model(0.9)
    dense_bytes = measure.model_bytes(prune.remove(pruned))
    assert sparse.sparse_model_bytes(pruned, "bitmask") < dense_bytes / 4
    sizes = {f: sparse.sparse_model_bytes(pruned, f) for f in (*sparse.FORMATS, "auto")}
    assert sizes["auto"] <= min(sizes[f] for f in sparse.FORMATS)
    unpruned = prune.remove(_pruned_model(0.0))
    assert sparse.sparse_model_bytes(unpruned, "csr") > sparse.sparse_model_bytes(unpruned, "dense")


def test_bad_input():
    with pytest.raises(
        ValueError, match="format must be one of 'dense', 'bitmask', 'csr'; got 'coo'"
    ):
        sparse.to_sparse_bytes(torch.zeros(3), "coo")
    with pytest.raises(ValueError, match="index_bits must be at least 16 for 300 columns; got 8"):
        sparse.to_sparse_bytes(torch.ones(2, 300), "csr", index_bits=8)
    with pytest.raises(ValueError, match="index_bits must be one of"):
        sparse.to_sparse_bytes(torch.ones(2, 3), "csr", index_bits=12)
    with pytest.raises(ValueError, match="nnz must be an integer in"):
        sparse.sparse_nbytes((3, 3), 10)
    with pytest.raises(ValueError, match="payload must be bytes written by"):
        sparse.from_sparse_bytes(b"\x09\x00")
    with pytest.raises(ValueError, match="payload must be bytes written by"):
        sparse.from_sparse_bytes(sparse.to_sparse_bytes(torch.ones(4, 4), "dense")[:-3])
    with pytest.raises(ValueError, match="payload must be bytes written by pack_state_dict"):
        sparse.unpack_state_dict(b"nope")
    assert math.isclose(sparse.break_even_density("csr", torch.float16, 16), 0.5)


def test_sparse_linear_computes_what_the_dense_layer_computes():
    pruned = prune.magnitude(
        nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5, bias=False)), 0.9, "global"
    )
    csr = sparse.to_sparse_linear(pruned)
    assert [type(m).__name__ for m in csr] == ["SparseLinear", "ReLU", "SparseLinear"]
    assert csr[0].weight_csr.layout == torch.sparse_csr
    assert csr[0].weight_csr._nnz() == int(torch.count_nonzero(pruned[0].weight))
    for shape in [(7, 20), (2, 3, 20)]:
        x = torch.randn(shape)
        assert torch.allclose(csr(x), pruned(x), atol=1e-6)
    assert hasattr(pruned[0], "weight_mask")  # the input model keeps its masks
