"""pytest configuration for running the course notebooks under ``pytest --nbval-lax``.

Committed notebooks carry no execution counts (nbstripout removes them), but nbval only compares
the outputs of cells it considers "run", i.e. with an execution count. Every cell that carries
committed outputs is a deliberate ``# NBVAL_CHECK_OUTPUT`` cell, so it is marked as run here.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cell = getattr(item, "cell", None)  # nbval's IPyNbCell holds the reference cell
        if cell is None or cell.get("cell_type") != "code":
            continue
        if cell.get("outputs") and cell.get("execution_count") is None:
            cell["execution_count"] = 1
