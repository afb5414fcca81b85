from __future__ import annotations

import io
import time

import ipywidgets
import numpy as np
import PIL.Image
import pytest
from matplotlib.figure import Figure

from labkit import sweep, widgets


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LABKIT_PROGRESS", "0")


def evaluate(method, width, depth):
    scale = {"fp32": 4, "int8": 1}[method]
    return {
        "bytes": scale * width * depth * 100,
        "acc": 0.9 - 2 / width - 0.01 * (method == "int8"),
    }


RECORDS = sweep.run(
    evaluate,
    sweep.grid(method=["fp32", "int8"], width=[8, 16, 32, 64], depth=[1, 2]),
    cache=False,
    progress=False,
)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(int)  # (H, W, 3)


def changed_near(w: widgets.Explorer, before: bytes, after: bytes, records) -> None:
    """Pixels that changed between two renders all lie near the records' markers."""
    diff = np.abs(pixels(before) - pixels(after)).sum(axis=2) > 0
    assert diff.any()
    height = diff.shape[0]
    centers = [w.ax.transData.transform((r[w.x], r[w.y])) for r in records]
    rows, cols = np.nonzero(diff)
    dist = np.min(
        [np.hypot(cols - cx, (height - rows) - cy) for cx, cy in centers], axis=0
    )  # pixels, display origin at the bottom
    assert dist.max() < 15


def test_explore_move_changes_image_and_readout_quickly():
    w = widgets.explore(RECORDS, controls=("method", "width", "depth"))
    assert isinstance(w, ipywidgets.Widget)
    assert isinstance(w.controls["width"], ipywidgets.SelectionSlider)
    assert isinstance(w.controls["method"], ipywidgets.Dropdown)
    assert [value for _, value in w.controls["width"].options] == [8, 16, 32, 64]  # sorted
    assert w.controls["width"].continuous_update is False
    assert w.selection == {"method": "fp32", "width": 8, "depth": 1}  # the first record
    first_png, first_text = bytes(w.image.value), w.readout.value
    assert first_png.startswith(b"\x89PNG") and w.image.format == "png"

    seconds = []
    start = time.perf_counter()
    w.controls["width"].value = 64
    seconds.append(time.perf_counter() - start)
    assert w.selected == [
        r for r in RECORDS if (r["method"], r["width"], r["depth"]) == ("fp32", 64, 1)
    ]
    assert w.image.value != first_png
    changed_near(w, first_png, bytes(w.image.value), [RECORDS[0], w.selected[0]])
    text = w.readout.value
    assert text != first_text
    assert ">64<" in text and ">fp32<" in text and "25.6 KB" in text  # bytes = 4*64*1*100
    assert f"{w.selected[0]['acc']:.4g}" in text

    moves = [("depth", 2), ("width", 16), ("method", "int8"), ("width", 32), ("depth", 1)]
    for key, value in moves:  # each lands on a selection not seen yet: a real render
        start = time.perf_counter()
        w.controls[key].value = value
        seconds.append(time.perf_counter() - start)
    assert w.selection == {"method": "int8", "width": 32, "depth": 1}
    print(f"\nexplore: {1000 * max(seconds):.0f} ms per move at most ({len(seconds)} moves)")
    assert max(seconds) < 1.5  # the goal is <= 0.3 s; generous for a loaded machine

    w.set(method="fp32", width=8, depth=1)  # visited before: served from the PNG cache
    assert bytes(w.image.value) == first_png and w.readout.value == first_text


def test_explore_set_renders_once_and_missing_combination():
    sparse = [r for r in RECORDS if not (r["width"] == 64 and r["depth"] == 2)]
    w = widgets.explore(sparse, controls=["width", "depth"], hue="method")
    calls = []
    original = w.refresh
    w.refresh = lambda: (calls.append(1), original())[1]
    w.set(width=32, depth=2)
    assert len(calls) == 1
    assert [r["method"] for r in w.selected] == ["fp32", "int8"]  # both hue records ringed
    assert w.readout.value.count("<tr>") == 1 + 2
    w.set(width=64)
    assert w.selected == [] and "no record with width=64, depth=2" in w.readout.value
    w.controls["width"].value = 32  # after set(), a single move refreshes again
    assert len(calls) == 3 and [r["method"] for r in w.selected] == ["fp32", "int8"]
    with pytest.raises(ValueError, match="controls are \\['width', 'depth'\\]; got \\['seed'\\]"):
        w.set(seed=1)


def test_explore_custom_plot_and_redraw():
    drawn = []

    def plot(records, ax):
        drawn.append(len(records))
        ax.plot([r["width"] for r in records], [r["acc"] for r in records], "o")

    w = widgets.explore(RECORDS, x="width", y="acc", controls="width", plot=plot, figsize=(4, 3))
    assert drawn == [len(RECORDS)]
    assert pixels(w.image.value).shape[:2] == (300, 400)  # inches x 100 dpi
    before = bytes(w.image.value)
    w.ax.set_title("widths")
    w.redraw()
    assert w.image.value != before


def test_explore_errors():
    with pytest.raises(ValueError, match="key 'widht' is missing from 16 of 16 records"):
        widgets.explore(RECORDS, controls=("widht",))
    with pytest.raises(ValueError, match="records must be a non-empty list"):
        widgets.explore([])
    with pytest.raises(ValueError, match="figsize must be"):
        widgets.explore(RECORDS, figsize=(0, 3))


def test_live_rerenders_on_change():
    calls = []

    def show(bits, amount, mode, log):
        calls.append((bits, amount, mode, log))
        fig = Figure(figsize=(3, 2))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, bits * amount])
        ax.set_title(f"{mode} {bits}")
        return ax

    w = widgets.live(show, bits=(2, 8), amount=(0.0, 1.0, 0.1), mode=["a", "b"], log=False)
    assert isinstance(w.controls["bits"], ipywidgets.IntSlider)
    assert isinstance(w.controls["amount"], ipywidgets.FloatSlider)
    assert isinstance(w.controls["mode"], ipywidgets.Dropdown)
    assert isinstance(w.controls["log"], ipywidgets.Checkbox)
    assert all(w.controls[k].continuous_update is False for k in ("bits", "amount"))
    assert calls == [(5, 0.5, "a", False)]  # sliders start mid-range, lists at the first choice
    first = bytes(w.image.value)
    assert first.startswith(b"\x89PNG")

    w.controls["bits"].value = 8
    assert calls[-1] == (8, 0.5, "a", False) and w.image.value != first
    w.set(mode="b", amount=0.2)
    assert calls[-1] == (8, 0.2, "b", False) and len(calls) == 3
    w.controls["bits"].value = 2  # after set(), a single move refreshes again
    assert calls[-1] == (2, 0.2, "b", False) and len(calls) == 4
    assert w.calls == 4 and w.error is None


def test_live_text_and_errors():
    def describe(n):
        if n == 3:
            raise RuntimeError("three is not allowed\nsecond line")
        return f"n = {n} <b>"

    w = widgets.live(describe, n=[1, 2, 3])
    assert isinstance(w.controls["n"], ipywidgets.SelectionSlider)
    assert w.text.value == "<pre>n = 1 &lt;b&gt;</pre>"
    assert w.image.layout.display == "none"
    w.controls["n"].value = 3
    assert isinstance(w.error, RuntimeError)
    assert "RuntimeError: three is not allowed" in w.text.value and "second" not in w.text.value
    w.controls["n"].value = 2
    assert w.error is None and "n = 2" in w.text.value

    with pytest.raises(RuntimeError):  # a broken fn fails when the widget is built
        widgets.live(describe, n=[3])
    with pytest.raises(ValueError, match="bits must be a \\(min, max\\[, step\\]\\) tuple"):
        widgets.live(describe, bits=3)
    with pytest.raises(ValueError, match="min < max"):
        widgets.live(describe, n=(4, 2))


def test_live_closes_pyplot_figures_it_renders():
    import matplotlib.pyplot as plt

    def draw(k):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, k])
        return fig

    before = len(plt.get_fignums())
    w = widgets.live(draw, k=(1, 9, 2))
    for k in (1, 3, 7):
        w.controls["k"].value = k
    assert w.calls == 4 and len(plt.get_fignums()) == before  # no figure leaks per move
    assert bytes(w.image.value).startswith(b"\x89PNG")


def test_dead_controls_finds_controls_that_change_nothing():
    records = [
        {"width": w, "alpha": 0.5, "mode": m, "bytes": w * 100, "acc": 0.5 + w / 1000}
        for w in (16, 32, 64)
        for m in ("a", "b")
    ]
    # alpha has one value; mode changes neither the point nor any figure shown: both dead
    w = widgets.explore(records, x="bytes", y="acc", controls=("width", "alpha", "mode"))
    w.set(width=32)
    assert w.dead_controls() == ["alpha", "mode"]
    assert w.selection == {"width": 32, "alpha": 0.5, "mode": "a"}  # restored
    for r in records:  # now mode moves a figure in the readout: alive
        r["macs"] = 1 if r["mode"] == "a" else 2
    assert widgets.explore(records, controls=("width", "mode")).dead_controls() == []

    live = widgets.live(lambda k, unused: f"k={k}", k=(0, 10), unused=[1, 2, 3])
    assert live.dead_controls() == ["unused"]
    assert widgets.live(lambda on: str(on), on=True).dead_controls() == []
