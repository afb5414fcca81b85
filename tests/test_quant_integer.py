"""labkit.quant_integer: gemmlowp's fixed-point primitives against a literal scalar reference and
hand-computed cases; integer layers and models against torch.ao's quantized kernels."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from labkit import models
from labkit.quant import integer as qi
from labkit.quant.int8 import quiet

INT32_MIN, INT32_MAX = qi.INT32_MIN, qi.INT32_MAX
# QNNPACK is the torch.ao backend that adds an int32 bias and requantizes every output with one
# float32 multiply and a round to nearest even; oneDNN behaves alike. FBGEMM's depthwise kernel
# differs by a few codes on some outputs, so it is not the oracle here.
ORACLE = "qnnpack" if "qnnpack" in torch.backends.quantized.supported_engines else "onednn"


def i32(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


# --------------------------------------------------------------------------- scalar references
# gemmlowp's fixedpoint.h, transcribed line by line on Python ints (C integer division truncates).


def _c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _srdhm_ref(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
    return _c_div(ab + nudge, 1 << 31)


def _rdbpot_ref(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask  # Python's & on negative ints is two's complement, like int32's
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _random_int32(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    edges = i32(INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX, 1 << 30, -(1 << 30))
    bulk = torch.randint(INT32_MIN, INT32_MAX, (n,), generator=g, dtype=torch.int64)
    small = torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int64)
    return torch.cat([edges.long(), bulk, small]).to(torch.int32)


# --------------------------------------------------------------------------- primitives


def test_srdhm_hand_computed_cases():
    f = qi.saturating_rounding_doubling_high_mul
    assert f(i32(1 << 30), i32(1 << 30)).item() == 1 << 29  # 0.5 * 0.5 = 0.25 in Q31
    assert f(i32(INT32_MIN), i32(INT32_MIN)).item() == INT32_MAX  # (-1) * (-1) saturates
    assert f(i32(INT32_MIN), i32(INT32_MAX)).item() == INT32_MIN + 1
    assert f(i32(INT32_MAX), i32(INT32_MAX)).item() == INT32_MAX - 1
    # 3 * 0.5 = 1.5 -> 2 and -1.5 -> -1: ties round up; -0.5 -> 0
    assert f(i32(3, -3, -1, 1), i32(1 << 30, 1 << 30, 1 << 30, 1 << 30)).tolist() == [2, -1, 0, 1]
    assert f(i32(100), i32(1288490240)).item() == 60  # 100 * 2 * 0.3 (float32 0.3 as Q31)


def test_srdhm_matches_gemmlowp_scalar_code():
    a, b = _random_int32(3000, 0), _random_int32(3000, 1)
    b = b[torch.randperm(len(b), generator=torch.Generator().manual_seed(2))]
    ours = qi.saturating_rounding_doubling_high_mul(a, b)
    assert ours.dtype == torch.int32
    assert ours.tolist() == [_srdhm_ref(x, y) for x, y in zip(a.tolist(), b.tolist())]


def test_rounding_divide_by_pot_hand_computed_cases():
    f = qi.rounding_divide_by_pot
    assert f(i32(5, -5, 4, -4, 6, -6, 7), 1).tolist() == [3, -3, 2, -2, 3, -3, 4]  # away from 0
    assert f(i32(-6, 6, -5, 5), 2).tolist() == [-2, 2, -1, 1]  # -1.5 -> -2, -1.25 -> -1
    assert f(i32(7, -7), 0).tolist() == [7, -7]
    assert f(i32(INT32_MIN, INT32_MAX, -(1 << 30), (1 << 30) - 1), 31).tolist() == [-1, 1, -1, 0]
    per_channel = f(i32(10, 10, 10), torch.tensor([0, 1, 2]))
    assert per_channel.tolist() == [10, 5, 3]


def test_rounding_divide_by_pot_matches_gemmlowp_scalar_code():
    x = _random_int32(1500, 3)
    for exponent in (0, 1, 5, 17, 31):
        ours = qi.rounding_divide_by_pot(x, exponent)
        assert ours.tolist() == [_rdbpot_ref(v, exponent) for v in x.tolist()], exponent


def test_quantize_multiplier_is_exact_for_float32_and_normalized():
    g = torch.Generator().manual_seed(4)
    m = torch.exp(-torch.rand(2000, generator=g) * 20)  # float32 in (2e-9, 1)
    m = torch.cat([m, torch.tensor([0.5, 0.25, 2.0**-32, 1 - 2.0**-24])])
    m0, n = qi.quantize_multiplier(m)
    assert m0.dtype == torch.int32 and bool((m0 >= 2**30).all()) and bool((n >= 0).all())
    for mi, m0i, ni in zip(m.tolist(), m0.tolist(), n.tolist()):
        assert Fraction(m0i, 2 ** (31 + ni)) == Fraction(mi), mi  # exact: no rounding at all
    assert qi.quantize_multiplier(torch.tensor(2.0**-40))[0].item() == 0  # below 2^-32: zero
    m0, n = qi.quantize_multiplier(torch.tensor(1 - 2.0**-40, dtype=torch.float64))
    assert (m0.item(), n.item()) == (INT32_MAX, 0)  # rounded to 1.0: the largest M0 below it


@pytest.mark.parametrize("rounding", qi.ROUNDINGS)
def test_multiply_by_quantized_multiplier_rounds_as_specified(rounding):
    acc = torch.cat([_random_int32(200, 5) // 1024, i32(INT32_MIN, INT32_MAX, 0, 1, -1)])
    g = torch.Generator().manual_seed(6)
    m = torch.exp(-torch.rand(len(acc), generator=g) * 12)  # (len,) in (6e-6, 1)
    m0, n = qi.quantize_multiplier(m)
    ours = qi.multiply_by_quantized_multiplier(acc, m0, n, rounding)
    for a, mi, ni, y in zip(acc.tolist(), m0.tolist(), n.tolist(), ours.tolist()):
        exact = Fraction(a * mi, 2 ** (31 + ni))
        nearest = (exact + Fraction(1, 2)).__floor__()  # ties up
        if rounding == "single":
            assert y == nearest, (a, mi, ni)
        else:
            assert y == _rdbpot_ref(_srdhm_ref(a, mi), ni), (a, mi, ni)
            assert abs(y - nearest) <= 1
            if y != nearest:  # double rounding: only within 2^-(n+1) of a half-integer
                assert abs(exact - exact.__floor__() - Fraction(1, 2)) <= Fraction(1, 2 ** (ni + 1))


def test_double_rounding_is_off_by_one_just_below_a_half():
    # acc * M = 20.4997..., first rounded to 20.5 (steps of 2^-10), then to 21; single gives 20
    m0, n = qi.quantize_multiplier(torch.tensor(0.0008522727875970304))
    assert n.item() == 10
    acc = i32(24053)
    assert qi.multiply_by_quantized_multiplier(acc, m0, n, "double").item() == 21
    assert qi.multiply_by_quantized_multiplier(acc, m0, n, "single").item() == 20


def test_requantize_saturates_and_fuses_relu():
    m0, n = qi.quantize_multiplier(torch.tensor(0.5))
    acc = i32(-1000, -10, 0, 10, 1000)
    assert qi.requantize(acc, m0, n, 100).tolist() == [0, 95, 100, 105, 255]
    assert qi.requantize(acc, m0, n, 100, qmin=100).tolist() == [100, 100, 100, 105, 255]
    assert qi.requantize(acc, m0, n, 100).dtype == torch.uint8


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^a must be an int32 tensor; got dtype torch.int64$"):
        qi.saturating_rounding_doubling_high_mul(torch.tensor([1]), i32(1))
    with pytest.raises(ValueError, match=r"^exponent must be an integer in \[0, 31\]"):
        qi.rounding_divide_by_pot(i32(1), 32)
    with pytest.raises(ValueError, match=r"^multiplier must hold real numbers in \(0, 1\)"):
        qi.quantize_multiplier(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"^rounding must be one of 'double', 'single'; got 'x'$"):
        qi.multiply_by_quantized_multiplier(i32(1), i32(1 << 30), torch.tensor(0), "x")
    with pytest.raises(ValueError, match=r"^granularity must be one of 'per_tensor', 'per_chan"):
        qi.IntegerLinear(nn.Linear(2, 2), (0.1, 0), (0.1, 0), granularity="row")
    with pytest.raises(ValueError, match=r"^layer must be an nn.Linear; got Conv2d$"):
        qi.IntegerLinear(nn.Conv2d(1, 1, 1), (0.1, 0), (0.1, 0))
    with pytest.raises(ValueError, match=r"^x must be a uint8 tensor of codes; got dtype"):
        qi.IntegerLinear(nn.Linear(2, 2), (0.1, 0), (0.1, 0))(torch.zeros(1, 2))
    gelu = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    with pytest.raises(ValueError, match=r"^model layers must be Linear, .*got GELU at '1'$"):
        qi.to_integer(gelu, torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"^model must be an IntegerModel; got Sequential$"):
        qi.torch_ao_reference(gelu)


# --------------------------------------------------------------------------- layers vs torch.ao


def _torch_ao(layer: qi._IntegerLayer, q: torch.Tensor) -> torch.Tensor:
    model = qi.IntegerModel([("layer", layer)], (layer.input_scale, layer.input_zero_point),
                            (layer.output_scale, layer.output_zero_point))  # fmt: skip
    return qi.torch_ao_reference(model, ORACLE).forward_int(q)


def _near_half(layer, acc, channel_dim=1) -> torch.Tensor:
    """Where acc * M lies within float32 rounding (2^-20 relative) of a half-integer."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    m = layer.multiplier.double().view(shape) * torch.pow(2.0, -31.0 - layer.shift.double()).view(
        shape
    )
    v = acc.double() * m
    return ((v - v.floor() - 0.5).abs() <= v.abs() * 2.0**-20) | (v.abs() > 2**24)


def _assert_matches_torch_ao(layer, q, rounding):
    steps = layer.steps(q)
    ours, ref = steps["output"].int(), _torch_ao(layer, q).int()
    diff = (ours - ref).abs()
    assert int(diff.max()) <= 1
    if rounding == "single":
        # float32's product can round across a half-integer; nowhere else may the two differ
        assert not bool((diff > 0)[~_near_half(layer, steps["accumulator"])].any())
        assert float((diff == 0).float().mean()) > 0.9999
    else:
        assert float((diff == 0).float().mean()) > 0.98  # about one output in 2^n differs
    return float((diff == 0).float().mean())


@pytest.mark.parametrize("rounding", qi.ROUNDINGS)
@pytest.mark.parametrize("granularity", qi.GRANULARITIES)
@pytest.mark.parametrize("relu", [False, True])
def test_integer_linear_matches_torch_ao(rounding, granularity, relu):
    torch.manual_seed(0)
    layer = nn.Linear(96, 48)
    layer.weight.data *= torch.logspace(-1, 0, 48)[:, None]  # channel ranges 10x apart
    x_q = torch.randint(0, 256, (256, 96), dtype=torch.uint8)
    integer = qi.IntegerLinear(layer, (0.02, 37), (0.03, 91), granularity, relu, rounding)
    assert integer.weight.dtype == torch.int8 and integer.bias.dtype == torch.int32
    out = integer(x_q)
    assert out.dtype == torch.uint8 and out.shape == (256, 48)
    if relu:
        assert int(out.min()) >= 91
    _assert_matches_torch_ao(integer, x_q, rounding)


@pytest.mark.parametrize("rounding", qi.ROUNDINGS)
@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2),
        dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),  # depthwise
        dict(in_channels=8, out_channels=4, kernel_size=(1, 3), groups=2, bias=False),
    ],
)
def test_integer_conv2d_matches_torch_ao(rounding, conv):
    torch.manual_seed(1)
    layer = nn.Conv2d(**conv)
    x_q = torch.randint(0, 256, (16, conv["in_channels"], 9, 9), dtype=torch.uint8)
    integer = qi.IntegerConv2d(layer, (0.02, 60), (0.05, 128), "per_channel", True, rounding)
    out = integer(x_q)
    assert out.shape == layer(torch.zeros(16, conv["in_channels"], 9, 9)).shape
    _assert_matches_torch_ao(integer, x_q, rounding)


def test_conv_pads_with_the_input_zero_point():
    # a 3x3 box filter over an input that is all real 0 (code 200): the padding must be real 0 too
    layer = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    layer.weight.data.fill_(1.0)
    integer = qi.IntegerConv2d(layer, (0.1, 200), (0.1, 10))
    out = integer(torch.full((1, 1, 4, 4), 200, dtype=torch.uint8))
    assert out.unique().tolist() == [10]  # the output's code of 0


# --------------------------------------------------------------------------- whole models


class _IntegerOnly(TorchDispatchMode):
    """Records the dtype of every tensor any torch op produces."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


def _mlp_and_data():
    torch.manual_seed(0)
    model = models.MLP(models.MLPConfig(in_features=64, hidden=(48, 32))).eval()
    X = torch.rand(512, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, X


def _dscnn_and_data():
    torch.manual_seed(0)
    model = models.DSCNN(models.DSCNNConfig(channels=(8, 16, 32))).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    X = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, X


@pytest.mark.parametrize("build", [_mlp_and_data, _dscnn_and_data])
def test_integer_model_runs_on_integers_only_and_matches_torch_ao(build):
    model, X = build()
    imodel = qi.to_integer(model, X, rounding="single")
    q = imodel.quantize_input(X)
    with _IntegerOnly() as mode:
        out = imodel.forward_int(q)
    assert mode.dtypes and not any(d.is_floating_point for d in mode.dtypes), mode.dtypes
    assert mode.dtypes <= {torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool}
    ref = qi.torch_ao_reference(imodel, ORACLE).forward_int(q)
    diff = (out.int() - ref.int()).abs()
    assert float((diff == 0).float().mean()) > 0.995 and int(diff.max()) <= 2
    with torch.no_grad():  # and it computes the float model, to 8-bit precision
        y, y_int = model(X), imodel(X)
    assert float((y_int - y).norm() / y.norm()) < 0.1
    assert float((y_int.argmax(1) == y.argmax(1)).float().mean()) > 0.9
    rows = imodel.trace(X[:2])
    assert [r["dtype"] for r in rows[:2]] == [torch.float32, torch.uint8]
    assert {r["dtype"] for r in rows[2:]} <= {torch.uint8, torch.int32}
    assert {r["step"] for r in rows} >= {"accumulator", "output"}


def test_to_integer_folds_batchnorm_and_fuses_relu():
    model, X = _dscnn_and_data()
    imodel = qi.to_integer(model, X)
    kinds = [type(m).__name__ for m in imodel.layers]
    assert kinds.count("IntegerConv2d") == 5 and "IntegerLinear" in kinds
    assert all(m.relu for m in imodel.layers if isinstance(m, qi.IntegerConv2d))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in imodel.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the model is untouched"


def test_lenet_max_pool_on_codes():
    torch.manual_seed(0)
    model = models.LeNet().eval()
    X = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    imodel = qi.to_integer(model, X, rounding="single")
    q = imodel.quantize_input(X)
    with quiet():
        ref = qi.torch_ao_reference(imodel, ORACLE).forward_int(q)
    diff = (imodel.forward_int(q).int() - ref.int()).abs()
    assert float((diff == 0).float().mean()) > 0.995 and int(diff.max()) <= 2


def test_model_that_reorders_its_layers_is_refused():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.b(x))

    with pytest.raises(ValueError, match=r"^model must run its leaf modules once each, in reg"):
        qi.to_integer(Backwards(), torch.randn(8, 4))
