"""The grader's side: run the course notebook's own cells and decide each test, from plain data.

``python -m labkit.grading.verdict`` reads a job (JSON on stdin, from
:mod:`labkit.grading.submission`), starts the student's side (:mod:`labkit.grading.student`,
sandboxed by :mod:`labkit.grading.sandbox`) and steps both through the notebook in lock-step:

- an ordinary cell runs on both sides (here the instructor's code, there the same code next to
  the student's);
- a solution cell runs only on the student's side; here the names the *course* notebook's
  solution cell binds are fetched from there: data arrives as values, anything else (the
  student's functions and classes) as :class:`~labkit.grading.remote.Remote` objects whose calls
  return data again. Imports the course's solution cell makes are made here, by this process;
- a graded cell (hidden tests included) runs only here; it passes when it runs without an
  exception. The student's process never receives a test's code. A graded cell with hidden
  tests calls into a fork of the student's process that ends with the cell, so nothing the
  student's code learns of hidden inputs survives into a later test's messages (feedback).

So no code of the student's ever runs in this process, and nothing the student's process does
(exception hooks, input transformers, patched modules, objects whose ``==`` is always true,
forged files) can reach the verdict: it only ever sends data. A cell that runs past the cell
limit on the student's side gets its process killed and restarted, replayed up to where grading
was with that cell left out; the tests after it are still graded.

The result (JSON on stdout): ``{"tests": {grade_id: [status, message]}, "solutions": {grade_id:
error or null}, "cells": {index: error}, "restarts": [...], "seconds": s}``.

Example:
    $ python -m labkit.grading.verdict < job.json > result.json   # what submission.py runs
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from typing import Any

from labkit.grading import sandbox
from labkit.grading.remote import Connection, RemoteGone, RemoteTimeout
from labkit.grading.source import _regions
from labkit.grading.student import error_text

__all__ = ["main", "run_job", "bound_names"]


def bound_names(source: str) -> tuple[list[str], list[str]]:
    """(import statements, other names) a cell binds at top level; ([], []) if it won't parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [], []
    imports, names = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(ast.unparse(node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            if isinstance(node, ast.Assign):
                targets = node.targets
            else:
                targets = [getattr(node, "target", None)]
                targets += [item.optional_vars for item in getattr(node, "items", [])]
            for t in targets:
                for sub in ast.walk(t) if t is not None else ():
                    if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                        names.append(sub.id)
    return imports, list(dict.fromkeys(names))


def _test_message(err: BaseException, source: str, index: int) -> str:
    """What feedback says of a failed test: the error, except for a failure from the first
    hidden test of the cell on: then its type only. Its message could carry the hidden inputs
    out: in what the student's code raised, or in the answer an assertion's message shows (the
    student's function can return its inputs)."""
    line, tb = None, err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == f"<cell {index}>":
            line = tb.tb_lineno - 1  # 0-based, as the marker regions
        tb = tb.tb_next
    try:
        hidden = _regions(source, "hidden")
    except ValueError:
        hidden = [(-1, -1)]  # malformed markers: treat the whole cell as hidden
    if hidden and (line is None or line > hidden[0][0]):
        by = " raised by your code" if getattr(err, "labkit_from_submission", False) else ""
        return f"{type(err).__name__}{by} in a hidden test (message not shown)"
    return error_text(err)


def _has_hidden(source: str) -> bool:
    try:
        return bool(_regions(source, "hidden"))
    except ValueError:
        return True


def _run_here(source: str, ns: dict[str, Any], index: int) -> None:
    from IPython.core.inputtransformer2 import TransformerManager

    code = TransformerManager().transform_cell(source)
    exec(compile(code, f"<cell {index}>", "exec"), ns)  # noqa: S102 - the course notebook's code


class _Lockstep:
    """The student's process, restartable: replays its cells up to where grading was."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.deadline = time.monotonic() + float(job["deadline"])
        self.cells = job["cells"]
        self.skip: set[int] = set()  # cells that ran past the limit: left out on replay
        self.done = -1  # every student-side cell with index <= done has run
        self.conn: Connection | None = None
        self.errors: dict[int, str | None] = {}
        self.restarts: list[str] = []

    def student_cells(self) -> list[tuple[int, str]]:
        out = []
        for c in self.cells:
            if c["role"] == "graded":
                continue
            text = c["student"] if c["role"] == "solution" else c["source"]
            out.append((c["index"], "pass" if c["index"] in self.skip else text))
        return out

    def start(self) -> None:
        proc = sandbox.start(sandbox=self.job["sandbox"], memory_gb=self.job["memory_gb"],
                             cpu_seconds=self.job["deadline"] + 60)  # fmt: skip
        self.conn = Connection(proc, timeout=self.job["cell_timeout"], startup=60)
        self.conn.deadline = self.deadline
        self.conn.request(("cells", self.student_cells()), startup=True)
        self.done = -1

    def restart(self, why: str, ns: dict[str, Any], upto: int) -> None:
        if time.monotonic() >= self.deadline:
            return  # out of time: the rest is graded "timeout"
        self.restarts.append(why)
        if self.conn is not None:
            self.conn.close()
        try:
            self.start()
        except (RemoteGone, RemoteTimeout) as err:  # the tests after it fail, the row is kept
            self.restarts.append(f"your code could not be started again: {err}")
            return
        self.catch_up(upto, ns, rebind=True)

    def catch_up(self, upto: int, ns: dict[str, Any], rebind: bool = False) -> None:
        """Run the student's cells with index < upto, one request per cell."""
        for c in self.cells:
            if self.conn.broken or time.monotonic() >= self.deadline:
                return
            i = c["index"]
            if i >= upto or i <= self.done or c["role"] == "graded":
                continue
            try:
                ran = self.conn.request(("run", i + 1))
            except (RemoteTimeout, RemoteGone) as err:
                self.skip.add(i)
                timeout = isinstance(err, RemoteTimeout)
                self.errors[i] = (
                    f"Timeout: the cell ran past {self.job['cell_timeout']:g} s" if timeout
                    else f"the cell stopped the submission's process ({err})"
                )  # fmt: skip
                what = "ran past the cell limit" if timeout else "ended your process"
                self.restart(f"cell {i} {what}: your code was run again without it", ns, upto)
                return
            self.done = i
            for k, v in (ran or {}).items():
                self.errors.setdefault(int(k), v)
            if rebind and c["role"] == "solution":
                self.bind(c, ns)

    def isolated(self, source: str, ns: dict[str, Any], index: int) -> None:
        """Run a graded cell with hidden tests against a fork of the student's process.

        The fork ends with the cell, so what the student's code saw of the hidden inputs is gone
        before any later test, whose messages reach feedback, calls into it again.
        """
        self.conn.request(("fork",))
        try:
            _run_here(source, ns, index)
        finally:
            if not self.conn.broken:
                try:
                    self.conn.request(("join",))
                except Exception:  # noqa: BLE001, S110 - broken now: restarted before the next cell
                    pass

    def bind(self, cell: dict[str, Any], ns: dict[str, Any]) -> None:
        imports, names = bound_names(cell["source"])
        for statement in imports:
            exec(statement, ns)  # noqa: S102 - the course's own import, made here
        for name in names:
            try:
                ns[name] = self.conn.request(("get", name))
            except Exception as err:  # noqa: BLE001 - missing name, unsendable value, timeout
                ns.pop(name, None)
                self.errors.setdefault(cell["index"], f"{name}: {error_text(err)}")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Grade one notebook as the job describes; the result dict (see the module docstring)."""
    start = time.monotonic()
    os.chdir(job["workdir"])
    ns: dict[str, Any] = {"__name__": "__main__"}
    tests: dict[str, list[str]] = {}
    cells_failed: dict[str, str] = {}
    side = _Lockstep(job)
    deadline = side.deadline
    late = f"the notebook ran past {job['deadline']:g} s"
    try:
        side.start()
    except (RemoteGone, RemoteTimeout) as err:
        return {"error": f"the student's process did not start: {err}"}
    for c in job["cells"]:
        i, role = c["index"], c["role"]
        if time.monotonic() >= deadline:
            if role == "graded":
                tests[c["grade_id"]] = ["timeout", late]
            continue
        if side.conn.broken:  # a call from the last cell timed out or the process died
            side.restart(
                "a call into your code ran past the cell limit or ended your process: your code "
                "was run again from the top for the tests after it", ns, i,
            )  # fmt: skip
        side.catch_up(i + 1 if role == "solution" else i, ns)
        if role == "solution":
            side.bind(c, ns)
            continue
        try:
            if role == "graded" and _has_hidden(c["source"]):
                side.isolated(c["source"], ns, i)
            else:
                _run_here(c["source"], ns, i)
            if role == "graded":
                tests[c["grade_id"]] = ["passed", ""]
        except RemoteTimeout as err:
            status, message = "timeout", late if time.monotonic() >= deadline else str(err)
            if role == "graded":
                tests[c["grade_id"]] = [status, message]
            else:
                cells_failed[str(i)] = message
        except BaseException as err:  # noqa: BLE001 - a failed test or a failing cell
            if isinstance(err, KeyboardInterrupt):
                raise
            if role == "graded":
                tests[c["grade_id"]] = ["failed", _test_message(err, c["source"], i)]
            else:
                cells_failed[str(i)] = error_text(err)
    side.conn.close()
    solutions = {
        c["grade_id"]: side.errors.get(c["index"]) for c in job["cells"] if c["role"] == "solution"
    }
    return {"tests": tests, "solutions": solutions, "cells": cells_failed,
            "restarts": side.restarts, "seconds": time.monotonic() - start}  # fmt: skip


def main() -> None:
    """Read the job from stdin, write the result as one JSON line to the original stdout."""
    job = json.loads(sys.stdin.read())
    out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the course notebook's prints go nowhere
    result = run_job(job)
    os.write(out, (json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
