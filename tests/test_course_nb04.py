"""labkit.course.nb04_quantization and nb04_figures: notebook 04's sweep points, one record of each
sweep, the prepare steps, the notebook asking for exactly what ``labkit prepare`` computes, and the
figures' numbers against independent computations."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import nbformat
import pytest
import torch

from labkit import data, models, quant
from labkit.course import nb04_figures as figures
from labkit.course import nb04_quantization as experiments

matplotlib.use("Agg")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_quantization_8bit.ipynb"


def _parameters() -> dict:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)
    return params


def test_notebook_parameters_are_the_course_defaults():
    """labkit prepare computes experiments.COURSE: notebook 04's defaults ask for exactly it."""
    p = _parameters()
    assert experiments.is_default(
        model=p["MODEL"],
        dataset=p["DATASET"],
        calib_samples=p["CALIB_SAMPLES"],
        qat_bits=p["QAT_BITS"],
        qat_epochs=p["QAT_EPOCHS"],
    )
    points = experiments.course_points(p["MODEL"], p["DATASET"], p["QAT_BITS"])
    assert points == experiments.course_points()


def test_course_points_cover_the_grids_once():
    points = experiments.course_points()
    c = experiments.COURSE
    ptq = points["ptq"]
    assert len(ptq) == len(c["ptq_bits"]) * len(c["granularities"]) * len(c["calibrations"])
    assert len({tuple(sorted(p.items())) for p in ptq}) == len(ptq)
    assert [p["bits"] for p in points["qat"]] == [b for b in c["qat_bits"] for _ in range(2)]
    assert points["int8"][0] == {"model": c["model"], "mode": "static"}
    assert len(points["int8"]) == 1 + len(c["int8"])
    # another model: its static int8 first, a zoo pair listed once, pairs the zoo lacks left out
    lenet = experiments.course_points("lenet")["int8"]
    assert lenet == [{"model": "lenet", "mode": "static"}] + [
        {"model": m, "mode": mode} for m, mode in c["int8"] if (m, mode) != ("lenet", "static")
    ]
    assert experiments.course_points("mlp", "mnist1d")["int8"] == [
        {"model": "mlp", "mode": "static"},
        {"model": "mlp", "mode": "dynamic"},
    ]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: experiments.course_points(qat_bits=[1]), "qat_bits"),
        (lambda: experiments.course_points(qat_bits=[]), "qat_bits"),
        (lambda: experiments.prepare(["nope"]), "parts"),
        (lambda: experiments.ptq_sweep([], calib_samples=0), "calib_samples"),
        (lambda: experiments.qat_sweep([], num_epochs=0), "num_epochs"),
        (lambda: experiments.is_default(epochs=3), "params"),
    ],
)
def test_bad_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_is_default_compares_with_course():
    assert experiments.is_default(model="dscnn", qat_bits=[2, 3, 4, 5])
    assert not experiments.is_default(model="lenet")
    assert not experiments.is_default(calib_samples=256)


def test_steps_prepare_every_part_once_after_its_models():
    plan = experiments.steps()
    assert [s.name for s in plan] == [f"quant8:{p}" for p in experiments.PARTS]
    for step, part in zip(plan, experiments.PARTS):
        assert step.target == "labkit.course.nb04_quantization:prepare"
        assert step.kwargs == {"parts": [part]}
        assert "model:dscnn/digits" in step.needs
    assert set(plan[-1].needs) == {"model:dscnn/digits", "model:lenet/digits", "model:mlp/digits"}


def test_qat_against_ptq_joins_the_setting_and_the_extremes():
    ptq = [
        {"bits": 2, "granularity": g, "calibration": c, "acc": acc}
        for (g, c), acc in zip(
            [("per_tensor", "minmax"), ("per_channel", "mse"), ("per_channel", "minmax")],
            (0.1, 0.3, 0.2),
        )
    ]
    qat = [{"bits": 2, "granularity": "per_tensor", "calibration": "minmax", "qat_acc": 0.5}]
    (row,) = experiments.qat_against_ptq(qat, ptq)
    assert (row["ptq_acc"], row["best_ptq"], row["worst_ptq"]) == (0.1, 0.3, 0.1)
    assert row["qat_acc"] == 0.5 and "ptq_acc" not in qat[0]  # a new record
    with pytest.raises(ValueError, match="ptq"):
        experiments.qat_against_ptq([{**qat[0], "bits": 4}], ptq)


def test_int8_speedup_is_best_fp32_over_best_int8():
    rows = [
        {"fp32": True, "median_ms": 4.0},
        {"fp32": True, "median_ms": 2.0},
        {"fp32": False, "median_ms": 0.5},
        {"fp32": False, "median_ms": 1.0},
    ]
    assert experiments.int8_speedup(rows) == 4.0


def test_torch_ao_qparams_agree_with_labkit():
    """Two implementations of the affine min-max qparams (torch.ao's observer, labkit's) agree."""
    for lo, hi, bits in [(-1.0, 3.0, 8), (0.5, 2.0, 8), (-0.3, 0.2, 4)]:
        scale, zp = experiments.torch_ao_qparams(lo, hi, bits)
        ours = quant.choose_qparams(torch.tensor([lo, hi]), bits, symmetric=False)
        assert scale == pytest.approx(ours[0].item(), rel=1e-6) and zp == ours[1].item()


def _plain_acc(model, X, y) -> float:
    """Test accuracy with plain PyTorch: argmax of the logits against the labels."""
    with torch.no_grad():
        return (model(X).argmax(dim=1) == y).float().mean().item()


@pytest.mark.slow
def test_one_record_of_each_sweep(one_thread):
    """Each point function's record, called directly (no sweep cache; the zoo models are
    ``labkit prepare``'s), against the same quantities recomputed with plain PyTorch."""
    ds = data.load("digits")
    dscnn = models.pretrained("dscnn", "digits").eval()
    fp32_acc = _plain_acc(dscnn, ds.X_test, ds.y_test)
    ptq = experiments.ptq_point(8, "per_channel", "minmax")
    assert set(ptq) == {"acc", "bytes", "payload"} and ptq["payload"] < ptq["bytes"]
    assert abs(ptq["acc"] - fp32_acc) < 0.015  # 8 bits is nearly free
    # 8-bit codes: at least one byte per conv/linear weight, far below fp32's four
    n_weights = sum(m.weight.numel() for m in dscnn.modules() if isinstance(m, quant.QUANTIZABLE))
    fp32_payload = sum(t.nbytes for t in dscnn.state_dict().values())
    assert n_weights <= ptq["payload"] < fp32_payload / 2
    int8 = experiments.int8_point("mlp", "dynamic")
    mlp = models.pretrained("mlp", "digits").eval()
    assert int8["fp32_acc"] == pytest.approx(_plain_acc(mlp, ds.X_test, ds.y_test), abs=1e-6)
    buf = io.BytesIO()
    torch.save(mlp.state_dict(), buf)
    assert int8["fp32_bytes"] == buf.getbuffer().nbytes
    assert int8["ratio"] == int8["fp32_bytes"] / int8["int8_bytes"] > 2
    assert abs(int8["int8_acc"] - int8["fp32_acc"]) < 0.05
    qat = experiments.qat_point(8, "per_channel", "minmax", num_epochs=1)
    assert qat["qat_acc"] > ptq["acc"] - 0.05


def test_weight_grid_against_the_definition():
    w = torch.linspace(-1.0, 2.0, 301)
    grid = figures.weight_grid(w, bits=3, range_fraction=0.5)  # range [-1, 1]: |w| > 1 + step/2
    step = 2.0 * 0.5 / 3
    assert grid["scale"] == pytest.approx(step)
    assert grid["levels"] == pytest.approx([q * step for q in range(-4, 4)])
    assert grid["clipped"] == pytest.approx((w > 3.5 * step).float().mean().item())
    rounded = (torch.round(w / step).clamp(-4, 3)) * step
    assert grid["mse"] == pytest.approx((rounded - w).square().mean().item(), rel=1e-5)


def test_layer_inputs_and_calibration_ranges():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    X = torch.randn(50, 4)
    acts = figures.layer_inputs(model, "2", X)
    assert acts.shape == (50 * 8,) and torch.equal(acts, torch.relu(model[0](X)).flatten())
    rows = figures.calibration_ranges(acts, bits=4)
    assert [r["method"] for r in rows] == list(quant.CALIBRATIONS)
    minmax = rows[0]
    assert minmax["high"] == pytest.approx(acts.max().item()) and minmax["clipped"] == 0.0
    assert all(r["mse"] <= minmax["mse"] * 1.0001 for r in rows if r["method"] == "mse")


def test_figures_draw_the_records():
    ptq = [
        {"bits": b, "granularity": g, "calibration": c, "acc": 0.5 + b / 20, "bytes": 100 * b}
        for b in (2, 8)
        for g in quant.GRANULARITIES
        for c in ("minmax", "mse")
    ]
    fig = figures.plot_ptq(ptq, fp32_bytes=3200, fp32_acc=0.97)
    assert len(fig.axes) == 2 and "minmax" in fig.axes[0].get_title()
    qat = [
        {"bits": b, "granularity": g, "calibration": c, "qat_acc": 0.9, "best_ptq": 0.8,
         "worst_ptq": 0.1}
        for b in (2, 4)
        for g, c in experiments.COURSE["qat_settings"]
    ]  # fmt: skip
    ax = figures.plot_qat(qat, fp32_acc=0.97, title="t")
    labels = ax.get_legend_handles_labels()[1]
    assert labels == [
        "fp32", "best PTQ", "worst PTQ", "QAT per-tensor min-max", "QAT per-channel MSE",
    ]  # fmt: skip
    assert list(ax.get_xticks()) == [2, 4] and ax.get_title() == "t"
    fig = figures.plot_weight_grid(torch.randn(100), bits=2, name="layer")
    assert len(fig.axes[0].lines) == 4 and "2 bits" in fig.axes[0].get_title()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_sqnr_db_against_torch_fake_quantize():
    """Two implementations of symmetric min-max fake quantization (torch's, labkit's) agree."""
    w = (
        torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
        * torch.logspace(-2, 0, 6)[:, None]
    )
    for bits in (8, 4):
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().max().item() / qmax
        w_q = torch.fake_quantize_per_tensor_affine(w, scale, 0, -qmax - 1, qmax)
        expect = 10 * torch.log10(w.square().sum() / (w_q - w).square().sum()).item()
        assert figures.sqnr_db(w, bits) == pytest.approx(expect, rel=1e-4)
        scales = w.abs().amax(dim=1) / qmax
        zp = torch.zeros(6, dtype=torch.int32)
        w_c = torch.fake_quantize_per_channel_affine(w, scales, zp, 0, -qmax - 1, qmax)
        expect = 10 * torch.log10(w.square().sum() / (w_c - w).square().sum()).item()
        assert figures.sqnr_db(w, bits, axis=0) == pytest.approx(expect, rel=1e-4)
    with pytest.raises(ValueError, match="bits"):
        figures.sqnr_db(w, 1)


def test_channel_ranges_rows():
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.25, -0.1]]))
    (row,) = figures.channel_ranges({"fc": layer}, bits=(8,))
    assert list(row) == ["layer", "shape", "range_ratio", "sqnr8_tensor", "sqnr8_channel"]
    assert (row["layer"], row["shape"], row["range_ratio"]) == ("fc", "2x3", 8.0)
    assert row["sqnr8_channel"] > row["sqnr8_tensor"]  # the small channel gets its own step


def test_spread_channel_ranges_keeps_the_function():
    torch.manual_seed(0)
    model = models.DSCNN(models.DSCNNConfig()).eval()
    X = torch.randn(16, 1, 8, 8)  # (N, C, H, W) 8x8 digits-shaped inputs
    stem = model.stem[0].weight.detach().clone()
    wide = figures.spread_channel_ranges(model, 1000.0, seed=1)
    with torch.no_grad():
        assert torch.allclose(wide(X), model(X), atol=1e-4)
    amax = wide.blocks[0].depthwise[0].weight.abs().flatten(1).amax(dim=1)
    before = quant.fold_bn(model).blocks[0].depthwise[0].weight.abs().flatten(1).amax(dim=1)
    assert (amax.max() / amax.min()) > 10 * (before.max() / before.min())
    assert torch.equal(model.stem[0].weight, stem)  # a new model: the original is untouched
    with pytest.raises(ValueError, match="spread"):
        figures.spread_channel_ranges(model, 0.5)
    with pytest.raises(ValueError, match="model must be a DSCNN"):
        figures.spread_channel_ranges(torch.nn.Linear(2, 2), 10.0)


def test_spread_table_rows(one_thread):
    ds = data.load("digits")
    X, y = ds.X_test[:200], ds.y_test[:200]
    model = models.pretrained("dscnn", "digits").eval()
    rows = figures.spread_table(model, (X, y), spreads=(1, 100), bits=(8,))
    assert [list(r) for r in rows] == [["spread", "fp32", "W8 per_tensor", "W8 per_channel"]] * 2
    for r in rows:  # the same function: the float accuracy stays the original model's
        assert r["fp32"] == pytest.approx(_plain_acc(model, X, y), abs=1 / 200 + 1e-6)


def test_check_per_channel_scales_catches_wrong_scales():
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [[0.01], [0.1], [1.0], [10.0]]
    )
    right = lambda w, bits: w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
    experiments.check_per_channel_scales(right, w, 4)
    wrong = {
        "one scale per channel": lambda w, bits: right(w, bits).max(),
        "no clipping": lambda w, bits: right(w, bits) / 2,
        "top code": lambda w, bits: right(w, bits) * 2,
    }
    for message, fn in wrong.items():
        with pytest.raises(AssertionError, match=message):
            experiments.check_per_channel_scales(fn, w, 4)
