"""Notebook 02 (knowledge distillation): the cached experiments ``labkit prepare`` builds."""

from __future__ import annotations

from labkit.course import Step

TEACHER_STEP = "model:cnn1d/mnist1d"


def steps() -> list[Step]:
    """The transfer set, then the MNIST-1D student sweeps and the half-depth GPT students."""
    transfer = Step(
        "distill:transfer",
        "labkit.distill:transfer_inputs",
        {"dataset": "mnist1d", "num_samples": 20_000, "seed": 1},
        cost=8.0,
    )
    cost = {"main": 45.0, "temperature": 9.0, "width": 19.0, "gpt": 20.0, "small": 6.0}
    needs = {"gpt": ("model:gpt/pydoc",), "small": (TEACHER_STEP,)}
    parts = [
        Step(
            f"distill:{part}",
            "labkit.distill:prepare",
            {"parts": [part]},
            needs=needs.get(part, (TEACHER_STEP, "distill:transfer")),
            cost=cost[part],
        )
        for part in cost
    ]
    return [transfer, *parts]
