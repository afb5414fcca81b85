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

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

from labkit.grading.scan import scan_solution, top_level_names
from labkit.grading.source import (
    NotebookError,
    NotebookInfo,
    clean_copy,
    is_worked_solution,
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
    """One graded test cell: points earned of ``points``, status (passed/failed/timeout/...).

    A scored cell (:mod:`labkit.grading.scoring`) may earn a fraction of its points and carries
    the ``metrics`` it recorded (empty otherwise); ``scored`` says its last expression was a number.
    """

    grade_id: str
    points: float
    earned: float
    status: str
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    scored: bool = False


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
    late_days: int = 0  # started days after the deadline (labkit.grading.export.LatePolicy)
    penalty: float = 0.0  # percent of the total taken for lateness

    @property
    def total(self) -> float:
        return sum(t.earned for t in self.tests.values())

    @property
    def score(self) -> float:
        """The total after the late penalty."""
        return round(self.total * (1 - self.penalty / 100), 6)


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
) -> tuple[NotebookNode, list[str], list[str]]:
    """The notebook grading steps through: the source with the student's solution cells spliced in.

    Returns (notebook, notes for the student, flags from the tamper scan). Solution cells are
    matched by grade_id, then by cell id; a missing one runs as the released stub.

    Example: ``nb, notes, flags = build_graded_notebook(src, read_notebook(p))``
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
        if is_worked_solution(nb.cells[index]):
            used.update(id(c) for c in cells)
            continue  # the course's worked solution runs as it is (see _job)
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

    return nb, notes, flags


def grade_notebook(
    source: SourceNotebook,
    path: str | os.PathLike | None,
    *,
    submission: str | None = None,
    cell_timeout: float = 120,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    sandbox: bool = True,
    memory_gb: float = 6.0,
) -> Row:
    """Grade one submitted notebook; never raises for a bad submission (the row says why).

    ``cell_timeout`` (s) limits each cell, ``timeout`` (s) the whole notebook. A missing or
    unreadable file gives a row with 0 points and status ``missing`` / ``unreadable``.

    Example: ``grade_notebook(src, "alice/00_efficiency_basics.ipynb", cell_timeout=60).total``
    """
    if sandbox:
        from labkit.grading import sandbox as _sandbox

        if not _sandbox.available():
            raise ValueError(
                "sandbox=True needs bubblewrap (bwrap) with user namespaces: "
                "apt-get install bubblewrap; or sandbox=False: " + _sandbox.NO_SANDBOX_MEANS
            )
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
            _run(row, source, sub, cell_timeout=cell_timeout, timeout=timeout, env=env,
                 sandbox=sandbox, memory_gb=memory_gb)  # fmt: skip
    row.seconds = time.perf_counter() - start
    return row


def _job(nb: NotebookNode, source: SourceNotebook) -> list[dict[str, Any]]:
    """The code cells in order, each with its role and the text each side runs."""
    solutions = {i: gid for gid, i in source.info.solutions.items()}
    graded = {index: gid for gid, (index, _) in source.info.graded.items()}
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        entry = {"index": i, "role": "code", "source": source.nb.cells[i].source}
        if i in solutions and not is_worked_solution(source.nb.cells[i]):
            entry.update(role="solution", grade_id=solutions[i], student=cell.source)
        elif i in graded:
            entry.update(role="graded", grade_id=graded[i], points=source.info.graded[graded[i]][1])
        cells.append(entry)
    return cells


def run_verdict(job: dict[str, Any], *, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m labkit.grading.verdict`` on a job; its result, or {"error": why}.

    The process (and the student's process it starts) is killed past ``timeout`` + 30 s.
    """
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": package_root}
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        job = {**job, "workdir": tmp}
        proc = subprocess.Popen(
            [sys.executable, "-m", "labkit.grading.verdict"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=tmp,
            start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"error": f"the notebook ran past {timeout:g} s", "timeout": True}
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()
        return {
            "error": "grading failed: " + (tail[-1][:300] if tail else f"exit {proc.returncode}")
        }


def _run(
    row: Row,
    source: SourceNotebook,
    sub: NotebookNode,
    *,
    cell_timeout: float,
    timeout: float,
    env: dict[str, str] | None,
    sandbox: bool,
    memory_gb: float,
) -> None:
    nb, row.notes, row.flags = build_graded_notebook(source, sub)
    job = {"cells": _job(nb, source), "cell_timeout": cell_timeout, "deadline": timeout,
           "sandbox": sandbox, "memory_gb": memory_gb}  # fmt: skip
    result = run_verdict(job, timeout=timeout, env=env)
    tests, scores = result.get("tests", {}), result.get("scores", {})
    for grade_id, (_, points) in source.info.graded.items():
        status, message = tests.get(grade_id, ("not run", result.get("error", "not run")))
        test = TestResult(grade_id, points, points if status == "passed" else 0, status, message)
        scored = scores.get(grade_id) if status == "passed" else None
        if scored:  # computed in the grader's process (verdict.py), clipped again here
            test.metrics = dict(scored.get("metrics") or {})
            if scored.get("earned") is not None:
                test.earned = min(max(float(scored["earned"]), 0.0), float(points))
                test.scored = True
        row.tests[grade_id] = test
    for grade_id, error in result.get("solutions", {}).items():
        if error:
            row.notes.append(f"solution cell {grade_id} did not run cleanly: {error}")
    for why in result.get("restarts", []):
        row.notes.append(why)
    for index, error in result.get("cells", {}).items():
        row.notes.append(f"course cell {index} failed next to your code: {error}")
    if "error" in result:
        row.status = "timeout" if result.get("timeout") else "error"
        row.reason = result["error"]
    elif any(
        t.status == "timeout" and "notebook ran past" in t.message for t in row.tests.values()
    ):
        row.status, row.reason = "timeout", f"the notebook ran past {timeout:g} s"
    tampered = [n.split()[2] for n in row.notes if n.startswith("test cell ")]
    if tampered and not row.reason:
        row.reason = "test cells edited or deleted (restored): " + ", ".join(tampered)
