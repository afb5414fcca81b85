"""Graded assignments: release workbooks, let students check (nbval), grade submissions (sandboxed).

    labkit release notebooks/ -o release/                  # workbooks + manifest.json
    labkit check workbooks/00_efficiency_basics.ipynb      # a student's visible tests
    labkit grade submissions/* --source notebooks/ -o grades/gradebook.csv -j 4

The whole cycle, the grading model and its limits are in docs/grading.md. Modules: ``source``
(markers, validation), ``workbook`` (release, self-study folders), ``execute`` (pytest + nbval
in a subprocess, for ``labkit check``), ``submission`` (grade one), ``verdict`` (the grader's
process: course code and the tests), ``student`` (the student's process: their code),
``sandbox`` (bubblewrap and limits), ``remote`` and ``wire`` (requests out, plain data back),
``gradebook`` (many, CSV, feedback), ``check`` (student check, :func:`verify_notebook`),
``scan`` (tamper flags), ``scoring`` (scored cells: :func:`score`), ``commands`` (argparse).
Importing this package is cheap: the functions below load their module on first use.

Example:
    >>> from labkit.grading import verify_notebook
    >>> verify_notebook("notebooks/00_efficiency_basics.ipynb")["ok"]   # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from labkit.grading.commands import add_subcommands

_EXPORTS = {
    "release": "workbook",
    "release_notebook": "workbook",
    "build_self_study": "workbook",
    "grade": "gradebook",
    "find_submissions": "gradebook",
    "grade_notebook": "submission",
    "load_sources": "submission",
    "build_graded_notebook": "submission",
    "check_notebook": "check",
    "verify_notebook": "check",
    "validate_source": "source",
    "read_notebook": "source",
    "NotebookError": "source",
    "score": "scoring",
    "run_nbval": "execute",
}

__all__ = ["add_subcommands", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"labkit.grading.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'labkit.grading' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
