"""labkit.course.nb03_pruning: notebook 03's sweep points, their wrappers, cache and grids."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import labkit
from labkit import measure, models, sweep
from labkit.course import nb03_figures, nb03_pruning
from labkit.prune import sparse
from labkit.sweep import runner

MLP_KEY = models.cache_key("mlp", "digits")
VIT_KEY = models.cache_key("vit", "digits")
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_pruning.ipynb"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def untrained_mlp(monkeypatch, tmp_data):
    """``dense_mlp`` returns a freshly built (seeded, untrained) MLP: no pretrained cache needed."""

    def build(dataset, seed):
        torch.manual_seed(seed)
        return models.build("mlp", models.RECIPES[("mlp", dataset)].config).eval()

    monkeypatch.setattr(nb03_pruning, "dense_mlp", build)
    return build


def _weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_unstructured_at_zero_keeps_every_weight_and_prunes_exactly_at_ninety(untrained_mlp):
    dense = untrained_mlp("digits", 0)
    kept = nb03_pruning.unstructured(MLP_KEY, "digits", 0, "layer", 0.0, 1, 3e-3)
    assert kept["nonzero"] == measure.count_params(dense)
    assert kept["bytes_dense"] == sparse.sparse_model_bytes(dense, "dense")
    assert kept["bytes_auto"] <= kept["bytes_dense"] < kept["bytes_bitmask"]
    assert 0.0 <= kept["acc_pruned"] <= 1.0 and 0.0 <= kept["acc"] <= 1.0

    pruned = nb03_pruning.unstructured(MLP_KEY, "digits", 0, "global", 0.9, 1, 3e-3)
    removed = round(0.9 * _weights(dense))  # torch's global_unstructured count; biases stay
    assert pruned["nonzero"] == measure.count_params(dense) - removed
    assert pruned["bytes_auto"] < kept["bytes_auto"] / 4  # the zeros are left out of the file


def test_structured_shrinks_the_hidden_layers_by_the_fraction(untrained_mlp, monkeypatch):
    trained = []

    def fake_train(dataset, seed, config=None):  # the from-scratch baseline, without 20 epochs
        trained.append(config)
        return models.build("mlp", config).eval()

    monkeypatch.setattr(nb03_pruning, "train_mlp", fake_train)
    dense_hidden = models.RECIPES[("mlp", "digits")].config.hidden  # (300, 100)
    r = nb03_pruning.structured(MLP_KEY, "digits", 1, 0.75, 1, 3e-3)
    assert r["hidden"] == [h - round(0.75 * h) for h in dense_hidden] == [75, 25]
    small = models.build("mlp", trained[0])
    assert list(trained[0].hidden) == r["hidden"]  # the baseline has the pruned shape
    assert r["params"] == measure.count_params(small)
    assert r["bytes"] == sparse.sparse_model_bytes(small, "dense")


def test_ticket_returns_the_lottery_accuracies():
    r = nb03_pruning.ticket(MLP_KEY, "digits", 0, 0.9, 1, 1, 3e-3)
    assert set(r) == {"dense", "rewind", "random", "sparsity"}
    assert r["sparsity"] == pytest.approx(0.9, abs=0.01)


def test_dense_mlp_trains_once_then_loads_the_same_weights(tmp_data, monkeypatch):
    calls = []

    def fake_train(dataset, seed, config=None):
        calls.append(seed)
        torch.manual_seed(seed)
        return models.build("mlp", models.RECIPES[("mlp", dataset)].config).eval()

    monkeypatch.setattr(nb03_pruning, "train_mlp", fake_train)
    nb03_pruning.dense_mlp.cache_clear()
    try:
        first = nb03_pruning.dense_mlp("digits", 1)
        nb03_pruning.dense_mlp.cache_clear()  # a new process: only the disk cache is left
        again = nb03_pruning.dense_mlp("digits", 1)
        assert calls == [1]
        for a, b in zip(first.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)
        (path,) = (tmp_data / "cache" / "prune").glob("mlp-digits-seed1-*.pt")
        path.write_bytes(b"not a checkpoint")  # a corrupt file is retrained, not trusted
        nb03_pruning.dense_mlp.cache_clear()
        nb03_pruning.dense_mlp("digits", 1)
        assert calls == [1, 1]
        # a loadable file with other weights fails its sha256 check: retrained too
        torch.save({k: v + 1 for k, v in first.state_dict().items()}, path)
        nb03_pruning.dense_mlp.cache_clear()
        nb03_pruning.dense_mlp("digits", 1)
        assert calls == [1, 1, 1]
    finally:
        nb03_pruning.dense_mlp.cache_clear()


def test_wrappers_pass_name_version_and_jobs_and_keep_point_order(monkeypatch):
    seen = []

    def fake_run(fn, points, **kw):
        seen.append((fn, points, kw))
        return [{**p, "result": p.get("seed", 0) * 100 + p["amount"]} for p in points]

    monkeypatch.setattr(sweep, "run", fake_run)
    points = nb03_pruning.course_points()["structured"]
    records = nb03_pruning.structured_sweep(points, jobs=2)
    assert [{k: r[k] for k in points[0]} for r in records] == points  # order of the input
    assert all(r["result"] == r["seed"] * 100 + r["amount"] for r in records)
    fn, ran, kw = seen[0]
    assert fn is nb03_pruning.structured and sorted(ran, key=points.index) == points
    assert kw == {"name": "prune-structured", "version": MLP_KEY, "progress": None, "jobs": 2}
    assert {p["seed"] for p in ran[:3]} == {0, 1, 2}  # workers start on different seeds
    names = {}
    for part in nb03_pruning.PARTS:
        records = nb03_pruning.prepare([part])[part]
        names[part] = seen[-1][2]["name"]
        assert len(records) == len(nb03_pruning.course_points()[part])
    assert names == {
        "unstructured": "prune-unstructured",
        "schedules": "prune-schedules",
        "lottery": "prune-lottery",
        "structured": "prune-structured",
        "vit": "prune-vit",
    }
    assert seen[-1][2]["version"] == VIT_KEY and seen[-1][2]["jobs"] == 1


def test_run_functions_can_go_to_worker_processes():
    for fn in (
        nb03_pruning.unstructured,
        nb03_pruning.schedules,
        nb03_pruning.ticket,
        nb03_pruning.structured,
        nb03_pruning.surgery,
    ):
        runner._check_importable(fn)  # raises for closures, lambdas and notebook functions


@pytest.mark.parametrize(
    ("wrapper", "points", "match"),
    [
        (nb03_pruning.unstructured_sweep, {"seed": 0}, "points must be a list"),
        (nb03_pruning.unstructured_sweep, [{"seed": 0}], "keys key, dataset, seed"),
        (
            nb03_pruning.vit_sweep,
            [dict(key="x", change="heads", amount=1, num_epochs=1, lr=1)],
            "key",
        ),
        (nb03_pruning.structured_sweep, "course_points", "dataset must be one of"),
        (nb03_pruning.unstructured_sweep, "scope", "scope must be one of"),
    ],
)
def test_bad_points_raise_one_line_value_errors(monkeypatch, wrapper, points, match):
    monkeypatch.setattr(sweep, "run", lambda *a, **k: pytest.fail("ran before checking"))
    if points == "course_points":
        points = [{**nb03_pruning.course_points()["structured"][0], "dataset": "cifar"}]
    elif points == "scope":
        points = [{**nb03_pruning.course_points()["unstructured"][0], "scope": "row"}]
    with pytest.raises(ValueError, match=match) as err:
        wrapper(points)
    assert "\n" not in str(err.value)


def test_bad_jobs_and_parts_raise():
    with pytest.raises(ValueError, match="jobs"):
        nb03_pruning.lottery_sweep(nb03_pruning.course_points()["lottery"], jobs=0)
    with pytest.raises(ValueError, match="parts"):
        nb03_pruning.prepare(["nosuch"])


def _assigned(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, ast.Assign):
        return {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        return {stmt.target.id}
    return set()


def _notebook_points() -> tuple[dict, dict[str, list[dict]]]:
    """The parameters cell, and the points each ``experiments.*_sweep(points, ...)`` call of the
    notebook receives: the statements that build ``points`` (and the keys) are run in order."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {"labkit": labkit}
    exec(cell.source, params)
    depth = models.RECIPES[("vit", "digits")].config.depth
    vit = SimpleNamespace(blocks=[None] * depth)  # the notebook reads only len(vit.blocks)
    scope = {**params, "sweep": sweep, "models": models, "vit": vit}
    found: dict[str, list[dict]] = {}
    for c in nb.cells:
        if c.cell_type != "code" or c.source.startswith("%"):
            continue
        wanted = {"mlp_key", "vit_key"} | ({"points"} if "experiments." in c.source else set())
        for stmt in ast.parse(c.source).body:
            if _assigned(stmt) & wanted:
                exec(compile(ast.Module([stmt], []), str(NOTEBOOK), "exec"), scope)
            for node in ast.walk(stmt):
                func = getattr(node, "func", None)
                if isinstance(func, ast.Attribute) and func.attr.endswith("_sweep"):
                    found[func.attr.removesuffix("_sweep")] = scope["points"]
    return params, found


def test_notebook_grids_are_the_prepared_sweeps():
    """labkit prepare computes course_points(); the notebook must ask for exactly those points."""
    params, found = _notebook_points()
    assert set(found) == set(nb03_pruning.PARTS)
    course = nb03_pruning.course_points()
    for part in nb03_pruning.PARTS:
        assert found[part] == course[part], part
    from_params = nb03_pruning.course_points(
        params["DATASET"], params["SEEDS"], params["AMOUNTS"], params["FT_EPOCHS"],
        params["FT_LR"], params["CHANNEL_AMOUNTS"],
    )  # fmt: skip
    assert from_params == course
    assert "JOBS" in params


def test_train_mlp_at_the_recipe_seed_reproduces_the_pretrained_model():
    """Both go through models.train_recipe: the dense baselines of all seeds share one recipe."""
    seed = models.RECIPES[("mlp", "digits")].seed
    fresh, cached = nb03_pruning.train_mlp("digits", seed), models.pretrained("mlp", "digits")
    for key, value in cached.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_steps_run_this_module_prepare_once_per_part():
    """Every step of labkit prepare for notebook 03 calls this module's prepare on one part."""
    plan = nb03_pruning.steps()
    assert sorted(part for s in plan for part in s.kwargs["parts"]) == sorted(nb03_pruning.PARTS)
    for step in plan:
        module, name = step.target.split(":")
        assert getattr(importlib.import_module(module), name) is nb03_pruning.prepare
        assert step.name == f"prune:{step.kwargs['parts'][0]}"


# --------------------------------------------------------------------------- the notebook's helpers


def _shrink_by_hand(conv1, conv2, amount, sign=-1):
    """A reference: conv1's filters ranked by L1 norm, rebuilt as new (smaller) layers.

    ``sign=-1`` keeps the largest filters (right); ``sign=1`` the smallest (a mistake)."""
    n = conv1.out_channels
    order = sorted(range(n), key=lambda i: sign * conv1.weight[i].detach().abs().sum().item())
    keep = sorted(order[: n - round(amount * n)])
    small1 = torch.nn.Conv2d(conv1.in_channels, len(keep), conv1.kernel_size, conv1.stride,
                             conv1.padding, bias=conv1.bias is not None)  # fmt: skip
    small2 = torch.nn.Conv2d(len(keep), conv2.out_channels, conv2.kernel_size, conv2.stride,
                             conv2.padding, bias=conv2.bias is not None)  # fmt: skip
    with torch.no_grad():
        small1.weight.copy_(conv1.weight[keep])
        small2.weight.copy_(conv2.weight[:, keep])
        if conv1.bias is not None:
            small1.bias.copy_(conv1.bias[keep])
        if conv2.bias is not None:
            small2.bias.copy_(conv2.bias)
    return small1, small2


def test_check_shrink_conv_pair_passes_a_correct_shrink_and_catches_mistakes():
    torch.manual_seed(0)
    c1, c2, x = (
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.Conv2d(8, 5, 3),
        torch.randn(2, 3, 7, 7),
    )
    nb03_figures.check_shrink_conv_pair(_shrink_by_hand, c1, c2, 0.5, x)
    nb03_figures.check_shrink_conv_pair(_shrink_by_hand, c1, c2, 0.25, x)
    nobias = torch.nn.Conv2d(3, 8, 3, bias=False)
    nb03_figures.check_shrink_conv_pair(_shrink_by_hand, nobias, c2, 0.5, x)

    def largest_dropped(conv1, conv2, amount):
        return _shrink_by_hand(conv1, conv2, amount, sign=1)

    def conv2_untouched(conv1, conv2, amount):
        return _shrink_by_hand(conv1, conv2, amount)[0], conv2

    def bias_lost(conv1, conv2, amount):
        s1, s2 = _shrink_by_hand(conv1, conv2, amount)
        with torch.no_grad():
            s2.bias.zero_()
        return s1, s2

    with pytest.raises(AssertionError, match="not the filters ln_structured keeps"):
        nb03_figures.check_shrink_conv_pair(largest_dropped, c1, c2, 0.5, x)
    with pytest.raises(AssertionError, match="4 filters should remain"):
        nb03_figures.check_shrink_conv_pair(conv2_untouched, c1, c2, 0.5, x)
    with pytest.raises(AssertionError, match="outputs differ"):
        nb03_figures.check_shrink_conv_pair(bias_lost, c1, c2, 0.5, x)


def _prune_by_hand(model, x, y, sparsities, steps, lr, scope="global", momentum=0.0, remask=True):
    """A reference built on labkit's masks: prune to each sparsity, SGD with the masks re-applied.

    ``scope="layer"``, ``momentum`` > 0 or ``remask=False`` are mistakes the check must catch."""
    from labkit import prune

    layers = [m for m in model.modules() if isinstance(m, prune.PRUNABLE)]
    masks = [torch.ones_like(m.weight) for m in layers]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    history = []
    for s in sparsities:
        weights = [m.weight.detach() for m in layers]
        if scope == "global":
            masks = prune.global_masks(weights, s, masks=masks)
        else:
            masks = [prune.magnitude_mask(w, s, mask=k) for w, k in zip(weights, masks)]
        for step in range(steps + 1):
            if step:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            if remask or not step:
                with torch.no_grad():
                    for m, k in zip(layers, masks):
                        m.weight.mul_(k)
        history.append([k.clone() for k in masks])
    return history


def test_check_iterative_prune_passes_a_correct_loop_and_catches_mistakes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(48, 5),
    )
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 5, (40,))
    before = [p.detach().clone() for p in net.parameters()]
    nb03_figures.check_iterative_prune(_prune_by_hand, net, x, y, [0.5, 0.8], 3, 0.5)
    nb03_figures.check_iterative_prune(_prune_by_hand, net, x, y, [0.2, 0.2, 0.9], 0, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())), "model untouched"

    def layerwise(*args):
        return _prune_by_hand(*args, scope="layer")

    def momentum(*args):
        return _prune_by_hand(*args, momentum=0.9)

    def no_remask(*args):
        return _prune_by_hand(*args, remask=False)

    def one_stage_short(model, x, y, sparsities, steps, lr):
        return _prune_by_hand(model, x, y, sparsities, steps, lr)[:-1]

    with pytest.raises(AssertionError, match="differ from torch's global_unstructured"):
        nb03_figures.check_iterative_prune(layerwise, net, x, y, [0.5, 0.8], 3, 0.5)
    with pytest.raises(AssertionError, match="differ"):
        nb03_figures.check_iterative_prune(momentum, net, x, y, [0.5, 0.8], 3, 0.5)
    with pytest.raises(AssertionError, match="not zero"):
        nb03_figures.check_iterative_prune(no_remask, net, x, y, [0.5], 3, 0.5)
    with pytest.raises(AssertionError, match="one list of masks per stage"):
        nb03_figures.check_iterative_prune(one_stage_short, net, x, y, [0.5, 0.8], 3, 0.5)


def test_batch_of_repeats_the_samples_in_order():
    X = torch.arange(12.0).view(3, 2, 2)  # (3, 2, 2)
    out = nb03_figures.batch_of(X, 7)
    assert out.shape == (7, 2, 2)
    assert torch.equal(out, torch.cat([X, X, X[:1]]))
    assert torch.equal(nb03_figures.batch_of(X, 2), X[:2])
    with pytest.raises(ValueError, match="n must be"):
        nb03_figures.batch_of(X, 0)
    with pytest.raises(ValueError, match="X must hold"):
        nb03_figures.batch_of(X[:0], 4)
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        nb03_figures.batch_of([1, 2], 4)


def test_pruned_variants_are_the_dense_model_its_zeros_and_its_smaller_copies():
    torch.manual_seed(0)
    mlp = models.build("mlp", in_features=12, hidden=(20, 10), num_classes=4)
    variants = nb03_figures.pruned_variants(mlp, [0.5, 0.9])
    assert list(variants) == ["dense", "90% unstructured", "50% channels", "90% channels"]
    assert variants["dense"] is mlp
    weights = [m.weight for m in variants["90% unstructured"].modules()
               if isinstance(m, torch.nn.Linear)]  # fmt: skip
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.9 * sum(w.numel() for w in weights))  # global magnitude, masks folded
    assert not any(
        name.endswith("_orig") for name, _ in variants["90% unstructured"].named_parameters()
    )
    hidden = [
        m.out_features for m in variants["50% channels"].modules() if isinstance(m, torch.nn.Linear)
    ]
    assert hidden == [10, 5, 4]  # half of each hidden layer, the classes kept
    assert measure.count_params(variants["90% channels"]) < measure.count_params(
        variants["50% channels"]
    )
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        nb03_figures.pruned_variants("mlp", [0.5])


def test_time_variants_times_each_group_at_each_batch(monkeypatch):
    calls = []

    def fake(variants, inputs, **kwargs):
        calls.append((list(variants), inputs.shape[0], kwargs))
        return {name: {"median_ms": float(len(name)), "speedup": 1.0} for name in variants}

    monkeypatch.setattr(measure, "compare_latency", fake)
    a, b = {"dense": torch.nn.Identity(), "small": torch.nn.Identity()}, {"d": torch.nn.Identity()}
    timings = nb03_figures.time_variants({"a": (a, torch.zeros(3, 2)), "b": (b, torch.zeros(5, 4))},
                                         [1, 8], threads=2)  # fmt: skip
    assert list(timings) == [("a", "dense", 1), ("a", "small", 1), ("a", "dense", 8),
                             ("a", "small", 8), ("b", "d", 1), ("b", "d", 8)]  # fmt: skip
    assert timings[("a", "small", 8)]["median_ms"] == 5.0
    assert [c[1] for c in calls] == [1, 8, 1, 8]  # batches drawn by batch_of
    assert calls[0][2] == {"threads": 2, "repeats": 30, "min_time_s": 0.3}
    with pytest.raises(TypeError, match="groups must be a mapping"):
        nb03_figures.time_variants([("a", (a, torch.zeros(3, 2)))], [1])


def test_latency_curve_pairs_each_model_with_its_timing():
    latency = {"dense": 4.0, "90% unstructured": 3.9, "50% channels": 2.0, "90% channels": 1.0}
    summary = [{"scope": "global", "amount": 0.9, "acc": 0.8},
               {"scope": "global", "amount": 0.5, "acc": 0.85},
               {"scope": "layer", "amount": 0.9, "acc": 0.7}]  # fmt: skip
    channels = [{"amount": 0.5, "acc": 0.84, "acc_scratch": 0.83},
                {"amount": 0.9, "acc": 0.6, "acc_scratch": 0.65}]  # fmt: skip
    curve = nb03_figures.latency_curve(latency, 0.86, summary, channels)
    assert [(r["method"], r["latency_ms"], r["acc"]) for r in curve] == [
        ("dense", 4.0, 0.86),
        ("unstructured (masked dense)", 3.9, 0.8),
        ("channels pruned + fine-tuned", 2.0, 0.84),
        ("channels pruned + fine-tuned", 1.0, 0.6),
        ("smaller dense, from scratch", 2.0, 0.83),
        ("smaller dense, from scratch", 1.0, 0.65),
    ]


def test_results_markdown_reports_the_run_figures():
    t = {(m, v, b): {"speedup": s}
         for (m, v, b), s in {("dscnn", "50% channels", 64): 1.8, ("mlp", "50% channels", 64): 1.5,
                              ("mlp", "90% unstructured", 64): 1.01,
                              ("dscnn", "90% unstructured", 64): 0.98,
                              ("dscnn", "50% channels", 1): 1.2,
                              ("mlp", "50% channels", 1): 1.1}.items()}  # fmt: skip
    best = {"amount": 0.9, "acc": 0.95, "acc_std": 0.004, "bytes_auto": 20_000}
    dense = {"acc_pruned": 0.96, "acc_pruned_std": 0.003}
    channels = [{"amount": 0.5, "acc": 0.9, "acc_scratch": 0.91},
                {"amount": 0.9, "acc": 0.7, "acc_scratch": 0.75}]  # fmt: skip
    text = nb03_figures.results_markdown(best, {"amount": 0.8}, dense, 100_000, t, channels,
                                         seeds=3, threads=1, batch=64)  # fmt: skip
    for piece in ["(3 seeds, 1 thread(s))", "**90% sparsity** (95.0% ± 0.4% against 96.0% ± 0.3%",
                  "held to 80%", "**5.0× fewer bytes** (20,000 against 100,000)",
                  "DSCNN **1.80×** and the MLP **1.50×** faster at batch 64",
                  "(1.20× and 1.10× at batch 1)", "gave 1.01× (MLP) and 0.98× (DSCNN)",
                  "With 90% of the neurons removed, the fine-tuned MLP reached 70.0%",
                  "from scratch 75.0%."]:  # fmt: skip
        assert piece in text, piece
    with pytest.raises(ValueError, match="seeds must be"):
        nb03_figures.results_markdown(
            best, best, dense, 1, t, channels, seeds=0, threads=1, batch=64
        )
