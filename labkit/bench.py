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

from labkit import kernels
from labkit.utils import atomic_write_bytes, check_int

__all__ = [
    "claim",
    "claims",
    "course_notebooks",
    "is_exam",
    "run_notebook",
    "run",
    "render_table",
    "update_readme",
    "table_in",
    "save",
    "spread",
    "combine",
    "ZOO_TOLERANCE",
    "BEGIN",
    "END",
]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

_KEY = re.compile(r"[a-z][a-z0-9_]*")
_CLAIMS: list[dict] = []


def claim(key: str, value: float, label: str, fmt: str = "{:.3g}") -> None:
    """Record a headline figure of the running notebook.

    ``key`` (snake_case, unique in the notebook), its ``value``, a human ``label`` and ``fmt`` for
    the README table.

    Prints nothing. Under ``labkit bench`` (``LABKIT_BENCH_FILE`` set) the claim is appended to
    that file as a JSON line. Example:
    ``claim("moe_gain_pt", 7.1, "MoE gain over dense (pt)", "{:+.1f}")``
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


def is_exam(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an exam, ``NN_*_exam.ipynb`` (``98_practice_exam``, ``99_final_exam``).

    An exam is graded like every course notebook but measures nothing new: it claims no headline
    figure, so the bench and its README table leave it out. Example: ``is_exam("99_final_exam")``
    """
    return Path(path).stem.endswith("_exam")


def course_notebooks(
    folder: str | os.PathLike = ROOT / "notebooks", exams: bool = False
) -> list[Path]:
    """The course notebooks ``NN_topic.ipynb`` in ``folder``, in course order.

    Without ``exams`` the exams (:func:`is_exam`) are left out: the notebooks the bench runs.
    Example: ``[p.stem for p in course_notebooks(exams=True)][-1]  # '99_final_exam'``
    """
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    return paths if exams else [p for p in paths if not is_exam(p)]


def run_notebook(
    path: str | os.PathLike, timeout: int = 900, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Execute one notebook headless and return ``{notebook, seconds, claims}``.

    The kernel is started fresh, with the notebook's folder as its working directory; the notebook
    file is not modified.

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

    return {
        "cpu": cpu,
        "cores": usable_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
    }


def _prepare_cold(env: dict[str, str]) -> float:
    """``labkit prepare`` in a new process with ``env`` (an empty ``LABKIT_DATA``); wall seconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "labkit", "prepare", "-q"],
        env={**env, "LABKIT_PROGRESS": "0"},
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return round(time.perf_counter() - start, 1)


_ZOO_METRICS = {"test_acc", "val_loss"}  # the headline metric of each entry, if it has it

_ZOO_PROBE = """
import json
from labkit import models
print(json.dumps({
    f"{n}/{d}": {k: v for k, v in models.pretrained_info(n, d)["metrics"].items() if k in KEYS}
    for n, d in sorted(models.RECIPES)
}))
"""


def _zoo(env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each pretrained entry's headline metrics (test accuracy or validation loss), as cached
    under ``env``'s ``LABKIT_DATA``."""
    code = f"KEYS = {sorted(_ZOO_METRICS)!r}\n{_ZOO_PROBE}"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout)


def run(
    notebooks: Sequence[str | os.PathLike] | None = None,
    cold: bool = False,
    timeout: int = 900,
    report: Callable[[dict], None] | None = None,
    kernel_set: str = "native",
) -> dict[str, Any]:
    """Run ``notebooks`` (default: the whole course) one after another; return the bench result.

    The result holds ``machine`` (CPU, cores, Python, torch, ``kernel_set`` and the ``capability``
    torch dispatched to), ``date``, ``prepare_seconds`` and ``zoo`` (only with ``cold``: ``labkit
    prepare`` on an empty data folder first, which the notebooks then use; ``zoo`` holds each
    pretrained entry's headline metric), ``notebooks`` (one record per notebook) and
    ``total_seconds``. ``kernel_set`` (see :mod:`labkit.kernels`) applies to prepare and every
    notebook. ``report(record)`` is called after each step.

    Example: ``result = run(cold=True); update_readme("README.md", render_table(result))``
    """
    paths = [Path(p) for p in notebooks] if notebooks is not None else course_notebooks()
    if not paths:
        raise ValueError("notebooks must name at least one notebook; got none")
    base = kernels.env(kernel_set)
    with tempfile.TemporaryDirectory(prefix="labkit-bench-data-") as tmp:
        env = dict(kernels.KERNEL_SETS[kernel_set])
        prepare_seconds = zoo = None
        if cold:
            env["LABKIT_DATA"] = tmp
            prepare_seconds = _prepare_cold({**base, **env})
            zoo = _zoo({**base, **env})
            if report is not None:
                report({"notebook": "labkit prepare (cold)", "seconds": prepare_seconds})
        records = []
        for path in paths:
            record = run_notebook(path, timeout=timeout, env=env)
            records.append(record)
            if report is not None:
                report(record)
    total = sum(r["seconds"] for r in records) + (prepare_seconds or 0.0)
    machine = {**_machine(), "kernel_set": kernel_set, "capability": kernels.capability(base)}
    result = {
        "machine": machine,
        "date": time.strftime("%Y-%m-%d"),
        "prepare_seconds": prepare_seconds,
        "notebooks": records,
        "total_seconds": round(total, 1),
    }
    if zoo is not None:
        result["zoo"] = zoo
    return result


ZOO_TOLERANCE = {"val_loss": 0.03, "test_acc": 0.01}
"""How far a pretrained entry's headline metric may move between kernel sets: 0.03 nats/char for
the language models, 1 point of test accuracy for the classifiers."""


def spread(kernel_sets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the zoo metrics and claims vary across the ``kernel_sets`` of a :func:`combine` result.

    ``zoo`` (entry -> its headline metric, test accuracy or else validation loss -> ``min``,
    ``max``, ``spread`` and ``within`` its ``ZOO_TOLERANCE``) and ``claims`` (notebook/key ->
    ``min``, ``max``).
    Example: ``spread(json.load(open("docs/bench.json"))["kernel_sets"])``
    """
    zoo: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in sorted({e for k in kernel_sets for e in k["zoo"]}):
        metrics = [k["zoo"][entry] for k in kernel_sets if entry in k["zoo"]]
        metric = "test_acc" if all("test_acc" in m for m in metrics) else "val_loss"
        values = [m[metric] for m in metrics if metric in m]
        if len(values) > 1:
            lo, hi = min(values), max(values)
            within = hi - lo <= ZOO_TOLERANCE[metric] + 1e-9
            zoo[entry] = {metric: {"min": lo, "max": hi, "spread": hi - lo, "within": within}}
    claims: dict[str, dict[str, float]] = {}
    for k in kernel_sets:
        for notebook, figures in k["claims"].items():
            for key, value in figures.items():
                row = claims.setdefault(f"{notebook}/{key}", {"min": value, "max": value})
                row["min"], row["max"] = min(row["min"], value), max(row["max"], value)
    return {"zoo": zoo, "claims": claims}


# --------------------------------------------------------------------------- the README table


def _format(record: dict, across: dict[str, float] | None = None) -> str:
    text = f"{record['label']} {record['fmt'].format(record['value'])}"
    if across:
        lo, hi = (record["fmt"].format(across[k]) for k in ("min", "max"))
        if lo != hi:  # the figure moved between kernel sets (as printed)
            text += f" ({lo} – {hi})"
    return text


def combine(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One bench result from runs on several kernel sets.

    The first run's result, plus ``kernel_sets`` (each run's kernel set, capability, times, zoo
    metrics and claims; see :func:`spread`).
    Example: ``combine([native_result, default_result])``
    """
    if not results:
        raise ValueError("results must hold at least one bench result; got none")
    out = dict(results[0])
    out["kernel_sets"] = [
        {
            "kernel_set": r["machine"]["kernel_set"],
            "capability": r["machine"]["capability"],
            "prepare_seconds": r["prepare_seconds"],
            "total_seconds": r["total_seconds"],
            "zoo": {e: dict(m) for e, m in r.get("zoo", {}).items()},
            "claims": {
                nb["notebook"]: {c["key"]: c["value"] for c in nb["claims"]}
                for nb in r["notebooks"]
            },
        }
        for r in results
    ]
    return out


def _zoo_table(result: dict[str, Any]) -> list[str]:
    sets = result["kernel_sets"]
    names = [f"{k['kernel_set']} ({k['capability']})" for k in sets]
    rows = [
        "| pretrained entry | metric | " + " | ".join(names) + " | spread (allowed) |",
        "| --- | --- | " + " | ".join("---:" for _ in sets) + " | ---: |",
    ]
    for entry, metrics in spread(sets)["zoo"].items():
        for metric, row in metrics.items():
            pct = metric.endswith("acc")
            fmt = "{:.1%}" if pct else "{:.3f}"
            values = " | ".join(fmt.format(k["zoo"][entry][metric]) for k in sets)
            tol = ZOO_TOLERANCE[metric]
            gap = (
                f"{row['spread'] * 100:.1f} pt ({tol * 100:.0f})"
                if pct
                else (f"{row['spread']:.3f} ({tol})")
            )
            rows.append(f"| `{entry}` | {metric} | {values} | {gap} |")
    return rows


def render_table(result: dict[str, Any]) -> str:
    """The markdown table (and a line on how it was measured) for a bench ``result``.

    ``result`` comes from :func:`run` or :func:`combine`; with several kernel sets, each figure
    shows its range across them and a second table the pretrained models' metrics on each.
    Example: ``print(render_table(json.load(open("docs/bench.json"))))``
    """
    sets = result.get("kernel_sets") or []
    across = spread(sets)["claims"] if len(sets) > 1 else {}
    rows = [
        "| notebook | runtime | headline figures (measured in that run) |",
        "| --- | ---: | --- |",
    ]
    for r in result["notebooks"]:
        figures = "; ".join(
            _format(c, across.get(f"{r['notebook']}/{c['key']}")) for c in r["claims"]
        )
        rows.append(f"| `{r['notebook']}` | {r['seconds']:.0f} s | {figures or '—'} |")
    m = result["machine"]
    notebooks_s = sum(r["seconds"] for r in result["notebooks"])
    if result.get("prepare_seconds") is not None:
        whole = (
            f"cold `labkit prepare` {result['prepare_seconds']:.0f} s + notebooks "
            f"{notebooks_s:.0f} s = **{result['total_seconds']:.0f} s** for the whole course, cold"
        )
    else:
        whole = f"notebooks {notebooks_s:.0f} s with the model cache built"
    kernel = f"kernel set {m.get('kernel_set', 'native')} ({m.get('capability', '?')})"
    rows.append("")
    rows.append(
        f"Measured by `make bench` on {result['date']}: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, torch {m['torch']}, {kernel}; {whole}. "
        "Latency figures vary by machine."
    )
    if len(sets) > 1:
        others = ", ".join(
            f"{k['kernel_set']} ({k['capability']}) {k['total_seconds']:.0f} s "
            f"(prepare {k['prepare_seconds']:.0f} s)"
            for k in sets[1:]
        )
        rows.append(
            f"In brackets: the range of each figure over the kernel sets "
            f"{', '.join(k['kernel_set'] for k in sets)} on the same machine "
            f"(`labkit bench --cold --kernels ...`); the whole course, cold, took {others}."
        )
        rows.append("")
        rows += _zoo_table(result)
    return "\n".join(rows)


def update_readme(readme: str | os.PathLike, table: str) -> bool:
    """Replace the text between ``BEGIN`` and ``END`` in ``readme`` with ``table`` (atomically).

    Returns whether the file changed.
    Example: ``update_readme("README.md", render_table(result))``
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
