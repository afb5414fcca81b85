"""The import rule of docs/architecture.md: foundation <- techniques <- course, never upwards;
notebooks use only public names."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labkit"

FOUNDATION = {"utils", "data", "models", "train", "measure", "sweep", "plots", "widgets", "kernels"}
TECHNIQUES = {
    "attention",
    "distill",
    "prune",
    "quant",
    "dynamic",
    "condense",
    "ship",
}
COURSE = {"course", "bench", "cli", "grading"}  # the course layer and its commands
TOP = {"__init__", "__main__"}  # the package's face: lazy re-exports, ``python -m labkit``


def _module_name(path: Path) -> str:
    """``labkit/course/nb02_x.py`` -> ``course``: the top-level module or package it belongs to."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _labkit_imports(tree: ast.AST, package: str) -> set[str]:
    """The top-level labkit modules a module imports (absolute or relative)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside this module's own package
                out.add(package)
                continue
            parts = (node.module or "").split(".")
            if parts[0] != "labkit":
                continue
            if len(parts) > 1:
                out.add(parts[1])
            else:
                out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "labkit" and len(parts) > 1:
                    out.add(parts[1])
    return out


def _imports_by_module() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        imports = _labkit_imports(ast.parse(path.read_text(encoding="utf-8")), name)
        table.setdefault(name, set()).update(imports - {name, "__version__"})
    return table


def test_every_module_has_a_layer():
    known = FOUNDATION | TECHNIQUES | COURSE | TOP
    unknown = set(_imports_by_module()) - known
    assert not unknown, f"give each new module a layer (docs/architecture.md): {sorted(unknown)}"


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        (FOUNDATION, FOUNDATION),
        (TECHNIQUES, (FOUNDATION - {"sweep", "plots", "widgets"}) | TECHNIQUES),
    ],
    ids=["foundation", "techniques"],
)
def test_imports_only_point_down(layer, allowed):
    bad = {
        name: sorted(imports - allowed)
        for name, imports in _imports_by_module().items()
        if name in layer and imports - allowed
    }
    assert not bad, f"imports against the layering (docs/architecture.md): {bad}"


def test_the_rule_catches_an_upward_import():
    tree = ast.parse("from labkit import sweep\nfrom labkit.course import nb02_distillation\n")
    assert _labkit_imports(tree, "distill") == {"sweep", "course"}
    tree = ast.parse("import labkit.bench as b\nfrom . import scheduler\n")
    assert _labkit_imports(tree, "course") == {"bench", "course"}


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(source)
    except SyntaxError:  # IPython magics: not plain Python
        return None


def _aliases(tree: ast.AST | None) -> set[str]:
    """The names a cell binds to labkit modules (``from labkit import x``, ``import labkit.y``)."""
    names: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit"):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("labkit"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _private_uses(source: str, aliases: set[str] = frozenset()) -> list[str]:
    """``labkit`` names starting with ``_`` that notebook code reaches for; ``aliases``: labkit
    modules imported in earlier cells."""
    tree = _parse(source)
    if tree is None:
        return []
    aliases = set(aliases) | _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            if any(p.startswith("_") for p in (node.module or "").split(".")):
                found.append(node.module or "")
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_private_name_check_catches_one():
    code = "from labkit import models\nfrom labkit.utils import _range\nmodels._x(1)\nmodels.build"
    assert _private_uses(code) == ["labkit.utils._range", "models._x"]
    # the module was imported in an earlier cell
    assert _private_uses("experiments._held(m)", {"experiments"}) == ["experiments._held"]
    assert _private_uses("other._held(m)", {"experiments"}) == []


NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_use_only_public_names(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    aliases = set().union(*(_aliases(_parse(src)) for src in sources))
    found = [use for src in sources for use in _private_uses(src, aliases)]
    assert not found, f"private labkit names used in {path.name}: {found}"


def _foreign_private_uses(source: str, own: str) -> list[str]:
    """Private names of *other* top-level labkit modules that library code ``own`` reaches for
    (a package's files may share their own private helpers)."""
    tree = ast.parse(source)
    owner: dict[str, str] = {}  # local alias -> top-level labkit module it names
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level:
            parts = (node.module or "").split(".")
            if parts[0] != "labkit":
                continue
            for alias in node.names:
                top = parts[1] if len(parts) > 1 else alias.name
                owner[alias.asname or alias.name] = top
                if alias.name.startswith("_") and not alias.name.startswith("__") and top != own:
                    found.append(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and owner.get(node.value.id, own) != own
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_foreign_private_check_catches_one():
    code = (
        "from labkit import sweep\nfrom labkit.plots import _x\n"
        "from labkit.measure.compute import _y\n"
        "sweep._keys(r)\nsweep.grid()\n"
    )
    assert _foreign_private_uses(code, "measure") == ["labkit.plots._x", "sweep._keys"]
    assert _foreign_private_uses(code, "plots") == ["labkit.measure.compute._y", "sweep._keys"]


def test_modules_use_no_private_name_of_another_module():
    found = {
        str(path.relative_to(ROOT)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if (uses := _foreign_private_uses(path.read_text(encoding="utf-8"), _module_name(path)))
    }
    assert not found, f"private names used across modules (make them public or move them): {found}"


# --------------------------------------------------------------------------- the naming table

# docs/architecture.md "Names": the one spelling of each idea, and the spellings it replaced.
RETIRED_NAMES = {
    "epochs": "num_epochs",
    "n_epochs": "num_epochs",
    "steps": "num_steps (optimizer steps) or num_stages (pruning schedule)",
    "n_steps": "num_steps",
    "iterations": "num_iters",
    "iters": "num_iters",
    "n_iters": "num_iters",
    "calib": "calib_data",
    "calibration_data": "calib_data",
    "n_samples": "num_samples",
}


def _retired_parameters(tree: ast.AST, where: str) -> list[str]:
    """``where:function(param)`` for every public function parameter with a retired name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith(
            "_"
        ):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [
                f"{where}:{node.name}({a.arg}) -> {RETIRED_NAMES[a.arg]}"
                for a in args
                if a.arg in RETIRED_NAMES
            ]
    return found


def test_public_parameters_follow_the_naming_table():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += _retired_parameters(tree, str(path.relative_to(ROOT)))
    assert not found, "parameters named outside docs/architecture.md's table:\n" + "\n".join(found)


def test_the_naming_check_catches_a_retired_name():
    tree = ast.parse("def fit(model, epochs=3):\n    pass\ndef _private(steps): pass\n")
    assert _retired_parameters(tree, "x.py") == ["x.py:fit(epochs) -> num_epochs"]
