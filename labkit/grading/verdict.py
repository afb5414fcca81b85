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
  exception, and earns the number its last expression evaluates to, if it does (clipped to its
  points; :mod:`labkit.grading.scoring`). The student's process never receives a test's code.
  The hidden part of a graded cell calls the student's code in a second student process
  (:class:`_Hidden`), so the one that serves the visible tests never sees a hidden input it
  could show in feedback later.

So no code of the student's ever runs in this process, and nothing the student's process does
(exception hooks, input transformers, patched modules, objects whose ``==`` is always true,
forged files) can reach the verdict: it only ever sends data. A cell that runs past the cell
limit on the student's side gets its process killed and restarted, replayed up to where grading
was with that cell left out; the tests after it are still graded.

The result (JSON on stdout): ``{"tests": {grade_id: [status, message]}, "scores": {grade_id:
{"earned": points or null, "metrics": {...}}}, "solutions": {grade_id: error or null}, "cells":
{index: error}, "restarts": [...], "seconds": s}``; ``scores`` holds the passed graded cells that
ended with a number or called :func:`labkit.grading.scoring.score`.

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

from labkit.grading import sandbox, scoring
from labkit.grading.remote import Connection, Remote, RemoteGone, RemoteTimeout
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


def _test_message(err: BaseException, source: str, index: int, all_hidden: bool = False) -> str:
    """What feedback says of a failed test: the error, except for a failure from the first
    hidden test of the cell on: then its type only, or the failed ``assert``'s message when the
    source spells it as a plain string. Any other message could carry the hidden inputs out: in
    what the student's code raised, or in the answer an f-string shows (the student's function
    can return its inputs)."""
    line, tb = None, err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == f"<cell {index}>":
            line = tb.tb_lineno - 1  # 0-based, as the marker regions
        tb = tb.tb_next
    try:
        hidden = _regions(source, "hidden")
    except ValueError:
        hidden = [(-1, -1)]  # malformed markers: treat the whole cell as hidden
    if all_hidden or (hidden and (line is None or line > hidden[0][0])):
        by = getattr(err, "labkit_from_submission", False)
        hint = None if by or line is None else _static_message(source, line)
        if hint is not None:  # the test's own words, written in the source: no student data
            return f"{type(err).__name__}: {hint}"[:200]
        by_text = " raised by your code" if by else ""
        return f"{type(err).__name__}{by_text} in a hidden test (message not shown)"
    return error_text(err)


def _static_message(source: str, line: int) -> str | None:
    """The message of the ``assert`` on 0-based ``line`` when it is a plain string literal."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and node.lineno == line + 1:
            msg = node.msg
            if isinstance(msg, ast.Constant) and isinstance(msg.value, str):
                return msg.value
            return None
    return None


def _split_hidden(source: str) -> tuple[str, str] | None:
    """A graded cell as (its visible part, the rest from its first hidden test on), or None
    when it has no hidden test. The rest keeps its line numbers; a cell whose parts do not
    compile alone (a hidden test inside a block) is all hidden: ``("", source)``."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        regions = _regions(source, "hidden")
    except ValueError:
        return "", source
    if not regions:
        return None
    lines = source.splitlines(keepends=True)
    start = regions[0][0]
    visible, rest = "".join(lines[:start]), "#\n" * start + "".join(lines[start:])
    try:
        for part in (visible, rest):
            compile(TransformerManager().transform_cell(part), "<cell>", "exec")
    except SyntaxError:
        return "", source
    return visible, rest


def _run_here(source: str, ns: dict[str, Any], index: int) -> Any:
    """Run a course cell here; the value of its last expression (None if it ends otherwise)."""
    from IPython.core.inputtransformer2 import TransformerManager

    name = f"<cell {index}>"
    tree = ast.parse(TransformerManager().transform_cell(source), name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), ns)  # noqa: S102 - the course notebook's code
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), ns)  # noqa: S307 - same


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


class _Hidden:
    """Hidden tests call the student's code in a second student process of their own.

    A hidden test hands the student's functions its inputs. Had the process that serves every
    other test seen them, the student's code could keep them (in memory, in its ``/tmp``) and
    show them in a later visible test's message, which feedback prints. So in the hidden part
    of a graded cell, the student's objects that solution cells bind (used there directly or by
    a function the test defined) are those of a second sandbox, which runs the same cells in
    lock-step and whose answers reach feedback only as an exception's
    type (see :func:`_test_message`); meanwhile the first process refuses every request, and
    outside hidden tests the second one does. It starts at the first hidden test that calls the
    student's code, and is restarted (replayed) like the first when a call runs past the limit.
    """

    def __init__(self, job: dict[str, Any], visible: _Lockstep) -> None:
        self.side, self.visible = _Lockstep(job), visible
        self.side.deadline = visible.deadline
        self.ns: dict[str, Any] = {}  # the names solution cells bind, from the second process

    def run(self, code: str, ns: dict[str, Any], index: int) -> Any:
        """Run a cell's hidden part; the student's objects it (or a function it calls) uses
        come from the second process, which catches up at the first use."""
        names = {
            name
            for c in self.visible.cells
            if c["role"] == "solution" and c["index"] < index
            for name in bound_names(c["source"])[1]
        }
        saved = {k: ns[k] for k in names if isinstance(ns.get(k), Remote)}
        for k in saved:
            ns[k] = _Deferred(self, k, index)
        self.visible.conn.sealed = _SEALED_VISIBLE
        if self.side.conn is not None:
            self.side.conn.sealed = None
        try:
            return _run_here(code, ns, index)
        finally:
            self.visible.conn.sealed = None
            if self.side.conn is not None:
                self.side.conn.sealed = _SEALED_HIDDEN
            ns.update(saved)

    def resolve(self, name: str, index: int) -> Any:
        """The second process's value of ``name``, caught up to cell ``index``."""
        self._catch_up(index)
        if name not in self.ns:
            raise NameError(f"name {name!r} is not defined")
        return self.ns[name]

    def _catch_up(self, index: int) -> None:
        if self.side.conn is None:
            self.side.start()
        elif self.side.conn.broken:
            self.side.restart("a call ran past the cell limit or ended the process", self.ns, index)
        self.side.conn.sealed = None  # replaying its own cells is no use from outside
        self.side.catch_up(index, self.ns, rebind=True)

    def close(self) -> None:
        if self.side.conn is not None:
            self.side.conn.close()


class _Deferred:
    """Stands for a student's object in a hidden test; the second process's object at first use.

    Like :class:`~labkit.grading.remote.Remote` it has no truth value; calls, attributes, items,
    ``len`` and iteration go to the object it resolves to.
    """

    __slots__ = ("_hidden", "_name", "_index", "_target")

    def __init__(self, hidden: _Hidden, name: str, index: int) -> None:
        self._hidden, self._name, self._index, self._target = hidden, name, index, None

    def _get(self) -> Any:
        if self._target is None:
            self._target = self._hidden.resolve(self._name, self._index)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._get()[key]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Any:
        return iter(self._get())

    def __bool__(self) -> bool:
        raise TypeError("an object of the student's has no truth value here: test what it returns")

    def __repr__(self) -> str:
        return f"<the student's {self._name} (hidden tests)>"


_SEALED_VISIBLE = "a hidden test used an object of the student's from outside the hidden tests"
_SEALED_HIDDEN = "an object of the student's from a hidden test used outside the hidden tests"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Grade one notebook as the job describes; the result dict (see the module docstring)."""
    start = time.monotonic()
    os.chdir(job["workdir"])
    ns: dict[str, Any] = {"__name__": "__main__"}
    tests: dict[str, list[str]] = {}
    cells_failed: dict[str, str] = {}
    scores: dict[str, dict[str, Any]] = {}
    side = _Lockstep(job)
    hidden = _Hidden(job, side)
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
        parts = _split_hidden(c["source"]) if role == "graded" else None
        in_hidden = False
        try:
            scoring.take_metrics()  # nothing recorded before this cell counts for it
            if parts is None:
                value = _run_here(c["source"], ns, i)
            else:
                value = _run_here(parts[0], ns, i)
                in_hidden = True
                value = hidden.run(parts[1], ns, i)  # the value of the cell's last expression
            if role == "graded":
                tests[c["grade_id"]] = ["passed", ""]
                earned = scoring.earned_points(value, c.get("points", 0))
                metrics = scoring.take_metrics()
                if earned is not None or metrics is not None:
                    scores[c["grade_id"]] = {"earned": earned, "metrics": metrics or {}}
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
                tests[c["grade_id"]] = ["failed", _test_message(err, c["source"], i, in_hidden)]
            else:
                cells_failed[str(i)] = error_text(err)
    side.conn.close()
    hidden.close()
    solutions = {
        c["grade_id"]: side.errors.get(c["index"]) for c in job["cells"] if c["role"] == "solution"
    }
    return {"tests": tests, "scores": scores, "solutions": solutions, "cells": cells_failed,
            "restarts": side.restarts + [f"hidden tests: {r}" for r in hidden.side.restarts],
            "seconds": time.monotonic() - start}  # fmt: skip


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
