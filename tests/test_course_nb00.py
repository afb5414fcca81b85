"""labkit.course.nb00_basics: notebook 00's MLP sweep (points, one record, the cache), the zoo's
sizes, the prepare step, and the notebook asking for exactly what ``labkit prepare`` computes."""

from __future__ import annotations

import io
from pathlib import Path

import nbformat
import pytest
import torch

from labkit import course
from labkit.course import nb00_basics as experiments

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "00_efficiency_basics.ipynb"


def test_course_points_are_every_width_depth_and_seed_once():
    points = experiments.course_points()
    c = experiments.COURSE
    assert len(points) == len(c["widths"]) * len(c["depths"]) * c["seeds"]
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert {p["width"] for p in points} == set(c["widths"])
    assert {p["depth"] for p in points} == set(c["depths"])
    assert {p["seed"] for p in points} == set(range(c["seeds"]))
    assert experiments.course_points("mnist1d", [4], [2], 1, 3) == [
        {"dataset": "mnist1d", "width": 4, "depth": 2, "seed": 0, "num_epochs": 3}
    ]


def test_notebook_parameters_match_the_prepared_sweep():
    """labkit prepare computes experiments.COURSE; notebook 00 must ask for exactly those points."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)
    asked = experiments.course_points(
        params["DATASET"], params["WIDTHS"], params["DEPTHS"], params["SEEDS"], params["EPOCHS"]
    )
    assert asked == experiments.course_points()


def test_mlp_run_sizes_match_a_torch_mlp_of_the_same_shape(one_thread):
    record = experiments.mlp_run("digits", width=12, depth=2, seed=0, num_epochs=1)
    sizes = (64, 12, 12, 10)
    reference = torch.nn.Sequential(
        torch.nn.Flatten(),
        *(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])),
    )
    assert record["params"] == sum(p.numel() for p in reference.parameters())
    assert record["macs"] == sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)  # the real file, give or take key names
    assert abs(record["bytes"] - len(buffer.getvalue())) < 0.05 * len(buffer.getvalue())
    assert 0.2 < record["acc"] <= 1.0  # one epoch already beats chance (0.1) by far


def test_course_results_train_once_then_read_the_cache(tmp_data, one_thread):
    first = experiments.course_results("digits", [8], [1, 2], 1, 1)
    assert [(r["width"], r["depth"]) for r in first] == [(8, 1), (8, 2)]
    files = sorted((tmp_data / "cache" / "sweeps").glob("00-mlp-width-depth-*.json"))
    assert len(files) == 2
    assert experiments.course_results("digits", [8], [1, 2], 1, 1) == first


def test_zoo_sizes_count_every_parameter_and_buffer():
    model, row = experiments.zoo_sizes([("lenet", "digits")])["lenet/digits"]
    assert row["params"] == sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert row["payload"] == 4 * row["params"] + buffers
    assert row["bytes"] > row["payload"]  # the file adds its keys and headers


def test_the_sweep_is_a_step_of_labkit_prepare():
    (step,) = experiments.steps()
    assert step.target == f"{experiments.__name__}:course_results" and step.kwargs == {}
    plan = {s.name: s for s in course.steps()}
    assert plan[step.name] == step and all(need in plan for need in step.needs)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: experiments.course_points("cifar"), "dataset"),
        (lambda: experiments.course_points(widths=[0]), "widths"),
        (lambda: experiments.course_points(depths=[]), "depths"),
        (lambda: experiments.course_points(seeds=0), "seeds"),
        (lambda: experiments.course_points(num_epochs=0), "num_epochs"),
    ],
)
def test_bad_input_raises_one_line_value_error_naming_the_parameter(call, name):
    with pytest.raises(ValueError, match=name) as err:
        call()
    assert "\n" not in str(err.value)
