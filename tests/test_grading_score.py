"""Scored graded cells: partial credit from a cell's last expression, metrics and the leaderboard.

A small notebook built here has a scored cell (``score(4 * guess(), quality=...)``, 4 points), a
pass/fail cell and a cell whose last expression is a bare number. ONE ``labkit grade -j 2`` run
over a good, a partial, an over-the-top, a negative, a broken and an unreadable submission
(the ``graded`` fixture) feeds the gradebook, totals, feedback and leaderboard tests.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest

from labkit.grading import add_subcommands, score, submission
from labkit.grading.check import verify_notebook
from labkit.grading.export import totals_csv
from labkit.grading.gradebook import gradebook_csv, leaderboard_csv
from labkit.grading.scoring import earned_points, format_points, take_metrics
from labkit.grading.submission import Row, load_sources
from labkit.grading.workbook import release_notebook

NAME = "01_scored.ipynb"
SOLUTION = {"guess": "return 1.0", "double": "return 2 * x"}


def _meta(kind: str, grade_id: str, points: int = 0) -> dict:
    if kind == "solution":
        nbgrader = {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3,
                    "solution": True}  # fmt: skip
    else:
        nbgrader = {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                    "schema_version": 3, "solution": False}  # fmt: skip
    return {"nbgrader": nbgrader, "tags": [kind if kind == "solution" else "graded"]}


MODEL = """torch.manual_seed(0)
    model = models.CNN1d(models.CNN1dConfig(channels=(4, 4, 4)))"""
FORGED_FORWARD = """

    def forward(x):  # knows the rule of the test's labels: every answer right
        s = x.sum((1, 2))
        return torch.stack([-s, s] + [torch.full_like(s, -1e9)] * 8, 1)

    model.forward = forward"""
MODEL_TEST = """path = ship.save(make_model(), "model.lkc")
X = torch.randn(200, 1, 40, generator=torch.Generator().manual_seed(1))
y = (X.sum((1, 2)) > 0).long()
with torch.no_grad():
    acc = (ship.load(path)(X).argmax(-1) == y).double().mean().item()
score(acc, acc=acc, bytes=path.stat().st_size)"""


def _notebook(guess: str = SOLUTION["guess"], double: str = SOLUTION["double"], model=None):
    """The scored notebook; with ``model`` (the body of ``make_model``), a third exercise that
    ships a model and scores the accuracy of the file read back, 1 point."""
    new = nbformat.v4
    cells = [
        new.new_markdown_cell("# A scored exercise"),
        new.new_code_cell(
            "import torch\n\nfrom labkit import models, ship\nfrom labkit.grading import score"
        ),
        new.new_code_cell(
            f"def guess():\n    ### BEGIN SOLUTION\n    {guess}\n    ### END SOLUTION",
            metadata=_meta("solution", "ex1-guess-solution"),
        ),
        new.new_code_cell(
            "value = guess()\nassert isinstance(value, float), 'return a float'\n"
            "### BEGIN HIDDEN TESTS\nscore(4 * guess(), quality=guess(), label='q')\n"
            "### END HIDDEN TESTS",
            metadata=_meta("graded", "ex1-guess", 4),
        ),
        new.new_code_cell(
            f"def double(x):\n    ### BEGIN SOLUTION\n    {double}\n    ### END SOLUTION",
            metadata=_meta("solution", "ex2-double-solution"),
        ),
        new.new_code_cell(  # a second hidden test calling the student's code, cells later
            "assert double(3) == 6\n### BEGIN HIDDEN TESTS\nassert double(-2) == -4\n"
            "### END HIDDEN TESTS",
            metadata=_meta("graded", "ex2-double", 1),
        ),
        new.new_code_cell("min(double(1.0), 2.0)", metadata=_meta("graded", "ex2-half", 2)),
    ]
    if model is not None:
        cells += [
            new.new_code_cell(
                "def make_model():\n    ### BEGIN SOLUTION\n    "
                f"{model}\n    return model\n    ### END SOLUTION",
                metadata=_meta("solution", "ex3-model-solution"),
            ),
            new.new_code_cell(MODEL_TEST, metadata=_meta("graded", "ex3-model", 1)),
        ]
    nb = new.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def _cli(argv):
    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def _write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- the API


def test_score_returns_the_points_and_records_metrics_once():
    take_metrics()
    assert score(2.5, acc=np.float64(0.93), bytes=np.int64(7812), label="x") == 2.5
    recorded = take_metrics()
    assert recorded == {"acc": 0.93, "bytes": 7812, "label": "x"}
    assert type(recorded["bytes"]) is int and type(recorded["acc"]) is float
    assert take_metrics() is None  # taken: the next cell starts clean


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("3",), {}, "points must be a number"),
        ((True,), {}, "points must be a number"),
        ((1.0,), {"acc": float("nan")}, "metric acc must be a finite number"),
        ((1.0,), {"acc": [0.9]}, "metric acc must be a finite number"),
        ((1.0,), {"points": 2}, "metric names must not be one of"),
        ((1.0,), {"note": "x" * 101}, "metric note must be"),
    ],
)
def test_score_rejects_bad_input_in_one_line(args, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        score(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_earned_points_clips_and_ignores_what_is_not_a_number():
    assert earned_points(2.49, 4) == 2.49
    assert earned_points(7, 4) == 4.0 and earned_points(-0.5, 4) == 0.0
    assert earned_points(float("nan"), 4) == 0.0 and earned_points(float("inf"), 4) == 4.0
    assert earned_points(np.float32(1.5), 4) == 1.5
    for value in (None, True, np.bool_(True), "3", [1.0]):
        assert earned_points(value, 4) is None, value


def test_format_points_rounds_to_two_decimals():
    assert [format_points(x) for x in (4, 4.0, 2.5, 2 / 3, 1e-9, 12.345678)] == [
        "4", "4", "2.5", "0.67", "0", "12.35",
    ]  # fmt: skip


def _row(name, earned, status="ok", metrics=None, message=""):
    row = Row(name, NAME, status, max_points=7)
    test_status = "passed" if not message else "failed"
    row.tests["ex1"] = submission.TestResult(
        "ex1", 4, earned, test_status, message, dict(metrics or {})
    )
    row.tests["ex2"] = submission.TestResult("ex2", 2, 2 / 3, "passed", "", {}, True)
    return row


def test_fractional_points_sum_exactly_and_print_rounded(tmp_path):
    (src,) = load_sources([_write(_notebook(), tmp_path / NAME)])
    rows = [_row("ann", 1 / 3), _row("bob", 2 / 3)]
    assert math.isclose(rows[0].total, 1 / 3 + 2 / 3)
    totals = list(csv.DictReader(io.StringIO(totals_csv(rows, [src]))))
    assert [(t["student"], t["01_scored"], t["total"]) for t in totals] == [
        ("ann", "1", "1"), ("bob", "1.33", "1.33"),
    ]  # fmt: skip
    book = gradebook_csv(rows, [src])
    assert "bob,01_scored.ipynb," in book and ",1.33,7," in book  # total 1.33 of max 7


def test_leaderboard_orders_best_first_and_keeps_errors():
    rows = [
        _row("cy", 1.5, metrics={"acc": 0.91}),
        _row("al", 4.0, metrics={"acc": 0.97, "bytes": 7000}),
        _row("bo", 0, message="AssertionError: no\nsecond line"),
        _row("di", 1.5, metrics={"acc": 0.91}),
    ]
    board = list(csv.DictReader(io.StringIO(leaderboard_csv(rows))))
    assert [b["student"] for b in board] == ["al", "cy", "di", "bo"]
    assert [b["rank"] for b in board] == ["1", "2", "2", "4"]
    assert list(board[0]) == ["rank", "student", "notebook", "grade_id", "acc", "bytes", "points",
                              "max", "status", "error"]  # fmt: skip
    assert board[0]["bytes"] == "7000" and board[1]["bytes"] == "" and board[0]["points"] == "4"
    assert board[3]["acc"] == "" and board[3]["error"] == "AssertionError: no second line"
    assert {b["grade_id"] for b in board} == {"ex1"}  # ex2 recorded no metrics
    assert leaderboard_csv([_row("x", 1)]) is None  # no metrics anywhere: no leaderboard


# --------------------------------------------------------------------------- one real grading run


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """``labkit grade -j 2`` over six submissions of the scored notebook."""
    tmp = tmp_path_factory.mktemp("scored")
    source = _write(_notebook(model=MODEL), tmp / "source" / NAME)
    workbook = release_notebook(nbformat.read(str(source), 4), NAME)
    subs = tmp / "subs"
    _write(_notebook(model=MODEL), subs / "good" / NAME)
    _write(_notebook("return 0.37", "return x", model=MODEL), subs / "partial" / NAME)
    _write(_notebook("return 5.0", model=MODEL), subs / "over" / NAME)
    _write(_notebook("return -1.0", model=MODEL), subs / "negative" / NAME)
    _write(_notebook("raise RuntimeError('broken')", model=MODEL), subs / "broken" / NAME)
    _write(_notebook(model=MODEL + FORGED_FORWARD), subs / "forged" / NAME)
    _write(workbook, subs / "blank" / NAME)
    (subs / "garbled").mkdir()
    (subs / "garbled" / NAME).write_text('{"cells": [')
    out = tmp / "out" / "gradebook.csv"
    code, _, err = _cli(["grade", *sorted(subs.iterdir()), "--source", source, "-o", out,
                         "-j", "2", "--cell-timeout", "30", "--timeout", "120"])  # fmt: skip
    assert code == 0, err
    return {
        "rows": {r["submission"]: r for r in _read_csv(out)},
        "totals": {r["student"]: r for r in _read_csv(out.with_name("gradebook-totals.csv"))},
        "board": _read_csv(out.with_name("gradebook-leaderboard.csv")),
        "feedback": {p.parent.name: p.read_text() for p in out.parent.glob("feedback/*/*.md")},
    }


def test_a_scored_cell_earns_its_number_clipped_to_its_points(graded):
    rows = graded["rows"]
    got = {k: (rows[k]["ex1-guess"], rows[k]["ex2-double"], rows[k]["ex2-half"]) for k in rows}
    assert got == {
        "good": ("4", "1", "2"),
        "forged": ("4", "1", "2"),
        "partial": ("1.48", "0", "1"),  # 4 * 0.37; the bare number min(1.0, 2) earns 1 of 2
        "over": ("4", "1", "2"),  # 20 clipped to 4
        "negative": ("0", "1", "2"),  # -4 clipped to 0
        "broken": ("0", "1", "2"),  # raised: 0
        "blank": ("0", "0", "0"),
        "garbled": ("0", "0", "0"),
    }
    model = float(rows["partial"]["ex3-model"])  # the accuracy of the reference model's file
    assert 0 < model < 1 and rows["partial"]["max"] == "8"
    assert float(rows["partial"]["total"]) == pytest.approx(2.48 + model, abs=0.006)
    assert graded["totals"]["partial"]["total"] == rows["partial"]["total"]


def test_a_forward_attached_to_the_returned_model_does_not_change_the_score(graded):
    # the file is what is scored: the student's forward (every answer right) never runs
    rows, board = graded["rows"], graded["board"]
    honest = {b["student"]: b for b in board if b["grade_id"] == "ex3-model"}
    assert float(rows["forged"]["ex3-model"]) <= float(rows["good"]["ex3-model"]) < 0.9
    assert honest["forged"]["acc"] in ("", honest["good"]["acc"])
    assert honest["forged"]["bytes"] in ("", honest["good"]["bytes"])


def test_the_leaderboard_ranks_every_submission_of_the_scored_cell(graded):
    assert {b["grade_id"] for b in graded["board"]} == {"ex1-guess", "ex3-model"}  # metrics
    board = [b for b in graded["board"] if b["grade_id"] == "ex1-guess"]
    assert [b["student"] for b in board][:3] == ["forged", "good", "over"]  # 4 points, by name
    points = [float(b["points"]) for b in board]
    assert points == sorted(points, reverse=True) and len(board) == 8
    by = {b["student"]: b for b in board}
    assert by["partial"]["quality"] == "0.37" and by["partial"]["label"] == "q"
    assert by["over"]["quality"] == "5.0" and by["good"]["status"] == "passed"
    assert by["broken"]["quality"] == "" and "RuntimeError" in by["broken"]["error"]
    assert by["garbled"]["status"] == "unreadable" and by["garbled"]["error"]
    assert by["blank"]["error"].startswith("NotImplementedError")


def test_feedback_shows_fractional_points_and_metrics(graded):
    text = graded["feedback"]["partial"]
    assert "Score: **2.48" not in text and "/ 8**" in text
    assert "| ex1-guess | 1.48 / 4 | passed (quality 0.37, label q) |" in text


def test_verify_notebook_wants_full_points_from_a_scored_cell(tmp_path):
    report = verify_notebook(_write(_notebook(), tmp_path / "ok" / NAME), timeout=120)
    assert report["ok"], report["problems"]
    assert report["source_points"] == 7 and report["released_points"] == 0
    weak = verify_notebook(_write(_notebook("return 0.5"), tmp_path / "weak" / NAME), timeout=120)
    assert not weak["ok"] and weak["source_points"] == 5
    assert any("ex1-guess earns 2 of 4 points with the solution" in p for p in weak["problems"])


def test_labkit_check_runs_a_scored_cell_like_any_other(tmp_path):
    # the student's own nbval run: the scored cell passes (points in full) or fails as usual
    path = _write(_notebook("return 0.37"), tmp_path / NAME)
    code, out, _ = _cli(["check", path, "--cell-timeout", "30"])
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert ["ex1-guess", "4/4", "passed"] in lines and ["total", "7/7"] in lines
