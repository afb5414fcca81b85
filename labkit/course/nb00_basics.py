"""Notebook 00 (efficiency basics): the zoo's sizes and the MLP width-by-depth sweep.

:func:`zoo_sizes` measures the pretrained models the notebook compares (parameters, payload and
real bytes, MACs); :func:`course_results` trains (or reads from the ``sweep`` cache
``00-mlp-width-depth``) one MLP per width, depth and seed, the notebook's first
accuracy-versus-size curve. :func:`steps` is the notebook's part of ``labkit prepare``.

Example:
    >>> from labkit.course import nb00_basics
    >>> len(nb00_basics.course_points())  # widths x depths x seeds
    36
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from labkit import data, measure, models, sweep, train, utils
from labkit.course import Step
from labkit.utils import check_choice, check_int

__all__ = ["COURSE", "ZOO", "mlp_run", "course_points", "course_results", "zoo_sizes", "steps"]

COURSE: dict[str, Any] = {
    "dataset": "digits",
    "widths": (8, 16, 32, 64, 128, 256),
    "depths": (1, 2, 3),
    "seeds": 2,
    "num_epochs": 10,
}
"""What notebook 00 shows: MLPs of every hidden ``width`` and ``depth`` on ``dataset``, each
trained ``num_epochs`` from ``seeds`` seeds (the spread between seeds tells signal from noise)."""

ZOO: tuple[tuple[str, str], ...] = (
    ("mlp", "digits"),
    ("lenet", "digits"),
    ("dscnn", "digits"),
    ("cnn1d", "mnist1d"),
    ("mlp", "mnist1d"),
)
"""The pretrained ``(model, dataset)`` entries notebook 00 measures."""


def mlp_run(dataset: str, width: int, depth: int, seed: int, num_epochs: int) -> dict[str, Any]:
    """One point of the sweep: train an MLP with ``depth`` hidden layers of ``width`` units.

    Returns its test accuracy, parameters, real bytes (``torch.save`` file) and MACs per input.
    """
    ds = data.load(dataset)
    config = models.config_for("mlp", ds, hidden=(width,) * depth)
    utils.seed(seed)
    model = models.build("mlp", config)
    train.fit(
        model,
        ds,
        val=False,
        num_epochs=num_epochs,
        lr=1e-2,
        batch_size=64,
        seed=seed,
        progress=False,
    )
    return {
        "acc": train.evaluate(model, ds)["acc"],
        "params": measure.count_params(model),
        "bytes": measure.model_bytes(model),
        "macs": measure.macs(model, torch.zeros(1, *ds.input_shape)),
    }


def course_points(
    dataset: str = COURSE["dataset"],
    widths: Sequence[int] = COURSE["widths"],
    depths: Sequence[int] = COURSE["depths"],
    seeds: int = COURSE["seeds"],
    num_epochs: int = COURSE["num_epochs"],
) -> list[dict[str, Any]]:
    """The sweep's points: every width x depth x seed, one dataset and ``num_epochs``."""
    check_choice("dataset", dataset, ("digits", "mnist1d"))
    for name, values in (("widths", widths), ("depths", depths)):
        if not values:
            raise ValueError(f"{name} must name at least one size; got {values!r}")
        for v in values:
            check_int(name, v, minimum=1)
    check_int("seeds", seeds, minimum=1)
    check_int("num_epochs", num_epochs, minimum=1)
    return sweep.grid(
        dataset=[dataset],
        width=list(widths),
        depth=list(depths),
        seed=list(range(seeds)),
        num_epochs=[num_epochs],
    )


def course_results(
    dataset: str = COURSE["dataset"],
    widths: Sequence[int] = COURSE["widths"],
    depths: Sequence[int] = COURSE["depths"],
    seeds: int = COURSE["seeds"],
    num_epochs: int = COURSE["num_epochs"],
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """One record per trained MLP (sweep ``00-mlp-width-depth``), trained where not cached.

    At the defaults ``labkit prepare`` has cached them; other arguments train what is missing.
    Example: ``runs = course_results(); sweep.mean_std(runs, ["width", "depth"], "acc")``
    """
    points = course_points(dataset, widths, depths, seeds, num_epochs)
    return sweep.run(mlp_run, points, name="00-mlp-width-depth", progress=progress)


def zoo_sizes(entries: Sequence[tuple[str, str]] = ZOO) -> dict[str, tuple[nn.Module, dict]]:
    """``{"name/dataset": (pretrained model, sizes)}`` for each zoo entry.

    ``sizes`` holds ``params``, ``payload`` (bytes of parameters and buffers), ``bytes`` (the real
    ``torch.save`` file) and ``macs`` (per input, ``measure.macs``).
    Example: ``model, row = zoo_sizes([("mlp", "digits")])["mlp/digits"]``
    """
    out = {}
    for name, dataset in entries:
        model = models.pretrained(name, dataset)
        x = torch.zeros(1, *data.load(dataset).input_shape)
        row = {
            "params": measure.count_params(model),
            "payload": measure.payload_bytes(model),
            "bytes": measure.model_bytes(model),
            "macs": measure.macs(model, x),
        }
        out[f"{name}/{dataset}"] = (model, row)
    return out


def steps() -> list[Step]:
    """The MLP width-by-depth sweep (the zoo models it measures are prepared anyway)."""
    return [Step("basics:mlp", f"{__name__}:course_results", needs=("data:digits",), cost=25.0)]
