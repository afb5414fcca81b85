"""Notebook 06's cached experiments: the sweep points, the prepare parts and the steps."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from labkit import dynamic
from labkit.course import nb06_dynamic


def test_course_parts_cover_every_point_once():
    points = nb06_dynamic.course_points(2)
    assert len(points["exits"]) == 6 and {p["seed"] for p in points["exits"]} == {0, 1}
    parts = {}
    for kind, pts in points.items():
        for p in pts:
            parts.setdefault(nb06_dynamic._part(kind, p), []).append((kind, p))
    assert set(parts) == set(nb06_dynamic.PARTS)
    # the slimmable net serves every width; the full-width static net is the plain baseline
    assert len(parts["slim"]) == len(nb06_dynamic.COURSE["widths"])
    assert {kind for kind, _ in parts["plain"]} == {"exits", "width"}
    extra = 1 + len(nb06_dynamic.COURSE["balances"])  # the wide dense layer, the balancing weights
    assert len(parts["moe"]) == len(points["moe"]) == len(nb06_dynamic.COURSE["moe"]) + extra
    with pytest.raises(ValueError, match="parts must be one of"):
        nb06_dynamic.prepare(["nope"])


def test_course_epochs_are_the_defaults_the_notebook_uses():
    """Notebook 06 calls ``pretrained_slimmable()`` with its defaults: they must load the model the
    sweep cached, not train another one."""
    for name, fn in (
        ("slim_epochs", dynamic.pretrained_slimmable),
        ("moe_epochs", dynamic.pretrained_moe),
    ):
        default = inspect.signature(fn).parameters["num_epochs"].default
        assert default == nb06_dynamic.COURSE[name], name


def test_steps_prepare_every_part_once_through_this_module():
    steps = nb06_dynamic.steps()
    assert [s.kwargs["parts"] for s in steps] == [[p] for p in nb06_dynamic.PARTS]
    for step in steps:
        module, function = step.target.split(":")
        assert (module, function) == ("labkit.course.nb06_dynamic", "prepare")
        assert step.name == f"dynamic:{step.kwargs['parts'][0]}"
        # slim and moe start from the plain CNN, so they wait for its step
        assert ("dynamic:plain" in step.needs) == (step.kwargs["parts"][0] in ("slim", "moe"))


def test_sweep_versions_follow_the_course_and_the_model_version(monkeypatch):
    before = {kind: nb06_dynamic._sweep_version(kind) for kind in nb06_dynamic.SWEEP_VERSIONS}
    monkeypatch.setitem(nb06_dynamic.COURSE, "tolerance", 0.02)
    assert all(nb06_dynamic._sweep_version(k) != v for k, v in before.items())
    monkeypatch.undo()
    monkeypatch.setattr(dynamic, "VERSION", dynamic.VERSION + 1)
    assert all(nb06_dynamic._sweep_version(k) != v for k, v in before.items())
    monkeypatch.undo()
    assert {k: nb06_dynamic._sweep_version(k) for k in before} == before


def test_plot_exits_shows_the_report_on_its_curve():
    import matplotlib.pyplot as plt

    curve = [{"macs": m, "acc": a} for m, a in ((100, 0.5), (200, 0.8), (300, 0.9))]
    report = {"exit_fraction": [0.5, 0.3, 0.2], "macs": 200.0, "acc": 0.8}
    fig = nb06_dynamic.plot_exits(report, curve, plain_macs=400.0, title="t")
    left, right = fig.axes
    assert [p.get_height() for p in left.patches] == report["exit_fraction"]
    marked = right.lines[1]
    assert list(marked.get_xdata()) == [200.0] and list(marked.get_ydata()) == [0.8]
    assert "50% saved" in right.get_title()
    plt.close(fig)


def test_plot_moe_draws_each_top_k_over_the_expert_counts_and_the_wide_layer():
    import matplotlib.pyplot as plt

    hidden, balance = nb06_dynamic.COURSE["moe_hidden"], nb06_dynamic.COURSE["balance"]

    def rec(n, k, h=hidden, b=balance):
        return {"n_experts": n, "top_k": k, "hidden": h, "balance": b, "moe_active": n * k,
                "acc": 0.5 + n / 100}  # fmt: skip

    records = [rec(8, 1), rec(1, 1), rec(4, 1), rec(8, 2), rec(1, 1, h=4 * hidden), rec(8, 1, b=0)]
    ax = nb06_dynamic.plot_moe(records)
    top1, top2, wide = ax.lines
    assert list(top1.get_xdata()) == [1, 4, 8]  # sorted by experts; the other balance left out
    assert list(top2.get_xdata()) == [16]
    assert "4 experts' parameters" in wide.get_label()
    plt.close(ax.figure)


def _switch_step(router, experts, x, target, optimizer, *, gate="prob"):
    """A top-1 Switch step through dynamic.MoE's own forward, or with a wrong gate."""
    if gate == "prob":
        layer = dynamic.MoE(x.shape[1], 4, len(experts), top_k=1)
        layer.router, layer.experts = router, experts
        out = layer(x)
    else:
        probs = router(x).softmax(-1)
        gates, chosen = probs.max(-1)
        gates = {"one": torch.ones_like(gates), "detached": gates.detach()}[gate]
        out = torch.stack([experts[int(e)](x[i]) for i, e in enumerate(chosen)]) * gates[:, None]
    loss = F.mse_loss(out, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _switch_setup(seed=0):
    torch.manual_seed(seed)
    layer = dynamic.MoE(dim=6, hidden=4, n_experts=3, top_k=1)
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g)
    return layer, x, target, torch.optim.SGD(layer.parameters(), lr=0.2, momentum=0.9)


def test_check_switch_step_passes_the_switch_layer_and_catches_a_gate_without_gradient():
    nb06_dynamic.check_switch_step(_switch_step, *_switch_setup())
    for gate in ("one", "detached"):
        with pytest.raises(AssertionError, match="router did not learn"):
            nb06_dynamic.check_switch_step(
                lambda *a, gate=gate: _switch_step(*a, gate=gate), *_switch_setup()
            )

    def soft_mixture(router, experts, x, target, optimizer):  # every expert, not the top-1
        probs = router(x).softmax(-1)
        out = sum(probs[:, e, None] * expert(x) for e, expert in enumerate(experts))
        loss = F.mse_loss(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    with pytest.raises(AssertionError, match="step 1: loss"):
        nb06_dynamic.check_switch_step(soft_mixture, *_switch_setup())


def test_clustered_experts_reward_the_right_expert_and_a_learning_router_finds_it():
    x, cluster, target, experts = nb06_dynamic.clustered_experts(torch.Generator().manual_seed(1))
    assert x.shape == target.shape == (256, 8) and not any(
        p.requires_grad for p in experts.parameters()
    )
    errors = torch.stack([((e(x) - target) ** 2).sum(-1) for e in experts], 1)  # (n, E)
    assert torch.equal(errors.argmin(-1), cluster)  # each input's own expert is exact
    router = torch.nn.Linear(8, 4, bias=False)
    router.weight.data = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)) * 0.1
    at_init = (router(x).argmax(-1) == cluster).double().mean().item()  # where no gradient stays
    adam = torch.optim.Adam(router.parameters(), lr=0.05)
    for _ in range(50):
        _switch_step(router, experts, x, target, adam)
    learnt = (router(x).argmax(-1) == cluster).double().mean().item()
    assert learnt > 0.6 and learnt > at_init + 0.2, (at_init, learnt)
