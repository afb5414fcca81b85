"""Notebook 03 (pruning): the cached experiments ``labkit prepare`` builds."""

from __future__ import annotations

from labkit.course import Step

FIRST = "prune:unstructured"  # trains and saves the seed-1 and seed-2 MLPs the others reuse


def steps() -> list[Step]:
    """Unstructured, schedule, structured, lottery-ticket and ViT sweeps."""
    return [
        Step(f"prune:{part}", "labkit.prune_sweeps:prepare", {"parts": [part]}, needs, cost)
        for part, needs, cost in (
            ("unstructured", ("model:mlp/digits",), 20.0),
            ("schedules", ("model:mlp/digits", FIRST), 4.0),
            ("structured", ("model:mlp/digits", FIRST), 10.0),
            ("lottery", ("data:digits",), 10.0),
            ("vit", ("model:vit/digits",), 9.0),
        )
    ]
