"""Models by name: ``MODELS``, ``build`` and ``config_for`` (shape fields from a dataset)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import nn

from labkit.models.cnn import DSCNN, MLP, CNN1d, LeNet
from labkit.models.configs import CONFIGS, GPTConfig
from labkit.models.transformer import GPT, ViT
from labkit.utils import check_choice

# --------------------------------------------------------------------------- build by name

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "cnn1d": CNN1d,
    "dscnn": DSCNN,
    "vit": ViT,
    "gpt": GPT,
}
"""Model name -> nn.Module class taking the config."""


def _model_name(name: str) -> str:
    return check_choice("name", name, tuple(CONFIGS))


def _from_config(config: Any) -> nn.Module:
    for name, cls in CONFIGS.items():
        if type(config) is cls:
            return MODELS[name](config)
    shown = ", ".join(c.__name__ for c in CONFIGS.values())
    raise ValueError(f"config must be one of {shown}; got {type(config).__name__}")


def build(name: str, config: Any = None, **overrides: Any) -> nn.Module:
    """A fresh model by name ('mlp', 'lenet', 'cnn1d', 'dscnn', 'vit', 'gpt').

    ``config`` (e.g. from ``config_for``) is used as given, with ``overrides`` replacing fields;
    without it the config class defaults apply. Initialisation uses torch's global RNG
    (``labkit.seed(0)`` first for repeatable weights).
    Example: ``build("mlp", hidden=(64,))``, ``build("lenet", config_for("lenet", "mnist"))``
    """
    cls = CONFIGS[_model_name(name)]
    if config is None:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"overrides must be fields of {cls.__name__} ({', '.join(sorted(fields))})"
                f"; got {', '.join(unknown)}"
            )
        if name == "gpt" and "vocab_size" not in overrides:
            raise ValueError("vocab_size is required for 'gpt'; use config_for('gpt', text)")
        config = cls(**overrides)
    else:
        if type(config) is not cls:
            raise ValueError(
                f"config must be a {cls.__name__} for {name!r}; got {type(config).__name__}"
            )
        config = _replace(config, overrides)
    return MODELS[name](config)


def _replace(config: Any, overrides: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"overrides must be fields of {type(config).__name__} "
            f"({', '.join(sorted(fields))}); got {', '.join(unknown)}"
        )
    return dataclasses.replace(config, **overrides)


def config_for(name: str, dataset: Any, **overrides: Any) -> Any:
    """The config for model ``name`` with its shape fields filled from ``dataset``.

    ``dataset`` is a name for ``data.load`` or a loaded ``ArrayData`` / ``TextData``. Fills
    in_features / in_channels / image_size / length / num_classes / vocab_size; ViT patches are 2x2
    for images under 16 pixels, else 4x4. ``overrides`` win.
    Example: ``config_for("lenet", "mnist")  # LeNetConfig(in_channels=1, image_size=28, ...)``
    """
    name = _model_name(name)
    if isinstance(dataset, str):
        from labkit import data as data_mod

        dataset = data_mod.load(dataset)
    is_text = hasattr(dataset, "vocab") and not hasattr(dataset, "X_train")
    if (name == "gpt") != is_text:
        kind = "a text dataset (TextData)" if name == "gpt" else "an array dataset (ArrayData)"
        raise ValueError(f"dataset must be {kind} for {name!r}; got {type(dataset).__name__}")
    if name == "gpt":
        return _replace(GPTConfig(vocab_size=dataset.vocab_size), overrides)
    shape, k = tuple(dataset.input_shape), dataset.num_classes
    if name == "mlp":
        fields = {"in_features": math.prod(shape), "num_classes": k}
    elif name == "cnn1d":
        if len(shape) != 2:
            raise ValueError(
                f"dataset must hold (C, L) signals for 'cnn1d'; got input_shape {shape}"
            )
        fields = {"in_channels": shape[0], "length": shape[1], "num_classes": k}
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(
                f"dataset must hold square (C, S, S) images for {name!r}; got input_shape {shape}"
            )
        fields = {"in_channels": shape[0], "image_size": shape[1], "num_classes": k}
        if name == "vit":
            fields["patch_size"] = 2 if shape[1] < 16 else 4
    return CONFIGS[name](**{**fields, **overrides})
