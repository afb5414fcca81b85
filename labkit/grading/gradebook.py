"""``labkit grade``: find the submissions, grade them in parallel, write the gradebook and feedback.

Example:
    >>> rows = grade(["submissions"], ["notebooks"], "gradebook.csv", jobs=2)   # doctest: +SKIP
    >>> rows[0].total                                                           # doctest: +SKIP
    6
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from labkit.grading import sandbox as _sandbox
from labkit.grading.export import LatePolicy, totals_csv
from labkit.grading.scoring import format_points
from labkit.grading.source import NotebookError, nbgrader_meta, read_notebook, without_surrogates
from labkit.grading.submission import (
    Row,
    SourceNotebook,
    TestResult,
    grade_notebook,
    load_sources,
)
from labkit.utils import atomic_write_bytes, check_int, sha256_file

__all__ = [
    "Task",
    "find_submissions",
    "grade",
    "grade_task",
    "gradebook_csv",
    "leaderboard_csv",
    "feedback_markdown",
]

LINKED = "submission is a symbolic link: not graded"


@dataclass
class Task:
    """One notebook to grade: who submitted it, which course notebook, where it is (or None)."""

    submission: str
    source: SourceNotebook | None
    path: Path | None
    reason: str = ""


def _match(filename: str, sources: list[SourceNotebook]) -> SourceNotebook | None:
    """The course notebook a file name means: same name, a renamed copy, or the same NN_ prefix."""
    stem = Path(filename).stem
    for rule in (
        lambda s: filename == s.name,
        lambda s: stem.startswith(s.stem),
        lambda s: re.match(r"\d\d_", stem) and stem[:3] == s.stem[:3],
    ):
        hits = [s for s in sources if rule(s)]
        if len(hits) == 1:
            return hits[0]
    return None


def _match_by_ids(path: Path, sources: list[SourceNotebook]) -> SourceNotebook | None:
    """The course notebook sharing the most grade_ids with the file (None if unreadable or none)."""
    try:
        cells = read_notebook(path).cells
    except NotebookError:
        return None
    ids = {gid for c in cells if isinstance(gid := nbgrader_meta(c).get("grade_id"), str)}
    scored = [(len(ids & set(s.checksums) | ids & set(s.info.solutions)), s) for s in sources]
    best = max(scored, key=lambda x: x[0], default=(0, None))
    return best[1] if best[0] > 0 else None


def _notebooks_in(folder: Path) -> list[Path]:
    """The .ipynb files under a folder, never through a symbolic link (to a file or a folder)."""
    found = []
    for root, dirs, files in os.walk(folder):  # does not enter a linked folder
        dirs[:] = [d for d in dirs if d != ".ipynb_checkpoints"]
        paths = (Path(root, f) for f in files if f.endswith(".ipynb"))
        found += [p for p in paths if not p.is_symlink()]
    return sorted(found)


def _folder_tasks(path: Path, sources: list[SourceNotebook]) -> list[Task]:
    """One task per course notebook for a student's folder (a linked folder is not searched)."""
    linked = path.is_symlink()
    files = _notebooks_in(path) if path.is_dir() and not linked else []
    tasks = []
    for src in sources:
        exact = [p for p in files if p.name == src.name]
        found = exact[:1] or [p for p in files if _match(p.name, [src]) is src][:1]
        tasks.append(Task(path.name, src, found[0] if found else None, LINKED if linked else ""))
    return tasks


def _file_task(path: Path, sources: list[SourceNotebook]) -> Task:
    """The task for one submitted file; a link (or a file in a linked folder) is not read."""
    linked = path.is_symlink() or path.parent.is_symlink()
    src = _match(path.name, sources)
    if src is None and len(sources) == 1:
        src = sources[0]
    if src is None and path.is_file() and not linked:
        src = _match_by_ids(path, sources)
    named_like_source = src is not None and _match(path.name, [src]) is src
    name = Path(os.path.abspath(path)).parent.name if named_like_source else path.stem
    reason = "" if src else "cannot tell which course notebook this is"
    return Task(name, src, path, LINKED if linked else reason)


def find_submissions(paths: list[str | os.PathLike], sources: list[SourceNotebook]) -> list[Task]:
    """Pair submissions with course notebooks.

    A folder is one student (name = folder name) and is searched for each course notebook (same
    file name, else a renamed copy such as ``00_topic-Copy1.ipynb``); a file is matched by name,
    else by its grade_ids, and named after its stem (or its folder when named like the source).
    Symbolic links are never followed: one inside a folder is skipped, and a submitted link (or a
    file in a linked folder) becomes a task whose ``reason`` says so. Names are made printable.

    Example: ``find_submissions(["submissions/alice", "bob.ipynb"], sources)``
    """
    tasks: list[Task] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() or (not path.exists() and path.suffix != ".ipynb"):
            tasks += _folder_tasks(path, sources)
        else:
            tasks.append(_file_task(path, sources))
    seen: dict[tuple[str, str], int] = {}
    for task in tasks:
        task.submission = without_surrogates(task.submission)
        key = (task.submission, task.source.name if task.source else str(task.path))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            task.submission = f"{task.submission}-{seen[key]}"
    return tasks


_fmt = format_points  # 2 decimals, no trailing zeros


def _columns(sources: list[SourceNotebook]) -> list[tuple[str, str, str]]:
    """(column, notebook, grade_id) per graded cell; an id in two notebooks gets a stem/ prefix."""
    all_ids = [gid for s in sources for gid in s.info.graded]
    return [
        (gid if all_ids.count(gid) == 1 else f"{s.stem}/{gid}", s.name, gid)
        for s in sources
        for gid in s.info.graded
    ]


def gradebook_csv(rows: list[Row], sources: list[SourceNotebook]) -> str:
    """The gradebook as CSV text: submission, notebook, one column per test, total, max, ..."""
    columns = _columns(sources)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["submission", "notebook", *(c[0] for c in columns)]
    writer.writerow(
        [*head, "total", "max", "late_days", "score", "status", "reason", "seconds", "flags"]
    )
    for row in sorted(rows, key=lambda r: (r.submission, r.notebook)):
        cells = []
        for _, notebook, gid in columns:
            test = row.tests.get(gid) if notebook == row.notebook else None
            cells.append(_fmt(test.earned) if test else "")
        writer.writerow(
            [
                row.submission,
                row.notebook,
                *cells,
                _fmt(row.total),
                _fmt(row.max_points),
                row.late_days,
                _fmt(row.score),
                row.status,
                row.reason,
                f"{row.seconds:.1f}",
                "; ".join(row.flags),
            ]
        )
    return buf.getvalue()


def _scored_cells(rows: list[Row]) -> list[tuple[str, str]]:
    """(notebook, grade_id) of every graded cell that recorded metrics in some row, in order."""
    cells: dict[tuple[str, str], None] = {}
    for row in rows:
        for gid, test in row.tests.items():
            if test.metrics:
                cells[(row.notebook, gid)] = None
    return sorted(cells)


def leaderboard_csv(rows: list[Row]) -> str | None:
    """The leaderboard as CSV text, or None when no graded cell recorded metrics.

    One row per submission per scored cell (a graded cell that called
    :func:`labkit.grading.scoring.score` in some submission): ``rank, student, notebook,
    grade_id``, one column per metric, ``points, max, status, error``; best first by points within
    each cell (ties share a rank, then by name). A submission whose cell failed, or that was not
    graded, has no metrics and says why under ``error``. Points are the cell's own, before any late
    penalty.
    """
    cells = _scored_cells(rows)
    if not cells:
        return None
    names: dict[str, None] = {}
    for row in rows:
        for test in row.tests.values():
            names.update(dict.fromkeys(test.metrics))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "student", "notebook", "grade_id", *names, "points", "max",
                     "status", "error"])  # fmt: skip
    for notebook, gid in cells:
        entries = []
        for row in rows:
            if row.notebook != notebook:
                continue
            test = row.tests.get(gid)
            earned, points = (test.earned, test.points) if test else (0.0, 0.0)
            status = test.status if test else row.status
            error = "" if status == "passed" else (test.message if test else row.reason)
            if row.status != "ok" and not error:
                error = row.reason
            metrics = test.metrics if test else {}
            entries.append((earned, row.submission, points, status, error, metrics))
        entries.sort(key=lambda e: (-round(e[0], 9), e[1]))
        rank, previous = 0, None
        for k, (earned, student, points, status, error, metrics) in enumerate(entries, 1):
            if previous is None or round(earned, 9) != previous:
                rank, previous = k, round(earned, 9)
            cells_out = [metrics.get(n, "") for n in names]
            writer.writerow([rank, student, notebook, gid, *cells_out, _fmt(earned), _fmt(points),
                             status, " ".join(error.split())[:300]])  # fmt: skip
    return buf.getvalue()


def _hidden_code(source: SourceNotebook) -> set[str]:
    """The lines of the source's hidden tests (in a graded cell, not in the released one)."""
    hidden: set[str] = set()
    for index, _ in source.info.graded.values():
        shown = {line.strip() for line in source.workbook.cells[index].source.splitlines()}
        hidden |= {line.strip() for line in source.nb.cells[index].source.splitlines()} - shown
    return {line for line in hidden if len(line) > 3 and "HIDDEN TESTS" not in line}


def _metrics_text(metrics: dict) -> str:
    """``acc 0.9512, bytes 7749``: a scored cell's metrics for the feedback table."""
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


def feedback_markdown(row: Row, *, source: SourceNotebook | None = None) -> str:
    """The feedback a student gets for one notebook: score, each test, why failed ones failed.

    Only test messages are shown, never test code; with the row's ``source``, a message quoting
    a line of a hidden test (whole, or cut short in backquotes) is replaced by "a hidden test
    failed".
    """
    hidden = _hidden_code(source) if source else set()

    def shown(message: str) -> str:
        quoted = [q.rstrip(".") for q in re.findall(r"`([^`]{8,})", message)]
        leaks = any(line in message or any(q in line for q in quoted) for line in hidden)
        return "a hidden test failed (its code is not shown)" if leaks else message

    lines = [
        f"# {row.notebook}: feedback for {row.submission}",
        "",
        f"Score: **{_fmt(row.total)} / {_fmt(row.max_points)}**"
        + ("" if row.status == "ok" else f" ({row.status}: {shown(row.reason)})"),
        "",
        "| test | points | result |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t.grade_id} | {_fmt(t.earned)} / {_fmt(t.points)} | {t.status}"
        + (f" ({_metrics_text(t.metrics)})" if t.metrics else "")
        + " |"
        for t in row.tests.values()
    ]
    failed = [t for t in row.tests.values() if t.status not in ("passed", row.status)]
    if failed:
        lines += ["", "## Failed tests", ""]
        lines += [f"- **{t.grade_id}** ({t.status}): {shown(t.message)}" for t in failed]
    if row.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in row.notes]
    if row.flags:
        lines += ["", "## Flagged for the instructor to review (points unchanged)", ""]
        lines += [f"- {f}" for f in row.flags]
    return "\n".join(lines) + "\n"


def _safe(name: str, default: str = "submission") -> str:
    """A file name made of letters, digits, ``.``, ``-`` and ``_`` only (at most 100 of them)."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._")[:100] or default


def _encoded(text: str) -> bytes:
    """UTF-8 bytes of text that may hold lone surrogates (from odd file names): U+FFFD for each."""
    return without_surrogates(text).encode()


def _error_row(task: Task, reason: str) -> Row:
    """A 0-point row with status ``error`` for a task that was not graded, saying why."""
    src = task.source
    notebook = src.name if src else task.path.name if task.path else "?"
    row = Row(task.submission, notebook, "error", reason)
    if src is not None:
        row.max_points = src.info.max_points
        for grade_id, (_, points) in src.info.graded.items():
            row.tests[grade_id] = TestResult(grade_id, points, 0, "error", reason)
    return row


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:200].rstrip(": ")


def grade_task(task: Task, options: dict, late: LatePolicy | None = None) -> Row:
    """Grade one task (on this machine or a dask worker); never raises for a bad submission."""
    try:
        if task.reason or task.source is None:
            return _error_row(task, task.reason or "no course notebook")
        row = grade_notebook(task.source, task.path, submission=task.submission, **options)
        if late is not None:
            late.apply(row, task.path)
        return row
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - one broken submission must not stop the rest
        return _error_row(task, f"grading failed: {_one_line(err)}")


def _results(tasks: list[Task], options: dict, late: LatePolicy | None, jobs: int,
             scheduler: str | None) -> Iterator[Row]:  # fmt: skip
    """Rows as they finish: ``jobs`` threads here, or the workers of a dask cluster."""
    if scheduler:
        try:
            from distributed import Client
            from distributed import as_completed as finished
        except ImportError:
            raise ValueError(
                "scheduler needs dask's distributed: pip install distributed"
            ) from None
        with Client(scheduler, timeout="30s") as client:
            futures = [
                client.submit(grade_task, task, options, late, pure=False, key=f"grade-{k}")
                for k, task in enumerate(tasks)
            ]  # fmt: skip
            for future in finished(futures):
                yield future.result()
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(grade_task, task, options, late) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # what is not started never will be
            raise


def _leaderboard_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-leaderboard.csv")


def _save(row: Row, rows: list[Row], srcs: list[SourceNotebook], out: Path, fb_dir: Path) -> None:
    """Rewrite the gradebook (and the leaderboard, once a cell recorded metrics) with every row so
    far (atomically) and write this row's feedback."""
    atomic_write_bytes(out, _encoded(gradebook_csv(rows, srcs)))
    board = leaderboard_csv(rows)
    if board is not None:
        atomic_write_bytes(_leaderboard_path(out), _encoded(board))
    source = next((s for s in srcs if s.name == row.notebook), None)
    path = fb_dir / _safe(row.submission) / f"{_safe(Path(row.notebook).stem, 'notebook')}.md"
    try:
        atomic_write_bytes(path, _encoded(feedback_markdown(row, source=source)))
    except OSError as err:
        print(f"warning: no feedback for {row.submission}: {_one_line(err)}", file=sys.stderr)


def _progress(k: int, n: int, row: Row) -> None:
    """One line on stderr per graded notebook."""
    print(
        without_surrogates(
            f"[{k}/{n}] {row.submission} {row.notebook}: "
            f"{_fmt(row.total)}/{_fmt(row.max_points)} {row.status} ({row.seconds:.1f} s)"
        ),
        file=sys.stderr,
    )


def grade(
    submissions: list[str | os.PathLike],
    sources: list[str | os.PathLike],
    output: str | os.PathLike = "gradebook.csv",
    *,
    jobs: int = 1,
    cell_timeout: float = 120,
    timeout: float = 600,
    manifest: str | os.PathLike | None = None,
    feedback_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    sandbox: bool = True,
    memory_gb: float = 6.0,
    late: LatePolicy | None = None,
    scheduler: str | None = None,
) -> list[Row]:
    """Grade every submission against the course notebooks; write the CSV and feedback files.

    ``jobs`` notebooks run at once (each in its own pytest + kernel); ``cell_timeout`` and
    ``timeout`` are seconds per cell and per notebook. Feedback goes to
    ``feedback_dir/<submission>/<notebook stem>.md`` (default: ``feedback/`` next to the CSV).
    Bad submissions become rows with 0 points and a reason (one that breaks the grader itself
    too: status ``error``); bad sources raise NotebookError. The CSV is rewritten (atomically)
    after each notebook, and its feedback written, so a killed run leaves what it had graded.
    Each student's code runs sandboxed (:mod:`labkit.grading.sandbox`, at most ``memory_gb`` of
    heap); ``sandbox=False`` runs it with your user's rights, and without bubblewrap
    grading refuses unless told so. ``late`` (:class:`~labkit.grading.export.LatePolicy`) takes
    its penalty off late notebooks' ``score``; per-student totals for an LMS go to
    ``<output stem>-totals.csv`` next to the gradebook, and, when a graded cell recorded metrics
    (:func:`labkit.grading.score`), the leaderboard (:func:`leaderboard_csv`) to
    ``<output stem>-leaderboard.csv``. With ``scheduler`` (a dask scheduler's
    address, ``tcp://host:8786``) the notebooks are graded by that cluster's workers instead of
    ``jobs`` threads here; the workers need this labkit and the same paths to the files.

    Example: ``grade(["submissions"], ["notebooks"], "out/gradebook.csv", jobs=2)``
    """
    jobs = check_int("jobs", jobs, minimum=1)
    if sandbox and not _sandbox.available():
        raise ValueError(
            "grading needs bubblewrap (bwrap) with user namespaces to sandbox the students' code "
            "(apt-get install bubblewrap); --no-sandbox grades anyway: " + _sandbox.NO_SANDBOX_MEANS
        )
    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be > 0; got {memory_gb}")
    if cell_timeout <= 0 or timeout <= 0:
        raise ValueError(f"timeouts must be > 0 seconds; got {cell_timeout}, {timeout}")
    man = json.loads(Path(manifest).read_text()) if manifest else None
    srcs = load_sources(list(sources), man)
    for src in srcs:
        if not src.info.graded and verbose:
            print(f"note: {src.name} has no graded cells; not graded", file=sys.stderr)
    srcs = [src for src in srcs if src.info.graded]
    if not srcs:
        raise ValueError("sources must include a notebook with graded cells; got none")
    if man:
        for src in srcs:
            entry = man.get("notebooks", {}).get(src.name)
            if entry and entry.get("source_sha256") != sha256_file(src.path):
                print(f"warning: {src.name} changed since it was released", file=sys.stderr)
    tasks = find_submissions(list(submissions), srcs)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {k: os.environ.get(k, threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    options = {"cell_timeout": cell_timeout, "timeout": timeout, "env": env,
               "sandbox": sandbox, "memory_gb": memory_gb}  # fmt: skip
    out = Path(output)
    fb_dir = Path(feedback_dir) if feedback_dir else out.parent / "feedback"
    start = time.perf_counter()
    rows: list[Row] = []
    for k, row in enumerate(_results(tasks, options, late, jobs, scheduler), 1):
        rows.append(row)
        _save(row, rows, srcs, out, fb_dir)
        if verbose:
            _progress(k, len(tasks), row)
    wall = time.perf_counter() - start
    if not rows:
        atomic_write_bytes(out, _encoded(gradebook_csv(rows, srcs)))
    atomic_write_bytes(out.with_name(f"{out.stem}-totals.csv"), _encoded(totals_csv(rows, srcs)))
    if verbose and leaderboard_csv(rows) is not None:
        print(f"leaderboard of the scored cells: {_leaderboard_path(out)}", file=sys.stderr)
    if verbose and rows:
        mean = sum(r.seconds for r in rows) / len(rows)
        print(
            f"graded {len(rows)} notebook(s) in {wall:.1f} s with {jobs} job(s): "
            f"{wall / len(rows):.1f} s each on the wall clock, {mean:.1f} s each to run; "
            f"gradebook {out}, feedback in {fb_dir}/",
            file=sys.stderr,
        )
    return rows
