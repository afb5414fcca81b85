"""Dataset condensation: a few images per class that teach a model almost as well as the full set.

Three families, all working per class with ``ipc`` images per class:

- **Coresets** pick real training images: ``random_select``, ``herding`` (the running mean of the
  picks tracks the class mean in a feature space) and ``kcenter_greedy`` (each pick is the point
  farthest from the picks so far). They return indices into the training set.
- **Baselines** that make new images without learning: ``class_means`` (1 per class) and
  ``kmeans_centroids`` (``ipc`` Lloyd centroids per class).
- **Learned synthetic sets**: ``distribution_matching`` (DM, Zhao & Bilen 2023: match the mean
  embedding of real and synthetic images under freshly initialised random networks) and
  ``gradient_matching`` (DC, Zhao et al. 2021: match the gradients a network gets from real and
  synthetic images). Both optionally match through random ±1-pixel translations (``shift``,
  ``translate``: differentiable), the same shift for the real and the synthetic batch.

The evaluation protocol is ``evaluate_set``: train fresh models of one fixed architecture
(``eval_model``) on a set, for several seeds, and report the test accuracy as mean ± spread, plus
the training seconds; ``set_bytes`` gives the bytes the set takes to store. ``features`` is the
feature space herding and k-center pick in: an MLP trained on the full training set.

Files: ``coresets`` (selection, the non-learned baselines and ``features``), ``synthetic`` (DM
and gradient matching), ``networks`` (``convnet``, ``eval_model``, ``embed``), ``augment``
(``shift``, ``translate``), ``protocol`` (``train_on``, ``train_many``, ``evaluate_set``,
``set_bytes``), ``methods`` (``condense``, ``METHODS``) and ``checks`` (argument checks).

Example:
    >>> from labkit import condense, data
    >>> digits = data.load("digits")                                         # doctest: +SKIP
    >>> X_s, y_s = condense.class_means(digits.X_train, digits.y_train)      # doctest: +SKIP
    >>> acc = condense.evaluate_set(X_s, y_s, digits, seeds=[0, 1])["acc"]   # doctest: +SKIP
"""

from labkit.condense.augment import shift, translate
from labkit.condense.checks import check_labels, class_counts
from labkit.condense.coresets import (
    class_means,
    features,
    herding,
    herding_class,
    kcenter_greedy,
    kcenter_step,
    kmeans_centroids,
    random_select,
)
from labkit.condense.methods import METHODS, condense
from labkit.condense.networks import ARCHS, convnet, embed, eval_model
from labkit.condense.protocol import evaluate_set, set_bytes, train_many, train_on
from labkit.condense.synthetic import (
    distribution_matching,
    dm_loss,
    gm_distance,
    gradient_matching,
)

__all__ = [
    "METHODS",
    "ARCHS",
    "check_labels",
    "class_counts",
    "random_select",
    "herding",
    "herding_class",
    "kcenter_greedy",
    "kcenter_step",
    "class_means",
    "kmeans_centroids",
    "embed",
    "convnet",
    "eval_model",
    "shift",
    "translate",
    "dm_loss",
    "distribution_matching",
    "gm_distance",
    "gradient_matching",
    "condense",
    "train_on",
    "train_many",
    "evaluate_set",
    "set_bytes",
    "features",
]
