"""The ``labkit`` command: ``doctor``, ``prepare`` and the grading commands.

Examples:
    labkit doctor            # is this environment ready for the course?
    labkit prepare           # train and cache the models and sweeps notebooks read (~3 min cold)
    labkit release notebooks/*.ipynb -o release/
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from labkit.utils import check_choice, check_int

__all__ = ["main", "build_parser", "doctor_checks"]

REQUIRED = (
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "mnist1d",
    "matplotlib",
    "ipywidgets",
    "jupyterlab",
    "jupyterlab_widgets",
    "nbval",
    "nbclient",
)
PINNED = {"torch": "2.14.1", "torchvision": "0.29.1"}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _widget_extension() -> Path | None:
    """Where JupyterLab would find the ipywidgets front-end (jupyterlab_widgets), if anywhere."""
    rel = Path("share", "jupyter", "labextensions", "@jupyter-widgets", "jupyterlab-manager")
    prefixes = [sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")]
    try:
        from jupyter_core.paths import jupyter_path

        candidates = [
            Path(p) / "labextensions" / rel.parts[-2] / rel.parts[-1] for p in jupyter_path()
        ]
    except ImportError:
        candidates = []
    candidates += [Path(p) / rel for p in prefixes]
    for path in candidates:
        if (path / "package.json").is_file():
            return path
    return None


def doctor_checks() -> list[tuple[str, bool, str]]:
    """Run the environment checks: a list of (check, ok, detail). Nothing is downloaded.

    Example: ``all(ok for _, ok, _ in doctor_checks())``
    """
    checks: list[tuple[str, bool, str]] = []
    py_ok = sys.version_info >= (3, 11)
    checks.append(("python", py_ok, f"{platform.python_version()} ({sys.executable})"))
    for dist in REQUIRED:
        ver = _version(dist)
        want = PINNED.get(dist)
        if ver is None:
            checks.append((dist, False, "not installed (run: make install)"))
        elif want and not ver.startswith(want):
            checks.append((dist, False, f"{ver}, but the course is tested with {want}"))
        else:
            checks.append((dist, True, ver))

    ext = _widget_extension()
    checks.append(
        (
            "widget extension",
            ext is not None,
            str(ext)
            if ext
            else "jupyterlab_widgets front-end missing: widgets would print "
            "as 'interactive(...)' text; pip install jupyterlab_widgets",
        )
    )

    from labkit.grading import sandbox

    has_sandbox = sandbox.available()
    checks.append(
        (
            "grading sandbox",
            True,  # only an instructor running `labkit grade` needs it
            "bubblewrap ok: labkit grade runs students' code sandboxed"
            if has_sandbox
            else "no bubblewrap: needed only to grade a class (apt-get install bubblewrap)",
        )
    )

    try:
        import torch

        threads = torch.get_num_threads()
        cores = os.cpu_count() or 1
        omp = os.environ.get("OMP_NUM_THREADS", "unset")
        checks.append(
            ("threads", True, f"torch uses {threads} of {cores} cores (OMP_NUM_THREADS={omp})")
        )
        from labkit import kernels

        k = kernels.current()
        checks.append(
            (
                "cpu kernels",
                True,
                f"torch dispatches to {k['capability']} kernels (kernel set {k['kernel_set']}; "
                "trained figures differ slightly between kernel sets)",
            )
        )
        cuda = torch.cuda.is_available()
        checks.append(
            (
                "accelerator",
                True,
                "CUDA available" if cuda else "CPU only (fine: the course runs on CPU)",
            )
        )
    except ImportError:
        pass

    try:
        from labkit import data

        avail = data.available()
        embedded = [n for n in data.EMBEDDED if avail.get(n)]
        optional = [n for n in data.OPTIONAL if avail.get(n)]
        checks.append(
            (
                "embedded data",
                len(embedded) == len(data.EMBEDDED),
                ", ".join(embedded) or "none",
            )
        )
        checks.append(
            (
                "optional data",
                True,
                ", ".join(optional)
                if optional
                else "none downloaded (optional; see data/README.md)",
            )
        )
    except Exception as err:  # noqa: BLE001 - doctor reports, never crashes
        checks.append(("embedded data", False, f"{type(err).__name__}: {err}"))

    try:
        from labkit import models

        entries = sorted(models.RECIPES)
        cached = [f"{n}/{d}" for n, d in entries if models.is_cached(n, d)]
        checks.append(
            (
                "model cache",
                True,
                f"{len(cached)} of {len(entries)} pretrained models cached"
                + ("" if len(cached) == len(entries) else " (run: labkit prepare)"),
            )
        )
    except Exception as err:  # noqa: BLE001
        checks.append(("model cache", False, f"{type(err).__name__}: {err}"))
    return checks


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks()
    width = max(len(name) for name, _, _ in checks)
    for name, ok, detail in checks:
        print(f"{'ok ' if ok else 'BAD'}  {name:<{width}}  {detail}")
    bad = [name for name, ok, _ in checks if not ok]
    if bad:
        print(f"\n{len(bad)} problem(s): {', '.join(bad)}")
        return 1
    print("\nall good")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from labkit import course, models

    start = time.perf_counter()
    only = None
    if args.only:
        known = [f"{n}/{d}" for n, d in sorted(models.RECIPES)]
        only = [check_choice("only", item, known) for item in args.only]
    jobs = course.default_jobs() if args.jobs is None else check_int("jobs", args.jobs, minimum=1)
    plan = course.steps(only)
    print(f"preparing {len(plan)} step(s) with {jobs} worker process(es)", flush=True)

    def report(record: dict) -> None:
        if "metrics" not in record:
            print(f"{record['name']}: done in {record['seconds']:.1f} s", flush=True)
            return
        state = "cached" if record["cached"] else f"trained in {record['seconds']:.1f} s"
        metrics = record.get("metrics") or {}
        shown = ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if k in ("test_acc", "val_acc", "val_loss", "val_ppl")
        )
        print(f"{record['name']}: {state}  {shown}", flush=True)

    progress = False if args.quiet else None
    records = course.prepare(plan, jobs=jobs, progress=progress, report=report)
    print(f"prepared {len(records)} step(s) in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from labkit import bench, kernels
    from labkit.utils import check_choice

    partial = bool(args.notebooks)

    def report(record: dict) -> None:
        claimed = ", ".join(
            f"{c['key']}={c['fmt'].format(c['value'])}" for c in record.get("claims", [])
        )
        print(f"{record['notebook']}: {record['seconds']:.1f} s  {claimed}".rstrip(), flush=True)

    names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    try:
        for name in names:
            check_choice("kernels", name, tuple(kernels.KERNEL_SETS))
        if len(names) > 1 and not args.cold:
            raise ValueError("kernels: several kernel sets need --cold (each trains its own cache)")
    except ValueError as err:
        print(f"labkit bench: {err}", file=sys.stderr)
        return 2
    missing = [k for k in names if not kernels.available(k)]
    if missing:
        print(f"this CPU cannot run the kernel set(s) {', '.join(missing)}: skipped")
        names = [k for k in names if k not in missing]
    results = []
    for name in names:
        if len(names) > 1:
            print(f"--- kernel set {name}", flush=True)
        results.append(
            bench.run(args.notebooks or None, cold=args.cold, report=report, kernel_set=name)
        )
        print(f"total {results[-1]['total_seconds']:.1f} s")
    result = bench.combine(results) if len(results) > 1 else results[0]
    if partial:
        print("(a partial run: docs/bench.json and the README table are left as they are)")
        return 0
    bench.save(result, args.json)
    changed = bench.update_readme(args.readme, bench.render_table(result))
    print(f"wrote {args.json}; README table {'updated' if changed else 'unchanged'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind ``labkit``."""
    from labkit import __version__

    parser = argparse.ArgumentParser(prog="labkit", description="Efficient AI Lab helper commands.")
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check that this environment is ready for the course")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("prepare", help="train and cache every pretrained model the notebooks use")
    p.add_argument(
        "--only", nargs="*", metavar="NAME/DATASET", help="only these entries, e.g. mlp/digits"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="worker processes (default: CPU cores, at most 2; env LABKIT_JOBS)",
    )
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser(
        "bench", help="run every notebook headless; write runtimes and headline figures to README"
    )
    p.add_argument("notebooks", nargs="*", help="only these notebook files (nothing is written)")
    p.add_argument(
        "--cold", action="store_true", help="first run labkit prepare on an empty data folder"
    )
    p.add_argument(
        "--kernels",
        default="native",
        help="comma-separated CPU kernel sets to run in turn, e.g. native,avx2,default "
        "(labkit.kernels; several need --cold)",
    )
    p.add_argument("--json", default="docs/bench.json", help="where the result goes")
    p.add_argument("--readme", default="README.md", help="file holding the bench table markers")
    p.set_defaults(func=_cmd_bench)

    try:
        grading = importlib.import_module("labkit.grading")
    except ImportError:
        grading = None
    if grading is not None and hasattr(grading, "add_subcommands"):
        grading.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``labkit`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
