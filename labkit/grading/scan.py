"""Flag code in a student's solution cell that could tamper with the tests that run after it.

Grading runs the course notebook with only the student's solution cells spliced in (see
docs/grading.md), so extra cells cannot touch the checks; a solution cell still runs in the same
kernel as the tests. This static scan looks for the usual ways to bend them: patching modules or
builtins, rebinding names the notebook defines, exec/eval/setattr, IPython hooks that rewrite
later cells, objects whose ``==`` is always true. It flags for a human to look; it never changes
points, and obfuscated code can slip past it.

Example:
    >>> scan_solution("import numpy as np\\nnp.allclose = lambda *a, **k: True", set())
    ['assigns to np.allclose']
"""

from __future__ import annotations

import ast
import builtins

__all__ = ["scan_solution", "top_level_names"]

_RISKY_MODULES = {"builtins", "sys", "ctypes", "gc", "inspect", "importlib", "IPython", "__main__"}
_RISKY_CALLS = {
    "setattr", "delattr", "exec", "eval", "compile", "__import__", "globals", "vars", "get_ipython",
}  # fmt: skip
_RISKY_ATTRS = {
    "__builtins__", "__dict__", "__globals__", "__code__", "__class__", "__subclasses__",
    "__closure__", "f_globals", "f_locals", "f_back", "modules", "input_transformers_cleanup",
    "input_transformers_post", "ast_transformers", "events", "run_cell", "user_ns",
}  # fmt: skip
_ALWAYS_TRUE_DUNDERS = {
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__",
    "__instancecheck__", "__subclasscheck__", "__getattr__", "__getattribute__", "__array_ufunc__",
    "__array_function__", "__torch_function__",
}  # fmt: skip
_BUILTINS = set(dir(builtins))


def _parse(source: str) -> ast.Module | None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)  # magics -> get_ipython() calls
    except Exception:  # noqa: BLE001 - IPython missing or odd input: parse as plain Python
        source = "\n".join(
            "get_ipython()" if line.lstrip().startswith(("%", "!")) else line
            for line in source.splitlines()
        )
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


class _TopLevel(ast.NodeVisitor):
    """Collects module-level bindings without descending into function or class bodies."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.names: set[str] = set()

    def _add(self, kind: str, *names: str) -> None:
        if kind in self.kinds:
            self.names.update(names)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._add("def", node.name)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self._add("import", *((a.asname or a.name).split(".")[0] for a in node.names))

    visit_ImportFrom = visit_Import

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self._add("assign", node.id)

    def _skip(self, node: ast.AST) -> None:
        pass  # their own scope

    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _skip


def top_level_names(source: str, kinds: tuple[str, ...] = ("import", "def", "assign")) -> set[str]:
    """Names a cell binds at module level, by ``kinds`` of statement.

    The kinds: import, def (and class), assign (assignments, for/with targets).

    Example: ``top_level_names("import numpy as np\\ndef f(): pass")  # {'np', 'f'}``
    """
    tree = _parse(source)
    if tree is None:
        return set()
    visitor = _TopLevel(kinds)
    visitor.visit(tree)
    return visitor.names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def scan_solution(source: str, protected: set[str], allowed: set[str] = frozenset()) -> list[str]:
    """Findings (short strings) for one solution cell; ``[]`` when nothing looks like tampering.

    ``protected`` are the names of modules, functions and classes the course notebook binds
    outside solution cells; rebinding one at top level (not an import of the same name) is
    flagged unless it is in ``allowed`` (the names
    the instructor's own solution cell binds). A cell that does not parse gives no findings.

    Example: ``scan_solution(student_source, protected={"np", "reference"}, allowed={"my_fn"})``
    """
    tree = _parse(source)
    if tree is None:
        return []
    imported: set[str] = set()
    local: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local.add(node.id)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
    local -= imported

    found: list[str] = []

    def flag(text: str) -> None:
        if text not in found:
            found.append(text)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _RISKY_MODULES or a.name.startswith("unittest.mock"):
                    flag(f"imports {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] in _RISKY_MODULES or mod.startswith("unittest.mock"):
                flag(f"imports from {mod}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _RISKY_CALLS:
                flag(f"calls {node.func.id}()")
        elif isinstance(node, ast.Attribute) and node.attr in _RISKY_ATTRS:
            flag(f"uses .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in ("__builtins__", "builtins"):
            flag(f"uses {node.id}")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            flag(f"declares global {', '.join(node.names)}")
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in _ALWAYS_TRUE_DUNDERS:
                    flag(f"class {node.name} defines {item.name}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(
                        sub.ctx, (ast.Store, ast.Del)
                    ):
                        root = _root(sub)
                        if root is not None and root not in local:
                            what = ast.unparse(sub)
                            flag(f"assigns to {what if len(what) < 60 else root + '...'}")
    for name in sorted(top_level_names(source, ("def", "assign")) - set(allowed)):
        if name in protected:
            flag(f"redefines {name}, which the notebook defines")
        elif name in _BUILTINS:
            flag(f"redefines builtin {name}")
    return found
