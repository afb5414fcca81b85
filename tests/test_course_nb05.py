"""Notebook 05's cached experiments: the sweep points, a point against PyTorch, the steps, the
exercise oracle and the summary."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit import course, data, models, train
from labkit.course import nb05_figures, nb05_lowbit

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_lowbit_quantization.ipynb"
needs_zoo = pytest.mark.skipif(
    not (models.is_cached("mlp", "mnist1d") and models.is_cached("gpt", "pydoc")),
    reason="needs labkit prepare",
)


def _min_max_qparams(w: torch.Tensor, bits: int, group_size: int):
    """The exercise's formula, written out: affine min-max per group, the range widened to 0."""
    g = w.reshape(w.shape[0], -1, group_size)  # (out, G, group_size)
    lo, hi = g.amin(2).clamp(max=0), g.amax(2).clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=torch.finfo(torch.float32).eps)
    return scale, torch.clamp(-torch.round(lo / scale), 0, 2**bits - 1).long()


def _fake_quantized(model: nn.Module, bits: int, group_size: int, skip=()) -> nn.Module:
    """Every Linear weight but ``skip`` rounded to its group's min-max grid by PyTorch."""
    model = copy.deepcopy(model)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name not in skip:
            w = m.weight.detach()
            scale, zp = _min_max_qparams(w, bits, group_size)
            scale = scale.half().float()  # the packed layer stores float16 scales
            fq = torch.fake_quantize_per_channel_affine(
                w.reshape(-1, group_size), scale.flatten(), zp.flatten().int(), 0, 0, 2**bits - 1
            )
            m.weight = nn.Parameter(fq.reshape(w.shape))
    return model


def test_points_cover_the_notebooks_grid():
    points = nb05_lowbit.sweep_points(bits=(2, 3), group_sizes=(32, "row"))
    methods = [p["method"] for p in points]
    assert methods.count("rtn") == methods.count("gptq") == 4  # bits x group sizes
    assert methods.count("kmeans") == methods.count("grid") == methods.count("rtn-sym") == 2
    assert {p["bits"] for p in points if p["method"] in ("twn", "binary")} == {1.58, 1}
    assert len(nb05_lowbit.sweep_points()) == 29
    pts = nb05_lowbit.course_points(calib_windows=4, qat_epochs=3)
    assert {p["calib_windows"] for p in pts["lm"]} == {4} and len(pts["lm"]) == 29
    assert pts["qat"] == [{"num_epochs": 3, "classifier": "mlp", "dataset": "mnist1d"}]


def test_the_notebooks_parameters_are_the_course_defaults():
    """At its defaults notebook 05 must read what ``labkit prepare`` cached, not compute anew."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    (params,) = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    ns: dict = {}
    exec("".join(params["source"]), ns)  # noqa: S102 - the course's own cell
    for name in ("lm", "text", "classifier", "dataset", "bits", "group_sizes", "calib_windows"):
        assert ns[name.upper()] == nb05_lowbit.COURSE[name], name
    assert ns["QAT_EPOCHS"] == nb05_lowbit.COURSE["qat_epochs"]


@needs_zoo
def test_classifier_point_is_pytorchs_group_wise_fake_quantization(one_thread):
    mlp, ds = models.pretrained("mlp", "mnist1d"), data.load("mnist1d")
    point = nb05_lowbit.classifier_point("rtn", 4, 8)  # 8 divides every layer's inputs
    reference = train.evaluate(_fake_quantized(mlp, 4, 8), ds)["acc"]
    differ = round(abs(point["acc"] - reference) * len(ds.y_test))  # test signals, counted
    assert differ <= 2, (point["acc"], reference)
    # packed bytes: 4-bit codes + a float16 scale and a 4-bit zero point per group of 8
    numel = sum(m.weight.numel() for m in mlp.modules() if isinstance(m, nn.Linear))
    assert point["weight_bytes"] == numel // 2 + (numel // 8) * 2 + numel // 8 // 2


@needs_zoo
def test_lm_point_leaves_lm_head_float_and_matches_pytorch(one_thread):
    gpt, text = models.pretrained("gpt", "pydoc"), data.load("pydoc")
    point = nb05_lowbit.lm_point("rtn", 4, 64)
    reference = train.evaluate_lm(_fake_quantized(gpt, 4, 64, skip=("lm_head",)), text)["ppl"]
    assert point["ppl"] == pytest.approx(reference, rel=1e-3)
    assert point["ppl"] != pytest.approx(
        train.evaluate_lm(_fake_quantized(gpt, 4, 64), text)["ppl"], rel=1e-4
    )  # quantizing lm_head too would be another model


def test_reference_group_qparams_is_the_min_max_formula():
    w = torch.randn(6, 24, generator=torch.Generator().manual_seed(0))
    w[0] += 2.0  # an all-positive row: the range still holds 0
    for bits, group_size in ((2, 8), (4, 12), (3, 24)):
        scale, zp = nb05_figures.reference_group_qparams(w, bits, group_size)
        ref_scale, ref_zp = _min_max_qparams(w, bits, group_size)
        assert torch.allclose(scale, ref_scale, rtol=1e-6) and torch.equal(zp, ref_zp)


def test_check_group_qparams_passes_the_formula_and_fails_a_wrong_one():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    nb05_figures.check_group_qparams(_min_max_qparams, w, 3, 8)
    with pytest.raises(AssertionError, match="scales differ"):
        nb05_figures.check_group_qparams(
            lambda w, b, g: (2 * _min_max_qparams(w, b, g)[0], _min_max_qparams(w, b, g)[1]),
            w, 3, 8,
        )  # fmt: skip
    with pytest.raises(AssertionError, match="one scale per group"):
        nb05_figures.check_group_qparams(lambda w, b, g: _min_max_qparams(w, b, 4), w, 3, 8)


def test_bad_input_is_refused():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        nb05_lowbit.quantized(model, "nope", 4, 8)
    with pytest.raises(ValueError, match="group_size must be one of"):
        nb05_lowbit.quantized(model, "rtn", 4, "column")
    with pytest.raises(ValueError, match="bits"):
        nb05_lowbit.sweep_points(bits=(1,))
    with pytest.raises(ValueError, match="calib_windows"):
        nb05_lowbit.course_points(calib_windows=0)
    with pytest.raises(ValueError, match="parts must be one of"):
        nb05_lowbit.prepare(["nope"])
    with pytest.raises(ValueError, match="group_size"):
        nb05_figures.reference_group_qparams(torch.zeros(2, 6), 2, 4)
    with pytest.raises(TypeError, match="nn.Linear"):
        nb05_lowbit.layer_inputs(nn.Sequential(nn.ReLU()), "0", torch.zeros(1, 2))


def test_layer_inputs_are_what_the_layer_sees():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))  # (B, T, in)
    X = nb05_lowbit.layer_inputs(model, "2", x)
    assert torch.equal(X, torch.relu(model[0](x)).detach().reshape(-1, 5))
    assert not model[2]._forward_hooks  # the hook is gone


def test_steps_are_registered_after_the_models_they_read():
    plan = course.steps()
    names = [s.name for s in plan]
    assert len(set(names)) == len(names)
    ours = [s for s in plan if s.target.startswith("labkit.course.nb05_lowbit:")]
    assert [s.kwargs["parts"] for s in ours] == [[p] for p in nb05_lowbit.PARTS]
    assert {s.name: s.needs for s in ours} == {
        "lowbit:lm": ("model:gpt/pydoc",),
        "lowbit:classifier": ("model:mlp/mnist1d",),
    }
    for step in ours:
        assert all(need in names[: names.index(step.name)] for need in step.needs)
        module, fn = step.target.split(":")
        assert callable(getattr(importlib.import_module(module), fn))


def test_sweep_versions_follow_what_the_points_read(monkeypatch):
    before = {kind: nb05_lowbit._sweep_version(kind) for kind in nb05_lowbit.SWEEP_VERSIONS}
    monkeypatch.setitem(nb05_lowbit.COURSE, "codebook_bits", {"twn": 1.58})
    after = {kind: nb05_lowbit._sweep_version(kind) for kind in before}
    assert after["lm"] != before["lm"] and after["classifier"] != before["classifier"]
    assert after["qat"] == before["qat"]


def test_summary_reports_ratios_and_perplexities():
    lm = [
        {"method": m, "bits": b, "group_size": g, "bytes": 1000 // b, "ppl": p + b}
        for m, p in (("rtn", 3.0), ("gptq", 2.0))
        for b in (2, 4)
        for g in (64, "row")
    ]
    clf = [{"method": "rtn", "bits": b, "group_size": 64, "bytes": 800 // b} for b in (2, 4)]
    qat = {"ptq_acc": 0.2, "qat_acc": 0.6}
    fp32 = {"gpt": {"bytes": 1000, "ppl": 4.0}, "mlp": {"bytes": 1600, "acc": 0.7}}
    results = {"lm": lm, "classifier": clf, "qat": qat}
    text = nb05_figures.summary(results, fp32, bits=(2, 4), group_sizes=(64, "row"))
    lines = text.splitlines()
    assert len(lines) == 5
    assert "files (scales + zero points included): gpt 4.00x, mlp 8.00x" in lines[0]  # 4 bits
    assert "gpt 2.00x, mlp 4.00x" in lines[1]  # 2 bits
    row = "gpt perplexity RTN -> GPTQ, group row: 2 bits 5.00 -> 4.00, 4 bits 7.00 -> 6.00"
    assert lines[3] == row + " (fp32 4.00)"
    assert lines[4] == "mlp ternary: PTQ 0.200 -> QAT 0.600 (fp32 0.700)"
    assert nb05_figures.size_ratio(clf, 1600, method="rtn", bits=2, group_size=64) == 4.0
