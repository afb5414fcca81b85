"""``labkit grade --scheduler``: a class graded by a dask cluster gets the local gradebook.

A local dask cluster of 2 worker processes grades the same 4 submissions of the 3-exercise
fixture as 2 local threads do (really: sandboxed student processes on each side); every test's
verdict and every total must be the same.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import nbformat
import pytest

from labkit.grading import sandbox
from labkit.grading.gradebook import grade
from labkit.grading.source import nbgrader_meta, read_notebook
from labkit.grading.workbook import release_notebook

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "01_basics.ipynb"


def _cell(nb, grade_id):
    return next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)


@pytest.mark.slow
def test_a_dask_cluster_grades_like_local_threads(tmp_path):
    distributed = pytest.importorskip("distributed")
    source = read_notebook(FIXTURE)
    workbook = release_notebook(source, FIXTURE.name)
    subs = {"blank": workbook}
    for name, solved in (("one", ("ex1-mean",)), ("two", ("ex1-mean", "ex3-topk")),
                         ("all", ("ex1-mean", "ex2-softmax", "ex3-topk"))):  # fmt: skip
        nb = copy.deepcopy(workbook)
        for gid in solved:
            _cell(nb, f"{gid}-solution").source = _cell(source, f"{gid}-solution").source
        subs[name] = nb
    for name, nb in subs.items():
        (tmp_path / "subs" / name).mkdir(parents=True)
        nbformat.write(nb, str(tmp_path / "subs" / name / FIXTURE.name))
    folders = sorted((tmp_path / "subs").iterdir())
    kw = {"cell_timeout": 30, "timeout": 120, "verbose": False, "sandbox": sandbox.available()}
    start = time.perf_counter()
    local = grade(folders, [FIXTURE], tmp_path / "local" / "gradebook.csv", jobs=2, **kw)
    local_s = time.perf_counter() - start
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        start = time.perf_counter()
        remote = grade(
            folders,
            [FIXTURE],
            tmp_path / "cluster" / "gradebook.csv",
            scheduler=cluster.scheduler_address,
            **kw,
        )
        cluster_s = time.perf_counter() - start

    def verdicts(rows):
        return {r.submission: {g: (t.status, t.earned) for g, t in r.tests.items()} for r in rows}

    assert verdicts(remote) == verdicts(local)
    assert {r.submission: r.total for r in remote} == {"all": 6, "blank": 0, "one": 1, "two": 4}
    csv_local = (tmp_path / "local" / "gradebook-totals.csv").read_text()
    assert (tmp_path / "cluster" / "gradebook-totals.csv").read_text() == csv_local
    print(f"4 submissions: {local_s:.1f} s with -j 2, {cluster_s:.1f} s on 2 dask workers")
