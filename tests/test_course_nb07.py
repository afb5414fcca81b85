"""labkit.course.nb07_condense: notebook 07's sweep points, one sweep record, the prepare steps, and
the notebook asking for exactly what ``labkit prepare`` computes."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit import condense
from labkit.course import nb07_condense as experiments

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_dataset_distillation.ipynb"


def test_course_points_cover_every_method_once():
    points = experiments.course_points()
    main = points["main"]
    assert all(set(p) == {"method", "ipc", "augment", "eval_augment", "seeds"} for p in main)
    assert {p["method"] for p in main} == {*condense.METHODS, "full"}
    assert [p["ipc"] for p in main if p["method"] == "means"] == [1]
    assert len({tuple(sorted(p.items())) for p in main + points["augment"]}) == len(
        main + points["augment"]
    )  # no point is computed twice
    assert experiments.course_points([10, 1], 2)["main"][0] == {
        "method": "random", "ipc": 1, "augment": 0, "eval_augment": 0, "seeds": 2,
    }  # fmt: skip


def test_notebook_parameters_match_the_prepared_sweep():
    """labkit prepare computes experiments.COURSE; notebook 07 must ask for exactly those points."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)
    assert experiments.course_points(params["IPCS"], params["SEEDS"]) == experiments.course_points()


def test_course_run_record_is_consistent():
    record = experiments.course_run("means", 1, seeds=2, num_steps=10)
    assert record["images"] == 10 and record["bytes"] == 10 * 64 * 4 + 10
    assert record["samples"] == 10 * 10 and len(record["accs"]) == 2
    assert len(record["pixels"]) == 640 and record["labels"] == list(range(10))


def test_steps_run_this_modules_prepare_once_per_part():
    plan = experiments.steps()
    assert [s.name for s in plan] == [f"condense:{part}" for part in experiments.PARTS]
    for step, part in zip(plan, experiments.PARTS):
        module, function = step.target.split(":")
        assert module == experiments.__name__ and function == "prepare"
        assert step.kwargs == {"parts": [part]} and step.needs == ("data:digits",)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: experiments.course_run("full", 1), "ipc"),
        (lambda: experiments.course_points([0]), "ipcs"),
        (lambda: experiments.prepare(["nosuch"]), "parts"),
    ],
)
def test_bad_input_raises_one_line_value_error_naming_the_parameter(call, name):
    with pytest.raises(ValueError, match=name) as err:
        call()
    assert "\n" not in str(err.value)


def test_notebook_07_learns_dm_with_the_course_recipe():
    """The notebook's DM run and the iteration count its text gives come from experiments.COURSE."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    calls = [
        line
        for c in nb.cells
        if c.cell_type == "code" and not c.metadata.get("nbgrader", {}).get("grade")
        for line in c.source.splitlines()
        if "condense.distribution_matching(" in line
    ]  # graded cells call it as the exercise's reference, with the test's own settings
    assert calls
    for line in calls:  # either the untrained start (num_iters=0) or the course recipe
        assert "num_iters=0" in line or "**DM" in line, line
    typed = f"{experiments.COURSE['dm']['num_iters']} iterations"
    assert not any(typed in c.source for c in nb.cells if c.cell_type == "markdown")
