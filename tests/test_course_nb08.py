"""Notebook 08's course code: the staged pipeline and its cache, the checker, CO2, the step."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit import course, data, distill, models, prune, quant, ship, train
from labkit.course import nb08_capstone
from labkit.grading.source import read_notebook
from labkit.grading.workbook import release_notebook

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CNN = models.CNN1dConfig(channels=(6, 8, 8))


def _cnn(seed: int = 0, config: models.CNN1dConfig = CNN) -> nn.Module:
    torch.manual_seed(seed)
    model = models.CNN1d(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _signals(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 40, generator=torch.Generator().manual_seed(seed))


def _tiny_data(seed: int = 0) -> data.ArrayData:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(160, 1, 40, generator=g)
    y = torch.randint(0, 10, (160,), generator=g)
    return data.ArrayData(
        "tiny",
        X[:96],
        y[:96],
        X[96:112],
        y[96:112],
        X[112:],
        y[112:],
        10,
        (1, 40),
        tuple(str(c) for c in range(10)),
    )


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --------------------------------------------------------------------------- the pipeline


TINY = nb08_capstone.PipelineConfig(
    channels=(8, 8, 8), distill_epochs=1, prune_epochs=1, qat_epochs=1, batch_size=32
)


@pytest.fixture
def tiny_inputs(tmp_data, monkeypatch):
    """A small random teacher and dataset instead of the real ones; the cache in a temp dir."""
    teacher = _cnn(config=models.CNN1dConfig(channels=(12, 12, 12)))
    ds = _tiny_data()
    monkeypatch.setattr(nb08_capstone, "_inputs", lambda: (teacher, ds))
    monkeypatch.setattr(nb08_capstone, "_transfer", lambda: _signals(32, seed=5))
    calls = []
    real = nb08_capstone.train_stages

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nb08_capstone, "train_stages", counted)
    return ds, calls


def test_stages_really_compress_and_are_measured(tiny_inputs):
    ds, _ = tiny_inputs
    pipe = nb08_capstone.pipeline(TINY)
    assert list(pipe.stages) == list(nb08_capstone.STAGES)
    rows = nb08_capstone.stage_records(pipe, ds)
    sizes = [r["bytes"] for r in rows]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), f"bytes must drop at every stage: {sizes}"
    for r in rows:  # the accuracy of the file read back is the stage model's own accuracy
        model = pipe.stages[r["stage"]]
        assert r["bytes"] == len(ship.to_bytes(model))
        if r["stage"] in ("int8", "lowbit"):
            assert r["acc"] == train.evaluate(model, ds)["acc"]
    weights = [m.weight for m in pipe.stages["pruned"].modules() if isinstance(m, prune.PRUNABLE)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(TINY.amount * sum(w.numel() for w in weights))
    low = pipe.stages["lowbit"]
    for name, m in quant.quantized_layers(low).items():  # QAT kept every pruned weight at zero
        pruned_w = pipe.stages["pruned"].get_submodule(name).weight
        assert torch.all(m.layer.weight[pruned_w == 0] == 0), name
    assert set(pipe.cpu_seconds) == {"distilled", "pruned", "lowbit"}


def test_second_call_reads_the_cache_and_a_corrupt_file_retrains(tiny_inputs):
    from labkit import utils

    ds, calls = tiny_inputs
    first = nb08_capstone.pipeline(TINY)
    (path,) = utils.cache_dir("capstone").glob("pipeline-*.pt")
    second = nb08_capstone.pipeline(TINY)
    assert len(calls) == 1, "the second call must not retrain"
    for stage in nb08_capstone.STAGES:
        torch.testing.assert_close(
            _outputs(second.stages[stage], ds.X_test),
            _outputs(first.stages[stage], ds.X_test),
            rtol=0,
            atol=0,
        )
    assert second.cpu_seconds == first.cpu_seconds
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.warns(UserWarning, match="unusable"):
        nb08_capstone.pipeline(TINY)
    assert len(calls) == 2, "a corrupt cache file is retrained"
    nb08_capstone.pipeline(dataclasses.replace(TINY, amount=0.25))
    assert len(calls) == 3, "another config is another cache entry"


# --------------------------------------------------------------------------- the challenge


def test_check_reports_the_file_size_an_independent_accuracy_and_points(tmp_path):
    qmodel = quant.quantize(
        _cnn(), quant.QuantConfig(bits=4, act_bits=None, granularity="per_channel")
    )
    path = ship.save(qmodel, tmp_path / "submission.lkc")
    X = _signals(200, seed=3)
    y = _outputs(qmodel, X).argmax(-1)
    y[::20] = (y[::20] + 1) % 10  # 10 of the 200 labels wrong
    result = nb08_capstone.check(path, budget_bytes=10**6, heldout=(X, y))
    assert result["bytes"] == path.stat().st_size == len(ship.to_bytes(qmodel))
    independent = (_outputs(qmodel, X).argmax(-1) == y).double().mean().item()
    assert independent == pytest.approx(190 / 200)
    assert result["acc"] == pytest.approx(independent, abs=1e-12)
    assert result["fits"] and result["points"] == pytest.approx(4.0)  # 0.95 = a_ref: all 4
    tight = nb08_capstone.check(path, budget_bytes=result["bytes"] - 1, heldout=(X, y))
    assert not tight["fits"] and tight["points"] == 0 and tight["acc"] == result["acc"]
    assert nb08_capstone.CHALLENGE["budget_bytes"] == 8_000
    with pytest.raises(TypeError):
        nb08_capstone.CHALLENGE["budget_bytes"] = 10**9  # read-only: a notebook cannot loosen it


def test_challenge_score_matches_hand_computed_points():
    score = nb08_capstone.challenge_score
    # 4 * (a - 0.90) / 0.05 under the default budget of 8,000 bytes
    assert score(0.93, 7_500) == pytest.approx(2.4)
    assert score(0.9125, 8_000) == pytest.approx(1.0)  # exactly at the budget still counts
    assert score(0.95, 100) == pytest.approx(4.0) and score(0.99, 100) == 4.0  # capped
    assert score(0.90, 100) == 0.0 and score(0.10, 100) == 0.0  # at or below a_min: nothing
    assert score(0.99, 8_001) == 0.0  # over budget: nothing, however accurate
    custom = dict(budget_bytes=1_000, a_min=0.5, a_ref=0.9, points=10)
    assert score(0.6, 999, **custom) == pytest.approx(2.5)  # 10 * 0.1 / 0.4
    grid = [i / 1000 for i in range(850, 1001)]
    points = [score(a, 5_000) for a in grid]
    assert all(p <= q for p, q in zip(points, points[1:])), "monotone in accuracy"
    for kwargs, word in [
        ({"acc": 1.5, "size": 10}, "acc"),
        ({"acc": 0.9, "size": -1}, "size"),
        ({"acc": 0.9, "size": 10, "a_min": 0.95}, "a_ref"),
        ({"acc": 0.9, "size": 10, "points": 0}, "points"),
        ({"acc": 0.9, "size": 10, "budget_bytes": 0}, "budget_bytes"),
    ]:
        with pytest.raises(ValueError, match=word) as err:
            score(**kwargs)
        _one_line(err)


def test_check_evaluates_on_the_validation_split_not_the_test_split(tmp_path, monkeypatch):
    # a model that is right on every validation signal and wrong on every test signal
    model = _cnn()
    ds = _tiny_data()
    val_pred = _outputs(model, ds.X_val).argmax(-1)
    test_wrong = (_outputs(model, ds.X_test).argmax(-1) + 1) % 10
    ds = dataclasses.replace(ds, y_val=val_pred, y_test=test_wrong)
    monkeypatch.setattr(nb08_capstone.data, "load", lambda *a, **k: ds)
    path = ship.save(model, tmp_path / "submission.lkc")
    result = nb08_capstone.check(path, budget_bytes=10**6)
    assert result["acc"] == 1.0 and result["points"] == 4
    graded = nb08_capstone.check(path, budget_bytes=10**6, heldout=ds.split("test"))
    assert graded["acc"] == 0.0 and graded["points"] == 0


def _hidden_seed() -> int:
    """The seed of the hidden split, as the notebook's hidden test draws it."""
    path = Path(__file__).resolve().parent.parent / "notebooks" / "08_capstone.ipynb"
    text = "\n".join(c.source for c in read_notebook(path).cells)
    (seed,) = re.findall(r"hidden_split\(seed=([\d_]+)\)", text)
    return int(seed)


def _rows(X: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in X.reshape(len(X), -1)}


def test_hidden_split_is_drawn_fresh_and_never_cached(tmp_data):
    tmp_data.mkdir(parents=True, exist_ok=True)
    X, y = nb08_capstone.hidden_split(_hidden_seed(), num_samples=200)
    assert not [p for p in tmp_data.rglob("*") if p.is_file()], "nothing may reach the cache"
    assert X.shape == (200, 1, 40) and X.dtype == torch.float32
    assert y.shape == (200,) and y.dtype == torch.int64
    X2, y2 = nb08_capstone.hidden_split(_hidden_seed(), num_samples=200)
    assert torch.equal(X, X2) and torch.equal(y, y2)  # the seed decides, nothing else
    for kwargs, word in [({"seed": 0}, "seed"), ({"seed": 1}, "seed"), ({"seed": -3}, "seed"),
                         ({"seed": 5, "num_samples": 105}, "num_samples")]:  # fmt: skip
        with pytest.raises(ValueError, match=word) as err:
            nb08_capstone.hidden_split(**kwargs)
        _one_line(err)


def test_hidden_split_shares_no_signal_with_the_course_data():
    X, y = nb08_capstone.hidden_split(_hidden_seed())
    assert X.shape == (nb08_capstone.HIDDEN_SAMPLES, 1, 40)
    # the same distribution as the course's data: every class near a tenth of the signals
    counts = torch.bincount(y, minlength=10).double() / len(y)
    assert counts.min() > 0.08 and counts.max() < 0.12, counts
    ds = data.load(nb08_capstone.DATASET)
    transfer = distill.transfer_inputs(nb08_capstone.DATASET, **nb08_capstone.TRANSFER)
    seen = torch.cat([ds.X_train, ds.X_val, ds.X_test, transfer])
    course = _rows(seen)
    assert len(course) == len(seen), "the course's own signals are distinct"
    assert len(_rows(X)) == len(X) and not _rows(X) & course, "a hidden signal is a course one"


def test_released_notebook_shows_neither_the_recipe_nor_a_test_split_evaluation():
    path = Path(__file__).resolve().parent.parent / "notebooks" / "08_capstone.ipynb"
    source = read_notebook(path)
    workbook = release_notebook(source, path.name)
    text = "\n".join(cell.source for cell in workbook.cells)
    markdown = "\n".join(c.source for c in workbook.cells if c.cell_type == "markdown")
    # the reference solution lives only in its solution region, which release strips
    (cell,) = [
        c
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ex3-challenge-solution"
    ]
    region = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
    steps = [line.split("#")[0].strip() for line in region.splitlines()]
    steps = [s for s in steps if any(k in s for k in ("prune.", "quant", "distill.", "bits"))]
    assert steps, region
    assert not [s for s in steps if s in text], "the workbook repeats the reference solution"
    for phrase in ("reference solution", "5 bits per weight", "about 9 KB"):
        assert phrase not in markdown, f"the workbook's prose gives the recipe away: {phrase!r}"
    # nothing in the workbook evaluates on the test split: the checker's default is validation,
    # and the graded test split appears only in the hidden tests
    for needle in ('split("test")', "split('test')", "split=", "X_test", "y_test", "heldout"):
        assert needle not in text, f"the workbook touches the test split: {needle!r}"


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_bad_input_gives_one_line_errors(tmp_path, tiny_inputs):
    ds, _ = tiny_inputs
    path = ship.save(_cnn(), tmp_path / "model.lkc")
    heldout = (ds.X_test, ds.y_test)
    for kwargs, word in [
        ({"budget_bytes": 0}, "budget_bytes"),
        ({"budget_bytes": -5}, "budget"),
        ({"budget_bytes": 2.5}, "budget"),
    ]:
        with pytest.raises(ValueError, match=word) as err:
            nb08_capstone.check(path, heldout=heldout, **kwargs)
        _one_line(err)
    with pytest.raises(ValueError, match="path") as err:
        nb08_capstone.check(tmp_path / "missing.lkc", heldout=heldout)
    _one_line(err)
    (tmp_path / "junk.lkc").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ship.to_bytes") as err:
        nb08_capstone.check(tmp_path / "junk.lkc", heldout=heldout)
    _one_line(err)
    pipe = nb08_capstone.pipeline(TINY)
    with pytest.raises(ValueError, match="stage") as err:
        nb08_capstone.stage_records(pipe, ds, stages=["fp32", "int4"])
    _one_line(err)
    for kwargs, word in [
        ({"channels": ()}, "channels"),
        ({"bits": 8}, "bits"),
        ({"amount": 1.0}, "amount"),
        ({"lr": 0.0}, "lr"),
    ]:
        with pytest.raises(ValueError, match=word) as err:
            nb08_capstone.PipelineConfig(**kwargs)
        _one_line(err)
    with pytest.raises(ValueError, match="config") as err:
        nb08_capstone.pipeline({"channels": (4, 4, 4)})
    _one_line(err)


# --------------------------------------------------------------------------- labkit prepare


def test_prepare_has_a_step_after_the_models_it_reads():
    plan = {s.name: s for s in course.steps()}
    step = plan["capstone"]
    assert step.target == "labkit.course.nb08_capstone:prepare"
    for need in ("model:cnn1d/mnist1d", "model:mlp/mnist1d", "distill:transfer"):
        assert need in step.needs


def test_plot_against_earlier_annotates_only_the_pipeline(monkeypatch):
    import matplotlib.pyplot as plt

    from labkit.course import nb08_methods

    pruned = [{"method": "neurons removed (03)", "point": "50%", "acc": 0.9, "bytes": 1000}]
    monkeypatch.setattr(nb08_methods, "pruning_points", lambda: pruned)
    points = [
        {"method": "pipeline (08)", "point": "int8", "acc": 0.95, "bytes": 3000},
        {"method": "MLP scratch (02)", "point": "width 8", "acc": 0.7, "bytes": 9000},
    ]
    fig = nb08_methods.plot_against_earlier(points)
    left, right = fig.axes
    assert [t.get_text() for t in left.texts if t.get_text()] == ["int8"]
    assert left.get_ylim() == (0.5, 1.0) and right.get_ylim() == (0.8, 1.0)
    plt.close(fig)


def _exercise_cells(grade_id: str) -> tuple[str, str]:
    """The source of an exercise's solution cell and of its graded cell, hidden tests included."""
    path = Path(__file__).resolve().parent.parent / "notebooks" / "08_capstone.ipynb"
    by_id = {
        c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in read_notebook(path).cells
    }
    return by_id[f"{grade_id}-solution"], by_id[grade_id]


def _co2_mistake(solution: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert old in solution, f"the reference solution no longer contains {old!r}"
        solution = solution.replace(old, new)
    return solution


def test_co2_exercise_grades_the_method_and_rejects_plausible_mistakes():
    """Exercise 2 passes its own solution and fails the mistakes a student is likely to make."""
    from labkit import measure

    solution, graded = _exercise_cells("ex2-co2")
    mistakes = {
        "the mean of the timed calls": [("statistics.median(", "statistics.mean(")],
        "the warm-up calls timed too": [
            ("range(warmup)", "range(0)"),
            ("range(repeats)", "range(warmup + repeats)"),
        ],
        "no warm-up calls": [("range(warmup)", "range(0)")],
        "per batch, not per prediction": [("* 1000 / len(x)", "* 1000")],
        "joules to Wh, not kWh": [("/ 3.6e6", "/ 3.6e3")],
    }
    for name, edits in {"the reference": [], **mistakes}.items():
        namespace = {"torch": torch, "measure": measure}
        exec(_co2_mistake(solution, *edits), namespace)
        if not edits:
            exec(graded, namespace)  # visible and hidden tests pass
            continue
        with pytest.raises(AssertionError):
            exec(graded, namespace)
            pytest.fail(f"exercise 2 accepts {name}")


def test_co2_exercise_does_not_print_the_formula_before_it_is_solved():
    path = Path(__file__).resolve().parent.parent / "notebooks" / "08_capstone.ipynb"
    cells = release_notebook(read_notebook(path), path.name).cells
    start = next(i for i, c in enumerate(cells) if "## 5. Sustainability" in c.source)
    stub = next(
        i
        for i, c in enumerate(cells)
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ex2-co2-solution"
    )
    before = "\n".join(c.source for c in cells[start : stub + 1])
    for giveaway in ("3.6", "3600", "\\frac", "/ len(x)", "statistics.median"):
        assert giveaway not in before, f"exercise 2's workbook shows {giveaway!r}"
    after = "\n".join(c.source for c in cells[stub + 1 : stub + 4] if c.cell_type == "markdown")
    assert "3.6 \\times 10^6" in after, "the formula is explained once the exercise is done"
