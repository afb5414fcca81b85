"""Tests for labkit.measure: counts against closed forms, bytes against files, timing hygiene."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from labkit import measure

# --------------------------------------------------------------------------- MACs: three ways agree


def _three_ways(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(FlopCounterMode MACs, hook-based MACs, FLOPs) for one forward."""
    return measure.macs(model, x), measure.macs_by_hand(model, x), measure.flops(model, x)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_macs_with_batch_and_tokens(bias):
    model = nn.Linear(12, 7, bias=bias)
    x = torch.randn(3, 5, 12)  # (B, T, in)
    expected = measure.linear_macs(12, 7, batch=3, tokens=5)
    assert expected == 3 * 5 * 12 * 7
    counted, by_hand, flops = _three_ways(model, x)
    assert counted == by_hand == expected
    assert flops == 2 * expected  # bias adds are not counted by FlopCounterMode


@pytest.mark.parametrize(
    "cin, cout, k, stride, padding, groups, size",
    [
        (3, 8, 3, 1, 1, 1, 9),  # same padding
        (4, 6, 3, 2, 0, 2, 11),  # stride + grouped
        (8, 8, 3, 1, 1, 8, 7),  # depthwise
        (6, 12, 1, 1, 0, 1, 5),  # pointwise
        (2, 4, (3, 5), 2, 2, 1, 10),  # rectangular kernel
    ],
)
def test_conv2d_macs_match_formula(cin, cout, k, stride, padding, groups, size):
    model = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, cin, size, size + 1)
    kh, kw = (k, k) if isinstance(k, int) else k
    out_h = measure.conv_output_size(size, kh, stride, padding)
    out_w = measure.conv_output_size(size + 1, kw, stride, padding)
    assert model(x).shape[-2:] == (out_h, out_w)
    expected = measure.conv2d_macs(cin, cout, k, out_h, out_w, groups=groups, batch=2)
    assert expected == 2 * cout * out_h * out_w * (cin // groups) * kh * kw
    counted, by_hand, flops = _three_ways(model, x)
    assert counted == by_hand == expected
    assert flops == 2 * expected


def test_conv1d_macs_match_formula():
    model = nn.Conv1d(4, 6, 5, stride=2, padding=2, dilation=1, groups=2)
    x = torch.randn(3, 4, 40)
    out_len = measure.conv_output_size(40, 5, stride=2, padding=2)
    assert out_len == 20
    expected = measure.conv1d_macs(4, 6, 5, out_len, groups=2, batch=3)
    assert expected == 3 * 6 * 20 * 2 * 5
    assert _three_ways(model, x)[:2] == (expected, expected)


def test_conv_output_size_matches_pytorch_with_dilation():
    conv = nn.Conv2d(1, 1, 3, stride=3, padding=2, dilation=2)
    out = conv(torch.randn(1, 1, 17, 17))
    assert out.shape[-1] == measure.conv_output_size(17, 3, stride=3, padding=2, dilation=2)


def test_mixed_sequential_sum_of_parts_and_by_module():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # 8x8 -> 8x8
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise, -> 4x4
        nn.Conv2d(8, 16, 1),  # pointwise
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    x = torch.randn(5, 1, 8, 8)
    parts = {
        "0": measure.conv2d_macs(1, 8, 3, 8, 8, batch=5),
        "3": measure.conv2d_macs(8, 8, 3, 4, 4, groups=8, batch=5),
        "4": measure.conv2d_macs(8, 16, 1, 4, 4, batch=5),
        "7": measure.linear_macs(256, 10, batch=5),
    }
    expected = sum(parts.values())
    assert _three_ways(model, x)[:2] == (expected, expected)
    by_module = measure.flops_by_module(model, x)
    assert list(by_module) == [str(i) for i in range(8)]
    assert by_module == {str(i): 2 * parts.get(str(i), 0) for i in range(8)}


def test_attention_counted_on_cpu_but_not_by_hooks():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):  # (B, T, 8)
            q, k, v = self.qkv(x).view(2, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    x = torch.randn(2, 16, 8)
    linear = measure.linear_macs(8, 24, batch=2, tokens=16)
    attention = 2 * 2 * 16 * 16 * 4 * 2  # (B·H) · T · T · D, for q@k^T and for attn@v
    assert measure.macs(Attn(), x) == linear + attention
    assert measure.macs_by_hand(Attn(), x) == linear
    assert measure.flops_by_module(Attn(), x) == {"qkv": 2 * linear, "(self)": 2 * attention}


def test_by_module_sees_through_containers_that_never_run():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])  # never called itself
            self.head = nn.Linear(4, 2)

        def forward(self, x):  # (B, 4)
            for layer in self.layers:
                x = layer(x)
            return self.head(x) @ torch.ones(2, 5)  # a matmul outside any child: (B, 5)

    by_module = measure.flops_by_module(Stack(), torch.randn(3, 4))
    assert by_module == {"layers": 2 * 3 * 3 * 16, "head": 2 * 3 * 8, "(self)": 2 * 3 * 2 * 5}


@pytest.mark.skipif(importlib.util.find_spec("labkit.models") is None, reason="no models yet")
def test_model_zoo_macs_agree_with_hooks_and_hand_formula():
    from labkit import models

    x = torch.randn(1, 1, 8, 8)
    lenet = models.build("lenet")  # 8x8: conv5 pad2 -> pool -> 4x4: conv5 pad2 -> pool -> 2x2
    by_formula = (
        measure.conv2d_macs(1, 6, 5, 8, 8)
        + measure.conv2d_macs(6, 16, 5, 4, 4)
        + measure.linear_macs(16 * 2 * 2, 120)
        + measure.linear_macs(120, 84)
        + measure.linear_macs(84, 10)
    )
    assert measure.macs(lenet, x) == measure.macs_by_hand(lenet, x) == by_formula
    for name, inp in (("mlp", x), ("dscnn", x), ("cnn1d", torch.randn(2, 1, 40))):
        model = models.build(name)
        assert measure.macs(model, inp) == measure.macs_by_hand(model, inp) > 0, name
    vit = models.build("vit")  # attention matmuls: seen by FlopCounterMode, not by the hooks
    assert measure.macs(vit, x) > measure.macs_by_hand(vit, x) > 0


def test_counting_restores_training_mode_and_validates():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    measure.flops(model, torch.randn(2, 4))
    measure.macs_by_hand(model, torch.randn(2, 4))
    assert model.training and model[1].training
    with pytest.raises(ValueError, match="^groups must divide"):
        measure.conv2d_macs(4, 6, 3, 5, 5, groups=4)
    with pytest.raises(ValueError, match="^kernel_size must"):
        measure.conv_output_size(2, 5)
    with pytest.raises(ValueError, match="^inputs must be"):
        measure.flops(model, "x")


# --------------------------------------------------------------------------- params and bytes


def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_count_params_and_trainable_only():
    model = _tiny_mlp()
    assert measure.count_params(model) == 64 * 32 + 32 + 32 * 10 + 10
    model[1].requires_grad_(False)
    assert measure.count_params(model, trainable_only=True) == 32 * 10 + 10


def test_model_bytes_equals_saved_file(tmp_path):
    model = _tiny_mlp()
    # torch.save puts the file stem into every zip record name; in memory it uses "archive".
    path = tmp_path / "archive.pt"
    torch.save(model.state_dict(), path)
    assert measure.model_bytes(model) == os.path.getsize(path) == measure.file_bytes(path)
    assert measure.model_bytes(model) > measure.payload_bytes(model)


def test_payload_bytes_fp32_then_half():
    model = _tiny_mlp()
    params = measure.count_params(model)
    assert measure.payload_bytes(model) == 4 * params
    assert measure.payload_bytes(model.half()) == 2 * params


def test_payload_counts_tied_weights_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert len(model.state_dict()) == 2
    assert measure.count_params(model) == 40
    assert measure.payload_bytes(model) == 160


def test_pruning_drops_nonzero_exactly_but_grows_real_bytes():
    torch.manual_seed(0)
    model = _tiny_mlp()
    dense_nonzero = measure.count_nonzero(model)
    dense_bytes = measure.model_bytes(model)
    assert dense_nonzero == measure.count_params(model)
    prune.l1_unstructured(model[1], "weight", amount=0.5)  # 1024 of 2048 weights
    prune.l1_unstructured(model[3], "weight", amount=100)  # a count
    assert measure.count_nonzero(model) == dense_nonzero - 1024 - 100
    assert measure.count_params(model) == measure.count_params(_tiny_mlp())  # weight_orig is dense
    assert measure.model_bytes(model) > dense_bytes  # weight_orig AND weight_mask are stored
    # the effective weight is used even if weight_orig changes after the last forward
    with torch.no_grad():
        model[3].weight_orig.zero_()
    assert measure.count_nonzero(model) == dense_nonzero - 1024 - 32 * 10


def test_count_nonzero_sees_parametrizations():
    class KeepFirstRow(nn.Module):
        def forward(self, w):  # (out, in)
            mask = torch.zeros_like(w)
            mask[0] = 1
            return w * mask

    model = nn.Linear(6, 4, bias=False)
    nn.init.constant_(model.weight, 1.0)
    torch.nn.utils.parametrize.register_parametrization(model, "weight", KeepFirstRow())
    assert measure.count_params(model) == 24
    assert measure.count_nonzero(model) == 6


def test_count_nonzero_buffers_only_when_asked():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight.zero_()
    params_nz = 3 + 0  # BN weight=1 (3), BN bias=0, linear weight zeroed
    assert measure.count_nonzero(model) == params_nz
    # running_var = 1 (3), running_mean = 0, num_batches_tracked = 0
    assert measure.count_nonzero(model, include_buffers=True) == params_nz + 3


def test_bytes_report_labels_estimates():
    model = _tiny_mlp()
    report = measure.bytes_report(model)
    params = measure.count_params(model)
    assert report["serialized_bytes"] == measure.model_bytes(model)
    assert report["container_bytes"] == report["serialized_bytes"] - report["payload_bytes"]
    assert (report["estimated_fp32_bytes"], report["estimated_int8_bytes"]) == (4 * params, params)
    assert report["estimated_fp16_bytes"] == 2 * params


def test_file_bytes_missing_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="^path must be an existing file"):
        measure.file_bytes(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- latency


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def _check_timing_fields(result, repeats, batch_size):
    assert result["repeats"] == repeats
    assert result["batch_size"] == batch_size
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["min_ms"] <= result["p10_ms"]
    assert result["mean_ms"] > 0


def test_latency_fields_and_no_mutation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert converted[0].weight.stride() != strides["0.weight"]  # so the check below can fail
    for channels_last in (False, True):
        result = measure.latency(
            model, torch.randn(3, 3, 8, 8), threads=1, repeats=5, channels_last=channels_last
        )
        _check_timing_fields(result, repeats=5, batch_size=3)
        assert result["threads"] == 1 and result["channels_last"] is channels_last
    assert model.training and model[0].training  # training flags restored
    assert {k: v.stride() for k, v in model.state_dict().items()} == strides
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_latency_restores_threads_even_if_model_raises():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    old = torch.get_num_threads()
    target = 1 if old != 1 else min(2, os.cpu_count() or 1)
    with pytest.raises(RuntimeError, match="boom"):
        measure.latency(Boom(), torch.randn(1, 2), threads=target)
    assert torch.get_num_threads() == old
    measure.latency(nn.Identity(), torch.randn(1, 2), threads=target, repeats=1)
    assert torch.get_num_threads() == old


def test_latency_min_time_extends_repeats():
    result = measure.latency(nn.Identity(), torch.randn(1), repeats=1, warmup=0, min_time_s=0.02)
    assert result["repeats"] > 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"threads": 0}, "threads"),
        ({"threads": (os.cpu_count() or 1) + 1}, "threads"),
        ({"threads": 1.5}, "threads"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"min_time_s": -1.0}, "min_time_s"),
    ],
)
def test_latency_bad_arguments_one_line(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must") as err:
        measure.latency(nn.Identity(), torch.randn(1), **kwargs)
    assert "\n" not in str(err.value)


def test_scripted_workload_sleeps_its_script_and_counts_calls():
    w = measure.ScriptedWorkload(steady_ms=(2.0, 30.0), first_ms=(60.0,))
    assert [w.delay_ms(k) for k in range(6)] == [60.0, 2.0, 30.0, 2.0, 30.0, 2.0]
    x = torch.randn(3, 2)
    took = []
    for _ in range(4):
        t0 = time.perf_counter()
        assert w(x) is x
        took.append(1000 * (time.perf_counter() - t0))
    assert int(w.calls) == 4 and "calls" in dict(w.named_buffers())
    for k, ms in enumerate(took):  # never shorter than scripted; the order of the script shows
        assert ms >= w.delay_ms(k) - 0.05, (k, ms)
    assert took[0] > took[2] > took[1] and took[2] > took[3]


def test_latency_of_a_scripted_workload_skips_warmup_and_takes_the_median():
    """measure.latency on a known workload: warm-up hides the slow first calls, the median the
    held-up ones (a mean would not)."""
    w = measure.ScriptedWorkload(steady_ms=(3.0, 3.0, 3.0, 3.0, 150.0), first_ms=(150.0,) * 2)
    result = measure.latency(w, torch.zeros(1), warmup=2, repeats=10)
    assert int(w.calls) == 12
    assert 3.0 <= result["median_ms"] < 20.0 < 32.4 <= result["mean_ms"]  # mean: (8·3 + 2·150)/10


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steady_ms": ()}, "steady_ms"),
        ({"steady_ms": (1.0, -1.0)}, "steady_ms"),
        ({"steady_ms": 5.0}, "steady_ms"),
        ({"first_ms": (float("nan"),)}, "first_ms"),
        ({"first_ms": "slow"}, "first_ms"),
    ],
)
def test_scripted_workload_bad_arguments_one_line(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must") as err:
        measure.ScriptedWorkload(**kwargs)
    assert "\n" not in str(err.value)


def test_compare_latency_interleaved_with_speedup():
    model = _tiny_cnn()
    x = torch.randn(2, 1, 8, 8)
    results = measure.compare_latency(
        {"fp32": model, "cl": model},
        x,
        baseline="fp32",
        channels_last={"cl": True},
        repeats=4,
        threads=1,
    )
    assert list(results) == ["fp32", "cl"]
    assert results["fp32"]["speedup"] == 1.0
    assert results["cl"]["channels_last"] and not results["fp32"]["channels_last"]
    ratio = results["fp32"]["median_ms"] / results["cl"]["median_ms"]
    assert results["cl"]["speedup"] == pytest.approx(ratio)
    for r in results.values():
        _check_timing_fields(r, repeats=4, batch_size=2)
    with pytest.raises(ValueError, match="^baseline must be one of 'fp32', 'cl'"):
        measure.compare_latency({"fp32": model, "cl": model}, x, baseline="int8")


def test_best_fp32_baseline_picks_faster_layout():
    layout, timings = measure.best_fp32_baseline(_tiny_cnn(), torch.randn(2, 1, 8, 8), repeats=3)
    assert layout in ("nchw", "channels_last")
    assert timings["median_ms"] == min(timings["layouts"].values()) > 0
    assert timings["channels_last"] is (layout == "channels_last")
    layout, timings = measure.best_fp32_baseline(_tiny_mlp(), torch.randn(2, 1, 8, 8), repeats=3)
    assert layout == "default" and timings["median_ms"] > 0


def test_energy_estimate():
    assert measure.energy_estimate_j(2.0, watts=10.0) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="^watts must"):
        measure.energy_estimate_j(1.0, watts=-1)


# --------------------------------------------------------------------------- summary


class _TinyData:
    """The slice of ArrayData that summary needs: split(name) -> (X, y)."""

    def __init__(self, X, y):
        self._splits = {"train": (X, y), "val": (X, y), "test": (X, y)}

    def split(self, split):
        return self._splits[split]


def test_summary_on_stand_in_data_matches_direct_accuracy():
    torch.manual_seed(0)
    model = _tiny_mlp()
    X = torch.randn(50, 1, 8, 8)
    with torch.no_grad():
        y = model(X).argmax(-1)  # the model's own predictions ...
    y[:10] = (y[:10] + 1) % 10  # ... with 10 of 50 flipped: acc must be exactly 0.8
    row = measure.summary(model, _TinyData(X, y), latency_batch_size=4, threads=1)
    assert set(row) == {"acc", "params", "nonzero", "bytes", "macs", "latency_ms"}
    assert row["acc"] == pytest.approx(0.8)
    assert row["macs"] == measure.linear_macs(64, 32) + measure.linear_macs(32, 10)
    assert row["params"] == row["nonzero"] == measure.count_params(model)
    assert row["bytes"] == measure.model_bytes(model)
    assert row["latency_ms"] > 0
    row = measure.summary(model, (X, y), latency=False)
    assert row["acc"] == pytest.approx(0.8) and row["latency_ms"] is None
    with pytest.raises(ValueError, match="^split must be one of"):
        measure.summary(model, _TinyData(X, y), split="tset")
    with pytest.raises(ValueError, match="^data must be"):
        measure.summary(model, X)


@pytest.mark.skipif(
    importlib.util.find_spec("labkit.data") is None, reason="labkit.data not built yet"
)
def test_summary_on_digits():
    from labkit import data as labdata

    digits = labdata.load("digits")
    torch.manual_seed(0)
    model = _tiny_mlp()
    row = measure.summary(model, digits, threads=1)
    assert 0.0 <= row["acc"] <= 1.0
    assert row["macs"] == measure.linear_macs(64, 32) + measure.linear_macs(32, 10)
    assert row["latency_ms"] > 0


def test_footprint_is_hand_arithmetic():
    # one hour at 10 W is 10 Wh = 0.01 kWh; at 500 g CO2e per kWh that is 5 g
    f = measure.footprint(3600.0, watts=10.0, grid_g_per_kwh=500.0)
    assert f["energy_j"] == pytest.approx(36_000.0) and f["energy_wh"] == pytest.approx(10.0)
    assert f["co2_g"] == pytest.approx(5.0)
    assert measure.footprint(3600.0, watts=10.0, grid_g_per_kwh=500.0, pue=1.5)["co2_g"] == (
        pytest.approx(7.5)
    )
    default = measure.footprint(12.0)  # the stated assumptions: 15 W, 400 g/kWh, PUE 1
    assert default["energy_j"] == pytest.approx(12.0 * 15.0)
    assert default["co2_g"] == pytest.approx(12.0 * 15.0 / 3.6e6 * 400.0)
    assert default["energy_j"] == pytest.approx(measure.energy_estimate_j(12_000.0))
    # 1,000 predictions at 2 ms per batch of 4: 0.5 s busy
    per_1000 = measure.inference_footprint(2.0, batch_size=4, inferences=1000, watts=20.0)
    assert per_1000["cpu_seconds"] == pytest.approx(0.5) and per_1000["energy_j"] == (
        pytest.approx(10.0)
    )
    for bad in (
        {"cpu_seconds": -1.0},
        {"cpu_seconds": math.inf},
        {"cpu_seconds": 1.0, "pue": 0.9},
        {"cpu_seconds": 1.0, "grid_g_per_kwh": -1.0},
        {"cpu_seconds": 1.0, "watts": -2.0},
    ):
        with pytest.raises(ValueError) as err:
            measure.footprint(**bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="batch_size"):
        measure.inference_footprint(1.0, batch_size=0)
