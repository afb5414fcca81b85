"""``labkit check`` (a student runs their visible tests) and :func:`verify_notebook` (CI proof).

Example:
    >>> report = check_notebook("workbooks/00_efficiency_basics.ipynb")   # doctest: +SKIP
    >>> report["total"], report["max"]                                       # doctest: +SKIP
    (3, 6)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import nbformat

from labkit.grading.execute import code_cell_numbers, run_recovering
from labkit.grading.source import (
    NotebookError,
    cell_role,
    clean_copy,
    is_worked_solution,
    nbgrader_meta,
    read_notebook,
)
from labkit.grading.submission import TestResult

__all__ = ["check_notebook", "verify_notebook"]


def check_notebook(
    path: str | os.PathLike, *, cell_timeout: float = 120, timeout: float = 600
) -> dict[str, Any]:
    """Run a student's notebook as it is under nbval; points of each visible graded test.

    This is the student's own check: nothing is restored and hidden tests are absent, so the
    grade may be lower. Returns {'notebook', 'tests': [TestResult], 'total', 'max', 'seconds',
    'notes'}. A missing or unreadable notebook raises NotebookError (one line).

    Example: ``check_notebook("workbooks/00_efficiency_basics.ipynb")["total"]``
    """
    nb = read_notebook(path)
    numbers = code_cell_numbers(nb)
    graded = []
    for i, cell in enumerate(nb.cells):
        points = nbgrader_meta(cell).get("points", 0)
        if cell_role(cell) == "graded" and i in numbers:
            gid = str(nbgrader_meta(cell).get("grade_id", f"cell {i}"))
            graded.append((gid, points if isinstance(points, (int, float)) else 0, numbers[i]))
    result, skipped = run_recovering(clean_copy(nb), cell_timeout=cell_timeout, timeout=timeout)
    notes = [
        f"code cell {n} stopped the kernel; the rest was run again without it" for n in skipped
    ]
    tests = []
    for gid, points, number in graded:
        outcome = result.outcomes.get(number)
        status = outcome.status if outcome else "not run"
        earned = points if status == "passed" else 0
        tests.append(TestResult(gid, points, earned, status, outcome.message if outcome else ""))
    return {
        "notebook": Path(path).name,
        "tests": tests,
        "total": sum(t.earned for t in tests),
        "max": sum(t.points for t in tests),
        "seconds": result.seconds,
        "notes": notes,
    }


def _exercises(nb: Any) -> tuple[list[dict[str, list[int]]], list[str]]:
    """Group cells into exercises: solution cells, then the graded cells that follow them."""
    groups: list[dict[str, list[int]]] = []
    problems = []
    current: dict[str, list[int]] | None = None
    for i, cell in enumerate(nb.cells):
        role = cell_role(cell)
        if is_worked_solution(cell):
            continue  # a worked solution after its question: nothing to grade
        if role == "solution":
            if current is None or current["graded"]:
                current = {"solutions": [], "graded": []}
                groups.append(current)
            current["solutions"].append(i)
        elif role == "graded":
            if current is None:
                gid = nbgrader_meta(cell)["grade_id"]
                problems.append(f"graded cell {gid} has no solution cell before it")
                continue
            current["graded"].append(i)
    return groups, problems


def verify_notebook(
    path: str | os.PathLike,
    *,
    cell_timeout: float = 120,
    timeout: float = 900,
    sandbox: bool | None = None,
) -> dict[str, Any]:
    """Prove a course notebook's graded tests with the grader itself: full points, then 0.

    Grades the course notebook as a submission (every graded cell must pass: the source earns
    full points) and its released workbook (every graded cell must fail: the workbook earns 0,
    so no test is vacuous; a scored cell must earn all its points, then 0), exactly as
    ``labkit grade`` would, and checks that no course cell fails in either run (so later cells
    do not depend on an unsolved exercise). ``sandbox``
    defaults to whether bubblewrap is available (the notebook is the instructor's own).

    Returns {'notebook', 'ok', 'max_points', 'source_points', 'released_points', 'problems',
    'notes', 'seconds'}; ``ok`` is True when there are no problems.

    Example: ``assert verify_notebook("notebooks/00_efficiency_basics.ipynb")["ok"]``
    """
    from labkit.grading import sandbox as _sandbox
    from labkit.grading.submission import grade_notebook, load_sources

    path = Path(path)
    report: dict[str, Any] = {
        "notebook": path.name, "ok": False, "max_points": 0, "source_points": 0,
        "released_points": 0, "problems": [], "notes": [], "seconds": 0.0,
    }  # fmt: skip
    try:
        (src,) = load_sources([path])
    except NotebookError as err:
        report["problems"].append(str(err))
        return report
    groups, problems = _exercises(src.nb)
    report["problems"] += problems
    report["max_points"] = src.info.max_points
    if not src.info.graded:
        report["problems"].append("no graded cells")
    for g in groups:
        if not g["graded"]:
            ids = [nbgrader_meta(src.nb.cells[i])["grade_id"] for i in g["solutions"]]
            report["notes"].append(f"solution cell(s) {', '.join(ids)} have no graded cell")
    sandbox = _sandbox.available() if sandbox is None else sandbox
    kw = {"cell_timeout": cell_timeout, "timeout": timeout, "sandbox": sandbox}
    with tempfile.TemporaryDirectory(prefix="labkit-verify-") as tmp:
        workbook = Path(tmp) / path.name
        nbformat.write(src.workbook, str(workbook))
        solved = grade_notebook(src, path, submission="source", **kw)
        unsolved = grade_notebook(src, workbook, submission="workbook", **kw)
    report["seconds"] = solved.seconds + unsolved.seconds
    for row, label in ((solved, "with the solutions"), (unsolved, "with the exercises unsolved")):
        if row.status != "ok":
            report["problems"].append(f"grading {label}: {row.status}: {row.reason}")
        for note in row.notes:
            if note.startswith("course cell"):
                report["problems"].append(f"{note} ({label})")
            elif note.startswith("solution cell") and row is unsolved:
                report["notes"].append(f"released {note}")
            elif not note.startswith("test cell"):
                report["problems"].append(f"{note} ({label})")
    for gid, test in solved.tests.items():
        report["source_points"] += test.earned
        if test.status != "passed":
            hint = ""
            if "NotImplementedError" in test.message:
                hint = " (does it call an earlier exercise's function? tests must not)"
            report["problems"].append(
                f"graded cell {gid} fails with the solution{hint}: {test.message}"
            )
        elif test.earned < test.points:  # a scored cell: the solution must earn full points
            report["problems"].append(
                f"graded cell {gid} earns {test.earned:g} of {test.points:g} points with the "
                "solution: a scored cell must give the solution full points"
            )
    for gid, test in unsolved.tests.items():
        report["released_points"] += test.earned
        if test.status == "passed" and (not test.scored or test.earned > 0):
            report["problems"].append(
                f"graded cell {gid} passes without its solution: the test is vacuous"
                if not test.scored
                else f"graded cell {gid} earns {test.earned:g} points without its solution"
            )
    report["ok"] = not report["problems"]
    return report
