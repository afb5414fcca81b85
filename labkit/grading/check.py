"""``labkit check`` (a student runs their visible tests) and :func:`verify_notebook` (CI proof).

Example:
    >>> report = check_notebook("workbooks/00_efficiency_basics.ipynb")   # doctest: +SKIP
    >>> report["total"], report["max"]                                       # doctest: +SKIP
    (3, 6)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from labkit.grading.execute import code_cell_numbers, run_nbval, run_recovering
from labkit.grading.source import (
    NotebookError,
    cell_role,
    clean_copy,
    nbgrader_meta,
    read_notebook,
    validate_source,
)
from labkit.grading.submission import TestResult
from labkit.grading.workbook import release_notebook

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
    path: str | os.PathLike, *, cell_timeout: float = 120, timeout: float = 900
) -> dict[str, Any]:
    """Prove a course notebook's graded tests: full points with the solution, 0 without it.

    One nbval run of the source in which every exercise runs twice: solution cells and their
    graded cells as in the source (each must pass), then the released stubs of the solution cells
    with the same graded cells again (each must fail). The stubs stay in effect afterwards, so the
    rest of the notebook also shows it runs with that exercise unsolved. This costs one run of
    the notebook plus each graded cell once more, against two full runs for source + workbook,
    and is stricter: each graded cell must fail when its own exercise is unsolved.

    Returns {'notebook', 'ok', 'max_points', 'source_points', 'released_points', 'problems',
    'notes', 'seconds'}; ``ok`` is True when there are no problems.

    Example: ``assert verify_notebook("notebooks/00_efficiency_basics.ipynb")["ok"]``
    """
    path = Path(path)
    report: dict[str, Any] = {
        "notebook": path.name, "ok": False, "max_points": 0, "source_points": 0,
        "released_points": 0, "problems": [], "notes": [], "seconds": 0.0,
    }  # fmt: skip
    try:
        nb = read_notebook(path)
        info = validate_source(nb, path.name)
    except NotebookError as err:
        report["problems"].append(str(err))
        return report
    workbook = release_notebook(nb, path.name)
    groups, problems = _exercises(nb)
    report["problems"] += problems
    report["max_points"] = info.max_points
    if not info.graded:
        report["problems"].append("no graded cells")

    last_graded = {g["graded"][-1]: g for g in groups if g["graded"]}
    for g in groups:
        if not g["graded"]:
            ids = [nbgrader_meta(nb.cells[i])["grade_id"] for i in g["solutions"]]
            report["notes"].append(f"solution cell(s) {', '.join(ids)} have no graded cell")
    cells, kinds = [], []
    seen_stub = False
    for i, cell in enumerate(nb.cells):
        cells.append(copy.deepcopy(cell))
        kinds.append(
            ("solved", i) if cell_role(cell) == "graded" else ("after-stub" if seen_stub else "", i)
        )
        if i in last_graded:
            g = last_graded[i]
            for j in g["solutions"]:
                cells.append(copy.deepcopy(workbook.cells[j]))
                kinds.append(("stub-solution", j))
            for j in g["graded"]:
                cells.append(copy.deepcopy(nb.cells[j]))
                kinds.append(("stub", j))
            seen_stub = True
    run_nb = clean_copy(nb)
    run_nb.cells = cells
    numbers = code_cell_numbers(run_nb)
    result = run_nbval(run_nb, cell_timeout=cell_timeout, timeout=timeout)
    report["seconds"] = result.seconds
    if result.timed_out:
        report["problems"].append(f"the verify run passed its {timeout:g} s limit")
    for k, (kind, i) in enumerate(kinds):
        if k not in numbers:
            continue
        outcome = result.outcomes.get(numbers[k])
        status, message = (outcome.status, outcome.message) if outcome else ("not run", "")
        gid = nbgrader_meta(nb.cells[i]).get("grade_id", "")
        if kind == "solved":
            if status == "passed":
                report["source_points"] += info.points(gid)
            else:
                hint = ""
                if "NotImplementedError" in message:
                    hint = " (does it call an earlier exercise's function? tests must not)"
                report["problems"].append(
                    f"graded cell {gid} fails with the solution{hint}: {message}"
                )
        elif kind == "stub":
            if status == "passed":
                report["released_points"] += info.points(gid)
                report["problems"].append(
                    f"graded cell {gid} passes without its solution: the test is vacuous"
                )
        elif kind == "stub-solution":
            if status not in ("passed", "skipped"):
                report["notes"].append(f"released solution cell {gid} raises when run: {message}")
        elif status not in ("passed", "skipped"):
            hint = " (with an exercise above unsolved: later cells must not use it)" if kind else ""
            report["problems"].append(f"cell {i} fails{hint}: {message}")
    report["ok"] = not report["problems"]
    return report
