"""labkit.course.nb02_distillation: notebook 02's runs, sweep points and prepare parts."""

from __future__ import annotations

import importlib

import pytest
import torch

from labkit import distill, models, train
from labkit.course import nb02_distillation as nb02


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _gpt(n_layer: int = 4, n_head: int = 2, n_embd: int = 16, seed: int = 0) -> models.GPT:
    torch.manual_seed(seed)
    config = models.GPTConfig(
        vocab_size=11, block_size=8, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    return models.GPT(config).eval()


def _toy(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 12, generator=g)
    y = (X[:, 0, :6].sum(1) > X[:, 0, 6:].sum(1)).long() + 2 * (X[:, 0, 0] > 0).long()  # 4 classes
    return X, y


class _Text:
    """A tiny TextData stand-in: a repeating pattern the models can learn."""

    def __init__(self):
        pattern = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 40)
        self.train, self.val, self.vocab = pattern, pattern[:200], tuple("abcdefghijk")

    @property
    def vocab_size(self):
        return 11

    def get_batch(self, split, batch_size, block_size, generator=None):
        data = self.train if split == "train" else self.val
        start = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        idx = start[:, None] + torch.arange(block_size)
        return data[idx], data[idx + 1]


def test_the_small_data_sweep_pairs_hard_and_soft_targets_on_the_same_inputs_and_seeds():
    """Soft vs hard teacher targets with scarce inputs is a prepared sweep: every (inputs, seed)
    has a hard and a soft run, scarce and plentiful inputs are both there, prepare runs it."""
    from labkit import course

    points = nb02.course_points()["small"]
    hard = [
        {k: v for k, v in p.items() if k != "targets"} for p in points if p["targets"] == "hard"
    ]
    soft = [
        {k: v for k, v in p.items() if k != "targets"} for p in points if p["targets"] == "soft"
    ]
    assert hard == soft and len({p["seed"] for p in hard}) == nb02.COURSE["seeds"]
    inputs = sorted({p["num_inputs"] for p in hard})
    assert inputs[0] * 10 <= inputs[-1] == 7000  # scarce and plentiful
    step = next(s for s in course.steps() if s.name == "distill:small")
    assert step.kwargs == {"parts": ["small"]} and "model:cnn1d/mnist1d" in step.needs


def test_small_data_run_teaches_the_first_inputs_with_the_teacher_alone(monkeypatch):
    X, y = _toy(n=600)
    X = torch.cat([X, X, X, X[:, :, :4]], dim=2)  # (600, 1, 40) like mnist1d
    logits = _logits(600, 10, seed=14)

    class Data:
        X_train, y_train, X_test, y_test = X, y, X[:50], y[:50]

    seen = {}

    def fake_distill(student, teacher, data, **kw):
        seen.update(kw, teacher=teacher, data=data)

    monkeypatch.setattr(nb02, "_mnist1d_train_logits", lambda: (Data, logits))
    monkeypatch.setattr(distill, "distill", fake_distill)
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: {"acc": 0.5})
    out = nb02.small_data_run("soft", 350, seed=1, temperature=8.0, steps=300)
    assert out["acc"] == 0.5 and out["params"] == 40 * 256 + 256 + 256 * 10 + 10
    assert seen["alpha"] == 1.0 and seen["targets"] == "soft" and seen["temperature"] == 8.0
    assert torch.equal(seen["teacher"], logits[:350]) and torch.equal(seen["data"][0], X[:350])
    assert seen["batch_size"] == 256 and seen["num_epochs"] * 2 == 300  # 2 batches per epoch
    nb02.small_data_run("hard", 100, steps=300)
    assert seen["targets"] == "hard" and seen["batch_size"] == 100 and seen["num_epochs"] == 300
    with pytest.raises(ValueError, match="num_inputs must be"):
        nb02.small_data_run("soft", 601)
    with pytest.raises(ValueError, match="targets must be one of"):
        nb02.small_data_run("medium", 100)


def test_mnist1d_run_checks_method_before_any_work():
    with pytest.raises(ValueError, match="method must be one of"):
        nb02.mnist1d_run("magic")


def test_gpt_run_compares_each_block_with_the_block_it_was_initialised_from(monkeypatch):
    from labkit import data

    teacher, seen = _gpt(n_layer=4), {}
    monkeypatch.setattr(models, "pretrained", lambda *args, **kwargs: teacher)
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: _Text())
    monkeypatch.setattr(distill, "distill_lm", lambda s, t, text, **kw: seen.update(kw, s=s))
    nb02.gpt_run("init_kd_attn", steps=1)
    assert seen["attention_weight"] > 0 and seen["layer_map"] == [0, 2]
    for i, j in enumerate(seen["layer_map"]):
        for key, value in teacher.transformer.h[j].state_dict().items():
            assert torch.equal(seen["s"].transformer.h[i].state_dict()[key], value)


def test_notebook_parameters_match_the_prepared_sweeps():
    """labkit prepare computes nb02.COURSE; the notebook must ask for exactly those points."""
    from pathlib import Path

    import nbformat

    path = Path(__file__).resolve().parent.parent / "notebooks" / "02_distillation.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)
    notebook = nb02.course_points(
        params["SEEDS"], params["TEMPERATURES"], params["ALPHAS"], params["WIDTHS"],
        params["GPT_STEPS"], params["SMALL_INPUTS"], params["SMALL_TEMPERATURE"],
    )  # fmt: skip
    assert notebook == nb02.course_points()


def test_a_run_shared_by_two_sweeps_is_cached_once(monkeypatch):
    """Points are spelled out in full, so the width sweep reuses the main sweep's seed-0 runs."""
    from labkit import sweep

    seen = []
    monkeypatch.setattr(sweep, "run", lambda fn, points, **kw: seen.append(points) or [])
    points = nb02.course_points()
    for key in ("main", "temperature", "width"):
        nb02.mnist1d_sweep(points[key])
    main, temperature, width = seen
    assert all(set(p) == set(main[0]) for p in main + temperature + width)
    shared = [p for p in width if p in main]
    assert {p["method"] for p in shared} == {"scratch", "transfer_soft"}
    assert any(p in main for p in temperature)  # T=2, alpha=0.9 is the main sweep's setting
    with pytest.raises(ValueError, match="parts"):
        nb02.prepare(["nosuch"])


def test_prepare_parts_train_every_course_point_exactly_once(monkeypatch):
    """labkit prepare runs the parts in separate processes: main keeps the runs it shares with the
    temperature and width sweeps, so no run is trained twice and none is left out."""
    calls: dict[str, list[dict]] = {}

    def fake(name):
        return lambda points, progress=None: calls.setdefault(name, []).extend(points) or []

    monkeypatch.setattr(nb02, "mnist1d_sweep", fake("mnist1d"))
    monkeypatch.setattr(nb02, "gpt_sweep", fake("gpt"))
    monkeypatch.setattr(nb02, "small_sweep", fake("small"))
    for part in nb02.PARTS:
        nb02.prepare([part])
    course = nb02.course_points()
    assert calls["gpt"] == course["gpt"] and calls["small"] == course["small"]

    def key(point):
        return tuple(sorted(nb02._spelled_out(point).items()))

    trained = [key(p) for p in calls["mnist1d"]]
    wanted = {key(p) for part in ("main", "temperature", "width") for p in course[part]}
    assert len(trained) == len(set(trained)), "a shared run is trained by two parts"
    assert set(trained) == wanted
    assert nb02.prepare(["main"]) == {"main": []}  # main alone still computes all its points
    assert len(calls["mnist1d"]) == len(trained) + len(course["main"])


def test_every_step_target_is_a_function_of_its_module():
    """Every step's ``module:function`` imports: the parts run this module's ``prepare``.

    The transfer set stays the technique's ``distill.transfer_inputs``.
    """
    plan = nb02.steps()
    for step in plan:
        module, function = step.target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), step.target
    targets = {s.name: s.target for s in plan}
    assert targets.pop("distill:transfer") == "labkit.distill:transfer_inputs"
    assert set(targets) == {f"distill:{part}" for part in nb02.PARTS}
    assert set(targets.values()) == {"labkit.course.nb02_distillation:prepare"}
