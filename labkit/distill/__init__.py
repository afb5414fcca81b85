"""Knowledge distillation: a small student learns from a large teacher's outputs and insides.

- **Soft targets** (Hinton et al., 2015): ``softened`` turns logits into a temperature-softened
  distribution; ``kd_loss`` is ``alpha * T² * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``.
  ``distill`` trains a classifier on them (``train.fit`` with a distillation loss), optionally on
  a *transfer set* of extra unlabelled inputs that only the teacher labels.
- **Hints** (FitNets, Romero et al., 2015): ``HintLoss`` regresses a student feature onto a teacher
  feature through a learned projection; ``capture`` records intermediate features; ``fit_hints``
  is the FitNets first stage.
- **Attention maps** (after TinyBERT, Jiao et al., 2020): ``attention_maps`` recomputes every
  attention matrix of a GPT/ViT (post-softmax probabilities), ``attention_loss`` matches them
  (TinyBERT itself matches the pre-softmax scores); ``distill_lm`` distils a character model.
- **Layer selection** (after DistilBERT, Sanh et al., 2019): ``init_from_teacher`` builds a
  shallower student from some of the teacher's blocks. Which ones is this course's own rule,
  ``select_layers`` (evenly spaced from the first); it is also the default ``layer_map`` of
  ``attention_loss``, so each student block is compared with the block it was copied from.

Files: ``soft`` (soft targets), ``hints``, ``attention_maps``, ``layers`` and ``lm``
(``distill_lm``); every public name is ``distill.<name>``.

Example:
    >>> import torch
    >>> from labkit import distill
    >>> s, t = torch.zeros(2, 10), torch.randn(2, 10)
    >>> round(distill.softened(torch.zeros(4), 2.0).sum().item(), 6)
    1.0
    >>> distill.select_layers(12, 6)  # DistilBERT's released init copied [0, 2, 4, 7, 9, 11]
    [0, 2, 4, 6, 8, 10]
"""

from labkit.distill.attention_maps import (
    attention_loss,
    attention_maps,
)
from labkit.distill.hints import (
    HintLoss,
    capture,
    fit_hints,
)
from labkit.distill.layers import (
    init_from_teacher,
    select_layers,
)
from labkit.distill.lm import (
    distill_lm,
)
from labkit.distill.soft import (
    TARGETS,
    check_temperature,
    distill,
    gap_closed,
    kd_loss,
    softened,
    transfer_inputs,
)

__all__ = [
    "TARGETS",
    "check_temperature",
    "softened",
    "kd_loss",
    "gap_closed",
    "transfer_inputs",
    "distill",
    "capture",
    "HintLoss",
    "fit_hints",
    "attention_maps",
    "attention_loss",
    "select_layers",
    "init_from_teacher",
    "distill_lm",
]
