"""labkit.grading: release, check, grade and verify, on a small course-style fixture notebook.

tests/fixtures/grading/01_basics.ipynb has three exercises (1, 2 and 3 points, one with hidden
tests), narrative and non-exercise code, in plain NumPy. Every nbval run starts pytest and a
kernel (2-4 s on a busy 2-core machine), so all the tampering and fault cases, the round trip and
the 20-submission timing are ONE ``labkit grade -j 2`` call (the ``gradebook`` fixture); the tests
below read its CSV and feedback files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import shutil
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from labkit.grading import add_subcommands
from labkit.grading.check import verify_notebook
from labkit.grading.gradebook import find_submissions
from labkit.grading.scan import scan_solution
from labkit.grading.source import (
    NotebookError,
    nbgrader_meta,
    read_notebook,
    replace_solutions,
    validate_source,
)
from labkit.grading.submission import _job, build_graded_notebook, grade_notebook, load_sources
from labkit.grading.workbook import build_self_study, graded_checksum, release, release_notebook

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "01_basics.ipynb"
POINTS = {"ex1-mean": 1, "ex2-softmax": 2, "ex3-topk": 3}
CELL_TIMEOUT = 4  # s; the loop cases cost this (plus 5 s when the loop ignores the interrupt)


# --------------------------------------------------------------------------- helpers


def _cell(nb, grade_id):
    return next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)


def _solved(workbook, source, skip=()):
    """Release -> solve: copy the source's solution cells back into a workbook."""
    nb = copy.deepcopy(workbook)
    for gid in (g for g in POINTS if g not in skip):
        _cell(nb, f"{gid}-solution").source = _cell(source, f"{gid}-solution").source
    return nb


def _cli(argv):
    """Run a labkit grading subcommand through argparse; (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def _write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


# --------------------------------------------------------------------------- release (static)


def test_release_stubs_solutions_hides_tests_and_keeps_the_rest():
    source = read_notebook(FIXTURE)
    workbook = release_notebook(source, FIXTURE.name)
    assert len(workbook.cells) == len(source.cells)
    for src, rel in zip(source.cells, workbook.cells):
        role = nbgrader_meta(src)
        if role.get("solution"):
            assert "BEGIN SOLUTION" not in rel.source and "return" not in rel.source
            assert "    # YOUR CODE HERE\n    raise NotImplementedError()" in rel.source
            assert rel.source.startswith("def "), "the signature and docstring stay"
            compile(rel.source, "<cell>", "exec")  # still valid Python
        elif role.get("grade"):
            assert "HIDDEN" not in rel.source and "1000.0" not in rel.source
            assert rel.metadata["nbgrader"]["points"] == role["points"]
        else:
            assert rel.source == src.source, "narrative and non-exercise code stay intact"
        assert rel.get("id") == src.get("id")
        if rel.cell_type == "code":
            assert rel.outputs == [] and rel.execution_count is None
    assert "1000.0" in _cell(source, "ex2-softmax").source, "the source itself is not modified"


def test_replace_solutions_keeps_indentation_and_handles_several_regions():
    src = "x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\ndef f():\n        ### BEGIN SOLUTION\n        return 3\n        ### END SOLUTION"  # noqa: E501
    out = replace_solutions(src)
    assert out == (
        "x = 1\n# YOUR CODE HERE\nraise NotImplementedError()\ndef f():\n"
        "        # YOUR CODE HERE\n        raise NotImplementedError()"
    )
    assert (
        replace_solutions("def f():\n    return 1")
        == "# YOUR CODE HERE\nraise NotImplementedError()"
    )


def test_release_writes_workbooks_and_a_manifest_with_checksums(tmp_path):
    other = tmp_path / "src" / "02_more.ipynb"
    other.parent.mkdir()
    shutil.copy(FIXTURE, other)
    release([FIXTURE], tmp_path / "rel")
    manifest = release([other], tmp_path / "rel")  # a second release updates the manifest
    assert sorted(manifest["notebooks"]) == ["01_basics.ipynb", "02_more.ipynb"]
    on_disk = json.loads((tmp_path / "rel" / "manifest.json").read_text())
    assert on_disk == manifest and on_disk["labkit_version"]
    entry = manifest["notebooks"]["01_basics.ipynb"]
    assert entry["max_points"] == 6
    assert {k: v["points"] for k, v in entry["graded"].items()} == POINTS
    released = read_notebook(tmp_path / "rel" / "01_basics.ipynb")
    for gid, value in entry["graded"].items():
        assert value["sha256"] == graded_checksum(_cell(released, gid).source)
    from labkit.utils import sha256_file

    assert entry["source_sha256"] == sha256_file(FIXTURE)
    with pytest.raises(ValueError, match="out_dir must differ"):
        release([other], other.parent)


def _broken(kind):
    nb = read_notebook(FIXTURE)
    if kind == "duplicate id":
        _cell(nb, "ex3-topk").metadata["nbgrader"]["grade_id"] = "ex1-mean"
    elif kind == "no points":
        del _cell(nb, "ex2-softmax").metadata["nbgrader"]["points"]
    elif kind == "zero points":
        _cell(nb, "ex2-softmax").metadata["nbgrader"]["points"] = 0
    elif kind == "unclosed solution":
        cell = _cell(nb, "ex1-mean-solution")
        cell.source = cell.source.replace("### END SOLUTION", "")
    elif kind == "END without BEGIN":
        cell = _cell(nb, "ex2-softmax")
        cell.source = cell.source.replace("### BEGIN HIDDEN TESTS", "")
    elif kind == "solution marker outside":
        nb.cells[1].source += "\n### BEGIN SOLUTION\n### END SOLUTION"
    elif kind == "hidden outside graded":
        nb.cells[1].source += "\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS"
    elif kind == "skipped graded cell":
        _cell(nb, "ex1-mean").source = "# NBVAL_SKIP\n" + _cell(nb, "ex1-mean").source
    elif kind == "markdown answer":
        nb.cells[0].metadata["nbgrader"] = {"solution": True, "grade_id": "essay"}
    return nb


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("duplicate id", r"cell 13 \(ex1-mean\): duplicate grade_id \(also cell 5\)"),
        ("no points", r"cell 10 \(ex2-softmax\): graded cell needs points > 0; got None"),
        ("zero points", r"cell 10 \(ex2-softmax\): graded cell needs points > 0; got 0"),
        ("unclosed solution", r"cell 4 \(ex1-mean-solution\): unbalanced solution markers"),
        ("END without BEGIN", r"cell 10 \(ex2-softmax\): unbalanced hidden markers"),
        ("solution marker outside", r"cell 1: solution markers outside a solution cell"),
        ("hidden outside graded", r"cell 1: hidden markers outside a graded cell"),
        ("skipped graded cell", r"cell 5 \(ex1-mean\): graded cell carries # NBVAL_SKIP"),
        ("markdown answer", r"cell 0 \(essay\): only code cells"),
    ],
)
def test_validate_source_rejects_bad_markers_in_one_line(kind, pattern):
    with pytest.raises(NotebookError, match=r"^x\.ipynb: " + pattern) as info:
        validate_source(_broken(kind), "x.ipynb")
    assert "\n" not in str(info.value)


def test_validate_source_reads_the_layout():
    info = validate_source(read_notebook(FIXTURE), FIXTURE.name)
    assert {k: p for k, (_, p) in info.graded.items()} == POINTS and info.max_points == 6
    assert list(info.solutions) == [f"{g}-solution" for g in POINTS]


def test_read_notebook_errors_are_one_line(tmp_path):
    (tmp_path / "bad.ipynb").write_text('{"cells": [')
    (tmp_path / "list.ipynb").write_text("[1, 2]")
    (tmp_path / "nocells.ipynb").write_text('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}}')
    for name, pattern in [
        ("bad.ipynb", "not a readable notebook"),
        ("list.ipynb", "not a readable notebook"),
        ("nocells.ipynb", "not a notebook|not a readable notebook"),
        ("absent.ipynb", "no such notebook"),
    ]:
        with pytest.raises(NotebookError, match=pattern) as info:
            read_notebook(tmp_path / name)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- self-study folders


def test_build_self_study_rewrites_only_on_change_and_never_clobbers_edits(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    shutil.copy(FIXTURE, src / "01_basics.ipynb")
    (src / "scratch.ipynb").write_text("not a course notebook, not NN_")
    first = build_self_study(src, tmp_path)
    assert first == {"workbooks/01_basics.ipynb": "written", "solutions/01_basics.ipynb": "written"}
    workbook = read_notebook(tmp_path / "workbooks" / "01_basics.ipynb")
    solution = read_notebook(tmp_path / "solutions" / "01_basics.ipynb")
    assert "raise NotImplementedError()" in _cell(workbook, "ex1-mean-solution").source
    assert "return sum(xs)" in _cell(solution, "ex1-mean-solution").source
    assert all(not c.get("outputs") for c in solution.cells)
    assert set(build_self_study(src, tmp_path).values()) == {"unchanged"}

    # the learner works in the workbook; then the course notebook changes
    _cell(workbook, "ex1-mean-solution").source = "def mean(xs):\n    return 42"
    _write(workbook, tmp_path / "workbooks" / "01_basics.ipynb")
    nb = read_notebook(src / "01_basics.ipynb")
    nb.cells[0].source += "\n\nUpdated."
    _write(nb, src / "01_basics.ipynb")
    third = build_self_study(src, tmp_path)
    assert third["solutions/01_basics.ipynb"] == "written"
    assert third["workbooks/01_basics.ipynb"].startswith("kept")
    kept = read_notebook(tmp_path / "workbooks" / "01_basics.ipynb")
    assert "return 42" in _cell(kept, "ex1-mean-solution").source
    updated = read_notebook(tmp_path / "workbooks" / "01_basics.updated.ipynb")
    assert updated.cells[0].source.endswith("Updated.")
    assert "Updated." in read_notebook(tmp_path / "solutions" / "01_basics.ipynb").cells[0].source
    # and on a later change the learner's file is still kept
    nb.cells[0].source += " Again."
    _write(nb, src / "01_basics.ipynb")
    assert build_self_study(src, tmp_path)["workbooks/01_basics.ipynb"].startswith("kept")


# --------------------------------------------------------------------------- grading (static)


def test_scan_flags_tampering_and_passes_plain_solutions():
    clean = "def softmax(x):\n    z = np.exp(np.asarray(x) - np.max(x))\n    return z / z.sum()"
    assert scan_solution(clean, {"np", "math"}, {"softmax"}) == []
    scratch = "import numpy as np\nx = np.ones(3)\n\ndef f(model):\n    model.weight = 0"
    assert scan_solution(scratch, {"np", "math"}) == [], "re-imports and scratch data are fine"
    cases = {
        "import numpy as np\nnp.allclose = lambda *a, **k: True": "assigns to np.allclose",
        "import builtins\nbuiltins.len = lambda x: 0": "imports builtins",
        "setattr(np, 'allclose', print)": "calls setattr()",
        "math = None": "redefines math",
        "def isinstance(*a):\n    return True": "redefines builtin isinstance",
        "class A:\n    def __eq__(self, o):\n        return True": "class A defines __eq__",
        "get_ipython().input_transformers_cleanup.append(f)": "calls get_ipython()",
        "import sys\nsys.modules['numpy'] = None": "imports sys",
        "%load_ext foo": "calls get_ipython()",
    }
    for code, expected in cases.items():
        assert any(f.startswith(expected) for f in scan_solution(code, {"np", "math"})), code


def test_graded_notebook_comes_from_the_source(tmp_path):
    (src,) = load_sources([FIXTURE])
    sub = _solved(src.workbook, src.nb, skip=("ex2-softmax",))
    sub.metadata["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia", "language": "julia"}
    sub.cells.remove(_cell(sub, "ex2-softmax"))  # deleted test cell
    _cell(sub, "ex3-topk").source = "assert True"  # edited assert
    sub.cells.insert(2, nbformat.v4.new_code_cell("np.allclose = lambda *a, **k: True"))
    del _cell(sub, "ex1-mean-solution").metadata["nbgrader"]  # lost: found by cell id instead
    nb, notes, flags = build_graded_notebook(src, sub)
    cells = {c.get("grade_id"): c for c in _job(nb, src)}
    assert cells["ex2-softmax"]["source"] == _cell(src.nb, "ex2-softmax").source  # hidden too
    assert cells["ex3-topk"]["source"] == _cell(src.nb, "ex3-topk").source
    assert cells["ex1-mean-solution"]["student"] == _cell(src.nb, "ex1-mean-solution").source
    assert "raise NotImplementedError()" in cells["ex2-softmax-solution"]["student"]
    code = [c["student"] if c["role"] == "solution" else c["source"] for c in cells.values()]
    assert not any("lambda *a, **k: True" in c for c in code), "extra cells are not run"
    student_side = [c.get("student", c["source"]) for c in cells.values() if c["role"] != "graded"]
    assert not any("BEGIN HIDDEN TESTS" in c or "assert" in c for c in student_side), (
        "the student's process never receives a test"
    )
    joined = "\n".join(notes)
    assert "test cell ex2-softmax was deleted" in joined
    assert "test cell ex3-topk was edited" in joined
    assert "1 of your code cells" in joined and "'julia-1.9'" in joined
    assert flags == []


def test_find_submissions_pairs_folders_and_files(tmp_path):
    sources = load_sources([FIXTURE])
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "01_basics-Copy1.ipynb").write_text("{}")
    (tmp_path / "bob").mkdir()
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "01_basics.ipynb").write_text("{}")
    (tmp_path / "dave.ipynb").write_text("{}")
    tasks = find_submissions(
        [tmp_path / "alice", tmp_path / "bob", tmp_path / "carol" / "01_basics.ipynb",
         tmp_path / "dave.ipynb", tmp_path / "erin"],
    sources)  # fmt: skip
    got = {t.submission: (t.path.name if t.path else None) for t in tasks}
    assert got == {
        "alice": "01_basics-Copy1.ipynb",
        "bob": None,
        "carol": "01_basics.ipynb",
        "dave": "dave.ipynb",
        "erin": None,
    }
    assert all(t.source is sources[0] for t in tasks)


def test_cli_registers_three_commands_and_rejects_bad_options():
    parser = argparse.ArgumentParser(prog="labkit")
    add_subcommands(parser.add_subparsers(dest="command"))
    for argv in (
        ["release", "a.ipynb", "-o", "out"],
        ["check", "a.ipynb"],
        ["grade", "s", "--source", "n"],
    ):  # noqa: E501
        assert callable(parser.parse_args(argv).func)
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser.parse_args(["check", "a.ipynb", "--cell-timeout", "-1"])
    code, _, err = _cli(["release", "nope.ipynb", "-o", "out"])
    assert code == 2 and "sources must be .ipynb files" in err
    code, _, err = _cli(["check", "nope.ipynb"])
    assert code == 2 and "no such notebook" in err


# --------------------------------------------------------------------------- grading (runs)

STUBBORN_LOOP = """def softmax(x):
    import time
    while True:  # swallows the interrupt nbval sends at the cell timeout
        try:
            time.sleep(0.05)
        except BaseException:
            pass"""


def _submissions(root, source, workbook):
    """Twenty submission folders: tampering and fault cases, the round trip, and ordinary ones."""
    solved = _solved(workbook, source)
    subs = {}
    subs["solved"] = solved  # release -> solve -> grade round trip
    subs["blank"] = workbook

    nb = _solved(workbook, source, skip=("ex2-softmax",))
    nb.cells.remove(_cell(nb, "ex2-softmax"))
    subs["deleted_test"] = nb

    nb = _solved(workbook, source, skip=("ex3-topk",))
    _cell(nb, "ex3-topk-solution").source = "def topk_mask(x, k):\n    return x != 0"
    _cell(nb, "ex3-topk").source = "assert True"
    subs["edited_assert"] = nb

    nb = _solved(workbook, source, skip=("ex2-softmax",))
    patch = "import builtins\nnp.allclose = lambda *a, **k: True\nbuiltins.AssertionError = Warning"
    nb.cells.insert(2, nbformat.v4.new_code_cell(patch))
    _cell(nb, "ex2-softmax-solution").source = "def softmax(x):\n    return np.ones(3) / 3"
    subs["patch_cell"] = nb

    nb = _solved(workbook, source, skip=("ex2-softmax",))
    _cell(nb, "ex2-softmax-solution").source = (
        "def softmax(x):\n    return np.ones(3) / 3\n\nnp.allclose = lambda *a, **k: True\n"
        "np.all = lambda *a, **k: True"
    )
    subs["patch_in_solution"] = nb

    nb = _solved(workbook, source, skip=("ex2-softmax",))
    naive = "def softmax(x):\n    return np.exp(x) / np.exp(x).sum()"  # no max subtracted
    _cell(nb, "ex2-softmax-solution").source = naive
    subs["hidden_fail"] = nb  # passes the visible tests, overflows in the hidden one

    nb = _solved(workbook, source)
    _cell(nb, "ex1-mean-solution").source = "def mean(xs):\n    while True:\n        pass"
    subs["infinite_loop"] = nb

    nb = _solved(workbook, source)
    _cell(nb, "ex2-softmax-solution").source = STUBBORN_LOOP
    subs["stubborn_loop"] = nb

    nb = _solved(workbook, source)
    _cell(nb, "ex3-topk-solution").source = "def topk_mask(x, k):\n    raise ValueError('boom')"
    subs["exception"] = nb

    nb = _solved(workbook, source)
    _cell(nb, "ex1-mean-solution").source = "def mean(xs)\n    return 0"
    subs["syntax_error"] = nb

    nb = _solved(workbook, source)
    nb.metadata["kernelspec"] = {"name": "no-such-kernel", "display_name": "?", "language": "?"}
    subs["wrong_kernel"] = nb

    for k in range(6):  # ordinary students: ex1 solved, some ex3 too
        subs[f"student{k:02d}"] = _solved(
            workbook, source, skip=("ex2-softmax",) if k % 2 else ("ex2-softmax", "ex3-topk")
        )
    for name, nb in subs.items():
        _write(nb, root / name / "01_basics.ipynb")
    (root / "malformed").mkdir()
    (root / "malformed" / "01_basics.ipynb").write_text('{"cells": [{"cell_type": "code", ')
    (root / "missing").mkdir()
    return sorted(p for p in root.iterdir())


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory):
    """One ``labkit grade -j 2`` over 20 submissions; the CSV rows by submission, and more."""
    tmp = tmp_path_factory.mktemp("grading")
    source = read_notebook(FIXTURE)
    code, out, err = _cli(["release", FIXTURE, "-o", tmp / "release"])
    assert code == 0, err
    workbook = read_notebook(tmp / "release" / FIXTURE.name)
    folders = _submissions(tmp / "submissions", source, workbook)
    assert len(folders) == 20
    start = time.perf_counter()
    code, out, err = _cli(
        ["grade", *folders, "--source", FIXTURE.parent, "-o", tmp / "out" / "gradebook.csv",
         "-j", "2", "--cell-timeout", CELL_TIMEOUT, "--timeout", "120",
         "--manifest", tmp / "release" / "manifest.json"]
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert code == 0, err
    with open(tmp / "out" / "gradebook.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    rows = {r["submission"]: r for r in table}
    feedback = {
        p.parent.name: p.read_text() for p in (tmp / "out" / "feedback").glob("*/01_basics.md")
    }
    print(err)
    return {"rows": rows, "table": table, "feedback": feedback, "stderr": err, "wall": wall}


def _points(row):
    return {gid: float(row[gid]) for gid in POINTS}


def test_gradebook_columns(gradebook):
    header = list(gradebook["table"][0])
    assert header == [
        "submission", "notebook", *POINTS, "total", "max", "late_days", "score", "status",
        "reason", "seconds", "flags",
    ]  # fmt: skip


def test_round_trip_release_solve_grade_earns_full_points(gradebook):
    row = gradebook["rows"]["solved"]
    assert _points(row) == POINTS and row["total"] == "6" and row["max"] == "6"
    assert row["status"] == "ok" and row["reason"] == "" and row["flags"] == ""


def test_released_workbook_earns_zero_on_every_graded_cell(gradebook):
    row = gradebook["rows"]["blank"]
    assert _points(row) == dict.fromkeys(POINTS, 0) and row["total"] == "0"
    for gid in POINTS:
        assert f"**{gid}** (failed): NotImplementedError" in gradebook["feedback"]["blank"]


def test_deleting_a_test_cell_gains_nothing(gradebook):
    row = gradebook["rows"]["deleted_test"]
    assert _points(row) == {"ex1-mean": 1, "ex2-softmax": 0, "ex3-topk": 3}
    assert "ex2-softmax" in row["reason"]
    assert "test cell ex2-softmax was deleted" in gradebook["feedback"]["deleted_test"]


def test_editing_an_assert_gains_nothing(gradebook):
    row = gradebook["rows"]["edited_assert"]
    assert _points(row) == {"ex1-mean": 1, "ex2-softmax": 2, "ex3-topk": 0}
    fb = gradebook["feedback"]["edited_assert"]
    assert "test cell ex3-topk was edited" in fb
    assert "the mask must be boolean with k True entries" in fb


def test_an_extra_cell_that_patches_the_checker_is_not_run(gradebook):
    row = gradebook["rows"]["patch_cell"]
    assert _points(row) == {"ex1-mean": 1, "ex2-softmax": 0, "ex3-topk": 3}
    assert "1 of your code cells" in gradebook["feedback"]["patch_cell"]


def test_a_patch_inside_the_solution_cell_cannot_reach_the_tests_and_is_flagged(gradebook):
    row = gradebook["rows"]["patch_in_solution"]
    assert _points(row) == {"ex1-mean": 1, "ex2-softmax": 0, "ex3-topk": 3}
    assert "assigns to np.allclose" in row["flags"]


def test_hidden_tests_count(gradebook):
    row = gradebook["rows"]["hidden_fail"]
    assert _points(row) == {"ex1-mean": 1, "ex2-softmax": 0, "ex3-topk": 3}
    assert "softmax overflows for large inputs" in gradebook["feedback"]["hidden_fail"]


def test_an_infinite_loop_costs_only_its_own_test(gradebook):
    for name, gid in (("infinite_loop", "ex1-mean"), ("stubborn_loop", "ex2-softmax")):
        row = gradebook["rows"][name]
        assert _points(row) == {**POINTS, gid: 0}, name
        assert row["status"] == "ok"
        assert (
            f"**{gid}** (timeout): Timeout: the submission's code did not answer within "
            f"{CELL_TIMEOUT} s" in gradebook["feedback"][name]
        )
    assert "a call into your code ran past the cell limit" in gradebook["feedback"]["stubborn_loop"]


def test_exceptions_and_syntax_errors_cost_their_test_with_the_message(gradebook):
    assert _points(gradebook["rows"]["exception"]) == {**POINTS, "ex3-topk": 0}
    assert "ValueError: boom" in gradebook["feedback"]["exception"]
    assert _points(gradebook["rows"]["syntax_error"]) == {**POINTS, "ex1-mean": 0}
    assert "SyntaxError" in gradebook["feedback"]["syntax_error"]


def test_malformed_json_and_missing_notebook_get_a_row(gradebook):
    for name, status, reason in (
        ("malformed", "unreadable", "not a readable notebook"),
        ("missing", "missing", "no 01_basics.ipynb in this submission"),
    ):
        row = gradebook["rows"][name]
        assert row["status"] == status and reason in row["reason"], row
        assert _points(row) == dict.fromkeys(POINTS, 0) and row["max"] == "6"
        assert gradebook["feedback"][name].count(reason) == 1, "said once, not per test"


def test_a_wrong_kernel_name_is_graded_with_python3(gradebook):
    row = gradebook["rows"]["wrong_kernel"]
    assert _points(row) == POINTS
    assert "'no-such-kernel'; it was graded with python3" in gradebook["feedback"]["wrong_kernel"]


def test_twenty_submissions_with_two_jobs_report_time_per_submission(gradebook):
    rows = gradebook["rows"]
    assert len(rows) == 20
    assert {r["total"] for n, r in rows.items() if n.startswith("student")} == {"1", "4"}
    ran = [float(r["seconds"]) for r in rows.values() if r["status"] == "ok"]
    assert len(ran) == 18 and all(s > 0.5 for s in ran)
    assert "with 2 job(s)" in gradebook["stderr"]
    per = gradebook["wall"] / 20
    print(f"20 submissions, -j 2: {gradebook['wall']:.1f} s wall, {per:.1f} s per submission")
    assert per < 30


def test_a_notebook_past_its_time_limit_gets_a_row_and_leaves_no_process(tmp_path):
    psutil = pytest.importorskip("psutil")
    (src,) = load_sources([FIXTURE])
    nb = _solved(src.workbook, src.nb)
    _cell(nb, "ex1-mean-solution").source = "def mean(xs):\n    while True:\n        pass"
    _write(nb, tmp_path / "01_basics.ipynb")
    tag = uuid.uuid4().hex
    row = grade_notebook(
        src, tmp_path / "01_basics.ipynb", submission="slow", cell_timeout=60, timeout=4,
        env={"LABKIT_TEST_TAG": tag},
    )  # fmt: skip
    assert row.status == "timeout" and "ran past 4 s" in row.reason
    assert row.total == 0 and {t.status for t in row.tests.values()} == {"timeout"}
    assert row.seconds < 30
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("LABKIT_TEST_TAG") == tag:
                left.append(proc.cmdline())
    assert left == [], "the killed run left processes behind"


# --------------------------------------------------------------------------- check and verify


def test_check_shows_visible_points_of_a_students_own_notebook(tmp_path):
    source = read_notebook(FIXTURE)
    nb = _solved(release_notebook(source, FIXTURE.name), source, skip=("ex2-softmax",))
    _write(nb, tmp_path / "01_basics.ipynb")
    code, out, _ = _cli(["check", tmp_path / "01_basics.ipynb", "--cell-timeout", "20"])
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert ["ex1-mean", "1/1", "passed"] in lines and ["ex3-topk", "3/3", "passed"] in lines
    assert ["ex2-softmax", "0/2", "failed:", "NotImplementedError"] in lines
    assert ["total", "4/6"] in lines


def test_verify_notebook_proves_the_fixture_and_reports_its_cost():
    report = verify_notebook(FIXTURE, cell_timeout=20, timeout=120)
    assert report["problems"] == [] and report["ok"]
    assert report["source_points"] == 6 and report["released_points"] == 0
    print(f"verify_notebook({FIXTURE.name}): {report['seconds']:.1f} s")


def test_verify_notebook_catches_vacuous_and_wrong_tests(tmp_path):
    nb = read_notebook(FIXTURE)
    _cell(nb, "ex1-mean").source = "assert callable(mean)"  # passes on the stub too
    _cell(nb, "ex3-topk").source += "\nassert topk_mask(x, 1).sum() == 2"  # wrong with solution
    _write(nb, tmp_path / "01_basics.ipynb")
    report = verify_notebook(tmp_path / "01_basics.ipynb", cell_timeout=20, timeout=120)
    assert not report["ok"]
    assert report["released_points"] == 1 and report["source_points"] == 3
    problems = "\n".join(report["problems"])
    assert "graded cell ex1-mean passes without its solution" in problems
    assert "graded cell ex3-topk fails with the solution: AssertionError" in problems


def _with_worked_solution(tmp_path):
    """The fixture with a worked solution (a solution cell tagged ``explanation``) after ex1."""
    nb = read_notebook(FIXTURE)
    at = nb.cells.index(_cell(nb, "ex1-mean")) + 1
    worked = nbformat.v4.new_code_cell(
        "# the worked solution\n### BEGIN SOLUTION\nworked = sum([1, 2, 3]) / 3\n"
        "print('the mean of 1, 2, 3 is', worked)\n### END SOLUTION"
    )
    worked.metadata = {
        "tags": ["solution", "explanation"],
        "nbgrader": {"solution": True, "grade": False, "grade_id": "ex1-mean-explained",
                     "locked": False, "schema_version": 3},
    }  # fmt: skip
    nb.cells.insert(at, worked)
    path = tmp_path / "src" / FIXTURE.name
    _write(nb, path)
    return path, at


def test_a_worked_solution_is_a_note_in_the_workbook_and_a_course_cell_in_grading(tmp_path):
    path, at = _with_worked_solution(tmp_path)
    (src,) = load_sources([path])
    cell = src.workbook.cells[at].source
    assert "The worked solution is in the course notebook." in cell and "worked =" not in cell
    assert "NotImplementedError" not in cell  # the workbook runs through it
    graded_nb, notes, _ = build_graded_notebook(src, src.workbook)
    assert not [n for n in notes if "explained" in n], notes
    entry = next(c for c in _job(graded_nb, src) if c["index"] == at)
    assert entry["role"] == "code" and "worked = sum" in entry["source"]


@pytest.mark.slow
def test_a_worked_solution_costs_no_points_and_no_feedback_noise(tmp_path):
    path, _ = _with_worked_solution(tmp_path)
    report = verify_notebook(path, cell_timeout=60)
    assert report["ok"], report
    assert not [n for n in report["notes"] if "explained" in n], report["notes"]
