"""Read course notebooks and their grading markers (nbgrader metadata, BEGIN/END comments).

A course notebook (the *source*) carries the solutions and every test. Cells are told apart by
``metadata.nbgrader`` (see notebooks/README.md):

- solution cell: ``{"solution": true, "grade": false, "grade_id": ...}``, the answer between
  ``### BEGIN SOLUTION`` / ``### END SOLUTION``;
- graded test cell: ``{"grade": true, "solution": false, "grade_id": ..., "points": ...}``,
  instructor-only checks between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``.

Example:
    >>> nb = read_notebook("notebooks/00_efficiency_basics.ipynb")  # doctest: +SKIP
    >>> info = validate_source(nb, "00_efficiency_basics.ipynb")     # doctest: +SKIP
    >>> info.max_points                                                # doctest: +SKIP
    6
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

__all__ = [
    "NotebookError",
    "NotebookInfo",
    "read_notebook",
    "nbgrader_meta",
    "cell_role",
    "validate_source",
    "replace_solutions",
    "remove_hidden_tests",
    "normalized",
    "clean_copy",
    "STUB",
    "WORKED",
    "is_worked_solution",
    "without_surrogates",
]

STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
_MARKERS = {
    "solution": (re.compile(r"#+\s*BEGIN SOLUTION"), re.compile(r"#+\s*END SOLUTION")),
    "hidden": (re.compile(r"#+\s*BEGIN HIDDEN TESTS"), re.compile(r"#+\s*END HIDDEN TESTS")),
}
# nbval markers that would make a graded cell pass without checking anything.
_UNCHECKED = {"NBVAL_SKIP", "NBVAL_RAISES_EXCEPTION"}
_UNCHECKED_TAGS = {"nbval-skip", "nbval-raises-exception", "raises-exception"}
_SURROGATES = re.compile("[\ud800-\udfff]")


class NotebookError(ValueError):
    """A notebook that cannot be read, or a course notebook whose grading markers are wrong."""


@dataclass(frozen=True)
class NotebookInfo:
    """The grading layout of a validated course notebook.

    ``graded`` maps grade_id -> (cell index, points), ``solutions`` maps grade_id -> cell index;
    both in notebook order. Cell indices count all cells (markdown included), from 0.
    """

    name: str
    graded: dict[str, tuple[int, float]] = field(default_factory=dict)
    solutions: dict[str, int] = field(default_factory=dict)

    @property
    def max_points(self) -> float:
        """Sum of the points of all graded cells."""
        return sum(points for _, points in self.graded.values())

    def points(self, grade_id: str) -> float:
        """Points of one graded cell."""
        return self.graded[grade_id][1]


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (which UTF-8 cannot encode) replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


def _scrubbed(data: Any) -> Any:
    """Parsed JSON with every string made encodable: a ``"\\ud800"`` escape becomes U+FFFD."""
    if isinstance(data, str):
        return without_surrogates(data)
    if isinstance(data, list):
        return [_scrubbed(item) for item in data]
    if isinstance(data, dict):
        return {without_surrogates(k): _scrubbed(v) for k, v in data.items()}
    return data


def _parse(path: Path) -> NotebookNode:
    """The notebook at ``path``, with what nbformat itself trips on fixed first."""
    data = _scrubbed(json.loads(path.read_bytes().decode("utf-8-sig")))
    if isinstance(data, dict):
        if not isinstance(data.get("metadata", {}), dict):
            data["metadata"] = {}
        cells = data["cells"] if isinstance(data.get("cells"), list) else []
        for i, cell in enumerate(cells):
            if isinstance(cell, dict) and not isinstance(cell.get("id", ""), str):
                cell["id"] = f"labkit-bad-id-{i}"  # an unhashable id makes nbformat raise
    return nbformat.reads(json.dumps(data), as_version=4)


def read_notebook(path: str | os.PathLike) -> NotebookNode:
    """Read a notebook (any nbformat 4.x, or 3 converted); a one-line NotebookError if unreadable.

    Lenient on schema problems a student's editor may leave (nbformat only logs them), strict on
    what grading needs: a list of cells, each with a type, a source string and a metadata dict.
    What would trip the grader is dropped: a ``kernelspec`` or notebook ``metadata`` that is not
    a dict, a ``grade_id`` that is not a string (the cell counts as unlabelled), and lone
    surrogates in strings (replaced by U+FFFD, so every string encodes as UTF-8).

    Example: ``nb = read_notebook("submissions/alice/00_efficiency_basics.ipynb")``
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such notebook")
    try:
        nb = _parse(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is "not a readable notebook"
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise NotebookError(
            f"{path.name}: not a readable notebook ({type(err).__name__}: {detail})"
        ) from err
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise NotebookError(f"{path.name}: not a notebook (no list of cells)")
    if not isinstance(nb.get("metadata"), dict):
        nb["metadata"] = NotebookNode()
    if not isinstance(nb.metadata.get("kernelspec", {}), dict):
        del nb.metadata["kernelspec"]
    for i, cell in enumerate(cells):
        _check_cell(cell, i, path.name)
    return nb


def _check_cell(cell: Any, i: int, name: str) -> None:
    """Make cell ``i`` what grading expects (source text, metadata dict) or raise NotebookError."""
    if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
        raise NotebookError(f"{name}: cell {i} is not a code, markdown or raw cell")
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(str(s) for s in source)
    if not isinstance(source, str):
        raise NotebookError(f"{name}: cell {i} has no source text")
    cell["source"] = source
    if not isinstance(cell.get("metadata"), dict):
        cell["metadata"] = NotebookNode()
    meta = cell["metadata"].get("nbgrader")
    if isinstance(meta, dict) and not isinstance(meta.get("grade_id", ""), str):
        del meta["grade_id"]


def nbgrader_meta(cell: dict) -> dict[str, Any]:
    """A cell's ``metadata.nbgrader`` dict, or ``{}``."""
    metadata = cell.get("metadata")
    meta = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def cell_role(cell: dict) -> str | None:
    """``'solution'``, ``'graded'``, ``'manual'`` (both flags: nbgrader manual grading) or None.

    Example: ``cell_role(nb.cells[4])  # 'graded'``
    """
    meta = nbgrader_meta(cell)
    solution, grade = bool(meta.get("solution")), bool(meta.get("grade"))
    if solution and grade:
        return "manual"
    if solution:
        return "solution"
    if grade:
        return "graded"
    return None


def _regions(source: str, kind: str) -> list[tuple[int, int]]:
    """(begin line, end line) of each BEGIN/END region; NotebookError text if unbalanced."""
    begin_re, end_re = _MARKERS[kind]
    regions, start = [], None
    for i, line in enumerate(source.splitlines()):
        text = line.strip()
        if begin_re.fullmatch(text):
            if start is not None:
                raise ValueError(f"nested or unclosed {text!r} (line {i + 1})")
            start = i
        elif end_re.fullmatch(text):
            if start is None:
                raise ValueError(f"{text!r} without a BEGIN (line {i + 1})")
            regions.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"BEGIN on line {start + 1} has no END")
    return regions


WORKED = ("# The worked solution is in the course notebook.", "pass")


def is_worked_solution(cell: dict) -> bool:
    """A solution cell tagged ``explanation``: a worked solution, not something to write.

    The workbook shows a note in its place (:data:`WORKED`); grading runs the course's own
    version on both sides like any course cell, so it is never the student's to answer.
    """
    tags = (cell.get("metadata") or {}).get("tags") or []
    return cell_role(cell) == "solution" and isinstance(tags, list) and "explanation" in tags


def replace_solutions(source: str, stub: tuple[str, ...] = STUB) -> str:
    """Replace each solution region by ``# YOUR CODE HERE`` + ``raise NotImplementedError()``.

    The stub keeps the ``### BEGIN SOLUTION`` line's indentation, so a region inside a function
    body stays valid Python. A solution cell without markers is replaced whole (nbgrader's rule).

    Example: ``replace_solutions(cell.source)  # "def f():\\n    # YOUR CODE HERE\\n    raise ..."``
    """
    regions = _regions(source, "solution")
    if not regions:
        return "\n".join(stub)
    lines = source.splitlines()
    out: list[str] = []
    last = 0
    for begin, end in regions:
        out.extend(lines[last:begin])
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        out.extend(indent + line for line in stub)
        last = end + 1
    out.extend(lines[last:])
    return "\n".join(out)


def remove_hidden_tests(source: str) -> str:
    """Drop every ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` region (markers too)."""
    lines = source.splitlines()
    for begin, end in reversed(_regions(source, "hidden")):
        del lines[begin : end + 1]
    return "\n".join(lines).rstrip("\n")


def normalized(source: str) -> str:
    """Cell text compared across editors: no trailing spaces, no leading/trailing blank lines."""
    return "\n".join(line.rstrip() for line in source.strip("\n").splitlines()).strip("\n")


def clean_copy(nb: NotebookNode) -> NotebookNode:
    """A deep copy with every output and execution count removed."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def _unchecked_marker(cell: dict) -> str | None:
    tags = cell.get("metadata", {}).get("tags") or []
    for tag in tags if isinstance(tags, list) else []:
        if tag in _UNCHECKED_TAGS:
            return f"tag {tag!r}"
    for line in cell.get("source", "").splitlines():
        text = line.strip()
        if text.startswith("#") and text.lstrip("#").strip() in _UNCHECKED:
            return text
    return None


def validate_source(nb: NotebookNode, name: str) -> NotebookInfo:
    """Check a course notebook's grading markers; return its layout, or a one-line NotebookError.

    Checked: every solution/graded cell is a code cell with a unique string grade_id, graded cells
    have positive points and no nbval marker that would skip their checks, BEGIN/END markers are
    balanced and sit in the right kind of cell (solution markers in solution cells, hidden tests in
    graded cells).

    Example: ``validate_source(read_notebook(path), path.name).max_points``
    """
    info = NotebookInfo(name=name)
    seen: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        role = cell_role(cell)
        meta = nbgrader_meta(cell)
        where = f"{name}: cell {i}"
        if role is not None:
            grade_id = meta.get("grade_id")
            if not isinstance(grade_id, str) or not grade_id.strip():
                raise NotebookError(f"{where}: nbgrader cell without a grade_id")
            where = f"{name}: cell {i} ({grade_id})"
            if grade_id in seen:
                raise NotebookError(f"{where}: duplicate grade_id (also cell {seen[grade_id]})")
            seen[grade_id] = i
            if cell.get("cell_type") != "code":
                raise NotebookError(f"{where}: only code cells can be solution or graded cells")
            if role == "manual":
                raise NotebookError(
                    f"{where}: solution and grade both set (manual grading is not supported)"
                )
        source = cell.get("source", "") if cell.get("cell_type") == "code" else ""
        for kind in ("solution", "hidden"):
            try:
                regions = _regions(source, kind)
            except ValueError as err:
                raise NotebookError(f"{where}: unbalanced {kind} markers: {err}") from None
            wanted = "solution" if kind == "solution" else "graded"
            if regions and role != wanted:
                raise NotebookError(f"{where}: {kind} markers outside a {wanted} cell")
        if role == "graded":
            points = meta.get("points")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
                raise NotebookError(f"{where}: graded cell needs points > 0; got {points!r}")
            marker = _unchecked_marker(cell)
            if marker:
                raise NotebookError(
                    f"{where}: graded cell carries {marker}, so nbval never fails it"
                )
            info.graded[grade_id] = (i, float(points) if points % 1 else int(points))
        elif role == "solution":
            info.solutions[grade_id] = i
    return info
