"""The ``labkit release``, ``labkit check`` and ``labkit grade`` subcommands (argparse).

``labkit/cli.py`` calls :func:`add_subcommands`; each command's ``func`` returns the
exit code: 0 done, 1 ``release --verify`` found a vacuous or failing test, 2 bad input.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="labkit")
    >>> add_subcommands(parser.add_subparsers())
    >>> args = parser.parse_args(["check", "workbooks/00_efficiency_basics.ipynb"])
    >>> args.func(args)                                           # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_subcommands"]


def _err(command: str, err: Exception) -> int:
    print(f"labkit {command}: error: {err}", file=sys.stderr)
    return 2


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0; got {text!r}")
    return value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of minutes >= 0; got {text!r}")
    return value


def _cmd_release(args: argparse.Namespace) -> int:
    from labkit.grading.check import verify_notebook
    from labkit.grading.workbook import expand_notebooks, release

    try:
        paths = expand_notebooks(args.sources)
        if args.verify:
            bad = 0
            for path in paths:
                report = verify_notebook(path, cell_timeout=args.cell_timeout)
                for problem in report["problems"]:
                    print(f"{path.name}: {problem}", file=sys.stderr)
                bad += not report["ok"]
                print(f"verified {path.name} in {report['seconds']:.1f} s: "
                      f"{'ok' if report['ok'] else 'PROBLEMS'}")  # fmt: skip
            if bad:
                print(f"labkit release: {bad} notebook(s) failed verification; nothing written")
                return 1
        manifest = release(paths, args.output)
    except ValueError as err:
        return _err("release", err)
    for name, entry in manifest["notebooks"].items():
        if any(p.name == name for p in paths):
            n = len(entry["graded"])
            print(f"released {name}: {n} graded cells, {entry['max_points']} points")
    print(f"workbooks and manifest.json in {args.output}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from labkit.grading.check import check_notebook

    try:
        report = check_notebook(args.notebook, cell_timeout=args.cell_timeout, timeout=args.timeout)
    except ValueError as err:
        return _err("check", err)
    print(f"{report['notebook']}: visible tests (hidden tests run only when graded)")
    if not report["tests"]:
        print("  no graded test cells found")
    width = max([len(t.grade_id) for t in report["tests"]] + [5])
    for t in report["tests"]:
        result = "passed" if t.status == "passed" else f"{t.status}: {t.message}"
        print(f"  {t.grade_id:<{width}}  {t.earned:g}/{t.points:g}  {result}")
    print(f"  {'total':<{width}}  {report['total']:g}/{report['max']:g}")
    for note in report["notes"]:
        print(f"  note: {note}")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from labkit.grading.export import LatePolicy, Submissions, read_deadlines, read_submissions
    from labkit.grading.gradebook import grade

    try:
        late = None
        subs = read_submissions(args.submitted) if args.submitted else Submissions({}, {})
        if args.deadlines or subs.deadlines:
            deadlines = read_deadlines(args.deadlines) if args.deadlines else {}
            late = LatePolicy(deadlines, args.late_penalty, subs.submitted, subs.deadlines,
                              args.grace)  # fmt: skip
        rows = grade(
            args.submissions, args.source, args.output, jobs=args.jobs, late=late,
            scheduler=args.scheduler,
            cell_timeout=args.cell_timeout, timeout=args.timeout, manifest=args.manifest,
            feedback_dir=args.feedback_dir, verbose=not args.quiet,
            sandbox=not args.no_sandbox, memory_gb=args.memory_gb,
        )  # fmt: skip
    except (ValueError, OSError) as err:
        return _err("grade", err)
    for submission, notebook in late.unused(rows) if late else []:
        print(
            f"labkit grade: warning: --submitted gives {submission} a deadline for {notebook}, "
            "but no such submission was graded",
            file=sys.stderr,
        )
    print(f"gradebook written to {args.output}")
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``release``, ``check`` and ``grade`` on the ``labkit`` parser's subparsers.

    Example: ``add_subcommands(parser.add_subparsers(dest="command"))``
    """
    p = subparsers.add_parser(
        "release",
        help="write student workbooks (solutions stubbed, hidden tests removed) + manifest.json",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="course notebooks or folders of them")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="release folder")
    p.add_argument(
        "--verify", action="store_true",
        help="first prove each notebook's tests pass with the solution and fail without it",
    )  # fmt: skip
    p.add_argument("--cell-timeout", type=_positive, default=120, metavar="S", help="for --verify")
    p.set_defaults(func=_cmd_release)

    p = subparsers.add_parser("check", help="run the visible tests of your notebook, show points")
    p.add_argument("notebook", type=Path, metavar="NOTEBOOK")
    p.add_argument("--cell-timeout", type=_positive, default=120, metavar="S", help="per cell")
    p.add_argument("--timeout", type=_positive, default=600, metavar="S", help="whole notebook")
    p.set_defaults(func=_cmd_check)

    p = subparsers.add_parser(
        "grade", help="grade submissions against the course notebooks; write a CSV gradebook"
    )
    p.add_argument(
        "submissions", nargs="+", metavar="SUBMISSION",
        help="notebooks, or folders (one per student) holding NN_topic.ipynb files",
    )  # fmt: skip
    p.add_argument(
        "--source", nargs="+", required=True, metavar="SRC",
        help="the course notebooks with solutions (files or a folder)",
    )  # fmt: skip
    p.add_argument("-o", "--output", type=Path, default=Path("gradebook.csv"), metavar="CSV")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="notebooks at once")
    p.add_argument("--cell-timeout", type=_positive, default=120, metavar="S", help="per cell")
    p.add_argument("--timeout", type=_positive, default=600, metavar="S", help="per notebook")
    p.add_argument("--manifest", type=Path, help="the release's manifest.json (tamper checks)")
    p.add_argument("--feedback-dir", type=Path, help="default: feedback/ next to the CSV")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-notebook progress lines")
    p.add_argument(
        "--memory-gb", type=_positive, default=6.0, metavar="GB",
        help="memory (heap) limit of each student's process (default 6)",
    )  # fmt: skip
    p.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="grade on a dask cluster (tcp://host:8786) instead of -j threads here",
    )  # fmt: skip
    p.add_argument(
        "--deadlines", type=Path, metavar="JSON",
        help='late policy: {"NN_topic.ipynb": "2026-12-10T23:59+01:00", ...}',
    )  # fmt: skip
    p.add_argument(
        "--late-penalty", type=float, default=10.0, metavar="PCT",
        help="percent of the score off per started day late, a second late being one started "
        "day (default 10; 100 for a timed exam)",
    )  # fmt: skip
    p.add_argument(
        "--submitted", type=Path, metavar="CSV",
        help="submission times (submission,notebook,submitted_at), optionally a deadline "
        "column giving that submission its own deadline; default: file times",
    )  # fmt: skip
    p.add_argument(
        "--grace", type=_minutes, default=0.0, metavar="MINUTES",
        help="minutes after each deadline still counted on time (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--no-sandbox", action="store_true",
        help="run students' code without bubblewrap: it can then read your files, use the "
        "network and signal your processes (verdicts are still decided outside it)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_grade)
