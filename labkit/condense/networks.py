"""The networks: the ConvNet the learned sets match through, the evaluation models, embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from labkit import utils
from labkit.condense.checks import _check_X
from labkit.utils import check_choice, check_int

ARCHS = ("mlp", "convnet")
"""Evaluation architectures of ``eval_model``."""


@torch.no_grad()
def embed(model: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate features of ``model``: the input of its last ``nn.Linear``, as (N, D) on the CPU.

    Example: ``features = embed(trained_mlp, data.X_train)  # (1257, 128)``
    """
    X = _check_X(X)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model must contain an nn.Linear head to embed with; got none")
    captured: list[Tensor] = []
    hook = linears[-1].register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(X), batch_size):
            model(X[i : i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat([f.flatten(1) for f in captured]).cpu()  # (N, D)


def convnet(
    in_channels: int = 1,
    image_size: int = 8,
    num_classes: int | None = 10,
    width: int = 32,
    depth: int = 2,
    seed: int = 0,
) -> nn.Sequential:
    """The ConvNet of the condensation papers, scaled to small images: ``depth`` blocks of
    ``Conv3x3 -> GroupNorm (instance norm) -> ReLU -> AvgPool2``, then a Linear head
    (``num_classes=None``: no head, the network is an embedding of width·(S/2^depth)² features).
    Initialised from ``seed`` without touching torch's global RNG.

    Example: ``convnet(num_classes=None, seed=3)(torch.rand(5, 1, 8, 8)).shape  # (5, 128)``
    """
    width = check_int("width", width, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    check_int("image_size", image_size, minimum=2**depth)
    seed = check_int("seed", seed, minimum=0)
    with utils.seeded(seed):
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels, size = width, size // 2
        layers.append(nn.Flatten())  # (B, width * size * size)
        if num_classes is not None:
            layers.append(nn.Linear(width * size * size, num_classes))
        return nn.Sequential(*layers)


def eval_model(
    arch: str = "mlp", in_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """The fixed evaluation architecture: 'mlp' (flatten -> 128 -> ReLU -> classes) or 'convnet'
    (``convnet(width=16)``). Initialised from ``seed``; torch's global RNG is left untouched.

    Example: ``eval_model("mlp", (1, 8, 8), 10, seed=1)``
    """
    check_choice("arch", arch, ARCHS)
    seed = check_int("seed", seed, minimum=0)
    shape = tuple(int(s) for s in in_shape)
    if arch == "convnet":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"in_shape must be (C, S, S) for 'convnet'; got {shape}")
        return convnet(shape[0], shape[1], num_classes, width=16, seed=seed)
    with utils.seeded(seed):
        features = 1
        for s in shape:
            features *= s
        return nn.Sequential(
            nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )
