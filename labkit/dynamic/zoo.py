"""Trained dynamic models, cached on disk: early-exit, static, slimmable and MoE networks.

Each ``pretrained_*`` builder trains its model once (recipes derived from the zoo's cnn1d recipe)
and caches the weights under ``cache_dir("dynamic")`` (sha256-verified), keyed by everything that
shapes them; :data:`VERSION` and :data:`MOE_VERSION` invalidate them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from labkit import models, utils
from labkit.dynamic.exits import EXIT_CONFIG, EarlyExitCNN1d, _weights, fit_exits
from labkit.dynamic.moe import MoEHead, fit_moe
from labkit.dynamic.slimmable import SlimmableCNN1d, fit_slimmable
from labkit.models import CNN1d, CNN1dConfig
from labkit.utils import check_int

VERSION = 3
"""Bump to invalidate every model this module cached (sweeps over them key on it too)."""

MOE_VERSION = 2
"""Bump to retrain the cached MoE models alone (2: top-1 gates are the router's softmax
probability, so the router learns from the task loss)."""


def _build(spec: Mapping[str, Any], build: Callable[[], nn.Module]) -> nn.Module:
    """The untrained model: ``build()`` seeded with ``spec["seed"]``, the global RNG untouched."""
    with utils.seeded(spec["seed"]):
        return build()


def _cached(
    kind: str, spec: Mapping[str, Any], build: Callable[[], nn.Module], fit: Callable
) -> nn.Module:
    """Build with ``seed`` from spec, then load cached weights or train with ``fit`` and save."""
    key = utils.stable_hash(
        {"kind": kind, "spec": dict(spec), "v": VERSION, "torch": torch.__version__}
    )
    path = utils.cache_dir("dynamic") / f"{kind}-{key}.pt"
    model = _build(spec, build)
    if path.exists():
        try:
            state, _ = utils.load_verified(path)  # sha256-checked against its sidecar
            model.load_state_dict(state)
            return model.eval()
        except (RuntimeError, OSError, EOFError, ValueError):
            path.unlink(missing_ok=True)  # corrupt, unverified or stale: retrain
    with utils.num_threads(1):  # tiny models train fastest, and repeatably, on one thread
        fit(model)
    utils.save_verified(model.state_dict(), path, {"kind": kind, "key": key})
    return model.eval()


def _recipe(num_epochs: int, seed: int) -> dict[str, Any]:
    """The zoo's cnn1d/mnist1d recipe, so a plain net and its early-exit twin train alike."""
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("seed", seed, minimum=0)
    return {
        "num_epochs": num_epochs,
        "lr": 1e-2,
        "batch_size": 128,
        "schedule": "cosine",
        "seed": seed,
        "device": "cpu",
        "progress": False,
    }


def _config(ds: Any, config: CNN1dConfig | None) -> CNN1dConfig:
    """``config``, or :data:`EXIT_CONFIG`'s channels on ``ds``'s input shape and classes."""
    if config is not None:
        return config
    return dataclasses.replace(models.config_for("cnn1d", ds), channels=EXIT_CONFIG.channels)


def pretrained_exits(
    weights: Sequence[float] = (0.3, 0.3, 1.0),
    dataset: str = "mnist1d",
    config: CNN1dConfig | None = None,
    num_epochs: int = 10,
    seed: int = 0,
) -> EarlyExitCNN1d:
    """An :class:`EarlyExitCNN1d` (default: :data:`EXIT_CONFIG`) trained from scratch with
    exit-loss ``weights`` and the zoo's cnn1d recipe (cached on disk).

    Example: ``model = pretrained_exits((1, 1, 1), seed=1)  # the summed-loss variant``
    """
    from labkit import data

    ds = data.load(dataset)
    config = _config(ds, config)
    weights = _weights("weights", weights, len(config.channels))
    fit_kw = _recipe(num_epochs, seed)
    spec = {"dataset": dataset, "config": config, "weights": weights, **fit_kw}
    return _cached(
        "exits", spec, lambda: EarlyExitCNN1d(config), lambda m: fit_exits(m, ds, weights, **fit_kw)
    )


def pretrained_static(
    dataset: str = "mnist1d", config: CNN1dConfig | None = None, num_epochs: int = 10, seed: int = 0
) -> CNN1d:
    """A plain ``CNN1d`` (default: :data:`EXIT_CONFIG`) trained with the same recipe as
    :func:`pretrained_exits` (cached). Example: ``pretrained_static(config=small_config)``
    """
    from labkit import data, train

    ds = data.load(dataset)
    config = _config(ds, config)
    fit_kw = _recipe(num_epochs, seed)
    spec = {"dataset": dataset, "config": config, **fit_kw}
    return _cached(
        "static", spec, lambda: CNN1d(config), lambda m: train.fit(m, ds, val=False, **fit_kw)
    )


def pretrained_slimmable(
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    dataset: str = "mnist1d",
    config: CNN1dConfig | None = None,
    num_epochs: int = 5,
    seed: int = 0,
) -> SlimmableCNN1d:
    """A :class:`SlimmableCNN1d` (default: :data:`EXIT_CONFIG`) started from
    :func:`pretrained_static` (same seed) and trained ``num_epochs`` more at all ``widths`` with
    the cnn1d recipe (cached). Example: ``slim = pretrained_slimmable(); slim.at_width(0.25)``
    """
    from labkit import data

    ds = data.load(dataset)
    config = _config(ds, config)
    plain = pretrained_static(dataset, config, seed=seed)
    fit_kw = _recipe(num_epochs, seed)
    widths = tuple(sorted(float(w) for w in widths))
    spec = {
        "dataset": dataset,
        "config": config,
        "widths": widths,
        "from": {"plain": _recipe(10, seed)},
        **fit_kw,
    }
    return _cached(
        "slim",
        spec,
        lambda: SlimmableCNN1d.from_plain(plain, widths),
        lambda m: fit_slimmable(m, ds, **fit_kw),
    )


def pretrained_moe(
    n_experts: int = 4,
    top_k: int = 1,
    hidden: int = 64,
    balance: float = 0.01,
    dataset: str = "mnist1d",
    num_epochs: int = 4,
    seed: int = 0,
    trained: bool = True,
) -> nn.Sequential:
    """``Sequential(stem, head)``: the first block of :func:`pretrained_static` (seed 0, frozen)
    turns a signal into tokens, a :class:`MoEHead` trained on them classifies (Adam 1e-2, cosine,
    batch 256, ``num_epochs``; cached). The frozen stem makes the features cheap to compute once.
    ``trained=False`` returns the same model at its initialisation (router and experts random).

    Example: ``model = pretrained_moe(n_experts=8, top_k=2); model.head.moe.load``
    """
    import copy
    from collections import OrderedDict

    from labkit import data

    ds = data.load(dataset)
    trunk = pretrained_static(dataset, seed=0)
    with torch.no_grad():
        _, channels, length = trunk.features[:3](ds.X_train[:1]).shape
    fit_kw = {**_recipe(num_epochs, seed), "lr": 1e-2, "batch_size": 256}
    spec = {
        "dataset": dataset,
        "trunk": {"config": trunk.config, **_recipe(10, 0)},
        "n_experts": n_experts,
        "top_k": top_k,
        "hidden": hidden,
        "balance": balance,
        "moe_version": MOE_VERSION,
        **fit_kw,
    }

    def build() -> nn.Sequential:
        stem = copy.deepcopy(trunk.features[:3]).requires_grad_(False)
        head = MoEHead(channels, length, hidden, n_experts, top_k, ds.num_classes)
        return nn.Sequential(OrderedDict(stem=stem, head=head))

    def fit(model: nn.Sequential) -> None:
        with torch.no_grad():
            features = model.stem.eval()(ds.X_train)  # (N, C, L), computed once
        fit_moe(model.head, (features, ds.y_train), balance, **fit_kw)

    if not trained:
        return _build(spec, build).eval()
    return _cached("moe", spec, build, fit)
