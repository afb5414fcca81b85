"""Course figures, measured: run every notebook headless, record its runtime and the headline
figures it claims, and write them into the README table. Nothing in that table is typed by hand.

A notebook states a headline figure with :func:`claim` (silent in a normal run). ``labkit bench``
runs each notebook with ``LABKIT_BENCH_FILE`` set, so every claim lands in that file as one JSON
line; the runtimes and claims go to ``docs/bench.json`` and the README table between the
``<!-- bench:begin -->`` / ``<!-- bench:end -->`` markers is rendered from it.

Example:
    >>> from labkit import bench
    >>> bench.claim("int8_speedup", 2.41, "int8 speedup vs best fp32", fmt="{:.2f}x")
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labkit.utils import atomic_write_bytes, check_int

__all__ = [
    "claim",
    "claims",
    "course_notebooks",
    "run_notebook",
    "run",
    "render_table",
    "update_readme",
    "table_in",
    "save",
    "BEGIN",
    "END",
]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

_KEY = re.compile(r"[a-z][a-z0-9_]*")
_CLAIMS: list[dict] = []


def claim(key: str, value: float, label: str, fmt: str = "{:.3g}") -> None:
    """Record a headline figure of the running notebook: ``key`` (snake_case, unique in the
    notebook), its ``value``, a human ``label`` and ``fmt`` for the README table.

    Prints nothing. Under ``labkit bench`` (``LABKIT_BENCH_FILE`` set) the claim is appended to
    that file as a JSON line. Example: ``claim("kd_gap_closed", 0.62, "KD gap closed", "{:.0%}")``
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"key must be a snake_case name like 'int8_speedup'; got {key!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"value must be a number; got {value!r}") from None
    try:
        fmt.format(number)
    except (ValueError, IndexError, KeyError):
        raise ValueError(f"fmt must format one number, like '{{:.3g}}'; got {fmt!r}") from None
    record = {"key": key, "value": number, "label": str(label), "fmt": fmt}
    _CLAIMS[:] = [c for c in _CLAIMS if c["key"] != key] + [record]
    path = os.environ.get("LABKIT_BENCH_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def claims() -> list[dict]:
    """The claims made so far in this process, in order. Example: ``claims()[0]["key"]``"""
    return [dict(c) for c in _CLAIMS]


# --------------------------------------------------------------------------- running notebooks


def course_notebooks(folder: str | os.PathLike = ROOT / "notebooks") -> list[Path]:
    """The course notebooks ``NN_topic.ipynb`` in ``folder``, in course order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(
    path: str | os.PathLike, timeout: int = 900, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Execute one notebook headless (kernel started fresh, working directory its folder) and
    return ``{notebook, seconds, claims}``; the notebook file is not modified.

    A failing cell raises ``RuntimeError`` naming the notebook.
    Example: ``run_notebook("notebooks/06_dynamic_networks.ipynb")["seconds"]``
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing notebook file; got {str(path)!r}")
    timeout = check_int("timeout", timeout, minimum=1)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        claims_file = Path(tmp) / "claims.jsonl"
        kernel_env = {**os.environ, **(env or {})}
        kernel_env.update(LABKIT_BENCH_FILE=str(claims_file), LABKIT_PROGRESS="0")
        # The kernel must import this labkit, wherever the bench was started from.
        kernel_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), kernel_env.get("PYTHONPATH", "")) if p
        )
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        try:
            client.execute(env=kernel_env)
        except CellExecutionError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"notebook {path.name} failed: {first}") from err
        seconds = time.perf_counter() - start
        lines = claims_file.read_text().splitlines() if claims_file.exists() else []
    found: dict[str, dict] = {}
    for line in lines:  # a re-made claim replaces the earlier one, keeping its place
        record = json.loads(line)
        found[record["key"]] = record
    return {"notebook": path.stem, "seconds": round(seconds, 1), "claims": list(found.values())}


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from labkit.course import usable_cores

    cores = usable_cores()
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
    }


def _prepare_cold(data: Path) -> float:
    """``labkit prepare`` in a fresh process on an empty data folder; its wall seconds."""
    env = {**os.environ, "LABKIT_DATA": str(data), "LABKIT_PROGRESS": "0"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "labkit", "prepare", "-q"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return round(time.perf_counter() - start, 1)


def run(
    notebooks: Sequence[str | os.PathLike] | None = None,
    cold: bool = False,
    timeout: int = 900,
    report: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Run ``notebooks`` (default: the whole course) one after another and return the bench
    result: ``machine``, ``date``, ``prepare_seconds`` (only with ``cold``: ``labkit prepare`` on an
    empty data folder first, which the notebooks then use), ``notebooks`` (one record per notebook)
    and ``total_seconds``. ``report(record)`` is called after each notebook.

    Example: ``result = run(cold=True); update_readme("README.md", render_table(result))``
    """
    paths = [Path(p) for p in notebooks] if notebooks is not None else course_notebooks()
    if not paths:
        raise ValueError("notebooks must name at least one notebook; got none")
    with tempfile.TemporaryDirectory(prefix="labkit-bench-data-") as tmp:
        env: dict[str, str] = {}
        prepare_seconds = None
        if cold:
            prepare_seconds = _prepare_cold(Path(tmp))
            env["LABKIT_DATA"] = tmp
            if report is not None:
                report({"notebook": "labkit prepare (cold)", "seconds": prepare_seconds})
        records = []
        for path in paths:
            record = run_notebook(path, timeout=timeout, env=env)
            records.append(record)
            if report is not None:
                report(record)
    total = sum(r["seconds"] for r in records) + (prepare_seconds or 0.0)
    return {
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "prepare_seconds": prepare_seconds,
        "notebooks": records,
        "total_seconds": round(total, 1),
    }


# --------------------------------------------------------------------------- the README table


def _format(record: dict) -> str:
    return f"{record['label']} {record['fmt'].format(record['value'])}"


def render_table(result: dict[str, Any]) -> str:
    """The markdown table (and a line on how it was measured) for ``result`` from :func:`run`.
    Example: ``print(render_table(json.load(open("docs/bench.json"))))``
    """
    rows = [
        "| notebook | runtime | headline figures (measured in that run) |",
        "| --- | ---: | --- |",
    ]
    for r in result["notebooks"]:
        figures = "; ".join(_format(c) for c in r["claims"]) or "—"
        rows.append(f"| `{r['notebook']}` | {r['seconds']:.0f} s | {figures} |")
    m = result["machine"]
    notebooks_s = sum(r["seconds"] for r in result["notebooks"])
    if result.get("prepare_seconds") is not None:
        whole = (
            f"cold `labkit prepare` {result['prepare_seconds']:.0f} s + notebooks "
            f"{notebooks_s:.0f} s = **{result['total_seconds']:.0f} s** for the whole course, cold"
        )
    else:
        whole = f"notebooks {notebooks_s:.0f} s with the model cache built"
    rows.append("")
    rows.append(
        f"Measured by `make bench` on {result['date']}: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, torch {m['torch']}; {whole}. Latency figures vary by machine."
    )
    return "\n".join(rows)


def update_readme(readme: str | os.PathLike, table: str) -> bool:
    """Replace the text between ``BEGIN`` and ``END`` in ``readme`` with ``table`` (atomically);
    return whether the file changed. Example: ``update_readme("README.md", render_table(result))``
    """
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"readme must hold one {BEGIN} ... {END} block; {path} does not")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if new == text:
        return False
    atomic_write_bytes(path, new.encode("utf-8"))
    return True


def table_in(readme: str | os.PathLike) -> str:
    """The text between the bench markers of ``readme``. Example: ``table_in("README.md")``"""
    text = Path(readme).read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"readme must hold one {BEGIN} ... {END} block; {readme} does not")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def save(result: dict[str, Any], path: str | os.PathLike = ROOT / "docs" / "bench.json") -> Path:
    """Write ``result`` as JSON (atomically). Example: ``save(run())``"""
    return atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode("utf-8"))
