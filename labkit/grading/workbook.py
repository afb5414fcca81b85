"""Turn course notebooks into student workbooks: ``labkit release`` and the self-study folders.

Example:
    >>> from labkit.grading import release
    >>> release(["notebooks/00_efficiency_basics.ipynb"], "release/")      # doctest: +SKIP
    {'labkit_version': '0.1.0', 'notebooks': {'00_efficiency_basics.ipynb': {...}}}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from labkit.grading.source import (
    STUB,
    WORKED,
    NotebookInfo,
    cell_role,
    clean_copy,
    is_worked_solution,
    normalized,
    read_notebook,
    remove_hidden_tests,
    replace_solutions,
    validate_source,
)
from labkit.utils import atomic_write_bytes, sha256_bytes, sha256_file

__all__ = [
    "release_notebook",
    "release",
    "graded_checksum",
    "expand_notebooks",
    "build_self_study",
    "MANIFEST",
]

MANIFEST = "manifest.json"
_STAMPS = ".labkit-self-study.json"


def release_notebook(nb: NotebookNode, name: str = "notebook") -> NotebookNode:
    """The student workbook of a course notebook (a new notebook; ``nb`` is left as is).

    Solution regions become ``# YOUR CODE HERE`` + ``raise NotImplementedError()`` at the marker's
    indentation (in a worked-solution cell, tagged ``explanation``: a note and ``pass``), hidden
    tests are removed, outputs and execution counts cleared; narrative,
    non-exercise code, cell ids and metadata stay. Raises NotebookError (one line) on bad markers.

    Example: ``workbook = release_notebook(read_notebook(path), path.name)``
    """
    validate_source(nb, name)
    out = clean_copy(nb)
    for cell in out.cells:
        role = cell_role(cell)
        if role == "solution":
            worked = is_worked_solution(cell)
            cell.source = replace_solutions(cell.source, WORKED if worked else STUB)
        elif role == "graded":
            cell.source = remove_hidden_tests(cell.source)
    return out


def graded_checksum(source: str) -> str:
    """SHA-256 of a graded cell's visible text, insensitive to trailing spaces and blank edges."""
    return sha256_bytes(normalized(source).encode())


def expand_notebooks(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Notebook files from files and folders (a folder gives its ``*.ipynb``, sorted).

    Example: ``expand_notebooks(["notebooks"])  # [Path('notebooks/00_efficiency_basics.ipynb')]``
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.ipynb") if p.is_file()))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise ValueError(f"sources must be .ipynb files or folders holding them; got '{raw}'")
    names = [p.name for p in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sources must have distinct file names; got {', '.join(dupes)} twice")
    return found


def _manifest_entry(path: Path, info: NotebookInfo, workbook: NotebookNode) -> dict[str, Any]:
    graded = {}
    for grade_id, (index, points) in info.graded.items():
        graded[grade_id] = {
            "points": points,
            "sha256": graded_checksum(workbook.cells[index].source),
        }
    return {
        "source_sha256": sha256_file(path),
        "max_points": info.max_points,
        "graded": graded,
        "solutions": list(info.solutions),
    }


def _notebook_bytes(nb: NotebookNode) -> bytes:
    return (nbformat.writes(nb) + "\n").encode()


def release(sources: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the student workbook of every source notebook to ``out_dir``, plus ``manifest.json``.

    All sources are validated before anything is written. The manifest records, per notebook, the
    SHA-256 of the source file, the points and the SHA-256 of each graded cell's visible text, and
    the labkit version; an existing manifest in ``out_dir`` is updated, not replaced. Returns it.

    Example: ``release(["notebooks"], "release")["notebooks"]["00_efficiency_basics.ipynb"]``
    """
    from labkit import __version__

    out = Path(out_dir)
    paths = expand_notebooks(sources)
    if not paths:
        raise ValueError("sources must name at least one .ipynb notebook; got none")
    released = []
    for path in paths:
        if (out / path.name).resolve() == path.resolve():
            raise ValueError(f"out_dir must differ from the folder of the sources; got '{out_dir}'")
        nb = read_notebook(path)
        info = validate_source(nb, path.name)
        released.append((path, info, release_notebook(nb, path.name)))

    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = {"labkit_version": __version__, "notebooks": {}}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
            manifest["notebooks"].update(old.get("notebooks", {}))
        except (ValueError, AttributeError):
            print(f"warning: {manifest_path} was unreadable; writing a new one", file=sys.stderr)
    for path, info, workbook in released:
        atomic_write_bytes(out / path.name, _notebook_bytes(workbook))
        manifest["notebooks"][path.name] = _manifest_entry(path, info, workbook)
    manifest["notebooks"] = dict(sorted(manifest["notebooks"].items()))
    text = json.dumps(manifest, indent=1, sort_keys=False) + "\n"
    atomic_write_bytes(manifest_path, text.encode())
    return manifest


def build_self_study(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``out_dir/workbooks/`` (released) and ``out_dir/solutions/`` (sources, no outputs).

    For self-paced learners: they work in the workbook and read the solved notebook alongside.
    Only ``NN_*.ipynb`` files are taken. A file is rewritten only when its source changed (SHA-256
    recorded in ``.labkit-self-study.json``). A workbook the learner has edited is never
    overwritten: the new release goes next to it as ``NN_topic.updated.ipynb``.
    Returns {file: action}.

    Example: ``build_self_study("notebooks", ".")  # {'workbooks/00_...ipynb': 'written', ...}``
    """
    from labkit import __version__

    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise ValueError(f"src_dir must be a folder of course notebooks; got '{src_dir}'")
    stamps_path = out / "workbooks" / _STAMPS
    try:
        stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    except ValueError:
        stamps = {}
    actions: dict[str, str] = {}
    for path in sorted(src.glob("[0-9][0-9]_*.ipynb")):
        key = f"{sha256_file(path)}:{__version__}"
        nb = read_notebook(path)
        targets = {
            out / "workbooks" / path.name: lambda nb=nb, name=path.name: release_notebook(nb, name),
            out / "solutions" / path.name: lambda nb=nb: clean_copy(nb),
        }
        for target, make in targets.items():
            rel = f"{target.parent.name}/{target.name}"
            stamp = stamps.get(rel, {})
            current = sha256_file(target) if target.is_file() else None
            if current is not None and stamp.get("source") == key:
                actions[rel] = "unchanged"
                continue
            payload = _notebook_bytes(make())
            learner_edited = (
                target.parent.name == "workbooks"
                and current is not None
                and current != stamp.get("written")
            )
            if learner_edited:
                updated = target.with_name(f"{target.stem}.updated.ipynb")
                atomic_write_bytes(updated, payload)
                actions[rel] = f"kept (edited); new version in {updated.name}"
                print(
                    f"{rel}: the course notebook changed but you edited this workbook, so it is "
                    f"kept; the new version is {updated.name}",
                    file=sys.stderr,
                )
                stamps[rel] = {"source": key, "written": stamp.get("written")}
            else:
                atomic_write_bytes(target, payload)
                actions[rel] = "written"
                stamps[rel] = {"source": key, "written": sha256_bytes(payload)}
    stamps_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stamps_path, (json.dumps(stamps, indent=1, sort_keys=True) + "\n").encode())
    return actions
