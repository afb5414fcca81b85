"""Pruning: remove weights, channels, heads or layers, and store or run what is left.

One file per idea:

- ``unstructured``: magnitude masks as ``torch.nn.utils.prune`` reparametrizations, sensitivity
  scans, iterative pruning with fine-tuning, lottery tickets, cubic schedules.
- ``structured``: whole channels of convolutions and linear layers, removed for real (a smaller
  dense model) or masked.
- ``transformer``: attention heads and whole blocks of the zoo's Transformers.
- ``sparse``: the bytes of what is left (COO/CSR/bitmap storage, break-even density) and a
  sparse linear layer.

Every public name is here (``prune.magnitude``, ``prune.prune_channels``, ``prune.prune_heads``,
``prune.to_sparse_bytes``); the files are also importable on their own
(``from labkit.prune import structured as ps``).

Each file's docstring has an example.
"""

from labkit.prune import sparse, structured, transformer, unstructured
from labkit.prune.sparse import *  # noqa: F403 - the package's names are its files' __all__
from labkit.prune.structured import *  # noqa: F403
from labkit.prune.transformer import *  # noqa: F403
from labkit.prune.unstructured import *  # noqa: F403

__all__ = [
    *unstructured.__all__,
    *structured.__all__,
    *transformer.__all__,
    *sparse.__all__,
    "unstructured",
    "structured",
    "transformer",
    "sparse",
]
