"""labkit prepare's plan: every model and sweep, dependencies honoured with one or two workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from labkit import cli, course, models
from labkit.course import (
    nb02_distillation,
    nb03_pruning,
    nb04_quantization,
    nb05_lowbit,
    nb06_dynamic,
    nb07_condense,
)


def _stamp(log: str, name: str, sleep: float = 0.0) -> None:
    """A toy step: append (name, start, end) to ``log``; runs in a worker process too."""
    start = time.time()
    time.sleep(sleep)
    with open(log, "a") as f:
        f.write(json.dumps([name, start, time.time(), os.getpid()]) + "\n")


def _fail() -> None:
    raise ValueError("boom")


def test_the_plan_covers_every_model_and_sweep_in_a_valid_order():
    plan = course.steps()
    names = [s.name for s in plan]
    for name, dataset in models.RECIPES:
        assert f"model:{name}/{dataset}" in names
    for part in nb02_distillation.PARTS:
        assert f"distill:{part}" in names
    for part in nb07_condense.PARTS:
        assert f"condense:{part}" in names
    for part in nb06_dynamic.PARTS:
        assert f"dynamic:{part}" in names
    for part in nb03_pruning.PARTS:
        assert f"prune:{part}" in names
    for part in nb04_quantization.PARTS:
        assert f"quant8:{part}" in names
    for part in nb05_lowbit.PARTS:
        assert f"lowbit:{part}" in names
    for i, step in enumerate(plan):
        for need in step.needs:
            assert need in names[:i], f"{step.name} listed before {need}"
    # the distillation sweeps read the teacher and the GPT, so they wait for them
    by_name = {s.name: s for s in plan}
    assert "model:cnn1d/mnist1d" in by_name["distill:main"].needs
    assert "model:gpt/pydoc" in by_name["distill:gpt"].needs
    # notebook 04's sweeps read the zoo's digits models
    assert "model:dscnn/digits" in by_name["quant8:ptq"].needs
    assert {"model:lenet/digits", "model:mlp/digits"} <= set(by_name["quant8:int8"].needs)
    assert by_name["lowbit:lm"].needs == ("model:gpt/pydoc",)
    assert by_name["lowbit:classifier"].needs == ("model:mlp/mnist1d",)


def test_only_restricts_to_models_and_their_data():
    assert [s.name for s in course.steps(["lenet/digits"])] == ["data:digits", "model:lenet/digits"]
    with pytest.raises(ValueError, match="names must be registered entries"):
        course.steps(["nosuch/model"])


def test_the_longest_chain_starts_first():
    plan = course.steps()
    rank = course._critical_path(plan)
    # the GPT sits on the longest chain (pydoc -> gpt -> its distillation sweep)
    assert rank["data:pydoc"] == max(rank[s.name] for s in plan if not s.needs)
    assert rank["model:gpt/pydoc"] == 120.0 + 20.0


@pytest.mark.parametrize(
    "plan, match",
    [
        ([course.Step("a", "x:y"), course.Step("a", "x:y")], "unique names"),
        ([course.Step("a", "x:y", needs=("b",))], "needs 'b', which is not a step"),
        ([course.Step("a", "x:y", needs=("b",)), course.Step("b", "x:y", needs=("a",))], "cycle"),
    ],
)
def test_bad_plans_are_refused(plan, match):
    with pytest.raises(ValueError, match=match):
        course.prepare(plan, jobs=1)


@pytest.mark.parametrize("jobs", [1, 2])
def test_steps_wait_for_what_they_need(tmp_path, jobs):
    log = str(tmp_path / "log.jsonl")
    target = f"{__name__}:_stamp"
    plan = [
        course.Step("late", target, {"log": log, "name": "late"}, needs=("a", "b"), cost=1),
        course.Step("a", target, {"log": log, "name": "a", "sleep": 0.3}, cost=1),
        course.Step("b", target, {"log": log, "name": "b", "sleep": 0.1}, cost=1),
    ]
    seen = []
    records = course.prepare(plan, jobs=jobs, report=lambda r: seen.append(r["name"]))
    assert [r["name"] for r in records] == seen and seen[-1] == "late"
    assert all(r["seconds"] >= 0 for r in records)
    rows = {row[0]: row[1:] for row in map(json.loads, Path(log).read_text().splitlines())}
    assert rows["late"][0] >= max(rows["a"][1], rows["b"][1])
    in_this_process = [pid == os.getpid() for _, _, pid in rows.values()]
    assert all(in_this_process) if jobs == 1 else not any(in_this_process)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_step_names_itself(jobs):
    plan = [course.Step("broken", f"{__name__}:_fail")]
    with pytest.raises(RuntimeError, match="step broken failed: boom"):
        course.prepare(plan, jobs=jobs)


def test_default_jobs(monkeypatch):
    monkeypatch.delenv("LABKIT_JOBS", raising=False)
    for cores, jobs in ((1, 1), (2, 2), (16, 2)):  # the usable cores, at most 2
        monkeypatch.setattr(course, "usable_cores", lambda cores=cores: cores)
        assert course.default_jobs() == jobs
    monkeypatch.setenv("LABKIT_JOBS", "3")
    assert course.default_jobs() == 3
    monkeypatch.setenv("LABKIT_JOBS", "many")
    with pytest.raises(ValueError, match="LABKIT_JOBS"):
        course.default_jobs()
    with pytest.raises(ValueError, match="jobs"):
        course.prepare([], jobs=0)


def test_cli_prepare_trains_in_a_worker_then_finds_the_cache(tmp_data, capsys):
    assert cli.main(["prepare", "--only", "mlp/digits", "-j", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "with 2 worker process(es)" in out and "model:mlp/digits: trained in" in out
    assert models.is_cached("mlp", "digits")
    assert cli.main(["prepare", "--only", "mlp/digits", "-j", "1", "-q"]) == 0
    assert "model:mlp/digits: cached" in capsys.readouterr().out
