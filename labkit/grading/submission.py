"""Grade one submitted notebook against its course notebook (the *source*).

The grading model: the notebook that runs is rebuilt from the SOURCE, cell by cell, and only the
contents of the student's solution cells (matched by ``grade_id``) are spliced in. Test cells
(hidden tests included), narrative, parameters and every other cell come from the source, so a
deleted or edited test, an extra cell that monkeypatches the checker, or a changed parameter
cannot change the result. What a student writes outside solution cells is not run; feedback says
so. Solution cells are scanned for tampering (:mod:`labkit.grading.scan`) and flagged for review.

Example:
    >>> src = load_sources(["notebooks"])[0]                                 # doctest: +SKIP
    >>> row = grade_notebook(src, "submissions/alice/00_efficiency_basics.ipynb")  # doctest: +SKIP
    >>> row.total, row.max_points                                            # doctest: +SKIP
    (6, 6)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

from labkit.grading.execute import code_cell_numbers, run_recovering
from labkit.grading.guard import MARK, guard_cells
from labkit.grading.scan import scan_solution, top_level_names
from labkit.grading.source import (
    NotebookError,
    NotebookInfo,
    clean_copy,
    nbgrader_meta,
    normalized,
    read_notebook,
    validate_source,
)
from labkit.grading.workbook import expand_notebooks, graded_checksum, release_notebook

__all__ = [
    "SourceNotebook",
    "TestResult",
    "Row",
    "load_sources",
    "build_graded_notebook",
    "grade_notebook",
]


@dataclass
class SourceNotebook:
    """A validated course notebook with its released workbook and what grading needs from it."""

    path: Path
    nb: NotebookNode
    info: NotebookInfo
    workbook: NotebookNode
    checksums: dict[str, str] = field(default_factory=dict)  # graded id -> visible-text sha256
    protected: set[str] = field(default_factory=set)  # names bound outside solution cells
    references: set[str] = field(default_factory=set)  # ... by import, def or class
    allowed: dict[str, set[str]] = field(default_factory=dict)  # solution id -> names it binds

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class TestResult:
    """One graded test cell: points earned of ``points``, status (passed/failed/timeout/...)."""

    grade_id: str
    points: float
    earned: float
    status: str
    message: str = ""


@dataclass
class Row:
    """One gradebook row: a submission's result on one notebook."""

    submission: str
    notebook: str
    status: str  # ok | timeout | missing | unreadable | error
    reason: str = ""
    tests: dict[str, TestResult] = field(default_factory=dict)
    max_points: float = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(t.earned for t in self.tests.values())


def load_sources(
    paths: list[str | os.PathLike], manifest: dict[str, Any] | None = None
) -> list[SourceNotebook]:
    """Read and validate course notebooks (files or folders); NotebookError names a bad one.

    With a release ``manifest``, tamper checks use the checksums the students actually received.

    Example: ``[s.name for s in load_sources(["notebooks"])]``
    """
    sources = []
    for path in expand_notebooks(paths):
        nb = read_notebook(path)
        info = validate_source(nb, path.name)
        workbook = release_notebook(nb, path.name)
        src = SourceNotebook(path=path, nb=nb, info=info, workbook=workbook)
        released = (manifest or {}).get("notebooks", {}).get(path.name, {}).get("graded", {})
        for grade_id, (index, _) in info.graded.items():
            entry = released.get(grade_id) or {}
            src.checksums[grade_id] = entry.get("sha256") or graded_checksum(
                workbook.cells[index].source
            )
        solution_cells = set(info.solutions.values())
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if i in solution_cells:
                src.allowed[nbgrader_meta(cell)["grade_id"]] = top_level_names(cell.source)
            else:
                src.protected |= top_level_names(cell.source)
                src.references |= top_level_names(cell.source, ("import", "def"))
        sources.append(src)
    return sources


def _by_grade_id(nb: NotebookNode) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for cell in nb.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if cell.get("cell_type") == "code" and isinstance(grade_id, str):
            found.setdefault(grade_id, []).append(cell)
    return found


def build_graded_notebook(
    source: SourceNotebook, submission: NotebookNode
) -> tuple[NotebookNode, dict[str, int], dict[str, int], list[str], list[str]]:
    """The notebook to run: the source with the student's solution cells spliced in.

    Returns (notebook, graded id -> code-cell number, solution id -> code-cell number, notes for
    the student, flags from the tamper scan). Solution cells are matched by grade_id, then by cell
    id; a missing one runs as the released stub. Outputs are cleared; the kernel is python3.

    Example: ``nb, graded, solutions, notes, flags = build_graded_notebook(src, read_notebook(p))``
    """
    nb = clean_copy(source.nb)
    student = _by_grade_id(submission)
    by_cell_id = {  # fallback for a solution cell whose nbgrader metadata was lost
        c.get("id"): c
        for c in submission.cells
        if c.get("cell_type") == "code" and not nbgrader_meta(c).get("grade_id")
    }
    notes: list[str] = []
    flags: list[str] = []
    used: set[int] = set()
    for grade_id, index in source.info.solutions.items():
        cells = student.get(grade_id) or []
        if not cells and nb.cells[index].get("id") in by_cell_id:
            cells = [by_cell_id[nb.cells[index].get("id")]]
        if not cells:
            nb.cells[index].source = source.workbook.cells[index].source
            notes.append(f"solution cell {grade_id} is missing: graded as unanswered")
            continue
        if len(cells) > 1:
            notes.append(
                f"solution cell {grade_id} appears {len(cells)} times: the last one is used"
            )
        chosen = cells[-1]
        used.update(id(c) for c in cells)
        nb.cells[index].source = chosen.get("source", "")
        for finding in scan_solution(
            chosen.get("source", ""), source.references, source.allowed.get(grade_id, set())
        ):
            flags.append(f"{grade_id}: {finding}")

    for grade_id, checksum in source.checksums.items():
        cells = student.get(grade_id) or []
        used.update(id(c) for c in cells)
        if not cells:
            notes.append(
                f"test cell {grade_id} was deleted: it was restored from the course notebook"
            )
        elif any(graded_checksum(c.get("source", "")) != checksum for c in cells):
            notes.append(f"test cell {grade_id} was edited: your edits were ignored")

    workbook_code = {normalized(c.source) for c in source.workbook.cells if c.cell_type == "code"}
    extra = [
        c
        for c in submission.cells
        if c.get("cell_type") == "code"
        and id(c) not in used
        and normalized(c.get("source", ""))
        and normalized(c.get("source", "")) not in workbook_code
    ]
    if extra:
        notes.append(
            f"{len(extra)} of your code cells are not in the workbook (or were changed) and were "
            "not run: grading runs the course notebook with only your solution cells"
        )
    kernel = (submission.get("metadata", {}).get("kernelspec") or {}).get("name")
    if kernel and kernel != "python3":
        notes.append(f"your notebook asks for kernel {kernel!r}; it was graded with python3")

    nb = _with_guards(nb, source)
    graded, solutions = _numbers(nb, source)
    return nb, graded, solutions, notes, flags


def _with_guards(nb: NotebookNode, source: SourceNotebook) -> NotebookNode:
    """Put guard cells around every solution cell (see :mod:`labkit.grading.guard`)."""
    solutions = {i: gid for gid, i in source.info.solutions.items()}
    cells = []
    for i, cell in enumerate(nb.cells):
        if i in solutions:
            # names the instructor's own solution cell binds are the student's to bind too
            before, after = guard_cells(source.protected - source.allowed.get(solutions[i], set()))
            cells += [before, cell, after]
        else:
            cells.append(cell)
    nb.cells = cells
    return nb


def _numbers(nb: NotebookNode, source: SourceNotebook) -> tuple[dict[str, int], dict[str, int]]:
    """nbval's code-cell number of each graded and solution cell, found by grade_id."""
    numbers = code_cell_numbers(nb)
    graded, solutions = {}, {}
    for i, cell in enumerate(nb.cells):
        gid = nbgrader_meta(cell).get("grade_id")
        if gid in source.info.graded:
            graded[gid] = numbers[i]
        elif gid in source.info.solutions:
            solutions[gid] = numbers[i]
    return graded, solutions


def grade_notebook(
    source: SourceNotebook,
    path: str | os.PathLike | None,
    *,
    submission: str | None = None,
    cell_timeout: float = 120,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> Row:
    """Grade one submitted notebook; never raises for a bad submission (the row says why).

    ``cell_timeout`` (s) limits each cell, ``timeout`` (s) the whole notebook. A missing or
    unreadable file gives a row with 0 points and status ``missing`` / ``unreadable``.

    Example: ``grade_notebook(src, "alice/00_efficiency_basics.ipynb", cell_timeout=60).total``
    """
    start = time.perf_counter()
    name = submission or (Path(path).stem if path else "?")
    row = Row(submission=name, notebook=source.name, status="ok", max_points=source.info.max_points)

    def zero(status: str, message: str) -> None:
        for grade_id, (_, points) in source.info.graded.items():
            row.tests[grade_id] = TestResult(grade_id, points, 0, status, message)

    if path is None or not Path(path).is_file():
        row.status, row.reason = "missing", f"no {source.name} in this submission"
        zero("missing", row.reason)
    else:
        try:
            sub = read_notebook(path)
        except NotebookError as err:
            row.status, row.reason = "unreadable", str(err)
            zero("unreadable", row.reason)
        else:
            _run(row, source, sub, cell_timeout=cell_timeout, timeout=timeout, env=env)
    row.seconds = time.perf_counter() - start
    return row


def _run(
    row: Row,
    source: SourceNotebook,
    sub: NotebookNode,
    *,
    cell_timeout: float,
    timeout: float,
    env: dict[str, str] | None,
) -> None:
    nb, graded, solutions, row.notes, row.flags = build_graded_notebook(source, sub)
    result, skipped = run_recovering(nb, cell_timeout=cell_timeout, timeout=timeout, env=env)
    labels = {n: f"solution cell {g}" for g, n in solutions.items()}
    labels.update({n: f"test cell {g}" for g, n in graded.items()})
    for grade_id, number in solutions.items():
        outcome = result.outcomes.get(number)
        if outcome is not None and outcome.status in ("failed", "timeout"):
            row.notes.append(f"solution cell {grade_id} did not run cleanly: {outcome.message}")
        guard = result.outcomes.get(number + 1)  # the restore cell right after it
        if guard is not None and MARK in guard.message:
            restored = guard.message.split(MARK + ": ", 1)[1]
            row.flags.append(f"{grade_id}: {restored} (undone before the tests ran)")
    for number in skipped:
        row.notes.append(
            f"{labels.get(number, f'code cell {number}')} stopped the kernel (a loop that ignored "
            "the interrupt, or an exit): the rest of the notebook was run again without it"
        )
    for grade_id, number in graded.items():
        points = source.info.points(grade_id)
        outcome = result.outcomes.get(number)
        status = outcome.status if outcome else "not run"
        message = outcome.message if outcome else "not run"
        earned = points if status == "passed" else 0
        row.tests[grade_id] = TestResult(grade_id, points, earned, status, message)
    if result.timed_out:
        row.status, row.reason = "timeout", f"the notebook ran past {timeout:g} s"
    elif all(t.status == "not run" for t in row.tests.values()) and row.tests:
        row.status = "error"
        row.reason = next(iter(row.tests.values())).message or "the kernel did not start"
    tampered = [n.split()[2] for n in row.notes if n.startswith("test cell ")]
    if tampered and not row.reason:
        row.reason = "test cells edited or deleted (restored): " + ", ".join(tampered)
