"""Datasets: three embedded ones that work offline, three optional torchvision ones.

Embedded (no download, ever):

- ``digits``: scikit-learn's 1,797 8×8 handwritten digits, pixels scaled to [0, 1], (N, 1, 8, 8).
- ``mnist1d``: MNIST-1D generated locally by ``mnist1d.data.make_dataset`` (never its download),
  standardised signals of length 40, (N, 1, 40); cached on disk as a checksummed ``.npz``.
- ``pydoc``: CPython's pydoc topic help as one character-level text corpus (:class:`TextData`).

Optional (files under ``data_dir()``, fetched only by ``load(name, download=True)``): ``mnist``,
``fashion-mnist`` (IDX files, (N, 1, 28, 28)) and ``cifar10`` (python pickles, (N, 3, 32, 32)),
read by our own small readers. Pixels are ``uint8 / 255`` as float32 in [0, 1]; no mean/std
normalisation.

Splits. ``digits`` and ``mnist1d``: stratified and deterministic given ``seed``: test = 20 % of
all samples (rounded up), val = 10 % of all samples, train = the rest. Optional sets: test = the
official test set, val = the last 10 % of the official train set, train = the rest.

Results are cached in-process: two equal ``load`` calls return the *same* object, so never modify
its tensors in place (``X = data.X_train.clone()`` first). ``clear_cache()`` empties the cache.

Example:
    >>> data = load("digits")
    >>> data.X_train.shape, data.X_test.shape
    (torch.Size([1257, 1, 8, 8]), torch.Size([360, 1, 8, 8]))
"""

from labkit.data.containers import (
    EMBEDDED,
    NAMES,
    OPTIONAL,
    ArrayData,
    DatasetUnavailableError,
    TextData,
    as_xy,
    describe,
    is_split_data,
)
from labkit.data.containers import (
    SPLITS as SPLITS,
)
from labkit.data.mnist1d import MNIST1D_DEFAULT_SAMPLES as MNIST1D_DEFAULT_SAMPLES
from labkit.data.registry import available, clear_cache, load
from labkit.data.text import PYDOC_VOCAB

__all__ = [
    "EMBEDDED",
    "PYDOC_VOCAB",
    "OPTIONAL",
    "NAMES",
    "ArrayData",
    "TextData",
    "DatasetUnavailableError",
    "load",
    "clear_cache",
    "describe",
    "as_xy",
    "is_split_data",
    "available",
]
