"""The course notebooks in a real browser: JupyterLab on loopback, driven in headless Chromium.

nbval proves every cell runs, but not that a student sees working widgets: a missing or broken
widget manager still executes the cell and leaves only the plain-text repr (``Explorer(children=
(HBox(children=(SelectionSlider(...``). This test starts JupyterLab on 127.0.0.1 with a fresh
config, opens a copy of a notebook in Debian's ``chromium`` through Playwright, runs all cells,
and then checks what the page shows: no error output, real widget views and no repr text, and a
sweep slider that, when moved with the keyboard, really changes the plot (mean absolute pixel
difference of two screenshots) and restores it when moved back.

Run it with ``make browser-test``. It skips when ``/usr/bin/chromium`` or the ``playwright``
package is missing, unless ``LABKIT_BROWSER_TEST=1``, where it fails instead (CI sets it).
Screenshots, the server log and the browser console go to ``$LABKIT_ARTIFACTS/browser/`` (default
``build/browser/``). See docs/browser-test.md.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "06_dynamic_networks.ipynb"  # its explorer indexes a cached sweep
CHROMIUM = Path(os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root; the page is our own server on loopback
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 90  # JupyterLab up and answering /api/status
KERNEL_START_S = 90
RUN_ALL_S = 420  # every cell of the notebook (≤ 90 s headless; a shared CI machine is slower)
REDRAW_S = 30  # a slider move until the new PNG is shown
MOVED = 0.05  # mean |Δpixel| (0-255 scale) that counts as "the plot changed"
RESTORED = 0.01  # ... and that counts as "back to the first image"
# What a widget looks like when no widget manager renders it: its plain-text repr.
REPR = re.compile(
    r"\b(interactive|IntSlider|FloatSlider|SelectionSlider|Dropdown|VBox|HBox|Explorer|Live)\("
    r"|Error displaying widget|Loading widget\.\.\."
)


ARTIFACTS = ("server.log", "console.log", "timings.json", "notebook.png", "final.png", "plot_*.png")


def artifacts_dir() -> Path:
    """``$LABKIT_ARTIFACTS/browser/`` or ``build/browser/`` (git-ignored), created and cleared of
    the previous run's files (only the names in ``ARTIFACTS``)."""
    base = os.environ.get("LABKIT_ARTIFACTS")
    path = Path(base) / "browser" if base else REPO / "build" / "browser"
    path.mkdir(parents=True, exist_ok=True)
    for pattern in ARTIFACTS:
        for old in path.glob(pattern):
            old.unlink()
    return path


def unavailable(reason: str) -> None:
    """Skip, or fail when ``LABKIT_BROWSER_TEST=1`` demands the browser test (as CI does)."""
    if os.environ.get("LABKIT_BROWSER_TEST") == "1":
        pytest.fail(f"LABKIT_BROWSER_TEST=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(float)  # (H, W, 3)


def mean_abs_diff(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two PNGs of the same size, per channel, on the 0-255 scale."""
    pa, pb = pixels(a), pixels(b)
    assert pa.shape == pb.shape, f"screenshots differ in size: {pa.shape} vs {pb.shape}"
    return float(np.abs(pa - pb).mean())


def test_mean_abs_diff_sees_a_small_ring():
    """The metric's threshold: one 13-px ring moved on a 600x400 plot is far above ``MOVED``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def render(x: float) -> bytes:
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1, 2], [0.5, 0.7, 0.8], ".-")
        ax.plot([x], [0.5 + 0.15 * x], "o", markersize=13, markerfacecolor="none", color="k")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    assert mean_abs_diff(render(0), render(0)) == 0.0
    assert mean_abs_diff(render(0), render(2)) > 2 * MOVED


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))


@contextmanager
def jupyterlab(root: Path, home: Path, log: Path) -> Iterator[str]:
    """Start JupyterLab serving ``root`` on 127.0.0.1 (a free port, a random token, config,
    runtime, data and settings dirs under ``home``); yield its URL with the token; stop it by PID.
    """
    token = secrets.token_hex(16)
    runtime = home / "runtime"
    settings = home / "settings"
    # JupyterLab user settings: every cell attached to the DOM (no windowing), no autosave, no
    # news or update checks (nothing outside loopback is reachable), no extension manager.
    _write_json(settings / "@jupyterlab/notebook-extension/tracker.jupyterlab-settings",
                {"windowingMode": "none"})  # fmt: skip
    _write_json(settings / "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings",
                {"autosave": False})  # fmt: skip
    _write_json(settings / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})  # fmt: skip
    _write_json(settings / "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings",
                {"enabled": False})  # fmt: skip
    _write_json(home / "config" / "jupyter_server_config.json",
                {"LabApp": {"news_url": None}})  # fmt: skip
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "LABKIT_PROGRESS": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",  # the OS picks a free port; read back from the runtime file
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: kernel status, cell models
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        info = runtime / f"jpserver-{proc.pid}.json"
        deadline = time.monotonic() + SERVER_START_S
        url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {proc.returncode}; see {log}")
            if url is None and info.exists():
                try:
                    url = json.loads(info.read_text())["url"].rstrip("/")
                except (ValueError, KeyError):
                    pass  # written but not complete yet
            if url is not None:
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                        break
                except OSError:
                    pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"JupyterLab did not answer within {SERVER_START_S} s; see {log}")
        assert url.startswith("http://127.0.0.1:"), f"server not on loopback: {url}"
        yield f"{url}?token={token}"
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# JavaScript run in the page through window.jupyterapp (LabApp.expose_app_in_browser).
JS_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.map((cell, i) => {
    cell.node.setAttribute('data-labkit-cell', String(i));
    const m = cell.model;
    return m.type !== 'code' ? null : {
      count: m.executionCount,
      outputs: m.outputs.toJSON().map(o => ({
        type: o.output_type, ename: o.ename || '', evalue: o.evalue || '',
        text: o.output_type === 'stream' ? String(o.text).slice(0, 400) : ''
      }))
    };
  });
  return {status: kernel ? kernel.status : 'none', cells: cells};
}"""


def notebook_state(page) -> dict:
    state = page.evaluate(JS_STATE)
    assert state is not None, "the notebook did not open in the main area"
    return state


def errors_in(state: dict) -> list[str]:
    return [
        f"cell {i}: {o['ename']}: {o['evalue']}"
        for i, cell in enumerate(state["cells"])
        if cell
        for o in cell["outputs"]
        if o["type"] == "error"
    ]


def wait_image_changed(page, img, old_src: str) -> None:
    """Wait until ``img`` shows a new, fully decoded PNG (ipywidgets swaps in a new blob URL)."""
    page.wait_for_function(
        "([el, old]) => el.src !== old && el.complete && el.naturalWidth > 0",
        arg=[img.element_handle(), old_src],
        timeout=REDRAW_S * 1000,
    )


def test_notebook_widgets_work_in_jupyterlab(tmp_path):
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium; or set LABKIT_CHROMIUM)")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing (pip install -e '.[dev]')")

    out = artifacts_dir()
    source = json.loads(NOTEBOOK.read_text())
    before = NOTEBOOK.read_bytes()
    cells = source["cells"]
    widget_cells = [i for i, c in enumerate(cells) if "widget" in c["metadata"].get("tags", [])]
    explorer = [i for i in widget_cells if "widgets.explore(" in "".join(cells[i]["source"])]
    assert widget_cells and explorer, f"{NOTEBOOK.name} has no widget cell with widgets.explore"

    # Run a copy: the test never saves, and the committed notebook stays untouched. The kernel
    # finds the model cache through labkit itself ($LABKIT_DATA or the repo's data/), not the cwd.
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    console: list[str] = []
    timings: dict[str, float] = {}
    start = time.monotonic()

    with jupyterlab(root, tmp_path / "jupyter", out / "server.log") as url, sync_playwright() as p:
        timings["server_s"] = time.monotonic() - start
        page = None
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except PlaywrightError as err:
            pytest.fail(f"Chromium did not start: {str(err).splitlines()[0]}", pytrace=False)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(url.replace("?", f"/lab/tree/{NOTEBOOK.name}?", 1))

            # The kernel starts with the notebook; wait until it is idle.
            page.wait_for_function(
                """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                           const k = w && w.sessionContext && w.sessionContext.session
                                     && w.sessionContext.session.kernel;
                           return k && k.status === 'idle'; }""",
                timeout=KERNEL_START_S * 1000,
            )
            state = notebook_state(page)
            assert len(state["cells"]) == len(cells), "the page shows a different notebook"

            # Run all cells the way a student does: menu Run > Run All Cells.
            t0 = time.monotonic()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            deadline = time.monotonic() + RUN_ALL_S
            while True:
                state = notebook_state(page)
                errors = errors_in(state)
                assert not errors, "a cell raised an error in JupyterLab:\n" + "\n".join(errors)
                pending = [i for i, c in enumerate(state["cells"]) if c and c["count"] is None]
                if not pending and state["status"] == "idle":
                    break
                assert time.monotonic() < deadline, (
                    f"cells {pending[:5]}... not run within {RUN_ALL_S} s "
                    f"(kernel {state['status']}; is the model cache built? make prepare)"
                )
                time.sleep(1.0)
            timings["run_all_s"] = time.monotonic() - t0
            page.wait_for_timeout(1000)  # let the last outputs render

            # No output is a widget's plain-text repr (what a missing widget manager leaves).
            texts = page.locator(".jp-OutputArea-output").all_inner_texts()
            reprs = sorted({m.group(0) for t in texts for m in REPR.finditer(t)})
            assert not reprs, f"widgets shown as plain text (no widget manager?): {reprs}"

            # Every widget cell shows a widget view with an image and sliders.
            for i in widget_cells:
                cell = page.locator(f'[data-labkit-cell="{i}"]')
                cell.scroll_into_view_if_needed()
                views = cell.locator(".jp-OutputArea-output .jupyter-widgets")
                assert views.count() > 0, f"cell {i} (tagged widget) rendered no widget view"
                cell.locator("img.widget-image").first.wait_for()
            assert page.locator(".jp-OutputArea-output .widget-slider").count() >= 2

            # Move the explorer's first slider one step and back; the plot must follow.
            cell = page.locator(f'[data-labkit-cell="{explorer[0]}"]')
            slider = cell.locator(".widget-slider").first
            handle = slider.locator(".noUi-handle").first
            readout = slider.locator(".widget-readout").first
            img = cell.locator("img.widget-image").first
            cell.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "notebook.png"))

            shots = [img.screenshot(path=str(out / "plot_0_start.png"))]
            values = [readout.inner_text()]
            for step, key in (("1_moved", "ArrowRight"), ("2_back", "ArrowLeft")):
                old_src = img.get_attribute("src")
                handle.focus()
                handle.press(key)
                t0 = time.monotonic()
                try:
                    wait_image_changed(page, img, old_src)
                except PlaywrightError:
                    page.screenshot(path=str(out / f"plot_{step}_timeout.png"))
                    raise AssertionError(
                        f"the plot did not change within {REDRAW_S} s after {key} on the slider"
                    ) from None
                timings[f"redraw_{step}_s"] = time.monotonic() - t0
                shots.append(img.screenshot(path=str(out / f"plot_{step}.png")))
                values.append(readout.inner_text())
            moved, back = mean_abs_diff(shots[0], shots[1]), mean_abs_diff(shots[0], shots[2])
            timings.update(moved=moved, back=back)
            assert values[1] != values[0] and values[2] == values[0], f"slider readouts {values}"
            assert moved > MOVED, f"moving the slider changed the plot too little: {moved:.4f}"
            assert back < RESTORED, f"moving it back did not restore the plot: {back:.4f}"
        finally:
            if page is not None:
                try:
                    page.screenshot(path=str(out / "final.png"))
                except PlaywrightError:
                    pass
            browser.close()
            (out / "console.log").write_text("\n".join(console) + "\n")
            timings["total_s"] = time.monotonic() - start
            (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    assert NOTEBOOK.read_bytes() == before, f"{NOTEBOOK} was modified"
