from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from labkit import sweep, utils

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh data folder and an empty in-memory cache for every test."""
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    sweep.clear_cache()
    yield tmp_path / "data"
    sweep.clear_cache()


class Counter:
    """A pure sweep function that counts its calls per point."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, width, depth=1):
        self.calls.append((width, depth))
        return {"acc": 1 - 1 / (width * depth), "bytes": 4 * width * depth}


def sweep_files() -> list[Path]:
    return sorted(utils.cache_dir("sweeps").glob("*.json"))


# --------------------------------------------------------------------------- grid


def test_grid_is_the_cartesian_product_in_stable_order():
    points = sweep.grid(width=[16, 32, 64], bits=(4, 8), method=["a"])
    assert len(points) == 3 * 2 * 1
    expected = [
        {"width": w, "bits": b, "method": m}
        for w, b, m in itertools.product([16, 32, 64], (4, 8), ["a"])
    ]
    assert points == expected
    assert list(points[0]) == ["width", "bits", "method"]  # key order = axis order
    assert points[:2] == [
        {"width": 16, "bits": 4, "method": "a"},
        {"width": 16, "bits": 8, "method": "a"},
    ]
    assert sweep.grid(width=[16, 32]) == sweep.grid(width=[16, 32])


@pytest.mark.parametrize("bad", [[], (), 3, "abc", {1, 2}, None])
def test_grid_rejects_bad_axes(bad):
    with pytest.raises(ValueError, match="grid axis 'width' must be a non-empty list") as err:
        sweep.grid(width=bad)
    assert "\n" not in str(err.value)


def test_grid_needs_an_axis():
    with pytest.raises(ValueError, match="at least one axis"):
        sweep.grid()


# --------------------------------------------------------------------------- run and its caches


def test_run_returns_point_plus_result_in_order():
    fn = Counter()
    records = sweep.run(fn, sweep.grid(width=[2, 4], depth=[1, 3]), cache=False)
    assert [(r["width"], r["depth"]) for r in records] == [(2, 1), (2, 3), (4, 1), (4, 3)]
    assert records[1] == {"width": 2, "depth": 3, "acc": 1 - 1 / 6, "bytes": 24}


def test_run_disk_cache_calls_fn_once_per_point_across_runs():
    points = sweep.grid(width=[2, 4, 8])
    fn = Counter()
    first = sweep.run(fn, points, name="widths")
    assert len(fn.calls) == 3
    assert len(sweep_files()) == 3  # one verified JSON file per point
    sweep.clear_cache()  # forget memory: as in a fresh kernel, only the disk cache remains
    second = sweep.run(fn, points, name="widths")
    assert len(fn.calls) == 3, "a rerun must recompute nothing"
    assert second == first


def test_run_memory_cache_without_a_name():
    points = sweep.grid(width=[2, 4])
    fn = Counter()
    a = sweep.run(fn, points)
    b = sweep.run(fn, points)
    assert len(fn.calls) == 2 and a == b
    assert sweep_files() == []  # no name: nothing on disk


def test_run_computes_only_new_points():
    fn = Counter()
    sweep.run(fn, sweep.grid(width=[2, 4]), name="grow")
    sweep.clear_cache()
    records = sweep.run(fn, sweep.grid(width=[2, 4, 8, 16]), name="grow")
    assert fn.calls == [(2, 1), (4, 1), (8, 1), (16, 1)]
    assert [r["width"] for r in records] == [2, 4, 8, 16]


def test_run_duplicate_points_computed_once():
    fn = Counter()
    records = sweep.run(fn, [{"width": 2}, {"width": 4}, {"width": 2}])
    assert fn.calls == [(2, 1), (4, 1)]
    assert records[0] == records[2] and records[0] is not records[2]


def test_run_recomputes_a_corrupted_cache_file():
    points = sweep.grid(width=[2, 4, 8])
    fn = Counter()
    first = sweep.run(fn, points, name="corrupt")
    files = sweep_files()
    # Tamper with one file's result (valid JSON, wrong hash) and truncate another.
    stored = json.loads(files[0].read_text())
    stored["payload"]["result"]["acc"] = 123.0
    files[0].write_text(json.dumps(stored))
    files[1].write_bytes(files[1].read_bytes()[:20])
    sweep.clear_cache()
    with pytest.warns(UserWarning, match="corrupt"):
        second = sweep.run(fn, points, name="corrupt")
    assert len(fn.calls) == 3 + 2, "exactly the two damaged points are recomputed"
    assert second == first
    sweep.clear_cache()
    sweep.run(fn, points, name="corrupt")  # the rewritten files verify again
    assert len(fn.calls) == 5


def test_run_cache_false_always_calls_and_stores_nothing():
    fn = Counter()
    points = sweep.grid(width=[2, 4])
    sweep.run(fn, points, name="nocache", cache=False)
    sweep.run(fn, points, name="nocache", cache=False)
    assert len(fn.calls) == 4
    assert sweep_files() == []
    sweep.run(fn, points, name="nocache")  # cache=False stored nothing in memory either
    assert len(fn.calls) == 6


def test_run_version_name_and_fn_body_separate_caches():
    points = sweep.grid(width=[2])
    fn = Counter()
    sweep.run(fn, points, name="a")
    sweep.run(fn, points, name="a", version=1)
    sweep.run(fn, points, name="b")
    assert len(fn.calls) == 3

    def make(scale):
        return lambda width: {"acc": width * scale}

    # Same code, different closure value: different results, never served from the cache.
    assert sweep.run(make(1), points)[0]["acc"] == 2
    assert sweep.run(make(10), points)[0]["acc"] == 20


def test_run_disk_cache_survives_a_new_process(isolated):
    """A notebook rerun in a new kernel (another PYTHONHASHSEED) recomputes nothing."""
    code = textwrap.dedent(
        """
        import json, sys, types
        sys.modules["torch"] = types.ModuleType("torch")  # sweep never uses torch; skip its import
        from labkit import sweep
        calls = []
        def evaluate(width, method):
            calls.append(width)
            return {"acc": width / 100 if method in {"a", "b", "c"} else 0.0, "bytes": width}
        sweep.run(evaluate, sweep.grid(width=[1, 2, 3], method=["a"]), name="proc")
        print(json.dumps(calls))
        """
    )
    env = {**os.environ, "LABKIT_DATA": str(isolated), "PYTHONPATH": str(REPO)}
    outs = []
    for hash_seed in ("1", "2"):
        env["PYTHONHASHSEED"] = hash_seed
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outs == [[1, 2, 3], []]


def test_run_colliding_keys_is_a_one_line_error():
    with pytest.raises(ValueError, match="collide with point keys \\['width'\\]") as err:
        sweep.run(lambda width: {"width": 2 * width, "acc": 1.0}, sweep.grid(width=[1]))
    assert "\n" not in str(err.value)


def test_run_rejects_bad_results_and_arguments():
    with pytest.raises(ValueError, match="fn must return a dict"):
        sweep.run(lambda width: 0.5, sweep.grid(width=[1]))
    with pytest.raises(ValueError, match=r"result\['w'\] must be a JSON-able.*tolist"):
        sweep.run(lambda width: {"w": np.zeros(3)}, sweep.grid(width=[1]))
    with pytest.raises(ValueError, match="name must be None or a file-name-safe"):
        sweep.run(Counter(), sweep.grid(width=[1]), name="../escape")
    with pytest.raises(ValueError, match="points must be a list of dicts"):
        sweep.run(Counter(), {"width": 1})
    with pytest.raises(ValueError, match="version must be"):
        sweep.run(Counter(), sweep.grid(width=[1]), version=1.5)


def test_run_normalizes_numpy_scalars_and_tuples():
    recs = sweep.run(
        lambda width: {"acc": np.float32(0.5), "n": np.int64(3), "shape": (1, 2)},
        sweep.grid(width=[1]),
        name="norm",
    )
    assert recs[0] == {"width": 1, "acc": 0.5, "n": 3, "shape": [1, 2]}
    assert type(recs[0]["acc"]) is float and type(recs[0]["n"]) is int


def test_run_returns_fresh_dicts():
    points = sweep.grid(width=[2])
    recs = sweep.run(lambda width: {"hist": [1, 2]}, points)
    recs[0]["hist"].append(3)
    assert sweep.run(lambda width: {"hist": [1, 2]}, points)[0]["hist"] == [1, 2]


def test_clear_cache_removes_only_that_sweep():
    fn = Counter()
    sweep.run(fn, sweep.grid(width=[1, 2]), name="prune")
    sweep.run(fn, sweep.grid(width=[1]), name="prune-global")
    assert sweep.clear_cache("prune") == 2
    assert len(sweep_files()) == 1


# --------------------------------------------------------------------------- Pareto frontier


def brute_front(records, x, y, minimize_x=True, maximize_y=True):
    """O(n^2) oracle: kept iff no other point is >= in both and > in one (NaN points dropped)."""
    sx, sy = (1 if minimize_x else -1), (-1 if maximize_y else 1)
    pts = [(sx * r[x], sy * r[y]) for r in records]
    keep = []
    for i, (a, b) in enumerate(pts):
        if math.isnan(a) or math.isnan(b):
            continue
        dominated = any(
            (c <= a and d <= b and (c < a or d < b))
            for j, (c, d) in enumerate(pts)
            if j != i and not (math.isnan(c) or math.isnan(d))
        )
        if not dominated:
            keep.append(i)
    return keep


def test_pareto_front_hand_made_with_ties_and_duplicates():
    recs = [
        {"bytes": 10, "acc": 0.70, "id": "small"},
        {"bytes": 10, "acc": 0.60, "id": "same-size-worse"},  # tie in x, worse y: dropped
        {"bytes": 20, "acc": 0.70, "id": "bigger-same-acc"},  # tie in y, bigger: dropped
        {"bytes": 30, "acc": 0.90, "id": "best"},
        {"bytes": 30, "acc": 0.90, "id": "best-duplicate"},  # duplicate: both kept
        {"bytes": 25, "acc": 0.80, "id": "mid"},
        {"bytes": 40, "acc": 0.85, "id": "big-worse"},
        {"bytes": 5, "acc": float("nan"), "id": "nan"},
    ]
    front = sweep.pareto_front(recs)
    assert [r["id"] for r in front] == ["small", "mid", "best", "best-duplicate"]
    assert front[0] is recs[0]  # the same dicts, sorted by x
    # Maximizing x and minimizing y flips the question.
    flipped = sweep.pareto_front(recs, minimize_x=False, maximize_y=False)
    assert [r["id"] for r in flipped] == ["same-size-worse", "bigger-same-acc", "mid", "big-worse"]


@pytest.mark.parametrize("minimize_x,maximize_y", [(True, True), (False, True), (True, False)])
def test_pareto_front_matches_brute_force_on_random_points(minimize_x, maximize_y):
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(0, 30)
        # Small integer coordinates force many ties and duplicates.
        recs = [{"bytes": rng.randint(1, 8), "acc": rng.randint(0, 8) / 8} for _ in range(n)]
        if trial % 5 == 0 and recs:
            recs[0]["acc"] = float("nan")
        got = [id(r) for r in sweep.pareto_front(recs, "bytes", "acc", minimize_x, maximize_y)]
        want = brute_front(recs, "bytes", "acc", minimize_x, maximize_y)
        assert sorted(got) == sorted(id(recs[i]) for i in want), (trial, recs)
        xs = [r["bytes"] for r in sweep.pareto_front(recs, "bytes", "acc", minimize_x, maximize_y)]
        assert xs == sorted(xs)


def test_pareto_front_errors():
    with pytest.raises(ValueError, match="key 'bytes' is missing from 1 of 2 records"):
        sweep.pareto_front([{"bytes": 1, "acc": 1.0}, {"acc": 0.5}])
    with pytest.raises(ValueError, match="'acc' values must be numbers"):
        sweep.pareto_front([{"bytes": 1, "acc": "high"}])


# --------------------------------------------------------------------------- tables


RECORDS = [
    {"method": "prune", "width": 16, "seed": 0, "acc": 0.91234, "bytes": 1200},
    {"method": "prune", "width": 16, "seed": 1, "acc": 0.90111, "bytes": 1200},
    {"method": "quant", "width": 16, "seed": 0, "acc": 0.88, "bytes": 300},
    {"method": "quant", "width": 32, "seed": 0, "acc": 0.93, "bytes": 600, "note": "x"},
]


def test_select_and_unique():
    assert sweep.select(RECORDS, method="quant") == RECORDS[2:]
    assert sweep.select(RECORDS, method="prune", seed=1) == [RECORDS[1]]
    assert sweep.select(RECORDS, acc=lambda a: a > 0.905) == [RECORDS[0], RECORDS[3]]
    assert sweep.select(RECORDS, note="x") == [RECORDS[3]]  # records lacking a key: skipped
    assert sweep.unique(RECORDS, "width") == [16, 32]
    assert sweep.unique(RECORDS, "method") == ["prune", "quant"]
    assert sweep.unique([{"h": [1, 2]}, {"h": [1, 2]}, {"h": [3]}], "h") == [[1, 2], [3]]
    with pytest.raises(ValueError, match="select key 'mehtod' is in no record"):
        sweep.select(RECORDS, mehtod="prune")
    with pytest.raises(ValueError, match="key 'depth' is in no record"):
        sweep.unique(RECORDS, "depth")


def test_to_table_is_fixed_width_and_deterministic():
    text = sweep.to_table(RECORDS, ["method", "width", "acc", "bytes", "note"])
    assert text == sweep.to_table(
        [dict(r) for r in RECORDS], ["method", "width", "acc", "bytes", "note"]
    )
    lines = text.splitlines()
    assert lines == [
        "method  width     acc  bytes  note",
        "------  -----  ------  -----  ----",
        "prune      16  0.9123   1200",
        "prune      16  0.9011   1200",
        "quant      16    0.88    300",
        "quant      32    0.93    600  x",
    ]
    assert all(line == line.rstrip() for line in lines)
    # Default columns: every key in order of first appearance; floatfmt per column.
    default = sweep.to_table(RECORDS, floatfmt={"acc": ".2f"})
    assert default.splitlines()[0].split() == ["method", "width", "seed", "acc", "bytes", "note"]
    assert "0.91" in default and "0.9123" not in default
    with pytest.raises(ValueError, match="columns must be a list"):
        sweep.to_table(RECORDS, columns="acc")


def test_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    recs = [
        {
            "method": m,
            "width": w,
            "seed": s,
            "acc": float(rng.random()),
            "loss": float(rng.random()),
        }
        for m in ("a", "b")
        for w in (8, 16)
        for s in range(4)
    ]
    recs.append({"method": "c", "width": 8, "seed": 0, "acc": 0.5, "loss": 1.0})
    agg = sweep.mean_std(recs, ["method", "width"], ["acc", "loss"])
    assert [(r["method"], r["width"], r["n"]) for r in agg] == [
        ("a", 8, 4),
        ("a", 16, 4),
        ("b", 8, 4),
        ("b", 16, 4),
        ("c", 8, 1),
    ]
    for row in agg[:4]:
        members = [r for r in recs if r["method"] == row["method"] and r["width"] == row["width"]]
        for key in ("acc", "loss"):
            vals = np.array([r[key] for r in members])
            assert row[key] == pytest.approx(vals.mean(), abs=1e-12)
            assert row[f"{key}_std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
        assert "seed" not in row
    assert math.isnan(agg[4]["acc_std"])  # one run: no spread estimate
    pop = sweep.mean_std(recs, "method", "acc", ddof=0)
    a_vals = np.array([r["acc"] for r in recs if r["method"] == "a"])
    assert pop[0]["acc_std"] == pytest.approx(a_vals.std(), abs=1e-12)
    assert pop[2]["acc_std"] == 0.0
    with pytest.raises(ValueError, match="value must differ from group_by"):
        sweep.mean_std(recs, "acc", "acc")
    with pytest.raises(ValueError, match="'method' values must be numbers"):
        sweep.mean_std(recs, "width", "method")


def _square_in_worker(x: int, delay: float = 0.0) -> dict:
    """Module-level, so worker processes can import it: x², and which process computed it."""
    import time

    time.sleep(delay)
    if x < 0:
        raise ValueError(f"x must be >= 0; got {x}")
    return {"y": x * x, "pid": os.getpid()}


def test_run_in_worker_processes_matches_one_process_and_caches(isolated):
    points = sweep.grid(x=[0, 1, 2, 3], delay=[0.2])
    parallel = sweep.run(_square_in_worker, points, name="jobs", jobs=2)
    assert [r["y"] for r in parallel] == [0, 1, 4, 9]
    pids = {r["pid"] for r in parallel}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # computed in the worker processes
    assert len(sweep_files()) == 4
    again = sweep.run(_square_in_worker, points, name="jobs", jobs=1)  # all cached: no new pid
    assert again == parallel


def test_run_in_workers_refuses_what_workers_cannot_import_and_passes_errors_on(isolated):
    with pytest.raises(ValueError, match="jobs must be"):
        sweep.run(_square_in_worker, [{"x": 1}], jobs=0)
    with pytest.raises(ValueError, match="module-level function"):
        sweep.run(lambda x: {"y": x}, [{"x": 1}, {"x": 2}], jobs=2)
    with pytest.raises(ValueError, match="x must be >= 0"):
        sweep.run(_square_in_worker, sweep.grid(x=[1, -1]), name="jobs-err", jobs=2)
