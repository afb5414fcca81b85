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
from labkit.grading.export import LatePolicy, read_deadlines, read_submissions, read_submitted
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


# Own deadlines (a timed exam started at different times, extra time) and minutes late.

MANIFEST = (
    "submission,notebook,submitted_at,deadline\n"
    "ann,01_basics.ipynb,2026-12-10T23:00:00Z,\n"
    "bob,01_basics.ipynb,,2026-12-11T01:30+01:00\n"
    "cy,01_basics.ipynb,2026-12-11T00:20:00Z,2026-12-11T00:30:00Z\n"
)


def _row(name):
    row = Row(name, "01_basics.ipynb", "ok", max_points=6)
    row.tests["ex"] = Result("ex", 6, 6, "passed")
    return row


def test_the_deadline_column_is_optional_and_may_leave_submitted_at_empty(tmp_path):
    (tmp_path / "s.csv").write_text("\ufeff" + MANIFEST, encoding="utf-8")  # an Excel export
    subs = read_submissions(tmp_path / "s.csv")
    key = ("bob", "01_basics.ipynb")
    assert key not in subs.submitted and subs.deadlines[key] == DEADLINE + timedelta(minutes=31)
    assert set(subs.deadlines) == {key, ("cy", "01_basics.ipynb")}
    assert read_submitted(tmp_path / "s.csv") == subs.submitted and len(subs.submitted) == 2


@pytest.mark.parametrize(
    "line, match",
    [
        ("ann,01_basics.ipynb,soon,", r"s\.csv, line 3, column submitted_at must be an ISO 8601"),
        ("ann,01_basics.ipynb,,", r"s\.csv, line 3, column submitted_at must be an ISO 8601"),
        ("ann,01_basics.ipynb,,18.12. 11:35", r"s\.csv, line 3, column deadline must be an ISO"),
        (",01_basics.ipynb,,2026-12-11T00:00Z", r"s\.csv, line 3, column submission: empty"),
    ],
)
def test_a_bad_row_is_a_one_line_error_naming_file_line_and_column(tmp_path, line, match):
    header = MANIFEST.splitlines()[0]
    (tmp_path / "s.csv").write_text(f"{header}\nbob,01_basics.ipynb,2026-12-10T23:00Z,\n{line}\n")
    with pytest.raises(ValueError, match=match) as err:
        read_submissions(tmp_path / "s.csv")
    assert "\n" not in str(err.value) and str(err.value).startswith("--submitted ")


def test_missing_columns_name_the_file_and_the_columns(tmp_path):
    (tmp_path / "s.csv").write_text("submission,notebook,deadline\nann,01_basics.ipynb,\n")
    with pytest.raises(ValueError, match=r"--submitted .*s\.csv must have the columns .* lacks "
                       r"submitted_at$"):  # fmt: skip
        read_submissions(tmp_path / "s.csv")


def test_an_own_deadline_replaces_the_notebooks_and_minutes_late_are_a_started_day(tmp_path):
    path = tmp_path / FIXTURE.name
    path.write_text("{}")
    t = (DEADLINE + timedelta(minutes=3)).timestamp()
    os.utime(path, (t, t))  # bob has no submitted_at: his file's time counts
    (tmp_path / "s.csv").write_text(MANIFEST)
    subs = read_submissions(tmp_path / "s.csv")
    policy = LatePolicy({"01_basics.ipynb": DEADLINE}, 100, subs.submitted, subs.deadlines)
    rows = {n: _row(n) for n in ("ann", "bob", "cy", "dee")}
    policy.submitted[("dee", "01_basics.ipynb")] = DEADLINE + timedelta(seconds=1)
    for row in rows.values():
        policy.apply(row, path)
    assert [(n, r.late_days, r.score) for n, r in rows.items()] == [
        ("ann", 0, 6), ("bob", 0, 6), ("cy", 0, 6), ("dee", 1, 0)
    ]  # fmt: skip
    assert "1 s after the deadline" in rows["dee"].notes[0]
    # an earlier own deadline penalizes what the notebook's deadline would not
    policy.own_deadlines[("ann", "01_basics.ipynb")] = DEADLINE - timedelta(hours=1, minutes=7)
    late = _row("ann")
    policy.apply(late, path)
    assert (late.late_days, late.penalty, late.score) == (1, 100, 0)
    assert "8 min after this submission's own deadline (2026-12-10T22:52+00:00;" in late.notes[0]
    # an own deadline holds for a notebook without one in --deadlines
    policy.deadlines.clear()
    cy = _row("cy")
    policy.own_deadlines[("cy", "01_basics.ipynb")] = DEADLINE
    policy.apply(cy, path)
    assert (cy.late_days, cy.score) == (1, 0)
    assert policy.unused([late, cy]) == [("bob", "01_basics.ipynb")]


def test_grace_minutes_are_added_to_every_deadline(tmp_path):
    path = tmp_path / FIXTURE.name
    path.write_text("{}")
    times = {"ann": 4, "bob": 6}
    submitted = {(n, "01_basics.ipynb"): DEADLINE + timedelta(minutes=m) for n, m in times.items()}
    policy = LatePolicy({"01_basics.ipynb": DEADLINE}, 100, submitted, grace_minutes=5)
    rows = [_row(n) for n in times]
    for row in rows:
        policy.apply(row, path)
    assert [(r.late_days, r.score) for r in rows] == [(0, 6), (1, 0)]
    assert "+ 5 min grace" in rows[1].notes[0] and "1 min after the deadline" in rows[1].notes[0]
    with pytest.raises(ValueError, match="--grace must be a number of minutes >= 0"):
        LatePolicy({}, 10, grace_minutes=-1)


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_bad_deadline_column_and_bad_grace_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "s.csv").write_text(MANIFEST.replace("2026-12-11T01:30+01:00", "tomorrow"))
    args = _parser().parse_args(
        ["grade", str(tmp_path), "--source", str(FIXTURE), "--submitted", str(tmp_path / "s.csv"),
         "--no-sandbox", "-q"]
    )  # fmt: skip
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "line 3, column deadline must be an ISO 8601 time like" in err
    with pytest.raises(SystemExit):
        _parser().parse_args(["grade", "x", "--source", "y", "--grace", "-5"])
    assert "--grace: must be a number of minutes >= 0; got '-5'" in capsys.readouterr().err


def test_labkit_grade_end_to_end_an_own_later_deadline_spares_one_student(tmp_path, capsys):
    """A real sandboxed run: two students submit 10 min after the exam's deadline; one had extra
    time (an own deadline 30 min later) and keeps the points, the other scores 0."""
    from labkit.cli import main
    from labkit.grading import sandbox

    if not sandbox.available():
        if os.environ.get("LABKIT_SANDBOX_TEST") == "1":
            pytest.fail("bubblewrap cannot make a sandbox here (LABKIT_SANDBOX_TEST=1)")
        pytest.skip("no bubblewrap sandbox on this machine (apt-get install bubblewrap)")
    for name in ("ann", "bob"):
        sub = tmp_path / "subs" / name / FIXTURE.name
        sub.parent.mkdir(parents=True)
        sub.write_bytes(FIXTURE.read_bytes())
    (tmp_path / "d.json").write_text('{"01_basics.ipynb": "2026-12-18T11:35+01:00"}')
    (tmp_path / "s.csv").write_text(
        "submission,notebook,submitted_at,deadline\n"
        "ann,01_basics.ipynb,2026-12-18T11:45+01:00,\n"
        "bob,01_basics.ipynb,2026-12-18T11:45+01:00,2026-12-18T12:05+01:00\n"
    )
    out = tmp_path / "grades" / "gradebook.csv"
    code = main(
        ["grade", str(tmp_path / "subs" / "ann"), str(tmp_path / "subs" / "bob"),
         "--source", str(FIXTURE), "-o", str(out), "--deadlines", str(tmp_path / "d.json"),
         "--late-penalty", "100", "--submitted", str(tmp_path / "s.csv"), "-q"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    table = {r["submission"]: r for r in csv.DictReader(out.open())}
    assert {n: (r["total"], r["late_days"], r["score"]) for n, r in table.items()} == {
        "ann": ("6", "1", "0"), "bob": ("6", "0", "6")
    }  # fmt: skip
    feedback = (tmp_path / "grades" / "feedback" / "ann" / "01_basics.md").read_text()
    assert "10 min after the deadline (2026-12-18T11:35+01:00;" in feedback
    assert "deadline" not in (tmp_path / "grades" / "feedback" / "bob" / "01_basics.md").read_text()
