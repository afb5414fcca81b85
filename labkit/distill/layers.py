"""Layer selection (after DistilBERT, Sanh et al., 2019): a shallower student built from some of
the teacher's blocks.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from torch import nn

from labkit import models
from labkit.utils import check_int

__all__ = ["select_layers", "init_from_teacher"]


# --------------------------------------------------------------------------- layers (DistilBERT)


def select_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Which teacher blocks initialise the student: evenly spaced from the first, ``i * N // M``.

    This course's own rule: half as many layers means every other one (12 -> 6 takes 0, 2, 4, 6, 8,
    10; 2 -> 1 takes block 0).

    DistilBERT (Sanh et al., 2019) says it takes "one layer out of two"; the initialisation script
    released with it (Hugging Face's ``extract_distilbert.py``) copies BERT-base layers
    ``[0, 2, 4, 7, 9, 11]``, which this rule does not reproduce: pass such a list to
    ``init_from_teacher`` (and the same list as ``layer_map``) to follow it.
    Example: ``select_layers(4, 2)  # [0, 2]``
    """
    n = check_int("num_teacher_layers", num_teacher_layers, minimum=1)
    m = check_int("num_student_layers", num_student_layers, minimum=1, maximum=n)
    return [i * n // m for i in range(m)]


def _blocks(model: nn.Module) -> tuple[nn.ModuleList, str, str]:
    """(blocks, attribute path, config field) of a GPT or ViT."""
    if isinstance(model, models.GPT):
        return model.transformer.h, "transformer.h", "n_layer"
    if isinstance(model, models.ViT):
        return model.blocks, "blocks", "depth"
    raise ValueError(f"teacher must be a labkit GPT or ViT; got {type(model).__name__}")


def init_from_teacher(teacher: nn.Module, layers: Sequence[int] | None = None) -> nn.Module:
    """A new, shallower student: a copy of ``teacher`` (GPT or ViT) keeping only some of its blocks.

    It keeps the blocks in ``layers`` (default: every other one, ``select_layers(n, n // 2)``), in
    that order.

    Embeddings, final LayerNorm and head are copied too (GPT's weight tying survives); the
    config's layer count is updated; the teacher is untouched. Give ``distill_lm`` the same list
    as ``layer_map`` when it is not the default (``attention_loss`` assumes ``select_layers``).
    Example: ``student = init_from_teacher(models.pretrained("gpt", "pydoc"))``
    """
    blocks, path, field = _blocks(teacher)
    n = len(blocks)
    if layers is None:
        layers = select_layers(n, max(1, n // 2))
    layers = list(layers)
    if not layers or not all(isinstance(i, int) and 0 <= i < n for i in layers):
        raise ValueError(
            f"layers must be a non-empty list of block indices in [0, {n - 1}]; got {layers}"
        )
    student = copy.deepcopy(teacher)
    kept = nn.ModuleList([copy.deepcopy(blocks[i]) for i in layers])
    if path == "transformer.h":
        student.transformer.h = kept
    else:
        student.blocks = kept
    student.config = dataclasses.replace(teacher.config, **{field: len(layers)})
    return student
