"""Course notebooks follow notebooks/README.md, and notebook 00 runs with the network blocked.

nbval itself runs every notebook (`pytest --nbval-lax notebooks`); these tests check the conventions
that nbval does not, and the offline guarantee.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]

# Prepended to a notebook run offline: each Python-level connection attempt is logged and refused.
GUARD_SOURCE = """
import socket as _s
_labkit_net_attempts = []
def _labkit_blocked(*args, **kwargs):
    _labkit_net_attempts.append(repr(args[1:] if args else kwargs)[:200])
    raise OSError("network access blocked by the offline test")
_s.socket.connect = _labkit_blocked
_s.socket.connect_ex = _labkit_blocked
_s.create_connection = _labkit_blocked
_s.getaddrinfo = _labkit_blocked
"""


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_course_notebooks():
    assert NOTEBOOKS, "notebooks/NN_topic.ipynb files expected"
    for path in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", path.stem), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], "saved widget state is run output: strip it"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("execution_count") is None, f"cell {i} has an execution count"
        checked = "".join(cell["source"]).startswith("# NBVAL_CHECK_OUTPUT")
        if cell.get("outputs"):
            assert checked, f"cell {i} carries outputs but is not a # NBVAL_CHECK_OUTPUT cell"
            assert cell["metadata"].get("keep_output"), (
                f"cell {i}: checked output needs keep_output"
            )
            for out in cell["outputs"]:
                assert out.get("execution_count") is None, f"cell {i} output has an execution count"
        if checked:
            assert cell.get("outputs"), f"cell {i} is checked by nbval but has no committed output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = _code_cells(nb)
    assert "labkit.seed(" in code[0].source, "first code cell imports and seeds"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert code.index(params[0]) <= 2, "the parameters cell comes right after the imports"
    graded = [c for c in code if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(graded) >= 2, "at least two graded exercises"
    ids = [c.metadata["nbgrader"]["grade_id"] for c in code if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    for cell in graded:
        assert cell.metadata["nbgrader"]["points"] > 0
        assert "graded" in cell.metadata.get("tags", [])
    for cell in code:
        assert "plt.show()" not in cell.source or cell.source.rstrip().endswith("plt.show()")
        assert "download=True" not in cell.source or cell.source.startswith("# NBVAL_SKIP")


def _run_offline(path: Path, timeout: int = 300) -> tuple[nbformat.NotebookNode, float]:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    guard = nbformat.v4.new_code_cell(GUARD_SOURCE)
    check = nbformat.v4.new_code_cell(
        "assert not _labkit_net_attempts, _labkit_net_attempts\nprint('no network attempts')"
    )
    nb.cells = [guard, *nb.cells, check]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute(env={**os.environ, "PYTHONPATH": str(ROOT)})  # handed on to the kernel
    return nb, time.perf_counter() - start


@pytest.mark.slow
def test_notebook_00_runs_offline_within_budget():
    path = ROOT / "notebooks" / "00_efficiency_basics.ipynb"
    nb, seconds = _run_offline(path)
    last = nb.cells[-1].outputs
    assert any("no network attempts" in o.get("text", "") for o in last), last
    # The budget is 60 s on an idle 2-core laptop; under a parallel test run allow slack.
    assert seconds < 150, f"notebook 00 took {seconds:.0f} s"
    print(f"notebook 00 ran offline in {seconds:.1f} s (python {sys.version_info[:2]})")


def _notebooks_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nb_conftest", ROOT / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_widget_cell_is_checked_for_dead_controls(path):
    """Under nbval each `widget` cell also runs `dead_controls()` on the widget it ends with."""
    wrap = _notebooks_conftest().with_widget_check
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in _code_cells(nb) if "widget" in c.metadata.get("tags", [])]
    for cell in cells:
        wrapped = wrap(cell.source)
        assert "dead_controls()" in wrapped and wrapped.rstrip().endswith("_labkit_widget")


def test_the_widget_check_runs_the_cell_and_fails_on_a_dead_control():
    wrap = _notebooks_conftest().with_widget_check

    class Widget:
        def __init__(self, dead):
            self.dead = dead

        def dead_controls(self):
            return self.dead

    ns = {"Widget": Widget}
    exec(wrap("x = 1\nWidget([])  # shown"), ns)
    assert ns["x"] == 1 and isinstance(ns["_labkit_widget"], Widget)
    with pytest.raises(AssertionError, match="alpha"):
        exec(wrap("Widget(\n    ['alpha'],\n)"), {"Widget": Widget})
    with pytest.raises(ValueError, match="must end with the widget"):
        wrap("w = 1")
