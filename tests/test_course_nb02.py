"""labkit.course.nb02_distillation: notebook 02's runs, sweep points and prepare parts."""

from __future__ import annotations

import importlib

import pytest
import torch

from labkit import distill, models, train
from labkit.course import nb02_distillation as nb02
from labkit.course import nb02_figures


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
    out = nb02.small_data_run("soft", 350, seed=1, temperature=8.0, num_steps=300)
    assert out["acc"] == 0.5 and out["params"] == 40 * 256 + 256 + 256 * 10 + 10
    assert seen["alpha"] == 1.0 and seen["targets"] == "soft" and seen["temperature"] == 8.0
    assert torch.equal(seen["teacher"], logits[:350]) and torch.equal(seen["data"][0], X[:350])
    assert seen["batch_size"] == 256 and seen["num_epochs"] * 2 == 300  # 2 batches per epoch
    nb02.small_data_run("hard", 100, num_steps=300)
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
    nb02.gpt_run("init_kd_attn", num_steps=1)
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


# --------------------------------------------------------------------------- the notebook's checks


def _kd_by_hand(s, t, y, T, alpha):
    """The KD loss written out: sum_i p_t (log p_t - log p_s), mean over the batch."""
    p_t, log_p_t = torch.softmax(t / T, -1), torch.log_softmax(t / T, -1)
    kl = (p_t * (log_p_t - torch.log_softmax(s / T, -1))).sum(-1).mean()
    return alpha * T * T * kl + (1 - alpha) * torch.nn.functional.cross_entropy(s, y)


def test_check_kd_loss_passes_the_formula_and_catches_each_mistake():
    s, t = _logits(16, 10, seed=2), _logits(16, 10, seed=3)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))
    nb02_figures.check_kd_loss(_kd_by_hand, s, t, y)
    no_t2 = lambda s, t, y, T, a: _kd_by_hand(s, t, y, T, a) / (T * T if a == 1 else 1)  # noqa: E731
    per_sample = lambda s, t, y, T, a: _kd_by_hand(s, t, y, T, a).expand(2)  # noqa: E731
    swapped = lambda s, t, y, T, a: _kd_by_hand(t, s, y, T, a)  # noqa: E731
    sum_not_mean = lambda s, t, y, T, a: len(s) * _kd_by_hand(s, t, y, T, a)  # noqa: E731
    for wrong, match in [(no_t2, "T=8.0, alpha=1.0"), (per_sample, "scalar"),
                         (swapped, "T=1.0, alpha=0.5"), (sum_not_mean, "T=1.0")]:  # fmt: skip
        with pytest.raises(AssertionError, match=match):
            nb02_figures.check_kd_loss(wrong, s, t, y)


def test_check_kd_loss_checks_the_gradient():
    """A loss equal in value but detached from the student fails only the gradient check."""
    s, t = _logits(8, 5, seed=5), _logits(8, 5, seed=6)
    y = torch.zeros(8, dtype=torch.long)

    def half_gradient(s, t, y, T, a):
        loss = _kd_by_hand(s, t, y, T, a)
        return (
            loss + 0.5 * (_kd_by_hand(s.detach(), t, y, T, a) - loss) if s.requires_grad else loss
        )

    with pytest.raises(AssertionError, match="gradient"):
        nb02_figures.check_kd_loss(half_gradient, s, t, y)


def test_forward_blocks_is_the_model_through_the_chosen_blocks():
    gpt, idx = _gpt(n_layer=3), torch.randint(0, 11, (2, 8), generator=torch.Generator())
    assert torch.allclose(nb02_figures.forward_blocks(gpt, [0, 1, 2], idx), gpt(idx), atol=1e-6)
    import copy

    picked = copy.deepcopy(gpt)  # the model rebuilt with blocks 2 then 0
    picked.transformer.h = torch.nn.ModuleList([picked.transformer.h[2], picked.transformer.h[0]])
    out = nb02_figures.forward_blocks(gpt, [2, 0], idx)
    assert out.shape == (2, 8, 11) and torch.allclose(out, picked(idx), atol=1e-6)
    assert not torch.allclose(out, gpt(idx), atol=1e-3)


def test_check_init_from_teacher_passes_the_technique_and_catches_mistakes():
    teacher, idx = _gpt(n_layer=4), torch.randint(0, 11, (2, 8), generator=torch.Generator())
    nb02_figures.check_init_from_teacher(distill.init_from_teacher, teacher, idx, layers=[0, 2])
    nb02_figures.check_init_from_teacher(distill.init_from_teacher, teacher, idx, layers=[3, 1])

    def wrong_blocks(t, layers):
        return distill.init_from_teacher(t, [i + 1 for i in layers])

    def in_place(t, layers):
        t.transformer.h = torch.nn.ModuleList([t.transformer.h[i] for i in layers])
        t.config = type(t.config)(**{**vars(t.config), "n_layer": len(layers)})
        return t

    def changes_teacher(t, layers):
        student = distill.init_from_teacher(t, layers)
        with torch.no_grad():
            t.transformer.h[1].mlp.c_fc.weight.add_(1.0)  # a block the student does not use
        return student

    with pytest.raises(AssertionError, match="student != blocks 0, 2"):
        nb02_figures.check_init_from_teacher(wrong_blocks, teacher, idx, layers=[0, 2])
    with pytest.raises(AssertionError, match="teacher changed"):
        nb02_figures.check_init_from_teacher(changes_teacher, teacher, idx, layers=[0, 2])
    with pytest.raises(AssertionError, match="a new model with 2 blocks"):
        nb02_figures.check_init_from_teacher(in_place, _gpt(n_layer=4), idx, layers=[0, 2])


def _kd_step(student, teacher, optimizer, x, y, T, alpha, *, detach=True, zero=True, t2=True):
    """One distillation step; the keywords switch off one part each (the mistakes to catch)."""
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = distill.kd_loss(student(x), teacher_logits, y, temperature=T, alpha=alpha)
    if not t2:
        loss = loss / (T * T)
    if zero:
        optimizer.zero_grad()
    (loss if detach else loss + 0 * teacher(x).sum()).backward()
    optimizer.step()
    return loss.item()


def _kd_setup(seed=0):
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4))
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    return student, teacher, optimizer, x, y


def test_check_kd_train_step_passes_the_technique_and_catches_mistakes():
    nb02_figures.check_kd_train_step(_kd_step, *_kd_setup(), 4.0, 0.9)
    student, teacher, _, x, y = _kd_setup()
    adam = torch.optim.Adam(student.parameters(), lr=0.01)
    nb02_figures.check_kd_train_step(_kd_step, student, teacher, adam, x, y, 2.0, 1.0)

    def as_tensor(*args):
        _kd_step(*args)
        return torch.tensor(0.0)

    def teacher_too(student, teacher, optimizer, x, y, T, alpha):  # no torch.no_grad, both step
        log_p_s, log_p_t = (torch.log_softmax(m(x) / T, -1) for m in (student, teacher))
        kl = torch.nn.functional.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        loss = alpha * T * T * kl + (1 - alpha) * torch.nn.functional.cross_entropy(student(x), y)
        optimizer.zero_grad()
        teacher.zero_grad()
        loss.backward()
        optimizer.step()
        torch.optim.SGD(teacher.parameters(), lr=0.1).step()
        return loss.item()

    def new_optimizer(student, teacher, optimizer, x, y, T, alpha):  # loses the momentum
        fresh = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
        return _kd_step(student, teacher, fresh, x, y, T, alpha)

    mistakes = [
        (as_tensor, "Python float"),
        (lambda *a: _kd_step(*a, t2=False), "step 1: loss"),
        (lambda *a: _kd_step(*a, zero=False), "step 2: student parameter"),
        (teacher_too, "teacher changed"),
        (new_optimizer, "step 2: student parameter"),
    ]
    for wrong, match in mistakes:
        with pytest.raises(AssertionError, match=match):
            nb02_figures.check_kd_train_step(wrong, *_kd_setup(), 4.0, 0.9)


# --------------------------------------------------------------------------- the notebook's figures


def test_seed_diffs_pairs_runs_by_seed_whatever_their_order():
    runs = [
        {"method": "a", "seed": 1, "acc": 0.75, "n": 7},
        {"method": "b", "seed": 0, "acc": 0.25, "n": 3},
        {"method": "a", "seed": 0, "acc": 0.5, "n": 9},
        {"method": "b", "seed": 1, "acc": 0.5, "n": 1},
    ]
    assert nb02_figures.seed_diffs(runs, {"method": "a"}, {"method": "b"}) == [
        0.5 - 0.25,
        0.75 - 0.5,
    ]
    assert nb02_figures.seed_diffs(runs, {"method": "b"}, {"method": "a"}, key="n") == [
        3 - 9,
        1 - 7,
    ]
    with pytest.raises(ValueError, match="a and b must select the same seeds"):
        nb02_figures.seed_diffs(runs[:3], {"method": "a"}, {"method": "b"})
    with pytest.raises(ValueError, match="b must select one run per seed"):
        nb02_figures.seed_diffs(runs, {"method": "a"}, {"method": "c"})
    with pytest.raises(ValueError, match="a must select one run per seed"):
        nb02_figures.seed_diffs(runs + runs[:1], {"method": "a"}, {"method": "b"})
    with pytest.raises(TypeError, match="a must be a mapping"):
        nb02_figures.seed_diffs(runs, "a", {"method": "b"})


def test_spread_is_mean_sample_std_min_max_in_points():
    import math
    import statistics

    diffs = [0.012, -0.004, 0.031, 0.007]
    mean, std, low, high = nb02_figures.spread(diffs)
    assert mean == pytest.approx(100 * statistics.mean(diffs))
    assert std == pytest.approx(100 * statistics.stdev(diffs))
    assert (low, high) == pytest.approx((-0.4, 3.1))
    one = nb02_figures.spread([0.02])
    assert one[0] == one[2] == one[3] == pytest.approx(2.0) and math.isnan(one[1])
    with pytest.raises(ValueError, match="diffs must hold"):
        nb02_figures.spread([])


def test_main_claims_each_sentence_follows_its_own_measurement():
    acc = {"scratch": {"acc": 0.6}, "kd_same": {"acc": 0.62},
           "transfer_hard": {"acc": 0.7, "gap_closed": 0.4}}  # fmt: skip
    labels, soft = [0.1, 0.08], [0.01, -0.01]
    claims = nb02_figures.main_claims(acc, 0.9, labels, soft)
    assert len(claims) == 7 and all(claims.values())
    flipped = {  # what breaks each claim, in order
        0: dict(teacher_acc=0.65),
        1: dict(labels_effect=[0.1, 0.04]),
        2: dict(acc={**acc, "transfer_hard": {"acc": 0.7, "gap_closed": 0.2}}),
        3: dict(soft_effect=[0.025, 0.025]),
        4: dict(soft_effect=[0.035, -0.03]),
        5: dict(acc={**acc, "kd_same": {"acc": 0.645}}),
    }
    base = dict(acc=acc, teacher_acc=0.9, labels_effect=labels, soft_effect=soft)
    for i, change in flipped.items():
        holds = list(nb02_figures.main_claims(**{**base, **change}).values())
        assert not holds[i], (i, change)
    big = {**acc, "kd_same": {"acc": 0.53}}  # KD moves the mean by 7 points (down)
    assert list(nb02_figures.main_claims(big, 0.9, labels, soft).values()) == [True] * 6 + [False]
    with pytest.raises(ValueError, match="labels_effect and soft_effect"):
        nb02_figures.main_claims(acc, 0.9, [], soft)


def test_small_data_markdown_reports_each_input_count_and_the_verdict():
    runs = {("soft", 100): [0.6, 0.7], ("hard", 100): [0.4, 0.5],
            ("soft", 1000): [0.8, 0.9], ("hard", 1000): [0.85, 0.95]}  # fmt: skip
    gain = {n: nb02_figures.spread([s - h for s, h in zip(runs["soft", n], runs["hard", n])])
            for n in (100, 1000)}  # fmt: skip
    text = nb02_figures.small_data_markdown(runs, gain, 2, 8.0)
    assert "* 100 inputs: soft − hard **+20.0 ± 0.0 points** (range +20.0 to +20.0)" in text
    assert "* 1,000 inputs: soft − hard **-5.0 ± 0.0 points**" in text
    assert "at T = 8 do not help: they cost 5.0 points on average" in text
    assert "soft-target students reach 65.0%" in text and "all 1,000 reach 90.0%" in text
    gain[1000] = (1.5, 0.5, 1.0, 2.0)
    assert "help less: they add 1.5 points" in nb02_figures.small_data_markdown(runs, gain, 2, 8.0)
    close = {n: gain[n] for n in (100,)}  # most < 4 x fewest: no comparison across input counts
    assert "Unlike the speech" not in nb02_figures.small_data_markdown(runs, close, 2, 8.0)
    with pytest.raises(ValueError, match="seeds must be"):
        nb02_figures.small_data_markdown(runs, gain, 0, 8.0)
    with pytest.raises(ValueError, match="soft_gain must hold"):
        nb02_figures.small_data_markdown(runs, {}, 2, 8.0)
