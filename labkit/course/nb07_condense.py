"""Notebook 07 (dataset distillation): the cached experiments ``labkit prepare`` builds."""

from __future__ import annotations

from labkit.course import Step


def steps() -> list[Step]:
    """Condensed sets and their evaluations, plain and augmented."""
    costs = {"main": 17.0, "augment": 6.0}
    return [
        Step(
            f"condense:{part}",
            "labkit.condense:prepare",
            {"parts": [part]},
            needs=("data:digits",),
            cost=cost,
        )
        for part, cost in costs.items()
    ]
