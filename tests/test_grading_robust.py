"""``labkit grade`` against hostile submissions: one bad notebook never stops the gradebook.

No kernel runs here: every test of ``grade()`` replaces ``grade_notebook`` with a stub that reads
and splices the submission as grading does (``read_notebook`` + ``build_graded_notebook``, and the
notebook serialized as an executor would write it) and then passes every test.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from labkit.grading import gradebook
from labkit.grading.gradebook import LINKED, feedback_markdown, find_submissions, grade
from labkit.grading.source import NotebookError, nbgrader_meta, read_notebook
from labkit.grading.submission import Row, _job, build_graded_notebook, load_sources
from labkit.grading.submission import TestResult as CellResult

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "01_basics.ipynb"
POINTS = {"ex1-mean": 1, "ex2-softmax": 2, "ex3-topk": 3}


@pytest.fixture(scope="module")
def src():
    return load_sources([FIXTURE])[0]


def _workbook(src) -> dict:
    """The released workbook as plain JSON, to break in ways nbformat would never write."""
    return json.loads(nbformat.writes(src.workbook))


def _dump(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))  # ensure_ascii: a lone surrogate stays a "\\udXXX" escape
    return path


def _fake_grade(source, path, *, submission=None, **_):
    """grade_notebook without a kernel: read, splice and serialize; every test then passes."""
    row = Row(submission or "?", source.name, "ok", max_points=source.info.max_points)
    earned = True
    if path is None:
        row.status, row.reason, earned = "missing", f"no {source.name} in this submission", False
    else:
        try:
            nb, row.notes, row.flags = build_graded_notebook(source, read_notebook(path))
            json.dumps(_job(nb, source)).encode()  # what grading sends the verdict process
        except NotebookError as err:
            row.status, row.reason, earned = "unreadable", str(err), False
    for gid, (_, points) in source.info.graded.items():
        row.tests[gid] = CellResult(gid, points, points if earned else 0, "passed", "")
    return row


def _grade(tmp_path, monkeypatch, submissions, stub=_fake_grade, **kwargs):
    """Run ``grade()`` with ``stub`` for grade_notebook; (rows by submission, CSV rows by name)."""
    monkeypatch.setattr(gradebook, "grade_notebook", stub)
    out = tmp_path / "out" / "gradebook.csv"
    rows = grade(submissions, [FIXTURE], out, verbose=False, sandbox=False, **kwargs)
    table = {r["submission"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    return {r.submission: r for r in rows}, table


def test_a_kernelspec_or_metadata_that_is_not_a_dict_is_dropped(tmp_path, monkeypatch, src):
    data = _workbook(src)
    data["metadata"]["kernelspec"] = "python3"
    ks = _dump(data, tmp_path / "ks" / "01_basics.ipynb")
    data["metadata"] = "python3"
    meta = _dump(data, tmp_path / "meta" / "01_basics.ipynb")
    assert "kernelspec" not in read_notebook(ks).metadata
    assert read_notebook(meta).metadata == {}
    notes = build_graded_notebook(src, read_notebook(ks))[1]
    assert not any("kernel" in n for n in notes)
    rows, table = _grade(tmp_path, monkeypatch, [ks.parent, meta.parent])
    assert {name: (r["status"], r["total"]) for name, r in table.items()} == {
        "ks": ("ok", "6"),
        "meta": ("ok", "6"),
    }


@pytest.mark.parametrize("bad", [["ex1-mean"], {"id": "ex1-mean"}, 7], ids=["list", "dict", "int"])
def test_a_grade_id_that_is_not_a_string_leaves_the_cell_unlabelled(tmp_path, src, bad):
    other = _workbook(src)  # a second course notebook with ids of its own
    for cell in other["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if "grade_id" in meta:
            meta["grade_id"] = "other-" + meta["grade_id"]
    sources = [src, *load_sources([_dump(other, tmp_path / "src" / "02_other.ipynb")])]
    data = _workbook(src)
    for cell in data["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("grade_id") not in (None, "ex3-topk-solution"):
            meta["grade_id"] = copy.deepcopy(bad)
    path = _dump(data, tmp_path / "renamed.ipynb")
    nb = read_notebook(path)
    labelled = [nbgrader_meta(c)["grade_id"] for c in nb.cells if "grade_id" in nbgrader_meta(c)]
    assert labelled == ["ex3-topk-solution"]
    (task,) = find_submissions([path], sources)  # matched by its one remaining grade_id
    assert (task.submission, task.source.name, task.reason) == ("renamed", "01_basics.ipynb", "")
    notes = build_graded_notebook(src, nb)[1]  # solution cells are then found by cell id
    assert notes == [
        f"test cell {g} was deleted: it was restored from the course notebook" for g in POINTS
    ]


def test_invalid_utf8_is_an_unreadable_row_and_the_gradebook_is_written(tmp_path, monkeypatch, src):
    payload = nbformat.writes(src.workbook).encode().replace(b"# YOUR CODE HERE", b"# \xff\xfe", 1)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "01_basics.ipynb").write_bytes(payload)
    with pytest.raises(NotebookError, match="not a readable notebook.*UnicodeDecodeError") as info:
        read_notebook(tmp_path / "ann" / "01_basics.ipynb")
    assert "\n" not in str(info.value)
    rows, table = _grade(tmp_path, monkeypatch, [tmp_path / "ann"])
    assert table["ann"]["status"] == "unreadable" and table["ann"]["total"] == "0"
    assert "UnicodeDecodeError" in table["ann"]["reason"]


def test_a_lone_surrogate_in_a_json_string_is_replaced(tmp_path, monkeypatch, src):
    data = _workbook(src)
    cell = next(c for c in data["cells"] if nbgrader_meta(c).get("grade_id") == "ex1-mean-solution")
    cell["source"] = "def mean(xs):\n    # \ud800 odd\n    return sum(xs) / len(xs)\n"
    data["metadata"]["title"] = "\udcff"
    path = _dump(data, tmp_path / "bea" / "01_basics.ipynb")
    assert "\\ud800" in path.read_text()  # valid JSON that no UTF-8 text can hold
    nb = read_notebook(path)
    spliced = next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == "ex1-mean-solution")
    assert "# \ufffd odd" in spliced.source and nb.metadata["title"] == "\ufffd"
    rows, table = _grade(tmp_path, monkeypatch, [path.parent])
    assert (table["bea"]["status"], table["bea"]["total"]) == ("ok", "6")


def test_a_file_name_with_a_surrogate_reaches_the_csv_and_feedback(tmp_path, monkeypatch, src):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/stu\xffdent"))
    _dump(_workbook(src), folder / "01_basics.ipynb")
    broken = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xfe.ipynb"))
    broken.write_text("{not json")
    rows, table = _grade(tmp_path, monkeypatch, [folder, broken])
    assert set(rows) == {"stu\ufffddent", "odd\ufffd"}
    assert (table["stu\ufffddent"]["status"], table["stu\ufffddent"]["total"]) == ("ok", "6")
    assert table["odd\ufffd"]["status"] == "unreadable"
    assert table["odd\ufffd"]["reason"].startswith("odd\ufffd.ipynb: not a readable notebook")
    feedback = tmp_path / "out" / "feedback" / "stu_dent" / "01_basics.md"
    assert "feedback for stu\ufffddent" in feedback.read_text(encoding="utf-8")


def _assert_linked(row, table_row):
    assert (row.status, row.reason, row.total, row.max_points) == ("error", LINKED, 0, 6)
    assert {gid: t.earned for gid, t in row.tests.items()} == dict.fromkeys(POINTS, 0)
    assert (table_row["status"], table_row["reason"], table_row["total"]) == ("error", LINKED, "0")


def test_a_submitted_symbolic_link_is_not_followed(tmp_path, monkeypatch):
    link = tmp_path / "mallory.ipynb"
    link.symlink_to(FIXTURE.resolve())  # the course notebook, solutions and hidden tests in it
    (tmp_path / "trent").symlink_to(FIXTURE.resolve().parent)
    in_linked_folder = tmp_path / "trent" / "01_basics.ipynb"
    called = []

    def stub(source, path, **kwargs):
        called.append(path)
        return _fake_grade(source, path, **kwargs)

    rows, table = _grade(tmp_path, monkeypatch, [link, in_linked_folder], stub=stub)
    assert called == []
    assert set(rows) == {"mallory", "trent"}
    for name in rows:
        _assert_linked(rows[name], table[name])
    feedback = (tmp_path / "out" / "feedback" / "mallory" / "01_basics.md").read_text()
    assert "symbolic link" in feedback and "BEGIN SOLUTION" not in feedback


def test_symbolic_links_inside_a_student_folder_are_skipped(tmp_path, monkeypatch, src):
    course = FIXTURE.resolve()
    (tmp_path / "eve").mkdir()
    (tmp_path / "eve" / "01_basics.ipynb").symlink_to(course)
    (tmp_path / "fred").mkdir()
    (tmp_path / "fred" / "linked").symlink_to(course.parent)
    (tmp_path / "gina").symlink_to(course.parent)
    real = _dump(_workbook(src), tmp_path / "alice" / "work" / "01_basics.ipynb")
    (tmp_path / "alice" / "01_basics.ipynb").symlink_to(course)  # sorts before the real one
    folders = [tmp_path / name for name in ("alice", "eve", "fred", "gina")]
    tasks = {t.submission: (t.path, t.reason) for t in find_submissions(folders, [src])}
    assert tasks == {
        "alice": (real, ""),
        "eve": (None, ""),
        "fred": (None, ""),
        "gina": (None, LINKED),
    }
    rows, table = _grade(tmp_path, monkeypatch, folders)
    assert {n: r["status"] for n, r in table.items()} == {
        "alice": "ok",
        "eve": "missing",
        "fred": "missing",
        "gina": "error",
    }
    _assert_linked(rows["gina"], table["gina"])


@pytest.mark.parametrize("error", [RuntimeError("kernel exploded\nat line 2"), SystemExit(3)])
def test_an_exception_while_grading_one_task_becomes_its_error_row(
    tmp_path, monkeypatch, src, error
):
    names = ["amy", "bob", "cat"]
    for name in names:
        _dump(_workbook(src), tmp_path / name / "01_basics.ipynb")

    def stub(source, path, *, submission=None, **kwargs):
        if submission == "bob":
            raise error
        return _fake_grade(source, path, submission=submission, **kwargs)

    rows, table = _grade(tmp_path, monkeypatch, [tmp_path / n for n in names], stub=stub, jobs=2)
    assert list(table) == names
    assert {n: (table[n]["status"], table[n]["total"]) for n in names} == {
        "amy": ("ok", "6"),
        "bob": ("error", "0"),
        "cat": ("ok", "6"),
    }
    reason = f"grading failed: {type(error).__name__}: " + str(error).splitlines()[0]
    assert table["bob"]["reason"] == rows["bob"].reason == reason
    assert (tmp_path / "out" / "feedback" / "bob" / "01_basics.md").read_text().count(reason) == 1


def test_the_csv_and_feedback_are_written_after_each_row(tmp_path, monkeypatch, src):
    names = ["amy", "bob", "cat"]
    for name in names:
        _dump(_workbook(src), tmp_path / name / "01_basics.ipynb")
    out = tmp_path / "out" / "gradebook.csv"
    seen: list[list[str]] = []

    def on_disk() -> list[str]:
        if not out.exists():
            return []
        done = [r["submission"] for r in csv.DictReader(out.open(encoding="utf-8"))]
        return [n for n in done if (out.parent / "feedback" / n / "01_basics.md").exists()]

    def stub(source, path, *, submission=None, **kwargs):
        deadline = time.monotonic() + 10  # the main thread writes a row once it is handed back
        while len(on_disk()) < len(seen) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(on_disk())
        if submission == "cat":
            raise KeyboardInterrupt  # the grader is stopped: what was graded must be on disk
        return _fake_grade(source, path, submission=submission, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        _grade(tmp_path, monkeypatch, [tmp_path / n for n in names], stub=stub)
    assert seen == [[], ["amy"], ["amy", "bob"]]
    table = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["submission"], r["total"]) for r in table] == [("amy", "6"), ("bob", "6")]


def test_feedback_never_quotes_hidden_test_code(src):
    hidden = "assert np.all(np.isfinite(softmax([1000.0, 0.0]))), "
    row = Row("amy", src.name, "ok", max_points=6)
    row.tests = {
        "ex1-mean": CellResult("ex1-mean", 1, 1, "passed"),
        "ex2-softmax": CellResult("ex2-softmax", 2, 0, "failed", f"AssertionError at `{hidden}`"),
        "ex3-topk": CellResult("ex3-topk", 3, 0, "failed", "AssertionError: the mask must be"),
    }
    text = feedback_markdown(row, source=src)
    assert "np.isfinite" not in text and "BEGIN HIDDEN" not in text
    assert "- **ex2-softmax** (failed): a hidden test failed (its code is not shown)" in text
    assert "- **ex3-topk** (failed): AssertionError: the mask must be" in text
    for cell in src.nb.cells:  # no test code at all, visible or hidden
        if nbgrader_meta(cell).get("grade"):
            code = [line.strip() for line in cell.source.splitlines() if line.strip()]
            assert not [line for line in code if line in text]
