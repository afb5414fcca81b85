"""The pretrained zoo: ``Recipe``, ``register``, the sha256-verified cache and ``prepare``.

``pretrained(name, dataset)`` trains a registered ``Recipe`` once and caches the weights under
``cache_dir("models")``; ``prepare()`` builds the whole cache (``labkit prepare``). The entries
themselves are registered in ``labkit.models.recipes``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit import utils
from labkit.models.configs import CONFIGS, _set
from labkit.models.factory import _from_config
from labkit.utils import ArgumentTypeError, check_choice, check_int, check_number

# --------------------------------------------------------------------------- pretrained cache

TRAIN_VERSION = 1
"""Bump when the training code changes in a way that should invalidate every cached model."""

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Recipe:
    """How to train one pretrained entry: the full model config plus the ``train.fit`` knobs.

    ``num_steps`` (not ``num_epochs``) is used for text datasets (``train.fit_lm``).
    ``data_args`` are passed to ``data.load`` (e.g. ``{"num_samples": 4000}``) and are part of the
    cache key.
    Example: ``Recipe(LeNetConfig(), num_epochs=15, lr=3e-3)``
    """

    config: Any
    num_epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    num_steps: int | None = None
    data_args: Any = ()

    def __post_init__(self) -> None:
        if type(self.config) not in CONFIGS.values():
            shown = ", ".join(c.__name__ for c in CONFIGS.values())
            raise ValueError(f"config must be one of {shown}; got {type(self.config).__name__}")
        check_int("num_epochs", self.num_epochs, minimum=1)
        check_number("lr", self.lr, minimum=0, min_open=True)
        check_int("batch_size", self.batch_size, minimum=1)
        if isinstance(self.weight_decay, bool) or not (
            isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0
        ):
            raise ValueError(f"weight_decay must be a number >= 0; got {self.weight_decay!r}")
        check_choice("optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        check_choice("schedule", self.schedule, ("constant", "cosine"))
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.num_steps is not None:
            check_int("num_steps", self.num_steps, minimum=1)
        try:
            args = tuple(sorted(dict(self.data_args).items()))
        except (TypeError, ValueError):
            raise ValueError(
                f"data_args must be a dict of data.load arguments; got {self.data_args!r}"
            ) from None
        _set(self, "data_args", args)


RECIPES: dict[tuple[str, str], Recipe] = {}
"""The registered pretrained entries: (name, dataset) -> Recipe. Add with ``register``."""

_ID = re.compile(r"[A-Za-z0-9_.]+")


def register(name: str, dataset: str, recipe: Recipe) -> None:
    """Add (or replace) the pretrained entry ``(name, dataset)``; ``name`` is free-form (no '-').

    Example: ``register("lenet_wide", "digits", Recipe(LeNetConfig(channels=(16, 32))))``
    """
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise ValueError(f"name must be letters, digits, '_' or '.'; got {name!r}")
    if not isinstance(dataset, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", dataset):
        raise ValueError(f"dataset must be a dataset name such as 'digits'; got {dataset!r}")
    if not isinstance(recipe, Recipe):
        raise ArgumentTypeError(f"recipe must be a Recipe; got {type(recipe).__name__}")
    RECIPES[(name, dataset)] = recipe


def _recipe(name: str, dataset: str) -> Recipe:
    if (name, dataset) not in RECIPES:
        shown = ", ".join(f"{n}/{d}" for n, d in sorted(RECIPES))
        raise ValueError(
            f"(name, dataset) must be a registered entry ({shown}); got {name}/{dataset}"
        )
    return RECIPES[(name, dataset)]


def cache_key(name: str, dataset: str, recipe: Recipe | None = None) -> str:
    """16 hex digits hashing the model name, config, recipe, dataset + load args and TRAIN_VERSION.

    Example: ``cache_key("lenet", "digits")  # '9f3c0a...'``
    """
    recipe = recipe or _recipe(name, dataset)
    return utils.stable_hash(
        {
            "name": name,
            "config": recipe.config,
            "recipe": recipe,
            "dataset": dataset,
            "data_args": dict(recipe.data_args),
            "train_version": TRAIN_VERSION,
        }
    )


def cache_path(name: str, dataset: str, recipe: Recipe | None = None) -> Path:
    """Where the entry's weights live: ``cache_dir("models")/f"{name}-{dataset}-{key}.pt"``.

    The JSON sidecar (sha256 + metrics) is the same path with ``.json`` appended.
    Example: ``cache_path("lenet", "digits").name  # 'lenet-digits-5cf8acd178385b2d.pt'``
    """
    key = cache_key(name, dataset, recipe)
    return utils.cache_dir("models") / f"{name}-{dataset}-{key}.pt"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _stale_files(name: str, dataset: str, keep: Path) -> list[Path]:
    pattern = re.compile(rf"{re.escape(name)}-{re.escape(dataset)}-[0-9a-f]{{16}}\.pt(\.json)?")
    return sorted(
        p
        for p in keep.parent.iterdir()
        if pattern.fullmatch(p.name) and p not in (keep, _sidecar(keep))
    )


def _read_verified(path: Path, recipe: Recipe) -> tuple[nn.Module | None, dict | None, str]:
    """(model, sidecar, "") from a verified cache file; (None, None, why) when it cannot be used."""
    if not path.exists():
        return None, None, ""
    try:
        state, info = utils.load_verified(path)
        if info.get("key") != path.name.rsplit("-", 1)[1][: -len(".pt")]:
            return None, None, "sidecar key does not match the file name"
        model = _from_config(recipe.config)
        model.load_state_dict(state)
    except FileNotFoundError:
        return None, None, "the .json sidecar is missing"
    except ValueError as err:
        return None, None, str(err)
    except Exception as err:  # noqa: BLE001 - any unreadable cache means retrain
        return None, None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return model.eval(), info, ""


def train_recipe(recipe: Recipe, dataset: str, progress: bool | None = None) -> nn.Module:
    """A fresh model trained on CPU by ``recipe`` on ``dataset`` (seeded init and batch order),
    in eval mode; nothing is cached. ``pretrained`` uses it; so do experiments that need the same
    recipe with another seed or architecture.
    Example: ``train_recipe(dataclasses.replace(RECIPES[("mlp", "digits")], seed=1), "digits")``
    """
    from labkit import data as data_mod
    from labkit import train as train_mod

    data = data_mod.load(dataset, **dict(recipe.data_args))
    with utils.seeded(recipe.seed):  # seeded init without touching the global RNG
        model = _from_config(recipe.config)
    common = dict(
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
        schedule=recipe.schedule,
        warmup_steps=recipe.warmup_steps,
        seed=recipe.seed,
        device="cpu",
        progress=progress,
    )
    if hasattr(data, "X_train"):
        train_mod.fit(model, data, num_epochs=recipe.num_epochs, val=False, **common)
    else:
        train_mod.fit_lm(model, data, num_steps=recipe.num_steps or 1000, **common)
    return model.eval()


def _train_entry(name: str, dataset: str, recipe: Recipe, progress: bool | None) -> tuple:
    """Train on CPU from the recipe; return (model, metrics)."""
    from labkit import data as data_mod
    from labkit import train as train_mod

    data = data_mod.load(dataset, **dict(recipe.data_args))
    start = time.perf_counter()
    model = train_recipe(recipe, dataset, progress)
    seconds = time.perf_counter() - start
    if hasattr(data, "X_train"):
        val = train_mod.evaluate(model, data, split="val", device="cpu")
        test = train_mod.evaluate(model, data, split="test", device="cpu")
        metrics = {
            "val_acc": val["acc"],
            "val_loss": val["loss"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
        }
    else:
        val = train_mod.evaluate_lm(model, data, split="val", device="cpu")
        metrics = {"val_loss": val["loss"], "val_ppl": val["ppl"]}
    metrics["train_seconds"] = round(seconds, 3)
    metrics["params"] = sum(p.numel() for p in model.parameters())
    return model.eval(), metrics


def _get(
    name: str, dataset: str, retrain: bool, progress: bool | None
) -> tuple[nn.Module, dict, bool]:
    """(model, sidecar info, cached) for a registered entry, training when needed."""
    recipe = _recipe(name, dataset)
    path = cache_path(name, dataset, recipe)
    if not retrain:
        model, info, why = _read_verified(path, recipe)
        if model is not None:
            return model, info, True
        if why:
            warnings.warn(
                f"labkit: cached model {path.name} is unusable ({why}); retraining", stacklevel=3
            )
    model, metrics = _train_entry(name, dataset, recipe, progress)
    info = {
        "name": name,
        "dataset": dataset,
        "key": path.name.rsplit("-", 1)[1][: -len(".pt")],
        "metrics": metrics,
        "config": {"__type__": type(recipe.config).__name__, **dataclasses.asdict(recipe.config)},
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "config"},
        "train_version": TRAIN_VERSION,
        "torch_version": torch.__version__,
    }
    info = utils.save_verified(model.state_dict(), path, info)
    return model, info, False


def pretrained(
    name: str,
    dataset: str,
    *,
    retrain: bool = False,
    progress: bool | None = None,
    threads: int | None = 1,
) -> nn.Module:
    """The registered model trained on ``dataset``: loaded from the cache, else trained once (CPU).

    Returns a fresh copy in eval mode on CPU. A corrupt or tampered cache file is reported with one
    warning and retrained; ``retrain=True`` always retrains. ``threads``: torch's thread count for
    this call only (these tiny models train fastest, and repeatably, on one thread; None leaves
    the setting alone).
    Example: ``model = pretrained("lenet", "digits")``
    """
    with utils.num_threads(threads):
        model, _, _ = _get(name, dataset, retrain, progress)
    return model


def is_cached(name: str, dataset: str) -> bool:
    """True when the entry's current cache file exists and its sha256 matches the sidecar.

    Example: ``is_cached("lenet", "digits")  # False before labkit prepare``
    """
    return pretrained_info(name, dataset)["cached"]


def pretrained_info(name: str, dataset: str) -> dict:
    """The cache entry's record without training: name, dataset, key, path, cached, metrics.

    ``metrics`` (val_acc, test_acc, train_seconds, params, ...) is None when not cached yet.
    Example: ``pretrained_info("lenet", "digits")["metrics"]["test_acc"]  # 0.98``
    """
    recipe = _recipe(name, dataset)
    path = cache_path(name, dataset, recipe)
    record = {
        "name": name,
        "dataset": dataset,
        "key": path.stem.rsplit("-", 1)[1],
        "path": str(path),
        "cached": False,
        "metrics": None,
    }
    try:
        info = json.loads(_sidecar(path).read_text())
        if info.get("key") == record["key"] and info.get("sha256") == utils.sha256_file(path):
            record.update(cached=True, metrics=info.get("metrics"))
    except (OSError, ValueError):
        pass
    return record


def select_entries(names: Iterable[Any] | None) -> list[tuple[str, str]]:
    """The registered (name, dataset) entries that ``names`` picks, in order, without repeats.

    ``names``: None for all (sorted), else items such as ``"lenet/digits"``,
    ``("lenet", "digits")`` or a model name (all its datasets); an unknown item is a ValueError.
    Example: ``select_entries(["lenet", "gpt/pydoc"])  # [("lenet", "digits"), ("gpt", "pydoc")]``
    """
    if names is None:
        return sorted(RECIPES)
    if isinstance(names, str):
        names = [names]
    chosen: list[tuple[str, str]] = []
    for item in names:
        if isinstance(item, tuple):
            hits = [item] if item in RECIPES else []
        elif "/" in str(item):
            hits = [tuple(str(item).split("/", 1))]
            hits = hits if hits[0] in RECIPES else []
        else:
            hits = [e for e in sorted(RECIPES) if e[0] == item]
        if not hits:
            shown = ", ".join(f"{n}/{d}" for n, d in sorted(RECIPES))
            raise ValueError(
                f"names must be registered entries ({shown}) or model names; got {item!r}"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def prepare(
    names: Iterable[Any] | None = None, progress: bool | None = None, threads: int | None = 1
) -> list[dict]:
    """Train (or verify) and cache registered entries; remove their stale cache files.

    ``names``: None for all, else items such as ``"lenet/digits"``, ``("lenet", "digits")`` or a
    model name (all its datasets). Returns one dict per entry: name, dataset, key, path, cached,
    seconds (this call's wall time), metrics. ``threads`` as in ``pretrained``.
    Example: ``[(r["name"], r["metrics"]["test_acc"]) for r in prepare()]``
    """
    rows = []
    for name, dataset in select_entries(names):
        start = time.perf_counter()
        with utils.num_threads(threads):
            _, info, cached = _get(name, dataset, False, progress)
        path = cache_path(name, dataset)
        for stale in _stale_files(name, dataset, path):
            stale.unlink(missing_ok=True)
        rows.append(
            {
                "name": name,
                "dataset": dataset,
                "key": info["key"],
                "path": str(path),
                "cached": cached,
                "seconds": time.perf_counter() - start,
                "metrics": info["metrics"],
            }
        )
    return rows
