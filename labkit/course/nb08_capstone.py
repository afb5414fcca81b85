"""Notebook 08 (capstone): the cached experiments ``labkit prepare`` builds."""

from __future__ import annotations

from labkit.course import Step


def steps() -> list[Step]:
    """The compression pipeline, after the models and the transfer set it reads."""
    return [
        Step(
            "capstone",
            "labkit.capstone:prepare",
            needs=("model:cnn1d/mnist1d", "model:mlp/mnist1d", "distill:transfer"),
            cost=15.0,
        )
    ]
