"""Undo what a solution cell rebinds before tests run: builtins, notebook names, module functions.

A solution cell runs in the same kernel as the tests after it, so ``np.allclose = lambda *a: True``
in it would pass a test. Grading therefore wraps each solution cell in two cells of its own: one
before it snapshots the builtins, the notebook's own names (those the course notebook binds
outside solution cells) and the functions of the modules those names hold; one after it puts back
whatever changed and, if anything did, fails with ``labkit-guard: restored ...`` so the grader can
flag it. Deeper patches (a submodule's function, a class attribute, C state) are not undone; the
static scan flags the usual spellings of those (docs/grading.md, "Residual risk").

Example:
    >>> before, after = guard_cells({"np", "reference"})
    >>> "labkit-guard" in after.source
    True
"""

from __future__ import annotations

import nbformat
from nbformat import NotebookNode

__all__ = ["guard_cells", "MARK"]

MARK = "labkit-guard"

_BEFORE = """\
# labkit grade: snapshot before a solution cell (not part of the course notebook)
import builtins as _labkit_b, types as _labkit_t
_labkit_snap = (dict(vars(_labkit_b)), {{k: v for k, v in globals().items() if k in {names!r}}})
_labkit_snap += ({{k: {{a: f for a, f in vars(m).items() if callable(f)}}
                  for k, m in _labkit_snap[1].items() if isinstance(m, _labkit_t.ModuleType)}},)
del _labkit_b, _labkit_t
"""

_AFTER = """\
# labkit grade: restore what the solution cell rebound (not part of the course notebook)
def _labkit_restore(snap, ns):
    import builtins, types
    old_builtins, old_names, old_modules = snap
    changed, missing = [], object()
    for k, v in old_builtins.items():
        if k in ("input", "raw_input", "_", "__", "___"):
            continue  # ipykernel rebinds input() for every cell; _ is the last result
        if vars(builtins).get(k, missing) is not v:
            setattr(builtins, k, v)
            changed.append("builtins." + k)
    for k, v in old_names.items():
        if ns.get(k, missing) is not v:
            ns[k] = v
            if callable(v) or isinstance(v, types.ModuleType):
                changed.append(k)
    for k, funcs in old_modules.items():
        for a, f in funcs.items():
            if vars(old_names[k]).get(a, missing) is not f:
                setattr(old_names[k], a, f)
                changed.append(k + "." + a)
    return changed
_labkit_changed = _labkit_restore(_labkit_snap, globals())
del _labkit_restore, _labkit_snap
if _labkit_changed:
    raise RuntimeError("{mark}: restored " + ", ".join(sorted(_labkit_changed)))
"""


def guard_cells(protected: set[str]) -> tuple[NotebookNode, NotebookNode]:
    """The (snapshot, restore) code cells to put around one solution cell.

    ``protected``: names the course notebook binds outside solution cells.

    Example: ``before, after = guard_cells(source.protected)``
    """
    names = frozenset(n for n in protected if not n.startswith("_labkit"))
    before = nbformat.v4.new_code_cell(_BEFORE.format(names=sorted(names)))
    after = nbformat.v4.new_code_cell(_AFTER.format(mark=MARK))
    for cell in (before, after):
        cell.metadata["labkit"] = {"guard": True}
    return before, after
