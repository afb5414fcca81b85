"""Every course notebook's graded tests are real: full points with the solution, 0 without it.

:func:`labkit.grading.verify_notebook` grades each notebook twice with the grader itself (the
sandboxed student's process and the verdict process, docs/grading.md section 6): the course
notebook as a submission must earn full points, its released workbook 0, and no course cell may
fail in either run. So every test also works through the grader's proxies (calls into the
student's code return data; gradients flow back; labkit models arrive rebuilt).
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
