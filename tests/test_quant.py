"""labkit.quant: primitives bit-exact against PyTorch's fake-quant; observers; transforms; QAT."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from labkit import measure, models, quant
from labkit.quant import QuantConfig

BITS = (2, 3, 4, 8)


def _torch_per_tensor(x, scale, zp, bits, symmetric):
    qmin, qmax = quant.qrange(bits, symmetric)
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)


def _torch_per_channel(x, scale, zp, bits, symmetric, axis):
    qmin, qmax = quant.qrange(bits, symmetric)
    return torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), axis, qmin, qmax)


# --------------------------------------------------------------------------- primitives


def test_qrange():
    assert quant.qrange(8, True) == (-128, 127)
    assert quant.qrange(8, False) == (0, 255)
    assert quant.qrange(4, True) == (-8, 7)
    assert quant.qrange(2, False) == (0, 3)
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[2, 8\]; got 9$"):
        quant.qrange(9)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_fake_quantize_per_tensor_is_bit_exact(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    for spread in (0.01, 1.0, 37.0):
        x = torch.randn(50_000, generator=g) * spread + spread / 3  # (N,), off-centre
        scale, zp = quant.choose_qparams(x, bits, symmetric)
        ours = quant.fake_quantize_affine(x, scale, zp, bits, symmetric)
        assert torch.equal(ours, _torch_per_tensor(x, scale, zp, bits, symmetric))
        # clipping: a tighter scale pushes values out of range; still identical
        ours = quant.fake_quantize_affine(x, scale / 3, zp, bits, symmetric)
        assert torch.equal(ours, _torch_per_tensor(x, scale / 3, zp, bits, symmetric))


@pytest.mark.parametrize("symmetric", [True, False])
def test_ties_round_half_to_even_like_torch(symmetric):
    scale, zp = torch.tensor(0.25), torch.tensor(0 if symmetric else 100)
    x = (torch.arange(-40, 40) + 0.5) * scale  # every value sits exactly halfway between two codes
    ours = quant.fake_quantize_affine(x, scale, zp, 8, symmetric)
    assert torch.equal(ours, _torch_per_tensor(x, scale, zp, 8, symmetric))
    q = quant.quantize_affine(x, scale, zp, 8, symmetric).to(torch.int64) - zp
    assert torch.all(q % 2 == 0), "ties go to the even integer"
    naive = torch.floor(x / scale + 0.5)  # round-half-up: the test must be able to tell
    assert not torch.equal(q.float(), naive)


def test_multiplies_by_the_reciprocal_like_torch():
    # x / s and x * (1/s) round differently for a few float32 values; torch's kernels multiply.
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)) * 3
    scale, zp = torch.tensor(0.0371), torch.tensor(3)
    ours = quant.fake_quantize_affine(x, scale, zp, 8, True)
    assert torch.equal(ours, _torch_per_tensor(x, scale, zp, 8, True))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("bits", BITS)
def test_fake_quantize_per_channel_is_bit_exact(bits, axis, symmetric):
    g = torch.Generator().manual_seed(bits + 10 * (axis % 4))
    w = torch.randn(12, 6, 3, 3, generator=g) * torch.logspace(-2, 1, 6)[None, :, None, None]
    scale, zp = quant.choose_qparams(w, bits, symmetric, axis=axis)
    assert scale.shape == zp.shape == (w.shape[axis],)
    ours = quant.fake_quantize_affine(w, scale, zp, bits, symmetric, axis=axis)
    assert torch.equal(ours, _torch_per_channel(w, scale, zp, bits, symmetric, axis % w.dim()))


@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_of_quantize_is_fake_quantize(symmetric):
    x = torch.randn(4, 33, generator=torch.Generator().manual_seed(1))
    scale, zp = quant.choose_qparams(x, 8, symmetric, axis=1)
    q = quant.quantize_affine(x, scale, zp, 8, symmetric, axis=1)
    assert q.dtype == (torch.int8 if symmetric else torch.uint8)
    back = quant.dequantize_affine(q, scale, zp, axis=1)
    assert torch.equal(back, quant.fake_quantize_affine(x, scale, zp, 8, symmetric, axis=1))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_error_at_most_half_a_step_inside_the_range(bits, symmetric):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(bits)) * 2
    scale, zp = quant.choose_qparams(x, bits, symmetric)
    err = (quant.fake_quantize_affine(x, scale, zp, bits, symmetric) - x).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-5)
    # outside the range values are clamped to the end points
    qmin, qmax = quant.qrange(bits, symmetric)
    far = torch.tensor([1e3, -1e3])
    out = quant.fake_quantize_affine(far, scale, zp, bits, symmetric)
    assert torch.allclose(out, torch.stack([(qmax - zp) * scale, (qmin - zp) * scale]).float())


def test_symmetric_qparams_properties():
    w = torch.tensor([[-3.0, 1.0, 0.5], [0.2, -0.1, 0.05]])
    scale, zp = quant.choose_qparams(w, 8, True, axis=0)
    assert torch.equal(zp, torch.zeros(2, dtype=torch.int64))
    q = quant.quantize_affine(w, scale, zp, 8, True, axis=0)
    assert q.abs().amax(dim=1).tolist() == [127, 127], "max |w| of each row lands on qmax"
    assert quant.fake_quantize_affine(torch.zeros(2, 3), scale, zp, 8, True, axis=0).eq(0).all()


@pytest.mark.parametrize("per_channel", [False, True])
def test_affine_qparams_match_torch_ao_minmax_observer(per_channel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

        x = torch.randn(8, 50, generator=torch.Generator().manual_seed(3)) * 4 + 1
        if per_channel:
            obs = PerChannelMinMaxObserver(0, torch.quint8, torch.per_channel_affine)
        else:
            obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        obs(x)
        ref_scale, ref_zp = obs.calculate_qparams()
    scale, zp = quant.choose_qparams(x, 8, False, axis=0 if per_channel else None)
    assert torch.equal(scale.reshape(ref_scale.shape), ref_scale)
    assert torch.equal(zp.reshape(ref_zp.shape).to(ref_zp.dtype), ref_zp)


def test_zero_is_exact_and_constant_tensors_are_safe():
    for symmetric in (True, False):
        scale, zp = quant.choose_qparams(torch.full((5,), 0.7), 8, symmetric)
        assert float(scale) > 0
        zero = quant.fake_quantize_affine(torch.zeros(1), scale, zp, 8, symmetric)
        assert float(zero) == 0.0
        scale, zp = quant.choose_qparams(torch.zeros(5), 8, symmetric)
        assert float(scale) == torch.finfo(torch.float32).eps


def test_bad_inputs_raise_one_line_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="axis must be set"):
        quant.fake_quantize_affine(x, torch.ones(4), torch.zeros(4), 8, True)
    with pytest.raises(ValueError, match=r"scale and zero_point must have shape \(3,\)"):
        quant.fake_quantize_affine(x, torch.ones(4), torch.zeros(4), 8, True, axis=1)
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        quant.qparams_from_range(1.0, -1.0)
    with pytest.raises(ValueError, match="symmetric must be one of True, False"):
        quant.qrange(8, "yes")


def _numpy_pack(codes: torch.Tensor, bits: int) -> list[int]:
    """Independent reference: each code's ``bits`` lowest bits, lowest first, in one stream
    (``np.unpackbits``), packed eight to a byte by ``np.packbits`` (little-endian, zero-padded)."""
    as_bytes = codes.numpy().astype("<u2").view(np.uint8).reshape(-1, 2)  # (n, 2) little-endian
    stream = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(stream.reshape(-1), bitorder="little").tolist()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_pack_bits_matches_numpy_packbits_and_round_trips(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits * 99 + n))
    packed = quant.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert packed.tolist() == _numpy_pack(codes, bits)
    assert torch.equal(quant.pack_bits(codes.to(torch.uint8), bits), packed)  # any integer dtype
    back = quant.unpack_bits(packed, bits, n)
    assert back.dtype == torch.int64 and torch.equal(back, codes)


def test_pack_bits_layouts():
    # two 4-bit codes per byte, low nibble first
    assert quant.pack_bits(torch.tensor([0x1, 0x2, 0xF, 0x0]), 4).tolist() == [0x21, 0x0F]
    # four 2-bit codes per byte
    assert quant.pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    # 3-bit codes run across bytes: 8 codes fill exactly 3 bytes
    assert quant.pack_bits(torch.arange(8), 3).numel() == 3
    stream = "".join(format(c, "03b")[::-1] for c in range(8))  # little-endian bit stream
    expected = [int(stream[i : i + 8][::-1], 2) for i in range(0, 24, 8)]
    assert quant.pack_bits(torch.arange(8), 3).tolist() == expected


def test_pack_bits_rejects_bad_input():
    with pytest.raises(ValueError, match=r"^codes must be integers in \[0, 3\]"):
        quant.pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match=r"^codes must be integers in \[0, 3\]"):
        quant.pack_bits(torch.tensor([-1]), 2)
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[1, 8\]; got 9$"):
        quant.pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match=r"^packed must hold 2 bytes; got 1$"):
        quant.unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)


# --------------------------------------------------------------------------- straight-through


@pytest.mark.parametrize("symmetric", [True, False])
def test_ste_gradient_matches_torch_fake_quant_backward(symmetric):
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 3
    scale, zp = quant.choose_qparams(x / 2, 4, symmetric)  # a range that clips some values
    qmin, qmax = quant.qrange(4, symmetric)
    g = torch.randn(2000, generator=torch.Generator().manual_seed(1))
    a = x.clone().requires_grad_()
    quant.fake_quantize_ste(a, scale, zp, 4, symmetric).backward(g)
    b = x.clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(b, float(scale), int(zp), qmin, qmax).backward(g)
    assert torch.equal(a.grad, b.grad)
    clipped = (x / scale).round() + zp
    inside = (clipped >= qmin) & (clipped <= qmax)
    assert 0 < int(inside.sum()) < x.numel(), "the test must cover both cases"
    assert torch.equal(a.grad[inside], g[inside]) and a.grad[~inside].eq(0).all()


def test_ste_per_channel_gradient_matches_torch():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    scale, zp = quant.choose_qparams(w * 0.6, 3, True, axis=0)
    a = w.clone().requires_grad_()
    quant.fake_quantize_ste(a, scale, zp, 3, True, 0).sum().backward()
    b = w.clone().requires_grad_()
    torch.fake_quantize_per_channel_affine(b, scale, zp.int(), 0, -4, 3).sum().backward()
    assert torch.equal(a.grad, b.grad) and 0 < int(a.grad.sum()) < w.numel()


# --------------------------------------------------------------------------- observers


def test_observers_ranges():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(1000, generator=g) for _ in range(3)]
    batches[1][7] = 40.0  # one outlier
    obs = {m: quant.Observer(m, bits=4, percentile=99.9) for m in quant.CALIBRATIONS}
    for o in obs.values():
        for b in batches:
            o.update(b)
    lo, hi = obs["minmax"].range()
    allx = torch.cat(batches)
    assert float(lo) == float(allx.min()) and float(hi) == 40.0
    lo_p, hi_p = obs["percentile"].range()
    assert float(hi_p) < 10 and math.isclose(float(hi_p), float(torch.quantile(allx, 0.999)))
    errs = {}
    for m, o in obs.items():
        scale, zp = o.qparams()
        errs[m] = float(
            (quant.fake_quantize_affine(allx, scale, zp, 4, False) - allx).square().mean()
        )
    assert errs["mse"] <= errs["percentile"] < errs["minmax"], errs
    with pytest.raises(ValueError, match="method must be one of"):
        quant.Observer("kl")
    with pytest.raises(ValueError, match="observer must see at least one batch"):
        quant.Observer().range()


# --------------------------------------------------------------------------- model transforms


def _dscnn() -> nn.Module:
    torch.manual_seed(0)
    model = models.DSCNN(models.DSCNNConfig(channels=(8, 16)))
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.01, 4.0)
            m.weight.data.uniform_(0.1, 3.0)
    return model.eval()


def test_quant_config_validation():
    assert QuantConfig() == QuantConfig(8, 8, "per_tensor", True, "minmax")
    with pytest.raises(ValueError, match="^granularity must be one of 'per_tensor', 'per_channel'"):
        QuantConfig(granularity="per_row")
    with pytest.raises(ValueError, match="^calibration must be one of"):
        QuantConfig(calibration="kl")
    with pytest.raises(ValueError, match=r"^act_bits must be an integer in \[2, 8\]; got 16$"):
        QuantConfig(act_bits=16)
    with pytest.raises(ValueError, match=r"^percentile must be a number in \(50, 100\]"):
        QuantConfig(percentile=101)


def test_fold_bn_keeps_outputs():
    model = _dscnn()
    X = torch.rand(4, 1, 8, 8)
    folded = quant.fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "original untouched"
    with torch.no_grad():
        assert torch.allclose(folded(X), model(X), atol=1e-5)


def test_quantize_wraps_every_layer_and_leaves_the_original():
    model = _dscnn()
    X = torch.rand(64, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quant.quantize(model, QuantConfig(), X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layers = quant.quantized_layers(qmodel)
    assert len(layers) == sum(isinstance(m, quant.QUANTIZABLE) for m in model.modules())
    with torch.no_grad():
        ref, out = model(X), qmodel(X)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel
    with pytest.raises(ValueError, match="calib_data must be given"):
        quant.quantize(model, QuantConfig())
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize(qmodel, QuantConfig(), X)


def test_quantize_reaches_every_linear_of_a_transformer():
    torch.manual_seed(0)
    vit = models.ViT(models.ViTConfig(dim=32, depth=2, heads=2)).eval()
    X = torch.rand(16, 1, 8, 8)
    qvit = quant.quantize(vit, QuantConfig(granularity="per_channel"), X)
    n_linear = sum(isinstance(m, nn.Linear) for m in vit.modules())
    assert len(quant.quantized_layers(qvit)) == n_linear
    with torch.no_grad():
        ref = vit(X)
        assert float((qvit(X) - ref).norm() / ref.norm()) < 0.05


def test_fake_quant_layer_computes_on_rounded_weights_and_inputs():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    X = torch.randn(2, 3, 5, 5)
    cfg = QuantConfig(bits=4, act_bits=6, granularity="per_channel")
    layer = quant.FakeQuantLayer(conv, cfg)
    quant.calibrate_(nn.Sequential(layer), X)
    xs, xz = quant.choose_qparams(X, 6, False)  # min-max over the one calibration batch
    assert torch.equal(layer.act_scale, xs) and torch.equal(layer.act_zero_point, xz)
    ws, wz = quant.choose_qparams(conv.weight.detach(), 4, True, axis=0)
    x_q = _torch_per_tensor(X, xs, xz, 6, False)
    w_q = _torch_per_channel(conv.weight.detach(), ws, wz, 4, True, 0)
    with torch.no_grad():
        assert torch.equal(layer(X), nn.functional.conv2d(x_q, w_q, conv.bias, padding=1))


def test_per_channel_beats_per_tensor_on_depthwise_weights():
    model = quant.fold_bn(_dscnn())
    dw = model.blocks[0].depthwise[0].weight.detach()  # (C, 1, 3, 3), channel scales differ
    errs = {}
    for axis in (None, 0):
        scale, zp = quant.choose_qparams(dw, 8, True, axis=axis)
        errs[axis] = float((quant.fake_quantize_affine(dw, scale, zp, 8, True, axis) - dw).norm())
    assert errs[0] < errs[None] / 2, errs


@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_state_dict_restores_the_weights_and_is_smaller(symmetric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    X = torch.rand(32, 1, 16, 16)
    fp32 = measure.model_bytes(model)
    assert quant.packed_bytes(model) == fp32, "nothing quantized: the plain state_dict"
    sizes = {}
    for bits in (8, 4, 3):
        cfg = QuantConfig(bits=bits, symmetric=symmetric, granularity="per_channel")
        qmodel = quant.quantize(model, cfg, X)
        sd = quant.packed_state_dict(qmodel)
        for name, layer in quant.quantized_layers(qmodel).items():
            w = layer.layer.weight.detach()
            codes = quant.unpack_bits(sd[f"{name}.weight_packed"], bits, w.numel()).view(w.shape)
            zp = sd.get(f"{name}.weight_zero_point", torch.zeros(w.shape[0])).to(torch.int64)
            q = codes.to(torch.int64) - (2 ** (bits - 1) if symmetric else 0)
            back = quant.dequantize_affine(q, sd[f"{name}.weight_scale"], zp, axis=0)
            with torch.no_grad():
                assert torch.equal(back, layer.quantized_weight())
        sizes[bits] = quant.packed_bytes(qmodel)
    assert 3.7 < fp32 / sizes[8] < 4.0, (fp32, sizes)  # 4x, less scales and container
    assert sizes[3] < sizes[4] < sizes[8]


def test_weight_only_needs_no_calibration_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    qmodel = quant.quantize(model, QuantConfig(bits=8, act_bits=None))
    X = torch.randn(5, 16)
    with torch.no_grad():
        w0 = quant.fake_quantize_affine(model[0].weight, *quant.choose_qparams(model[0].weight))
        w2 = quant.fake_quantize_affine(model[2].weight, *quant.choose_qparams(model[2].weight))
        ref = nn.functional.linear(
            torch.relu(nn.functional.linear(X, w0, model[0].bias)), w2, model[2].bias
        )
        assert torch.equal(qmodel(X), ref)


def test_qat_recovers_accuracy_lost_by_ptq(one_thread):
    from labkit import data, train

    d = data.load("digits")
    torch.manual_seed(0)
    model = models.MLP(models.MLPConfig(hidden=(32,)))
    train.fit(model, d, num_epochs=8, lr=3e-3, val=False, progress=False)
    cfg = QuantConfig(bits=2, act_bits=4, granularity="per_channel")
    ptq = quant.quantize(model, cfg, d)
    tuned = quant.qat(model, d, cfg, num_epochs=3, lr=1e-3, progress=False)
    assert quant.quantized_layers(tuned) and not quant.quantized_layers(model)
    acc_fp32 = train.evaluate(model, d)["acc"]
    acc_ptq, acc_qat = train.evaluate(ptq, d)["acc"], train.evaluate(tuned, d)["acc"]
    assert acc_ptq < acc_fp32 - 0.05, (acc_fp32, acc_ptq)
    assert acc_qat > acc_ptq + 0.05, (acc_ptq, acc_qat)


def test_hold_zeros_keeps_zero_weights_out_of_the_gradient_only_inside_the_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight[:, :3] = 0.0  # a pruned half
    X = torch.randn(16, 6)
    qmodel = quant.quantize(model, QuantConfig(bits=4, act_bits=None), X)
    (layer,) = quant.quantized_layers(qmodel).values()
    zero = layer.layer.weight == 0

    def grad():
        qmodel.zero_grad()
        qmodel(X).square().sum().backward()
        return layer.layer.weight.grad

    with quant.hold_zeros(qmodel):
        inside = grad()
        assert torch.all(inside[zero] == 0) and torch.any(inside[~zero] != 0)
    assert torch.any(grad()[zero] != 0)  # the hooks are gone after the block
