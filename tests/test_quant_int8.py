"""labkit.quant_int8: real int8 kernels agree with fp32, are ~4x smaller, and are timed fairly."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from labkit import measure, models
from labkit.quant import int8 as quant_int8


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10)).eval()  # fmt: skip


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("mode", quant_int8.MODES)
def test_int8_mlp_is_close_and_four_times_smaller(mode):
    model = _mlp()
    X = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # to_int8 must keep them to itself
        qmodel = quant_int8.to_int8(model, X, mode=mode)
    with torch.no_grad(), quant_int8.quiet():
        err = _rel_err(qmodel(X), model(X))
    assert 0 < err < 0.05, err
    ratio = measure.model_bytes(model) / measure.model_bytes(qmodel)
    assert 3.5 < ratio < 4.1, ratio
    linears = [m for m in qmodel.modules() if type(m) is nn.Linear]
    assert not linears, "every nn.Linear runs on an int8 kernel"
    assert any(isinstance(p, nn.Parameter) for p in model.parameters()), "original untouched"


def test_static_int8_cnn_is_close_with_calibration():
    torch.manual_seed(0)
    model = models.DSCNN().eval()
    X = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    qmodel = quant_int8.to_int8(model, X[:4], calib_data=(X, None), num_samples=128)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in qmodel.modules())
    with torch.no_grad(), quant_int8.quiet():
        err = _rel_err(qmodel(X), model(X))
    assert 0 < err < 0.1, err
    # the zoo's DSCNN is small: per-layer scales and the container eat part of the 4x
    assert 1.5 < measure.model_bytes(model) / measure.model_bytes(qmodel) < 4


def test_compare_speed_reports_against_the_best_fp32_layout():
    torch.manual_seed(0)
    model = models.LeNet().eval()
    X = torch.rand(8, 1, 8, 8)
    qmodel = quant_int8.to_int8(model, X)
    rows = quant_int8.compare_speed(model, {"int8": qmodel}, X, threads=1, warmup=1, repeats=3)
    assert {(r["name"], r["layout"]) for r in rows} == {
        (n, lay) for n in ("fp32", "int8") for lay in ("nchw", "channels_last")
    }
    fp32 = [r for r in rows if r["fp32"]]
    assert max(r["speedup"] for r in fp32) == pytest.approx(1.0)  # the best fp32 is the baseline
    assert [r["median_ms"] for r in rows] == sorted(r["median_ms"] for r in rows)
    flat = quant_int8.compare_speed(_mlp(), {"q": _mlp()}, torch.randn(4, 256), repeats=2)
    assert {r["layout"] for r in flat} == {"nchw"}, "no layout choice without Conv2d"


def test_compare_speed_folds_batchnorm_for_the_fp32_baseline():
    torch.manual_seed(0)
    model = models.DSCNN(models.DSCNNConfig(channels=(8, 16))).eval()
    X = torch.rand(4, 1, 8, 8)
    rows = quant_int8.compare_speed(model, {"same": model}, X, threads=1, warmup=1, repeats=2)
    names = {r["name"] for r in rows if r["fp32"]}
    assert names == {"fp32", "fp32 BN folded"}
    best = min(r["median_ms"] for r in rows if r["fp32"])
    assert all(r["speedup"] == pytest.approx(best / r["median_ms"]) for r in rows)
    with pytest.raises(ValueError, match="must not start with 'fp32'"):
        quant_int8.compare_speed(model, {"fp32 int8": model}, X)


def test_dynamic_works_on_a_transformer_and_static_explains_why_not():
    torch.manual_seed(0)
    vit = models.ViT(models.ViTConfig(dim=32, depth=1, heads=2)).eval()
    X = torch.rand(4, 1, 8, 8)
    qmodel = quant_int8.to_int8(vit, X, mode="dynamic")
    with torch.no_grad(), quant_int8.quiet():
        assert _rel_err(qmodel(X), vit(X)) < 0.1
    with pytest.raises(ValueError, match="^model must be traceable by torch.fx"):
        quant_int8.to_int8(vit, X, mode="static")


def test_bad_arguments():
    with pytest.raises(ValueError, match="^mode must be one of 'static', 'dynamic'; got 'qat'$"):
        quant_int8.to_int8(_mlp(), torch.randn(2, 256), mode="qat")
    with pytest.raises(ValueError, match="^backend must be one of"):
        quant_int8.to_int8(_mlp(), torch.randn(2, 256), backend="cuda")
    with pytest.raises(ValueError, match="int8_models must be a non-empty dict"):
        quant_int8.compare_speed(_mlp(), {}, torch.randn(2, 256))
