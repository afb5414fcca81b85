"""Run one notebook under pytest + nbval in its own process and temp folder; read the verdicts.

This is the only place that starts processes. The command is

    python _nbval_runner.py REPORT -c pytest.ini -p no:cacheprovider --nbval-lax
        --nbval-current-env --nbval-cell-timeout=T -q --color=no graded.ipynb

run in a fresh temp folder with a wall-clock limit on the whole run (the process tree is killed
when it passes). ``--nbval-current-env`` makes the kernel the ipykernel of this very interpreter,
whatever kernel name the notebook carries. ``_nbval_runner.py`` is ``pytest.main`` plus a plugin
that logs each test report as a JSON line (JUnit XML drops the failure text of cells that nbval
marks xfail after a timeout).

nbval after a cell timeout: it interrupts the kernel; a loop that takes the interrupt fails that
cell and nbval goes on (later cells run, marked xfail). A loop that ignores the interrupt (a bare
``except``, a long C call) makes nbval stop the kernel after 5 s more, and every later cell fails
with "Kernel dead on test start". :func:`run_recovering` then runs the notebook again with the
offending cell replaced by ``pass``, so one runaway cell costs only its own test.

Example:
    >>> result, skipped = run_recovering(nb, cell_timeout=60, timeout=600)  # doctest: +SKIP
    >>> result.outcomes[3].status                                            # doctest: +SKIP
    'passed'
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

__all__ = ["CellOutcome", "RunResult", "run_nbval", "run_recovering", "code_cell_numbers"]

_RUNNER = Path(__file__).with_name("_nbval_runner.py")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MARK = "LABKIT_GRADE_RUN"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@dataclass
class CellOutcome:
    """nbval's verdict on one code cell: passed, failed, timeout, skipped or not run."""

    status: str
    message: str = ""


@dataclass
class RunResult:
    """Outcomes by code-cell number (nbval's "Cell N", code cells only, from 0); run cost."""

    outcomes: dict[int, CellOutcome] = field(default_factory=dict)
    seconds: float = 0.0
    timed_out: bool = False
    log: str = ""


def code_cell_numbers(nb: NotebookNode) -> dict[int, int]:
    """Map each code cell's index in ``nb.cells`` to nbval's number for it (``Cell N``)."""
    numbers, n = {}, 0
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code":
            numbers[i] = n
            n += 1
    return numbers


def _message(text: str) -> str:
    """One line from nbval's failure text: the exception line, with the failing code if bare."""
    text = _ANSI.sub("", text)
    timeout = re.search(r"Timeout of [^\n]*?(?:\.|$)", text, re.M)
    if timeout:
        return timeout.group(0).rstrip(".")
    if text.startswith("pytest plugin exception:"):
        return text.split(":", 1)[1].strip().splitlines()[0]
    tb = text.split("Traceback:", 1)[1] if "Traceback:" in text else text
    lines = [line.strip() for line in tb.splitlines() if line.strip()]
    last = lines[-1] if lines else "the cell raised an exception"
    last = last.rstrip(": ").strip() or last
    code = re.findall(r"^\s*---->\s*\d+\s+(.*)$", tb, re.M)
    if ":" not in last and code and last not in code[-1]:
        last += f" at `{code[-1].strip()}`"
    return last if len(last) <= 300 else last[:297] + "..."


def _outcome(records: list[dict]) -> CellOutcome:
    call = next((r for r in records if r["when"] == "call"), None)
    failed = next(
        (r for r in records if r["when"] != "teardown" and r["outcome"] == "failed"), None
    )
    if failed is None and call is not None and call["outcome"] == "skipped" and call["wasxfail"]:
        failed = call  # nbval marks cells after a timeout xfail: a failure all the same
    if failed is not None:
        text = failed.get("longrepr", "")
        if "Kernel dead on test start" in text:
            return CellOutcome("not run", "the kernel had died in an earlier cell")
        status = "timeout" if "Timeout of" in _ANSI.sub("", text) else "failed"
        return CellOutcome(status, _message(text))
    if call is not None and call["outcome"] == "passed":
        return CellOutcome("passed")
    return CellOutcome("skipped", "skipped by an nbval marker")


def _kill_tree(proc: subprocess.Popen, token: str) -> None:
    """Kill the pytest process and every process carrying this run's token (its kernel).

    A kernel that was still starting when pytest died may appear a moment later, so the marked
    processes are looked for again until none is left (at most 10 s)."""
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:  # three empty looks in a row
        quiet = 0 if _kill_marked(token) else quiet + 1
        time.sleep(0.1)


def _kill_marked(token: str) -> int:
    """Kill leftover processes that this run started (they carry ``LABKIT_GRADE_RUN=token``) and
    wait for them to end; return how many were found."""
    try:
        import psutil  # ipykernel depends on it
    except ImportError:  # pragma: no cover
        return 0
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(_MARK) == token:
                proc.kill()
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    psutil.wait_procs(found, timeout=5)
    return len(found)


def _prepared(nb: NotebookNode) -> NotebookNode:
    nb = copy.deepcopy(nb)
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.nbformat, nb.nbformat_minor = 4, max(int(nb.get("nbformat_minor", 5)), 5)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def run_nbval(
    nb: NotebookNode,
    *,
    cell_timeout: float = 120,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> RunResult:
    """Run ``nb`` under ``pytest --nbval-lax`` in a fresh temp folder; outcomes per code cell.

    ``cell_timeout`` (s) is nbval's per-cell limit, ``timeout`` (s) the limit on the whole run,
    after which the process tree is killed and the cells not reached get status "timeout".
    Outputs and execution counts are cleared first, so only errors fail a cell. ``env`` adds
    environment variables.

    Example: ``run_nbval(nb, cell_timeout=10, timeout=60).outcomes[0].status  # 'passed'``
    """
    start = time.perf_counter()
    token = uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="labkit-grade-"))
    try:
        nbformat.write(_prepared(nb), tmp / "graded.ipynb")
        (tmp / "pytest.ini").write_text("[pytest]\n")
        report = tmp / "report.jsonl"
        package_root = str(Path(__file__).resolve().parents[2])
        run_env = {
            k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")
        }
        run_env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
                ),
                "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg"),
                "LABKIT_PROGRESS": "0",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                _MARK: token,
                **(env or {}),
            }
        )
        cmd = [
            sys.executable,
            str(_RUNNER),
            str(report),
            "-c",
            str(tmp / "pytest.ini"),
            "--rootdir",
            str(tmp),
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            f"--nbval-cell-timeout={cell_timeout:g}",
            "-q",
            "--color=no",
            "graded.ipynb",
        ]
        timed_out = False
        with open(tmp / "pytest.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=tmp, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc, token)
        _kill_marked(token)
        log_text = (tmp / "pytest.log").read_text(errors="replace")[-4000:]
        records: dict[int, list[dict]] = {}
        collect_error = ""
        if report.is_file():
            for line in report.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a half-written last line of a killed run
                if rec["when"] == "collect":
                    collect_error = _message(rec.get("longrepr", ""))
                    continue
                match = re.search(r"::Cell (\d+)$", rec["nodeid"])
                if match:
                    records.setdefault(int(match.group(1)), []).append(rec)
        result = RunResult(timed_out=timed_out, log=log_text)
        n_code = sum(cell.get("cell_type") == "code" for cell in nb.cells)
        for n in range(n_code):
            if records.get(n) and any(r["when"] == "call" for r in records[n]):
                result.outcomes[n] = _outcome(records[n])
            elif records.get(n) and any(r["outcome"] == "failed" for r in records[n]):
                result.outcomes[n] = _outcome(records[n])  # setup failed: the kernel did not start
            elif timed_out:
                result.outcomes[n] = CellOutcome("timeout", "not reached: out of time")
            else:
                reason = collect_error or _last_line(log_text) or "nbval did not run this cell"
                result.outcomes[n] = CellOutcome("not run", reason)
        result.seconds = time.perf_counter() - start
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_recovering(
    nb: NotebookNode,
    *,
    cell_timeout: float = 120,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> tuple[RunResult, list[int]]:
    """:func:`run_nbval`, run again past any cell that killed the kernel; also the cells skipped.

    When cells come back "not run" (the kernel died: a timeout nbval could not interrupt, or
    ``os._exit``), the cell that ran last is replaced by ``pass`` and the notebook runs again in a
    fresh kernel; outcomes up to that cell are kept from the first run. ``timeout`` bounds all runs
    together. Also returns the code-cell numbers of the cells skipped this way.

    Example: ``result, skipped = run_recovering(nb, cell_timeout=5, timeout=120)``
    """
    deadline = time.monotonic() + timeout
    nb = copy.deepcopy(nb)
    cells = [i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
    merged = RunResult()
    skipped: list[int] = []
    kept_upto = -1
    while True:
        result = run_nbval(
            nb, cell_timeout=cell_timeout, timeout=max(deadline - time.monotonic(), 1), env=env
        )
        merged.seconds += result.seconds
        merged.timed_out, merged.log = result.timed_out, result.log
        merged.outcomes.update({n: o for n, o in result.outcomes.items() if n > kept_upto})
        dead = [
            n for n, o in sorted(result.outcomes.items()) if n > kept_upto and o.status == "not run"
        ]
        if result.timed_out or not dead or deadline - time.monotonic() < 1:
            break
        ran = [n for n, o in result.outcomes.items() if n < dead[0] and o.status != "not run"]
        culprit = max(ran, default=None)
        if culprit is None or culprit <= kept_upto:
            break  # the kernel died before any cell ran: nothing to skip
        skipped.append(culprit)
        nb.cells[cells[culprit]].source = "pass  # skipped by labkit grade: it stopped the kernel"
        kept_upto = culprit
    return merged, skipped
