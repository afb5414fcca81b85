"""The exams (notebooks 98 and 99): papers drawn from a seed, gradable for any seed, timed.

``verify_notebook`` (tests/test_course_notebooks_grading.py) grades each exam as committed: full
points with the solutions, 0 for the released paper. Here: the papers ``nb99_exam.paper`` draws,
that another ``EXAM_SEED`` changes the questions and the source still earns every point (and an
answer off by a little earns none), and that the time limit the final exam's instructor note
describes works with ``labkit grade``'s late policy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import shlex
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import pytest

from labkit.course import nb99_exam

ROOT = Path(__file__).resolve().parent.parent
FINAL = ROOT / "notebooks" / "99_final_exam.ipynb"
PRACTICE = ROOT / "notebooks" / "98_practice_exam.ipynb"
EXAMS = [FINAL, PRACTICE]


def _cells(path: Path) -> list[nbformat.NotebookNode]:
    return nbformat.read(path, as_version=4).cells


def _seed(path: Path) -> int:
    (params,) = [c for c in _cells(path) if "parameters" in c.metadata.get("tags", [])]
    match = re.fullmatch(r"EXAM_SEED = (\d+)  # .*", params.source.strip())
    assert match, f"{path.name}: the parameters cell holds EXAM_SEED and nothing else"
    return int(match.group(1))


def test_paper_is_plain_data_the_same_for_a_seed_and_new_for_another():
    paper = nb99_exam.paper(5)
    assert paper == nb99_exam.paper(5)
    assert json.loads(json.dumps(paper)) == json.loads(json.dumps(paper))  # plain data
    others = [nb99_exam.paper(s) for s in range(6, 12)]
    for kind in paper:  # every kind of question changes with the seed
        assert any(o[kind] != paper[kind] for o in others), kind
    # a kind's numbers come from its own stream: independent of the other kinds
    assert nb99_exam.paper(5)["kv"] == paper["kv"]
    for p in [paper, *others]:
        assert p["kv"]["dtype"] in nb99_exam.DTYPE_BYTES
        assert 0 < p["layer"]["sparsity"] < 1 and 2 <= p["layer"]["bits"] <= 8
        assert sum(p["exits"]["counts"]) == 1000 and min(p["exits"]["counts"]) > 0
        assert p["exits"]["macs"] == sorted(p["exits"]["macs"])
        assert p["affine"]["x_min"] < 0 < p["affine"]["x_max"]
        assert p["block"]["d_model"] % p["block"]["n_head"] == 0


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_paper_rejects_a_bad_seed(seed):
    with pytest.raises(ValueError, match="^seed must"):
        nb99_exam.paper(seed)


def test_ask_rejects_an_empty_question():
    with pytest.raises(ValueError, match="^text must"):
        nb99_exam.ask("  ")


def test_the_exams_have_their_own_papers():
    assert _seed(FINAL) != _seed(PRACTICE)
    assert nb99_exam.paper(_seed(FINAL)) != nb99_exam.paper(_seed(PRACTICE))


def _run(path: Path, seed: int, perturb: bool = False) -> dict[str, list[str]]:
    """Run ``path`` in this process with ``EXAM_SEED = seed``, solutions and hidden tests as in
    the source. Returns {"failed": graded cells that failed, "survived": numeric answers that,
    changed a little, still passed their graded cell (with ``perturb``)}."""
    ns: dict = {}
    failed, survived = [], []
    numbers: dict[str, float] = {}
    for cell in _cells(path):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        source = cell.source
        if "parameters" in cell.metadata.get("tags", []):
            source = f"EXAM_SEED = {seed}"
        if meta.get("grade"):
            for name, value in numbers.items():  # each answer off by a little must fail
                if not re.search(rf"\b{name}\b", source):
                    continue  # a helper name of the solution, not an answer
                off = value + 1 if type(value) is int else value * 1.001
                wrong = dict(ns, **{name: off})
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        exec(compile(source, meta["grade_id"], "exec"), wrong)  # noqa: S102
                except AssertionError:
                    continue
                survived.append(f"{meta['grade_id']}:{name}")
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(source, meta["grade_id"], "exec"), ns)  # noqa: S102
            except Exception as err:  # noqa: BLE001 - reported below
                failed.append(f"{meta['grade_id']}: {type(err).__name__}: {err}")
            numbers = {}
            continue
        before = set(ns)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, "cell", "exec"), ns)  # noqa: S102
        if meta.get("solution") and perturb:
            numbers = {
                k: ns[k]
                for k in set(ns) - before
                if type(ns[k]) in (int, float) and re.fullmatch(r"a\d+_[a-z_]+", k)
            }
    return {"failed": failed, "survived": survived}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMS, ids=lambda p: p.stem)
def test_another_seed_makes_another_paper_that_the_source_still_passes(path):
    seed = _seed(path) + 17
    assert nb99_exam.paper(seed) != nb99_exam.paper(_seed(path))  # other questions
    result = _run(path, seed, perturb=True)
    assert result["failed"] == [], result["failed"]
    assert result["survived"] == [], f"answers graded without checking their value: {result}"


@pytest.mark.slow
def test_the_time_limit_is_a_deadline_with_a_full_late_penalty(tmp_path, monkeypatch):
    """The instructor note's own `labkit grade` command: on time earns the points, two minutes
    late earns 0."""
    from labkit.grading import gradebook
    from labkit.grading.commands import add_subcommands
    from labkit.grading.submission import Row
    from labkit.grading.submission import TestResult as Result

    def full_points(source, path, *, submission=None, **_):
        row = Row(submission, source.name, "ok", max_points=source.info.max_points)
        for gid, (_, points) in source.info.graded.items():
            row.tests[gid] = Result(gid, points, points, "passed")
        return row

    monkeypatch.setattr(gradebook, "grade_notebook", full_points)
    note = _cells(FINAL)[0].source
    assert "**Time limit: 90 minutes.**" in note
    (command,) = re.findall(r"`(labkit grade [^`]+)`", note)
    (deadlines,) = re.findall(r"`(\{\"99_final_exam\.ipynb\": [^`]+\})`", note)
    deadline = datetime.fromisoformat(json.loads(deadlines)["99_final_exam.ipynb"])

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / FINAL.name).write_bytes(FINAL.read_bytes())
    (tmp_path / "deadlines.json").write_text(deadlines)
    times = {"ontime": deadline - timedelta(minutes=1), "late": deadline + timedelta(minutes=2)}
    lines = ["submission,notebook,submitted_at"]
    for student, when in times.items():
        folder = tmp_path / "submissions" / student
        folder.mkdir(parents=True)
        (folder / FINAL.name).write_bytes(FINAL.read_bytes())
        lines.append(f"{student},{FINAL.name},{when.isoformat()}")
    (tmp_path / "submitted.csv").write_text("\n".join(lines) + "\n")

    argv = shlex.split(command)[1:]
    assert argv[:2] == ["grade", "submissions/*"]
    argv[1:2] = sorted(str(p) for p in (tmp_path / "submissions").iterdir())
    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*argv, "--no-sandbox", "-q"])
    assert args.func(args) == 0
    rows = {r["submission"]: r for r in csv.DictReader(open("grades/gradebook.csv"))}
    assert float(rows["ontime"]["score"]) == float(rows["ontime"]["max"]) > 0
    assert rows["ontime"]["late_days"] == "0"
    assert float(rows["late"]["total"]) == float(rows["late"]["max"])  # every answer right ...
    assert rows["late"]["late_days"] == "1" and float(rows["late"]["score"]) == 0  # ... too late
