"""pytest configuration for running the course notebooks under ``pytest --nbval-lax``.

Committed notebooks carry no execution counts (nbstripout removes them), but nbval only compares
the outputs of cells it considers "run", i.e. with an execution count. Every cell that carries
committed outputs is a deliberate ``# NBVAL_CHECK_OUTPUT`` cell, so it is marked as run here.

Every cell tagged ``widget`` ends with the widget it shows; under the tests that widget is also
asked for ``dead_controls()``: a slider or dropdown that changes nothing shown fails the cell.
"""

from __future__ import annotations

import ast

import pytest

_CHECK = (
    "_labkit_dead = {name!s}.dead_controls()\n"
    "assert not _labkit_dead, f'widget controls that change nothing shown: {{_labkit_dead}}'\n"
    "{name!s}"
)


def with_widget_check(source: str) -> str:
    """``source`` with its last expression (the widget) kept in a variable, checked for dead
    controls, then shown as before."""
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr):
        raise ValueError("a cell tagged 'widget' must end with the widget expression")
    lines = source.splitlines()
    head = "\n".join(lines[: last.lineno - 1] + [lines[last.lineno - 1][: last.col_offset]])
    expr = ast.get_source_segment(source, last)
    name = "_labkit_widget"
    return f"{head}{name} = (\n{expr}\n)\n" + _CHECK.format(name=name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cell = getattr(item, "cell", None)  # nbval's IPyNbCell holds the reference cell
        if cell is None or cell.get("cell_type") != "code":
            continue
        if cell.get("outputs") and cell.get("execution_count") is None:
            cell["execution_count"] = 1
        if "widget" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = with_widget_check(cell["source"])
