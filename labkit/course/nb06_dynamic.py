"""Notebook 06 (dynamic networks): the cached experiments ``labkit prepare`` builds.

Three sweeps over the models of :mod:`labkit.dynamic`, cached by ``labkit.sweep`` as
``06-dynamic-exits``, ``06-dynamic-width`` and ``06-dynamic-moe``: :func:`course_points` lists
their points, :func:`course_results` reads them (training whatever is missing) and :func:`prepare`
fills them part by part.

Example:
    >>> from labkit.course import nb06_dynamic
    >>> nb06_dynamic.course_points()["exits"][0]
    {'weights': 'none', 'seed': 0}
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from labkit import dynamic, measure, sweep, utils
from labkit.course import Step
from labkit.utils import check_choice, check_int

__all__ = [
    "COURSE",
    "SWEEP_VERSIONS",
    "exits_run",
    "width_run",
    "moe_run",
    "course_points",
    "course_results",
    "PARTS",
    "prepare",
    "steps",
    "plot_exits",
    "plot_moe",
    "check_switch_step",
    "clustered_experts",
]

COURSE: dict[str, Any] = {
    "seeds": 1,
    "thresholds": (
        *(round(0.2 + 0.025 * i, 3) for i in range(31)),
        0.97,
        0.98,
        0.99,
        0.995,
        0.999,
    ),
    "widths": (0.25, 0.5, 0.75, 1.0),
    "slim_epochs": 5,
    "static_widths": (0.25, 0.5, 1.0),
    "moe": ((1, 1), (4, 1), (8, 1), (8, 2)),
    "moe_hidden": 64,
    "moe_epochs": 4,
    "balance": 0.01,
    "balances": (0.0, 1.0),
    "tolerance": 0.01,
}
"""What notebook 06 shows and :func:`prepare` computes: exit models per seed with a threshold
curve each and the threshold chosen on the validation split (at most ``tolerance`` below the
last head's validation accuracy, ``dynamic.choose_threshold``); slimmable (trained
``slim_epochs`` on top of the plain CNN) and static widths; MoE (experts, top-k) points with the
balancing-loss weight ``balance``, a dense layer of the same total size, and 8 experts top-1
trained with each weight in ``balances`` (none, strong); each MoE trained ``moe_epochs``."""

SWEEP_VERSIONS = {"exits": 2, "width": 1, "moe": 2}
"""Bump one to recompute that sweep of notebook 06 (exits 2: the threshold is chosen on the
validation split; moe 2: the retrained MoE models)."""


def _sweep_version(kind: str) -> str:
    return utils.stable_hash(
        {"v": dynamic.VERSION, "course": COURSE, "sweep": SWEEP_VERSIONS[kind]}
    )


def exits_run(weights: str, seed: int = 0) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-exits``: the plain CNN or one early-exit model.

    ``weights="none"`` is the plain CNN, otherwise the exit model trained with
    ``dynamic.WEIGHTS[weights]``: test accuracy per head, MACs per exit path, the max-prob
    threshold curve on the test split (accuracy, mean MACs, exit fractions) at
    ``COURSE["thresholds"]``, and the operating point: the threshold chosen on the validation
    split (``threshold``, ``val_acc``) and its test ``chosen_acc``, ``chosen_macs`` and
    ``chosen_exit_fraction`` (``dynamic.operating_point``).
    Example: ``exits_run("weighted", seed=0)["head_acc"]``
    """
    from labkit import data, train

    check_choice("weights", weights, ("none", *dynamic.WEIGHTS))
    ds = data.load("mnist1d")
    x1 = ds.X_test[:1]
    if weights == "none":
        model = dynamic.pretrained_static(seed=seed)
        acc = train.evaluate(model, ds, device="cpu")["acc"]
        macs = measure.macs(model, x1)
        params = measure.count_params(model)
        return {"acc": acc, "head_acc": [acc], "macs": macs, "path_macs": [macs], "params": params}
    model = dynamic.pretrained_exits(dynamic.WEIGHTS[weights], seed=seed)
    logits = dynamic.exit_logits(model, ds.X_test)  # (E, N, C)
    macs = dynamic.path_macs(model, x1)
    curve = [dynamic.exit_report(logits, ds.y_test, t, macs) for t in COURSE["thresholds"]]
    head_acc = curve[0]["head_acc"]
    point = dynamic.operating_point(model, ds, macs, COURSE["thresholds"], COURSE["tolerance"])
    return {
        "acc": head_acc[-1],
        "head_acc": head_acc,
        "macs": measure.macs(model, x1),  # the full network, no intermediate heads
        "path_macs": macs,
        "params": measure.count_params(model),
        "thresholds": list(COURSE["thresholds"]),
        "curve_acc": [r["acc"] for r in curve],
        "curve_macs": [r["macs"] for r in curve],
        "curve_exit_fraction": [r["exit_fraction"] for r in curve],
        "threshold": point["threshold"],
        "val_acc": point["val"]["acc"],
        "val_head_acc": point["val"]["head_acc"],
        "chosen_acc": point["test"]["acc"],
        "chosen_macs": point["test"]["macs"],
        "chosen_exit_fraction": point["test"]["exit_fraction"],
    }


def width_run(method: str, width: float, seed: int = 0) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-width``: a slimmable or a static CNN at ``width``.

    ``"slimmable"`` cuts the slimmable CNN to ``width``; ``"static"`` trains a ``CNN1d`` with that
    fraction of ``dynamic.EXIT_CONFIG``'s channels alone.
    Example: ``width_run("slimmable", 0.5)["acc"]``
    """
    from labkit import data, train

    check_choice("method", method, ("slimmable", "static"))
    ds = data.load("mnist1d")
    if method == "slimmable":
        slim = dynamic.pretrained_slimmable(
            COURSE["widths"], num_epochs=COURSE["slim_epochs"], seed=seed
        )
        model = slim.at_width(width)
    else:
        channels = tuple(dynamic.width_channels(c, width) for c in dynamic.EXIT_CONFIG.channels)
        config = (
            None if width == 1.0 else dataclasses.replace(dynamic.EXIT_CONFIG, channels=channels)
        )
        model = dynamic.pretrained_static(config=config, seed=seed)
    return {
        "acc": train.evaluate(model.eval(), ds, device="cpu")["acc"],
        "macs": measure.macs(model, ds.X_test[:1]),
        "params": measure.count_params(model),
        "channels": list(model.config.channels),
    }


def moe_run(
    n_experts: int, top_k: int, hidden: int = 64, balance: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-moe``: one ``dynamic.pretrained_moe`` model, measured.

    Its test accuracy, parameters (``dynamic.moe_params``), MACs per signal (only the experts
    that run are counted) and the expert load on the test set (fraction of routing slots per
    expert), after training (``load``) and of the same model at its initialisation
    (``init_load``: the random router).
    Example: ``moe_run(8, 2)["active"]``
    """
    from labkit import data, train

    ds = data.load("mnist1d")
    loads = []
    for trained in (True, False):
        model = dynamic.pretrained_moe(
            n_experts, top_k, hidden, balance, num_epochs=COURSE["moe_epochs"], seed=seed,
            trained=trained,
        )  # fmt: skip
        with torch.no_grad():
            model(ds.X_test)  # the load over every test token
        loads.append(model.head.moe.load.tolist())
        if trained:
            macs = measure.macs(model, ds.X_test[:1])
            acc = train.evaluate(model, ds, device="cpu")["acc"]
            params = dynamic.moe_params(model)
    load, init_load = loads
    return {
        "acc": acc,
        "macs": macs,
        **params,
        "load": load,
        "load_max": max(load),
        "init_load": init_load,
    }


_SWEEPS = {"exits": exits_run, "width": width_run, "moe": moe_run}


def course_points(seeds: int = COURSE["seeds"]) -> dict[str, list[dict]]:
    """The sweep points of notebook 06: ``exits``, ``width`` and ``moe``.

    ``exits``: plain, summed, weighted x seeds; ``width``: slimmable and static widths; ``moe``:
    experts x top-k, a dense layer as big as 4 experts, and 8 experts top-1 with the
    balancing-loss weights ``COURSE["balances"]``.
    Example: ``course_points(3)["exits"][0]  # {'weights': 'none', 'seed': 0}``
    """
    seeds = list(range(check_int("seeds", seeds, minimum=1)))
    hidden, balance = COURSE["moe_hidden"], COURSE["balance"]
    moe = [
        {"n_experts": e, "top_k": k, "hidden": hidden, "balance": balance} for e, k in COURSE["moe"]
    ]
    moe.append({"n_experts": 1, "top_k": 1, "hidden": 4 * hidden, "balance": balance})
    moe += [
        {"n_experts": 8, "top_k": 1, "hidden": hidden, "balance": b} for b in COURSE["balances"]
    ]
    return {
        "exits": sweep.grid(weights=["none", *dynamic.WEIGHTS], seed=seeds),
        "width": sweep.grid(method=["slimmable"], width=list(COURSE["widths"]))
        + sweep.grid(method=["static"], width=list(COURSE["static_widths"])),
        "moe": moe,
    }


def _sweep(kind: str, points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    return sweep.run(
        _SWEEPS[kind],
        points,
        name=f"06-dynamic-{kind}",
        version=_sweep_version(kind),
        progress=progress,
    )


def course_results(
    seeds: int = COURSE["seeds"], progress: bool | None = None
) -> dict[str, list[dict]]:
    """Records of the three sweeps at :func:`course_points`, trained where missing.

    ``sweep.run`` caches them on disk as ``06-dynamic-exits``, ``-width`` and ``-moe``; whatever
    is missing is trained here.
    Example: ``results = course_results(); results["moe"][0]["active"]``
    """
    points = course_points(seeds)
    return {kind: _sweep(kind, pts, progress) for kind, pts in points.items()}


PARTS = ("plain", "summed", "weighted", "static", "slim", "moe")
"""The units of :func:`prepare`, one per model family; ``slim`` and ``moe`` start from the plain
CNN (``plain``). ``labkit prepare`` runs them as steps in parallel worker processes."""


def _part(kind: str, point: Mapping[str, Any]) -> str:
    """The part of :func:`prepare` that computes a sweep point (the model family it trains)."""
    if kind == "exits":
        return "plain" if point["weights"] == "none" else point["weights"]
    if kind == "width":
        if point["method"] == "slimmable":
            return "slim"
        return "plain" if point["width"] == 1.0 else "static"
    return "moe"


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 06 shows, at its default parameters.

    ``parts``: some of :data:`PARTS` (default: all; ``slim`` and ``moe`` train the ``plain`` CNN
    first if it is not cached). Part of ``labkit prepare``; cold, it trains the notebook's small
    models once; instant when cached. Returns the records of each part.
    Example: ``records = prepare(["moe"])["moe"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    out: dict[str, list[dict]] = {}
    for part in parts:
        out[part] = []
        for kind, pts in points.items():
            chosen = [p for p in pts if _part(kind, p) == part]
            if chosen:
                out[part] += _sweep(kind, chosen, progress)
    return out


def steps() -> list[Step]:
    """Early-exit variants, slimmable widths and the mixture of experts."""
    costs = (
        ("plain", 7.0),
        ("summed", 8.0),
        ("weighted", 8.0),
        ("static", 8.0),
        ("slim", 10.0),
        ("moe", 14.0),
    )
    return [
        Step(
            f"dynamic:{part}",
            "labkit.course.nb06_dynamic:prepare",
            {"parts": [part]},
            needs=("data:mnist1d",) + (("dynamic:plain",) if part in ("slim", "moe") else ()),
            cost=cost,
        )
        for part, cost in costs
    ]


# --------------------------------------------------------------------------- the notebook's figures


def plot_exits(
    report: Mapping[str, Any],
    curve: Sequence[Mapping[str, Any]],
    plain_macs: float,
    title: str,
) -> Figure:
    """Two panels: the fraction of inputs leaving at each exit, and accuracy against MACs.

    Left: the fraction of inputs leaving at each exit; right: the accuracy-vs-MACs ``curve``
    (``dynamic.exit_report`` per threshold) with ``report``, one of them, marked and the plain
    network's MACs as a dotted line.
    Example: ``plot_exits(report, curve, plain_macs, "max_prob")``
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    fractions = report["exit_fraction"]
    left.bar([f"exit {i + 1}" for i in range(len(fractions))], fractions, color="tab:blue")
    for i, f in enumerate(fractions):
        left.text(i, f + 0.02, f"{f:.0%}", ha="center")
    left.set_ylim(0, 1.1)
    left.set_ylabel("fraction of test signals")
    left.set_title(title)
    right.plot([c["macs"] for c in curve], [c["acc"] for c in curve], ".-", color="0.6")
    right.plot([report["macs"]], [report["acc"]], "o", color="tab:red", markersize=9)
    right.axvline(plain_macs, color="black", ls=":", lw=1, label="plain network")
    right.set_xlabel("mean MACs per signal")
    right.set_ylabel("test accuracy")
    right.legend(fontsize=8, loc="lower right")
    saved = 1 - report["macs"] / plain_macs
    right.set_title(f"accuracy {report['acc']:.3f}, {report['macs']:.0f} MACs ({saved:.0%} saved)")
    fig.tight_layout()
    return fig


def plot_moe(records: Sequence[Mapping[str, Any]], hidden: int | None = None) -> Axes:
    """MoE accuracy against the active parameters of the MoE layer.

    Top-1 and top-2 lines over the expert counts (experts of ``hidden`` units, default
    ``COURSE["moe_hidden"]``, trained with the default balancing weight), and the wide dense layer
    as a square.
    Example: ``plot_moe(course_results()["moe"])``
    """
    hidden = COURSE["moe_hidden"] if hidden is None else hidden
    _, ax = plt.subplots(figsize=(7, 4))
    for k, color in ((1, "tab:blue"), (2, "tab:orange")):
        line = sweep.select(records, top_k=k, hidden=hidden, balance=COURSE["balance"])
        line = sorted(line, key=lambda r: r["n_experts"])
        xs, ys = [r["moe_active"] for r in line], [r["acc"] for r in line]
        ax.plot(xs, ys, "o-", color=color, label=f"top-{k}")
        for r in line:
            ax.annotate(
                f"E={r['n_experts']}",
                (r["moe_active"], r["acc"]),
                textcoords="offset points",
                xytext=(6, -3),
                fontsize=8,
            )
    for wide in sweep.select(records, n_experts=1, top_k=1):
        if wide["hidden"] != hidden:
            per = wide["hidden"] // hidden
            label = f"dense, hidden {wide['hidden']} (= {per} experts' parameters)"
            ax.plot(wide["moe_active"], wide["acc"], "s", color="black", label=label)
    ax.set_xlabel("active parameters per token in the MoE layer (router + k experts)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title("MoE: quality vs active compute")
    ax.figure.tight_layout()
    return ax


# --------------------------------------------------------------------------- the notebook's checks


def _require(condition: Any, message: str) -> None:
    """Raise AssertionError(message) unless ``condition`` (a graded check, even under -O)."""
    if not condition:
        raise AssertionError(message)


def check_switch_step(
    switch_step: Callable[..., float],
    moe: dynamic.MoE,
    x: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    num_steps: int = 3,
) -> None:
    """Check ``switch_step(router, experts, x, target, optimizer)`` against ``dynamic.MoE``.

    ``moe`` is a top-1 :class:`labkit.dynamic.MoE` and ``optimizer`` a fresh optimizer over its
    parameters; the student's step gets ``moe.router`` and ``moe.experts``. A deep copy of both
    takes the same ``num_steps`` steps on ``F.mse_loss(moe(x), target)``. The router must change at
    the first step (its gate carries gradient); after every step the returned loss (a Python
    float) must be the twin's loss before its step and every parameter the twin's. Raises
    AssertionError naming what differs.

    Example:
        >>> moe = dynamic.MoE(dim=4, hidden=8, n_experts=3, top_k=1)
        >>> def step(router, experts, x, target, optimizer):
        ...     parent = dynamic.MoE(4, 8, 3, 1)
        ...     parent.router, parent.experts = router, experts
        ...     loss = F.mse_loss(parent(x), target)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        ...     return loss.item()
        >>> opt = torch.optim.SGD(moe.parameters(), lr=0.5)
        >>> check_switch_step(step, moe, torch.randn(16, 4), torch.randn(16, 4), opt)
    """
    _require(moe.top_k == 1, "check_switch_step needs a top-1 MoE")
    twin, twin_optimizer = copy.deepcopy((moe, optimizer))  # shares params with its optimizer
    router_before = moe.router.weight.detach().clone()
    for step in range(1, num_steps + 1):
        loss = switch_step(moe.router, moe.experts, x, target, optimizer)
        _require(isinstance(loss, float), f"return the loss as a Python float, not {type(loss)}")
        reference = F.mse_loss(twin(x), target)
        twin_optimizer.zero_grad()
        reference.backward()
        twin_optimizer.step()
        _require(
            step > 1 or not torch.equal(moe.router.weight, router_before),
            "the router did not learn: scale the chosen expert's output by its softmax "
            "probability (a gate that carries gradient), not by 1",
        )
        _require(
            math.isclose(loss, reference.item(), rel_tol=1e-5, abs_tol=1e-6),
            f"step {step}: loss {loss:.6f}, dynamic.MoE's top-1 layer gives {reference.item():.6f}",
        )
        for (name, p), q in zip(moe.named_parameters(), twin.parameters()):
            _require(
                torch.allclose(p, q, atol=1e-5),
                f"step {step}: {name} differs from one optimizer step through dynamic.MoE",
            )


def clustered_experts(
    generator: torch.Generator, num_samples: int = 256, dim: int = 8, n_experts: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.ModuleList]:
    """A routing task where expert ``e`` is right exactly for the inputs of cluster ``e``.

    ``num_samples`` inputs of ``dim`` features around ``n_experts`` random centres; expert ``e``
    is a bias-free linear map writing only to its own block of ``dim // n_experts`` output
    features, and an input's target is its own cluster's expert's output. A wrong expert
    therefore only adds error, and a router that learns from the task loss routes each cluster
    to its expert.
    Returns ``(x (N, dim), cluster (N,), target (N, dim), experts)``; the experts are frozen.

    Example:
        >>> x, cluster, target, experts = clustered_experts(torch.Generator().manual_seed(0))
        >>> torch.allclose(target[0], experts[int(cluster[0])](x[0]))
        True
    """
    check_int("n_experts", n_experts, minimum=1, maximum=dim)
    centers = torch.randn(n_experts, dim, generator=generator) * 3
    cluster = torch.randint(0, n_experts, (num_samples,), generator=generator)
    x = centers[cluster] + torch.randn(num_samples, dim, generator=generator)
    block = dim // n_experts
    experts = torch.nn.ModuleList(
        torch.nn.Linear(dim, dim, bias=False) for _ in range(n_experts)
    ).requires_grad_(False)
    for e, expert in enumerate(experts):
        rows = torch.zeros(dim, 1)
        rows[e * block : (e + 1) * block] = 1  # expert e writes to its own block only
        expert.weight.copy_(torch.randn(dim, dim, generator=generator) * rows / dim**0.5)
    with torch.no_grad():
        outputs = torch.stack([expert(x) for expert in experts], dim=1)  # (N, E, dim)
    return x, cluster, outputs[torch.arange(num_samples), cluster], experts
