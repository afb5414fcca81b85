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

Files: ``soft`` (soft targets), ``hints``, ``attention_transfer``, ``layers`` and ``lm``
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

from labkit.distill import attention_transfer, hints, layers, lm, soft
from labkit.distill.attention_transfer import *  # noqa: F403 - the package's names are its files' __all__
from labkit.distill.hints import *  # noqa: F403
from labkit.distill.layers import *  # noqa: F403
from labkit.distill.lm import *  # noqa: F403
from labkit.distill.soft import *  # noqa: F403

__all__ = [
    *soft.__all__,
    *hints.__all__,
    *attention_transfer.__all__,
    *layers.__all__,
    *lm.__all__,
]
