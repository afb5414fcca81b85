"""Notebook 06 (dynamic networks): the cached experiments ``labkit prepare`` builds."""

from __future__ import annotations

from labkit.course import Step


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
            "labkit.dynamic:prepare",
            {"parts": [part]},
            needs=("data:mnist1d",) + (("dynamic:plain",) if part in ("slim", "moe") else ()),
            cost=cost,
        )
        for part, cost in costs
    ]
