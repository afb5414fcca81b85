from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; before pyplot is imported anywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labkit import plots, sweep  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    yield
    plt.close("all")


RECORDS = [
    {"method": m, "width": w, "bytes": w * 1000 * (2 if m == "fp32" else 1), "acc": a}
    for m, rows in {
        "fp32": [(8, 0.80), (16, 0.86), (32, 0.90), (64, 0.91)],
        "int8": [(8, 0.79), (16, 0.85), (32, 0.885), (64, 0.90)],
        "int4": [(8, 0.60), (16, 0.70), (32, 0.80)],
    }.items()
    for w, a in rows
]


def fresh_ax() -> Axes:
    return Figure(figsize=(6, 4)).add_subplot()


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (12_345, "12.3 KB"),
        (999_999, "1 MB"),  # rounds up into the next unit, never "1e+03 KB"
        (2_500_000, "2.5 MB"),
        (3.2e9, "3.2 GB"),
        (0.5, "0.5 B"),
    ],
)
def test_format_bytes_decimal(n, text):
    assert plots.format_bytes(n) == text


def test_format_bytes_binary_and_errors():
    assert plots.format_bytes(1536, binary=True) == "1.5 KiB"
    assert plots.format_bytes(1024**2, binary=True) == "1 MiB"
    assert plots.format_bytes(np.int64(2000)) == "2 KB"
    for bad in (-1, float("nan"), float("inf"), "1 KB", True):
        with pytest.raises(ValueError, match="n must be a non-negative finite number of bytes"):
            plots.format_bytes(bad)


def test_accuracy_vs_size_lines_frontier_and_log_axis():
    ax = plots.accuracy_vs_size(RECORDS, ax=fresh_ax())
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert len(lines) == 3 + 1  # one per method, plus the frontier
    assert [ln.get_label() for ln in lines] == ["fp32", "int8", "int4", "Pareto frontier"]
    assert ax.get_xscale() == "log"
    # Each series is sorted by size; the frontier goes through exactly the Pareto points.
    np.testing.assert_array_equal(lines[0].get_xdata(), [8000 * 2, 16000 * 2, 32000 * 2, 64000 * 2])
    front = sweep.pareto_front(RECORDS)
    frontier = lines[-1]
    assert frontier.get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(frontier.get_xdata(), [r["bytes"] for r in front])
    np.testing.assert_array_equal(frontier.get_ydata(), [r["acc"] for r in front])
    # Units: bytes ticks read KB, accuracy fractions read as percent.
    assert "KB" in ax.xaxis.get_major_formatter()(10_000, 0)
    assert ax.yaxis.get_major_formatter()(0.85, 0) == "85"
    assert ax.get_xlabel().startswith("Model size") and "%" in ax.get_ylabel()
    assert ax.get_legend() is not None


def test_accuracy_vs_size_options():
    ax = plots.accuracy_vs_size(
        RECORDS, ax=fresh_ax(), frontier=False, logx=False, annotate="width", title="T"
    )
    assert len(ax.get_lines()) == 3
    assert ax.get_xscale() == "linear"
    assert len(ax.texts) == len(RECORDS) and ax.texts[0].get_text() == "8"
    assert ax.get_title() == "T"
    assert ax.xaxis.get_major_formatter()(20_000, 0) == "20 KB"
    # hue absent from the records: one unlabeled series plus the frontier.
    plain = [{"bytes": r["bytes"], "acc": r["acc"]} for r in RECORDS]
    ax = plots.accuracy_vs_size(plain, ax=fresh_ax())
    assert len(ax.get_lines()) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Pareto frontier"]


def test_accuracy_vs_size_without_ax_uses_a_new_pyplot_figure():
    before = len(plt.get_fignums())
    ax = plots.accuracy_vs_size(RECORDS)
    assert len(plt.get_fignums()) == before + 1 and ax.figure.number in plt.get_fignums()


def test_accuracy_vs_size_errors():
    with pytest.raises(ValueError, match="logx=True needs positive numbers in 'bytes'; got 0"):
        plots.accuracy_vs_size([{"bytes": 0, "acc": 0.5}], ax=fresh_ax())
    with pytest.raises(ValueError, match="key 'acc' is missing"):
        plots.accuracy_vs_size([{"bytes": 10}], ax=fresh_ax())
    with pytest.raises(ValueError, match="non-empty"):
        plots.accuracy_vs_size([], ax=fresh_ax())


def test_line_with_errorbars_from_mean_std():
    recs = [
        {"width": w, "seed": s, "acc": 0.5 + w / 100 + s / 50}
        for w in (8, 16, 32)
        for s in range(3)
    ]
    agg = sweep.mean_std(recs, "width", "acc")
    ax = plots.line(agg, "width", "acc", ax=fresh_ax(), errorbars="acc_std")
    assert len(ax.containers) == 1  # one ErrorbarContainer
    bars = ax.containers[0]
    np.testing.assert_allclose(bars.lines[0].get_ydata().astype(float), [r["acc"] for r in agg])
    segments = bars.lines[2][0].get_segments()  # the vertical bars, mean ± std
    heights = [seg[1][1] - seg[0][1] for seg in segments]
    np.testing.assert_allclose(heights, [2 * r["acc_std"] for r in agg])
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "width"


def test_line_hue_and_log():
    recs = [{"m": m, "x": x, "y": x * (1 + i)} for i, m in enumerate("ab") for x in (4, 1, 2)]
    ax = plots.line(recs, "x", "y", hue="m", ax=fresh_ax(), logx=True)
    lines = ax.get_lines()
    assert len(lines) == 2 and ax.get_xscale() == "log"
    np.testing.assert_array_equal(lines[1].get_xdata(), [1, 2, 4])  # sorted by x
    np.testing.assert_array_equal(lines[1].get_ydata(), [2, 4, 8])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.xaxis.get_major_formatter()(10, 0) == "10"  # plain numbers, not 10^1


def test_log_bytes_axis_labels_ticks_on_a_narrow_range():
    recs = [{"bytes": b, "acc": 0.8} for b in (20_000, 30_000, 50_000)]
    ax = plots.accuracy_vs_size(recs, ax=fresh_ax(), frontier=False)
    FigureCanvasAgg(ax.figure).draw()  # tick labels are computed at draw time
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels(minor=True) if t.get_text()]
    labels += [t.get_text() for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert labels and all(text.endswith("KB") for text in labels)


def test_draw_bit_limits_marks_the_size_at_each_bit_width():
    fig, ax = plt.subplots()
    try:
        plots.draw_bit_limits(ax, 800, other_bytes=100, bits=(8, 4, 1.58))
        xs = [line.get_xdata()[0] for line in ax.lines]
        assert xs == [100 + 800, 100 + 400, 100 + 800 * 1.58 / 8]  # other + weights * bits / 8
        assert [t.get_text() for t in ax.texts] == ["8 b/w", "4 b/w", "1.58 b/w"]
    finally:
        plt.close(fig)


def test_size_tradeoff_draws_a_line_per_method_and_group_size():
    records = [
        {
            "method": m,
            "group_size": g,
            "bits": b,
            "bytes": 100 * b * (2 if g == 64 else 1),
            "ppl": p,
        }
        for m, p in (("rtn", 9.0), ("gptq", 7.0))
        for g in (16, 64)
        for b in (2, 3, 4)
    ] + [{"method": "kmeans", "group_size": "layer", "bits": 2, "bytes": 150, "ppl": 8.0}]
    ax = plots.size_tradeoff(records, "ppl", reference={"bytes": 5000, "ppl": 5.0}, ax=fresh_ax())
    lines = ax.get_lines()
    assert len(lines) == 2 * 2 + 1 + 1  # (method, group size) pairs, kmeans, the fp32 star
    styles = {(line.get_color(), line.get_linestyle()) for line in lines[:4]}
    assert styles == {("C0", "-"), ("C0", "--"), ("C1", "-"), ("C1", "--")}
    assert lines[4].get_linestyle() == ":"  # the third group size
    assert list(lines[0].get_xdata()) == [200, 300, 400]  # sorted by bytes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rtn", "gptq", "kmeans", "fp32"]
    assert ax.get_title() == "group_size: 16 solid, 64 dashed, layer dotted"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    with pytest.raises(ValueError, match="bits_typo"):
        plots.size_tradeoff(records, "ppl", style="bits_typo", ax=fresh_ax())
