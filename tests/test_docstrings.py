"""Every docstring example in labkit runs and prints what it shows (``doctest``), on every kernel
set and Python the suite runs under: an example that goes stale fails here."""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labkit"
# Scripts run as programs, never imported: ``python -m labkit`` and the notebook runner a grading
# subprocess starts (importing it edits ``sys.path``, which would break this test process).
SCRIPTS = {"labkit.__main__", "labkit.grading._nbval_runner"}


def _module_name(path: Path) -> str:
    """``labkit/quant/fake.py`` -> ``labkit.quant.fake``; a package's ``__init__`` -> its name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("labkit", *parts)).removesuffix(".__init__")


MODULES = sorted({_module_name(path) for path in PACKAGE.rglob("*.py")} - SCRIPTS)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name: str) -> list[doctest.DocTest]:
    path = list(sys.path)
    module = importlib.import_module(name)
    assert sys.path == path, f"importing {name} changed sys.path"
    return [t for t in doctest.DocTestFinder().find(module, name) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in _examples(name):
        runner.run(test, out=lambda text: None)
    failed = runner.summarize(verbose=False).failed
    assert failed == 0, (
        f"{failed} docstring example(s) in {name} fail: run pytest --doctest-modules"
    )


def test_the_package_has_examples_to_run():
    """The finder sees the package's examples (a broken finder would make every test above pass)."""
    total = sum(len(t.examples) for name in MODULES for t in _examples(name))
    assert total >= 100, total


def test_a_wrong_example_fails():
    """The runner above catches a wrong example: the check can fail."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(">>> 1 + 1\n3\n", {}, "wrong", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=lambda text: None)
    assert runner.summarize(verbose=False).failed == 1


def _summary_problems(module) -> list[str]:
    """Public names of ``module`` (its ``__all__``, defined there) whose docstring does not open
    with a one-line summary followed by a blank line (or end there)."""
    import inspect

    found = []
    for name in getattr(module, "__all__", []):
        obj = (
            inspect.unwrap(getattr(module, name, None))
            if callable(getattr(module, name, None))
            else None
        )
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if obj.__module__ != module.__name__:
            continue
        members = [(name, obj)]
        if inspect.isclass(obj):
            members += [
                (f"{name}.{k}", v)
                for k, v in vars(obj).items()
                if inspect.isfunction(v) and not k.startswith("_")
            ]
        for label, member in members:
            doc = inspect.getdoc(member) or ""
            first = doc.split("\n\n")[0]
            if not doc or "\n" in first:
                found.append(f"{module.__name__}.{label}")
    return found


@pytest.mark.parametrize("name", MODULES)
def test_public_docstrings_open_with_a_one_line_summary(name):
    problems = _summary_problems(importlib.import_module(name))
    assert not problems, "docstrings without a one-line summary first: " + ", ".join(problems)


def test_the_summary_check_catches_a_run_on_first_paragraph():
    import types

    module = types.ModuleType("fake")

    def run_on():
        """First line
        runs on into a second."""

    run_on.__module__ = "fake"
    module.run_on, module.__all__ = run_on, ["run_on"]
    assert _summary_problems(module) == ["fake.run_on"]
