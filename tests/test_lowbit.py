"""labkit.quant.lowbit: packing, group-wise grids vs PyTorch, PackedLinear bytes, GPTQ,
codebooks."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import measure, models, quant
from labkit.quant import lowbit
from labkit.quant.lowbit import LowBitConfig


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [0, 1, 5, 6, 999])
def test_pack_ternary_five_per_byte(n):
    codes = torch.randint(0, 3, (n,), generator=_gen(n))
    packed = lowbit.pack_ternary(codes)
    assert packed.numel() == math.ceil(n / 5)
    assert packed.numel() == 0 or int(packed.max()) <= 242  # 3**5 - 1
    assert torch.equal(lowbit.unpack_ternary(packed, n), codes)
    assert lowbit.pack_ternary(torch.tensor([2, 1, 0, 0, 1])).tolist() == [2 + 3 + 81]
    with pytest.raises(ValueError, match=r"^codes must be integers in \[0, 2\]"):
        lowbit.pack_ternary(torch.tensor([3]))


# --------------------------------------------------------------------------- group-wise grids


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [8, 32, 96])
def test_group_fake_quant_matches_torch_per_channel(bits, symmetric, group_size):
    w = torch.randn(48, 96, generator=_gen(bits)) * torch.logspace(-2, 0, 96)  # uneven columns
    gq = lowbit.rtn(w, bits, group_size, symmetric)
    qmin, qmax = quant.qrange(bits, symmetric)
    zp = gq.zero_point - (2 ** (bits - 1) if symmetric else 0)  # signed grid when symmetric
    ref = torch.fake_quantize_per_channel_affine(
        w.reshape(-1, group_size), gq.scale.flatten(), zp.flatten().int(), 0, qmin, qmax
    ).reshape(w.shape)
    assert torch.equal(lowbit.fake_quantize_groups(w, bits, group_size, symmetric), ref)
    assert torch.equal(gq.dequantize(), ref)
    assert gq.codes.min() >= 0 and gq.codes.max() <= 2**bits - 1
    assert torch.equal(gq.scale.half().float(), gq.scale), "scales are exact float16"


@pytest.mark.parametrize("group_size", [7, 32, 100])
def test_group_error_at_most_half_a_step_with_ragged_last_group(group_size):
    w = torch.randn(10, 100, generator=_gen(group_size))
    for bits in (2, 3, 4):
        gq = lowbit.rtn(w, bits, group_size)
        assert gq.scale.shape == (10, math.ceil(100 / group_size))
        step = gq.scale.repeat_interleave(group_size, dim=1)[:, :100]  # (10, 100)
        assert torch.all((gq.dequantize() - w).abs() <= step / 2 * (1 + 1e-5))


def test_group_qparams_errors():
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[2, 8\]; got 1$"):
        lowbit.group_qparams(torch.randn(2, 4), 1, 2)
    with pytest.raises(ValueError, match=r"^group_size must be an integer >= 1; got 0$"):
        lowbit.group_qparams(torch.randn(2, 4), 4, 0)


def test_config_validation():
    with pytest.raises(ValueError, match=r"^method must be one of 'rtn', 'gptq'"):
        LowBitConfig(method="awq")
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[2, 8\]; got 1$"):
        LowBitConfig(bits=1)
    with pytest.raises(ValueError, match=r"^damp must be a number in \[0, 1\)"):
        LowBitConfig(damp=1.5)
    with pytest.raises(ValueError, match=r"^skip must be a tuple of layer names"):
        LowBitConfig(skip="lm_head")


# --------------------------------------------------------------------------- the packed layer


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_linear_computes_with_the_dequantized_weight(bits, symmetric):
    layer = nn.Linear(40, 24)
    gq = lowbit.rtn(layer.weight, bits, 16, symmetric)  # 40 = 16 + 16 + 8: a ragged group
    packed = lowbit.PackedLinear.from_group_quant(gq, layer.bias)
    assert torch.equal(packed.codes(), gq.codes)
    assert torch.equal(packed.dequantize(), gq.dequantize())
    x = torch.randn(5, 40, generator=_gen(0))
    assert torch.equal(packed(x), F.linear(x, gq.dequantize(), layer.bias))
    # the serialized layer loads back into an empty one of the same shape
    buf = io.BytesIO()
    torch.save(packed.state_dict(), buf)
    fresh = lowbit.PackedLinear(40, 24, bits=bits, group_size=16, symmetric=symmetric)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(fresh(x), packed(x))


@pytest.mark.parametrize("bits", [2, 4])
def test_serialized_bytes_approach_the_limit(bits):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.Linear(1024, 1024, bias=False))
    q = lowbit.quantize(big, LowBitConfig(bits=bits, group_size=128))
    n = 2 * 1024 * 1024
    stored = lowbit.weight_bytes(q)
    assert stored["numel"] == n
    assert stored["bytes"] * 8 == n * lowbit.bits_per_weight(bits, 128)  # codes + scales + zp
    limit = lowbit.compression_limit(bits, 128)
    assert limit == 32 / (bits + (16 + bits) / 128)
    ratio = measure.model_bytes(big) / measure.model_bytes(q)  # the real files
    assert 0.99 * limit < ratio <= limit
    assert ratio > (14.8 if bits == 2 else 7.4)


def test_bits_per_weight():
    assert lowbit.bits_per_weight(4, 128, symmetric=True) == 4.125
    assert lowbit.bits_per_weight(2, None, in_features=64) == 2 + 18 / 64
    with pytest.raises(ValueError, match="^in_features must be given"):
        lowbit.bits_per_weight(2, None)


def test_quantize_returns_a_new_model_and_honours_skip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(8, 20)
    before = model(x)
    q = lowbit.quantize(model, LowBitConfig(bits=8, group_size=None, skip=("3",)))
    assert torch.equal(model(x), before) and type(model[1]) is nn.Linear
    assert isinstance(q[1], lowbit.PackedLinear) and type(q[3]) is nn.Linear
    assert list(lowbit.packed_layers(q)) == ["1"]
    assert torch.allclose(q(x), before, atol=0.05)  # 8 bits: close to float
    with pytest.raises(ValueError, match=r"^skip must name Linear layers of the model"):
        lowbit.quantize(model, LowBitConfig(skip=("head",)))
    with pytest.raises(ValueError, match=r"^calib_data must be a tensor of model inputs"):
        lowbit.quantize(model, LowBitConfig(method="gptq"))
    with pytest.raises(ValueError, match=r"^config must be a LowBitConfig"):
        lowbit.quantize(model, quant.QuantConfig())


# --------------------------------------------------------------------------- GPTQ


def _layer_problem(seed: int = 0):
    g = _gen(seed)
    X = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    w = torch.randn(32, 64, generator=g) * 0.1
    return X, w


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [16, 64])
def test_gptq_reduces_output_error_vs_rtn(bits, group_size):
    X, w = _layer_problem(bits)
    err = lambda gq: torch.linalg.norm(X @ w.T - X @ gq.dequantize().T).item()  # noqa: E731
    g = lowbit.gptq(w, lowbit.hessian(X), bits, group_size)
    r = lowbit.rtn(w, bits, group_size)
    assert err(g) < 0.9 * err(r)


@pytest.mark.parametrize("group_size", [8, 20, 64])
def test_gptq_with_identity_hessian_is_rtn(group_size):
    _, w = _layer_problem(1)
    for bits in (2, 4):
        g = lowbit.gptq(w, torch.eye(64), bits, group_size)
        r = lowbit.rtn(w, bits, group_size)
        assert torch.equal(g.codes, r.codes) and torch.equal(g.scale, r.scale)
        assert torch.equal(g.zero_point, r.zero_point)


def test_gptq_lazy_blocks_change_nothing():
    X, w = _layer_problem(2)
    H = lowbit.hessian(X)
    a = lowbit.gptq(w, H, 3, 24, block_size=128)
    b = lowbit.gptq(w, H, 3, 24, block_size=5)  # groups straddle blocks
    assert (a.codes != b.codes).float().mean() < 0.01
    assert torch.allclose(a.scale, b.scale, rtol=1e-3)


def test_gptq_handles_dead_inputs_and_checks_shape():
    X, w = _layer_problem(3)
    X[:, 5] = 0.0  # an input that is always zero
    g = lowbit.gptq(w, lowbit.hessian(X), 4, 16)
    assert torch.isfinite(g.dequantize()).all()
    with pytest.raises(ValueError, match=r"^H must have shape \(64, 64\)"):
        lowbit.gptq(w, torch.eye(3), 4, 16)


def test_hessian_is_xtx_over_n():
    X = torch.randn(100, 7, generator=_gen(4))
    assert torch.allclose(lowbit.hessian(X), X.T @ X / 100, atol=1e-5)


def test_quantize_gptq_on_a_model_beats_rtn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    X = torch.randn(256, 32) @ torch.randn(32, 32)
    ref = model(X)
    errs = {}
    for method in ("rtn", "gptq"):
        q = lowbit.quantize(model, LowBitConfig(bits=2, group_size=32, method=method), X)
        errs[method] = (q(X) - ref).square().mean().item()
    assert errs["gptq"] < errs["rtn"]


# --------------------------------------------------------------------------- codebooks


def test_kmeans_beats_its_uniform_init_and_matches_sklearn():
    w = torch.randn(64, 64, generator=_gen(5)) ** 3  # heavy tails: uniform levels waste range
    for bits in (2, 3, 4):
        codebook, codes = lowbit.kmeans_codebook(w, bits)
        assert codebook.shape == (2**bits,) and codes.shape == w.shape
        assert torch.equal(codebook, torch.sort(codebook).values)
        uniform = torch.linspace(float(w.min()), float(w.max()), 2**bits)
        near = (w[..., None] - uniform).abs().argmin(-1)
        mse_k = (codebook[codes] - w).square().mean()
        assert mse_k < (uniform[near] - w).square().mean()
        # every weight sits at its nearest level
        assert torch.equal(codes, (w[..., None] - codebook).abs().argmin(-1))
    cluster = pytest.importorskip("sklearn.cluster")
    x = w.flatten()[:, None].double().numpy()
    init = torch.linspace(float(w.min()), float(w.max()), 8)[:, None].double().numpy()
    km = cluster.KMeans(8, init=init, n_init=1, max_iter=30, tol=0.0).fit(x)
    ours, _ = lowbit.kmeans_codebook(w, 3)
    ref = torch.tensor(sorted(km.cluster_centers_.ravel())).float()
    assert torch.allclose(ours, ref, rtol=2e-3, atol=1e-3)


def test_ternarize_scale_is_least_squares_and_threshold_holds():
    w = torch.randn(50, 40, generator=_gen(6))
    t, alpha = lowbit.ternarize(w, 0.7)
    delta = 0.7 * w.abs().mean()
    assert set(t.unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(t != 0, w.abs() > delta) and torch.equal(t[t != 0], w.sign()[t != 0].char())
    ref = torch.linalg.lstsq(t.flatten()[:, None].double(), w.flatten()[:, None].double())
    assert alpha.item() == pytest.approx(ref.solution.item(), rel=1e-3)  # float16 alpha


def test_binarize_and_absmean():
    w = torch.randn(30, 20, generator=_gen(7))
    w[0, 0] = 0.0
    s, alpha = lowbit.binarize(w)
    assert set(s.unique().tolist()) == {-1, 1} and s[0, 0] == 1
    ref = torch.linalg.lstsq(s.flatten()[:, None].double(), w.flatten()[:, None].double())
    assert alpha.item() == pytest.approx(ref.solution.item(), rel=1e-3)  # mean|w| is optimal
    t, gamma = lowbit.absmean_ternary(w)
    assert gamma.item() == pytest.approx(w.abs().mean().item(), rel=1e-3)
    assert torch.equal(t != 0, w.abs() / (w.abs().mean() + 1e-8) > 0.5)  # threshold gamma / 2
    assert torch.equal(t[t != 0], w.sign()[t != 0].char())


@pytest.mark.parametrize("method", ["kmeans", "twn", "absmean", "binary"])
def test_codebook_layers_pack_and_serialize(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    q = lowbit.quantize(model, LowBitConfig(bits=3, method=method))
    layer = q[0]
    levels = {"kmeans": 8, "twn": 3, "absmean": 3, "binary": 2}[method]
    assert layer.levels == levels and layer.codebook.dtype == torch.float16
    assert layer.dequantize().unique().numel() <= levels
    per_weight = {"kmeans": 3, "twn": 1.6, "absmean": 1.6, "binary": 1}[method]
    assert layer.packed.numel() == math.ceil(64 * 64 * per_weight / 8)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    fresh = lowbit.quantize(model, LowBitConfig(bits=3, method=method))
    for m in lowbit.packed_layers(fresh).values():
        m.packed.zero_()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), q(x))


# --------------------------------------------------------------------------- ternary training


def test_bitlinear_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    layer = lowbit.BitLinear(16, 8)
    x = torch.randn(4, 16)
    t, gamma = lowbit.absmean_ternary(layer.weight)
    w_q = t.float() * gamma
    y = layer(x)
    assert torch.allclose(y, F.linear(x, w_q, layer.bias))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(layer.weight.grad, g.T @ x, atol=1e-6)  # as if d w_q / d w = 1


def test_to_bitlinear_then_pack_gives_the_same_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    bit = lowbit.to_bitlinear(model, skip=("2",))
    assert type(bit[0]) is lowbit.BitLinear and type(bit[2]) is nn.Linear
    assert torch.equal(bit[0].weight, model[0].weight)
    packed = lowbit.quantize(bit, LowBitConfig(method="absmean", skip=("2",)))
    x = torch.randn(9, 12)
    assert torch.allclose(packed(x), bit(x), atol=1e-6)


# --------------------------------------------------------------------------- notebook 05's protocol

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _code_cells(stem: str) -> list[str]:
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _run_until(stem: str, name: str) -> dict:
    """Run a notebook's code cells in order until one defines ``name``; return the namespace."""
    ns: dict = {}
    for source in _code_cells(stem):
        exec(compile(source, f"{stem}.ipynb", "exec"), ns)  # noqa: S102 - the course's own cells
        if name in ns:
            return ns
    raise AssertionError(f"{stem} never defines {name}")


@pytest.mark.skipif(not models.is_cached("gpt", "pydoc"), reason="needs labkit prepare")
def test_notebook_05_reports_notebook_01s_fp32_perplexity(one_thread, capsys):
    # one evaluation protocol: the fp32 perplexity 05 reports (and its sweep uses) is the one 01
    # reports for the same zoo model, train.evaluate_lm on the whole validation split
    nb05 = _run_until("05_lowbit_quantization", "fp32")
    nb01 = _run_until("01_transformers", "result")
    assert nb05["fp32"]["gpt"]["ppl"] == nb01["result"]["ppl"]
    assert nb05["ppl"](nb05["gpt"]) == nb01["result"]["ppl"]


def test_binarize_is_xnor_nets_scaled_sign_not_binaryconnect():
    w = torch.randn(16, 24, generator=_gen(5))
    signs, alpha = lowbit.binarize(w)
    S = signs.double().flatten()[:, None]  # the least-squares alpha for these signs
    best = torch.linalg.lstsq(S, w.double().flatten()[:, None]).solution.item()
    assert alpha.item() == pytest.approx(best, rel=1e-3)  # float16-exact
    summary = lowbit.binarize.__doc__.split("\n\n")[0]
    assert "XNOR-Net" in summary and "BinaryConnect/" not in summary
