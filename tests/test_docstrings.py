"""Every docstring example in labkit runs and prints what it shows (``doctest``), on every kernel
set and Python the suite runs under: an example that goes stale fails here."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labkit"
MODULES = sorted(
    ".".join(("labkit", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__main__.py"
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
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
