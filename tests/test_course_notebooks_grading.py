"""Every course notebook's graded tests are real: full points with the solution, 0 without it.

:func:`labkit.grading.verify_notebook` runs each notebook ONCE under nbval: each exercise runs with
its solution (its graded cells must pass), then with the released stub (the same graded cells,
hidden tests included, must fail), and the rest of the notebook runs on with the stubs in place.
Cost: one run of the notebook plus each graded cell once more (about 1x the notebook's own
budget, <= 90 s; the 3-exercise fixture takes 2.4-4.2 s) instead of two full runs (source and
workbook).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.grading.check import verify_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS or [None], ids=[p.stem for p in NOTEBOOKS] or ["none"])
def test_source_earns_full_points_and_workbook_earns_zero(path):
    if path is None:
        pytest.skip("no course notebooks (notebooks/NN_*.ipynb) yet")
    report = verify_notebook(path, cell_timeout=300, timeout=900)
    print(f"verify_notebook({path.name}): {report['seconds']:.1f} s, notes: {report['notes']}")
    assert report["problems"] == [], "\n".join(report["problems"])
    assert report["source_points"] == report["max_points"] > 0
    assert report["released_points"] == 0
