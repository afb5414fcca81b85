"""Widgets: thin views over precomputed sweep records, and live sliders for cheap functions.

``explore`` indexes records that ``sweep.run`` already computed: moving a control only moves a
highlight on one figure, rendered to PNG with matplotlib's Agg canvas (no pyplot state, no ipympl,
works headless and in JupyterLab). ``live`` calls a cheap function on every change.

Both return an ``ipywidgets.VBox`` subclass you can also drive from code (tests, demos):
``w.controls["width"].value = 64`` re-renders ``w.image``; ``w.set(width=64, depth=2)`` changes
several controls with one render.

Example:
    >>> from labkit import sweep, widgets
    >>> records = sweep.run(fn, sweep.grid(width=[16, 32, 64]), name="widths")  # doctest: +SKIP
    >>> widgets.explore(records, x="bytes", y="acc", controls=("width",))      # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import ipywidgets
import numpy as np
import PIL.Image
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labkit import plots, sweep

__all__ = ["explore", "live", "Explorer", "Live"]

_DPI = 100
_PNG_CACHE = 128  # PNGs kept per Explorer (one per visited selection)
_MAX_ROWS = 12  # rows in the readout table
_HIGHLIGHT = {
    "marker": "o",
    "markersize": 13,
    "markerfacecolor": "none",
    "markeredgecolor": "black",
    "markeredgewidth": 2.0,
    "linestyle": "none",
    "zorder": 10,
    "label": "_nolegend_",
}
_STYLE = {"description_width": "initial"}


def explore(
    records: Sequence[Mapping[str, Any]],
    *,
    x: str = "bytes",
    y: str = "acc",
    controls: str | Sequence[str] = ("width",),
    hue: str | None = None,
    plot: Callable[[list[Mapping[str, Any]], Axes], Any] | None = None,
    figsize: tuple[float, float] = (6, 4),
) -> Explorer:
    """Explore precomputed records with a control per key in ``controls``.

    A slider for numbers, a dropdown otherwise; the whole curve is drawn once and the selected
    record(s) are ringed, with their metrics shown below. ``plot(records, ax)`` draws the background
    (default: ``plots.accuracy_vs_size``); ``figsize`` is in inches at 100 dpi.

    Example: ``explore(records, x="bytes", y="acc", controls=("width", "depth"), hue="method")``
    """
    return Explorer(records, x=x, y=y, controls=controls, hue=hue, plot=plot, figsize=figsize)


def live(fn: Callable[..., Any], **controls: Any) -> Live:
    """Sliders/dropdowns for ``fn``'s arguments; each change calls ``fn`` and shows what it returns.

    What it returns is shown as an image (a matplotlib Figure or Axes) or as text (a str). A control
    is ``(min, max)`` or ``(min, max, step)`` (a slider starting mid-range), a list of choices, a
    bool (a checkbox), a str (a text box) or an ipywidgets widget. Sliders use
    ``continuous_update=False``.

    Example: ``live(lambda bits: plot_quant_error(bits), bits=[2, 4, 8])``
    """
    return Live(fn, controls)


class _Controls(ipywidgets.VBox):
    """What both widgets share: ``controls`` (name -> widget) that call ``refresh`` on a change."""

    controls: dict[str, ipywidgets.Widget]
    _hold = False  # True while ``set`` changes several controls: refresh once, at the end

    def refresh(self) -> None:  # pragma: no cover - both subclasses define it
        raise NotImplementedError

    def set(self, **values: Any) -> None:
        """Set several controls, refreshing once: ``w.set(width=64, depth=2)``."""
        unknown = [k for k in values if k not in self.controls]
        if unknown:
            raise ValueError(f"controls are {list(self.controls)}; got {unknown}")
        self._hold = True
        try:
            for key, value in values.items():
                self.controls[key].value = value
        finally:
            self._hold = False
        self.refresh()

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if not self._hold:
            self.refresh()

    def _view(self) -> Any:  # pragma: no cover - both subclasses define it
        raise NotImplementedError

    def dead_controls(self) -> list[str]:
        """The controls that change nothing shown: with the others at their current values, no
        value of the control (every choice; a slider's ends and middle) changes the picture or the
        figures below it. A control with a single value is dead. Restores the current values.

        Example: ``assert not w.dead_controls()``
        """
        start = {k: w.value for k, w in self.controls.items()}
        base = self._view()
        dead = []
        try:
            for key, widget in self.controls.items():
                values = [v for v in _candidates(widget) if v != start[key]]
                changed = False
                for value in values:
                    self.set(**{**start, key: value})
                    if self._view() != base:
                        changed = True
                        break
                if not changed:
                    dead.append(key)
        finally:
            self.set(**start)
        return dead


class Explorer(_Controls):
    """The widget ``explore`` returns.

    ``controls`` (key -> widget), ``image`` (PNG), ``readout`` (HTML), ``selected`` (the records
    matching the controls), ``last_seconds`` (the last move).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        x: str = "bytes",
        y: str = "acc",
        controls: str | Sequence[str] = ("width",),
        hue: str | None = None,
        plot: Callable[[list[Mapping[str, Any]], Axes], Any] | None = None,
        figsize: tuple[float, float] = (6, 4),
    ) -> None:
        records = sweep.check_records(records)
        if not records:
            raise ValueError("records must be a non-empty list of dicts; got an empty list")
        keys = (controls,) if isinstance(controls, str) else tuple(controls)
        sweep.check_keys(records, [x, y, *keys])
        if plot is not None and not callable(plot):
            raise ValueError(f"plot must be None or a function (records, ax); got {plot!r}")
        if not (
            isinstance(figsize, (tuple, list))
            and len(figsize) == 2
            and all(isinstance(v, Real) and v > 0 for v in figsize)
        ):
            raise ValueError(f"figsize must be (width, height) in inches; got {figsize!r}")

        self.records = records
        self.x, self.y, self._control_keys = x, y, keys
        self.last_seconds = 0.0
        self._index: dict[tuple, list[Mapping[str, Any]]] = {}
        for rec in records:
            self._index.setdefault(tuple(_freeze(rec[k]) for k in keys), []).append(rec)
        self._pngs: OrderedDict[tuple, bytes] = OrderedDict()

        # One figure, drawn once; a move only re-positions the highlight and re-renders.
        self.figure = Figure(figsize=tuple(figsize), dpi=_DPI)
        FigureCanvasAgg(self.figure)
        ax = self.figure.add_subplot()
        if plot is None:
            positive = all(isinstance(r[x], Real) and r[x] > 0 for r in records)
            plots.accuracy_vs_size(records, x=x, y=y, hue=hue, ax=ax, logx=positive)
        else:
            plot(records, ax)
        self.figure.tight_layout()
        (self._ring,) = ax.plot([], [], animated=True, **_HIGHLIGHT)  # drawn only by blitting
        self.ax = ax
        self._background = self._capture()

        first = records[0]
        self.controls = {k: _choice_widget(k, sweep.unique(records, k), first[k]) for k in keys}
        self.image = ipywidgets.Image(format="png")
        self.readout = ipywidgets.HTML()
        row = ipywidgets.HBox(
            list(self.controls.values()), layout=ipywidgets.Layout(flex_flow="row wrap")
        )
        super().__init__([row, self.image, self.readout])
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        self.refresh()

    @property
    def selection(self) -> dict[str, Any]:
        """The controls' current values, key -> value."""
        return {k: w.value for k, w in self.controls.items()}

    @property
    def selected(self) -> list[Mapping[str, Any]]:
        """The records matching the current selection (empty when the grid lacks it)."""
        return list(self._index.get(self._key(), []))

    def redraw(self) -> None:
        """Redraw the background after changing ``self.ax`` or ``self.figure`` (e.g. a title)."""
        self._background = self._capture()
        self._pngs.clear()
        self.refresh()

    def _capture(self) -> Any:
        self.figure.canvas.draw()  # everything but the animated highlight
        return self.figure.canvas.copy_from_bbox(self.figure.bbox)

    def refresh(self) -> None:
        """Re-render the image and the readout for the current selection."""
        start = time.perf_counter()
        key = self._key()
        chosen = self._index.get(key, [])
        png = self._pngs.get(key)
        if png is None:  # blit: the cached background plus the ring, ~10x faster than a full draw
            canvas = self.figure.canvas
            canvas.restore_region(self._background)
            self._ring.set_data([r[self.x] for r in chosen], [r[self.y] for r in chosen])
            self.ax.draw_artist(self._ring)
            png = _rgba_png(np.asarray(canvas.buffer_rgba()))
            self._pngs[key] = png
            if len(self._pngs) > _PNG_CACHE:
                self._pngs.popitem(last=False)
        self.image.value = png
        self.readout.value = _readout(self.selection, chosen, self._control_keys)
        self.last_seconds = time.perf_counter() - start

    def _key(self) -> tuple:
        return tuple(_freeze(self.controls[k].value) for k in self._control_keys)

    def _view(self) -> Any:
        shown = [
            tuple((k, _freeze(v)) for k, v in r.items() if k not in self._control_keys)
            for r in self.selected
        ]
        return self.image.value, repr(shown)


class Live(_Controls):
    """The widget ``live`` returns.

    ``controls`` (name -> widget), ``image`` (PNG of a returned figure), ``text`` (HTML of returned
    text), ``result`` (fn's last return value), ``calls``, and ``error`` (the exception of the last
    call, shown in ``text``; None when it succeeded).
    """

    def __init__(self, fn: Callable[..., Any], controls: Mapping[str, Any]) -> None:
        if not callable(fn):
            raise ValueError(f"fn must be a function returning a Figure, Axes or str; got {fn!r}")
        self.fn = fn
        self.controls = {k: _live_widget(k, spec) for k, spec in controls.items()}
        self.image = ipywidgets.Image(format="png")
        self.text = ipywidgets.HTML()
        self.result: Any = None
        self.error: BaseException | None = None
        self.calls = 0
        self.last_seconds = 0.0
        row = ipywidgets.HBox(
            list(self.controls.values()), layout=ipywidgets.Layout(flex_flow="row wrap")
        )
        super().__init__([row, self.image, self.text])
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        self.refresh(raise_errors=True)  # a broken fn fails loudly when the widget is built

    @property
    def values(self) -> dict[str, Any]:
        """The controls' current values, name -> value."""
        return {k: w.value for k, w in self.controls.items()}

    def refresh(self, raise_errors: bool = False) -> None:
        """Call ``fn`` with the current values and show its result (errors shown as text)."""
        start = time.perf_counter()
        self.calls += 1
        try:
            out = self.fn(**self.values)
            self.error = None
        except Exception as err:
            if raise_errors:
                raise
            self.error = err
            self._show(None, f"<pre style='color:#b00'>{html.escape(_one_line(err))}</pre>")
            return
        self.result = out
        fig = out.figure if isinstance(out, Axes) else out
        if isinstance(fig, Figure):
            self._show(_png(fig), "")
            _close_pyplot(fig)
        elif out is None:
            self._show(None, "")
        elif isinstance(out, str):
            self._show(None, f"<pre>{html.escape(out)}</pre>")
        elif hasattr(out, "_repr_html_"):
            self._show(None, out._repr_html_())
        else:
            self._show(None, f"<pre>{html.escape(repr(out))}</pre>")
        self.last_seconds = time.perf_counter() - start

    def _view(self) -> Any:
        return self.image.value, self.text.value

    def _show(self, png: bytes | None, text: str) -> None:
        if png is not None:
            self.image.value = png
        self.image.layout.display = None if png is not None else "none"
        self.text.value = text
        self.text.layout.display = None if text else "none"


# --------------------------------------------------------------------------- helpers


def _candidates(widget: ipywidgets.Widget) -> list:
    """What ``dead_controls`` tries: every choice; a slider's ends and middle; both booleans."""
    if isinstance(widget, ipywidgets.Checkbox):
        return [True, False]
    options = getattr(widget, "options", None)
    if options is not None:
        return [o[1] if isinstance(o, tuple) else o for o in options]
    if hasattr(widget, "min") and hasattr(widget, "max"):
        lo, hi = widget.min, widget.max
        mid = lo + (hi - lo) / 2
        if isinstance(widget.value, int):
            mid = int(mid)
        else:
            step = getattr(widget, "step", None)
            mid = lo + round((mid - lo) / step) * step if step else mid
        return [lo, mid, hi]
    return []  # free text: no finite set of values to try


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _rgba_png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(rgba).save(buf, format="png")  # (H, W, 4) uint8
    return buf.getvalue()


def _close_pyplot(fig: Figure) -> None:
    """Close ``fig`` in pyplot's registry (if pyplot made it) so live re-renders do not leak."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _choice_widget(key: str, values: list, initial: Any) -> ipywidgets.Widget:
    if all(_is_number(v) for v in values):
        values = sorted(values)
        return ipywidgets.SelectionSlider(
            options=[(_label(v), v) for v in values],
            value=initial,
            description=key,
            continuous_update=False,
            style=_STYLE,
        )
    return ipywidgets.Dropdown(
        options=[(_label(v), v) for v in values], value=initial, description=key, style=_STYLE
    )


def _live_widget(name: str, spec: Any) -> ipywidgets.Widget:
    if isinstance(spec, ipywidgets.ValueWidget):
        return spec
    if isinstance(spec, bool):
        return ipywidgets.Checkbox(value=spec, description=name, style=_STYLE)
    if isinstance(spec, str):
        return ipywidgets.Text(value=spec, description=name, continuous_update=False, style=_STYLE)
    if isinstance(spec, list) and spec:
        return _choice_widget(name, spec, spec[0])
    if isinstance(spec, tuple) and len(spec) in (2, 3) and all(_is_number(v) for v in spec):
        low, high = spec[0], spec[1]
        if not low < high or (len(spec) == 3 and not spec[2] > 0):
            raise ValueError(f"{name} must be (min, max[, step]), min < max, step > 0; got {spec}")
        integer = all(isinstance(v, int) for v in spec)
        step = spec[2] if len(spec) == 3 else (1 if integer else (high - low) / 100)
        middle = low + round((high - low) / 2 / step) * step
        kind = ipywidgets.IntSlider if integer else ipywidgets.FloatSlider
        return kind(
            value=middle,
            min=low,
            max=high,
            step=step,
            description=name,
            continuous_update=False,
            style=_STYLE,
        )
    raise ValueError(
        f"{name} must be a (min, max[, step]) tuple, a non-empty list of choices, a bool, a str or "
        f"an ipywidgets widget; got {spec!r}"
    )


def _fmt(key: str, value: Any) -> str:
    if _is_number(value) and plots.is_bytes_key(key) and value >= 0:
        return plots.format_bytes(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _readout(selection: Mapping[str, Any], chosen: Sequence[Mapping[str, Any]], keys) -> str:
    if not chosen:
        where = ", ".join(f"{k}={_label(v)}" for k, v in selection.items())
        return f"<i>no record with {html.escape(where)}</i>"
    columns = list(keys) + [k for k in sweep.record_keys(chosen) if k not in keys]
    head = "".join(f"<th style='padding:0 8px'>{html.escape(c)}</th>" for c in columns)
    rows = []
    for rec in chosen[:_MAX_ROWS]:
        cells = "".join(
            f"<td style='padding:0 8px'>{html.escape(_fmt(c, rec[c]) if c in rec else '')}</td>"
            for c in columns
        )
        rows.append(f"<tr>{cells}</tr>")
    more = len(chosen) - _MAX_ROWS
    tail = f"<div>… and {more} more</div>" if more > 0 else ""
    return (
        "<div style='font-family:monospace;font-size:12px'>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>{tail}</div>"
    )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
