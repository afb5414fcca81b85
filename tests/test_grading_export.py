"""labkit.grading.export: per-student totals for an LMS and the late-submission policy.

No notebook runs here: ``grade_notebook`` is replaced by a stub that gives every test its points,
so the rows' totals are known and only the policy and the export are under test.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest

from labkit.grading import gradebook
from labkit.grading.commands import add_subcommands
from labkit.grading.export import LatePolicy, read_deadlines, read_submitted
from labkit.grading.submission import Row, load_sources
from labkit.grading.submission import TestResult as Result

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "01_basics.ipynb"
DEADLINE = datetime(2026, 12, 10, 23, 59, tzinfo=UTC)


def _full(source, path, *, submission=None, **_):
    row = Row(submission, source.name, "ok", max_points=source.info.max_points)
    for gid, (_, points) in source.info.graded.items():
        row.tests[gid] = Result(gid, points, points, "passed")
    return row


@pytest.fixture()
def graded(tmp_path, monkeypatch):
    """Three students submitting on time, 1.5 days late (file time) and 30 days late (manifest)."""
    monkeypatch.setattr(gradebook, "grade_notebook", _full)
    nb = nbformat.read(str(FIXTURE), as_version=4)
    for name, days in (("ann", -1), ("bob", 1.5), ("cy", 0)):
        path = tmp_path / "subs" / name / FIXTURE.name
        path.parent.mkdir(parents=True)
        nbformat.write(nb, str(path))
        t = (DEADLINE + timedelta(days=days)).timestamp()
        os.utime(path, (t, t))
    (tmp_path / "deadlines.json").write_text('{"01_basics.ipynb": "2026-12-10T23:59:00Z"}')
    (tmp_path / "submitted.csv").write_text(
        "submission,notebook,submitted_at\ncy,01_basics.ipynb,2027-01-09T12:00:00+00:00\n"
    )
    policy = LatePolicy(
        read_deadlines(tmp_path / "deadlines.json"), 10, read_submitted(tmp_path / "submitted.csv")
    )
    out = tmp_path / "out" / "gradebook.csv"
    rows = gradebook.grade(
        sorted((tmp_path / "subs").iterdir()), [FIXTURE], out, verbose=False, sandbox=False,
        late=policy,
    )  # fmt: skip
    return {r.submission: r for r in rows}, out


def test_late_days_are_started_days_and_the_penalty_is_capped(graded):
    rows, out = graded
    assert (rows["ann"].late_days, rows["ann"].score) == (0, 6)
    assert (rows["bob"].late_days, rows["bob"].penalty, rows["bob"].score) == (2, 20, 4.8)
    assert rows["cy"].late_days == 30 and rows["cy"].score == 0 and rows["cy"].total == 6
    assert "the file's modification time" in rows["bob"].notes[-1]
    assert "the submissions manifest" in rows["cy"].notes[-1]
    table = {r["submission"]: r for r in csv.DictReader(out.open())}
    assert table["bob"]["late_days"] == "2" and table["bob"]["score"] == "4.8"


def test_totals_csv_has_one_row_per_student_and_scores_after_penalty(graded):
    _, out = graded
    with open(out.with_name("gradebook-totals.csv"), newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["student", "01_basics", "total", "max"]
    assert table[1:] == [["ann", "6", "6", "6"], ["bob", "4.8", "4.8", "6"], ["cy", "0", "0", "6"]]


@pytest.mark.parametrize(
    "text, match",
    [('["x"]', "must be a JSON object"), ('{"a.ipynb": "next friday"}', "ISO 8601")],
)
def test_bad_deadlines_are_one_line_errors(tmp_path, text, match):
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_deadlines(tmp_path / "d.json")
    with pytest.raises(ValueError, match=r"per day must be in \[0, 100\]"):
        LatePolicy({}, 150)


def test_cli_takes_the_late_policy(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setattr(gradebook, "grade_notebook", _full)
    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    (tmp_path / "d.json").write_text('{"01_basics.ipynb": "2000-01-01T00:00:00Z"}')
    sub = tmp_path / "s" / "dee" / FIXTURE.name
    sub.parent.mkdir(parents=True)
    sub.write_bytes(FIXTURE.read_bytes())
    args = parser.parse_args(
        ["grade", str(sub.parent), "--source", str(FIXTURE), "-o", str(tmp_path / "g.csv"),
         "--deadlines", str(tmp_path / "d.json"), "--late-penalty", "5", "--no-sandbox", "-q"]
    )  # fmt: skip
    assert args.func(args) == 0
    row = next(csv.DictReader((tmp_path / "g.csv").open()))
    assert row["score"] == "0" and int(row["late_days"]) > 20 * 5
    assert load_sources([FIXTURE])[0].info.max_points == 6
