"""``load``: the in-process dataset cache and the dispatch to each dataset; ``available``."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from labkit import utils
from labkit.data.containers import NAMES, OPTIONAL, ArrayData, DatasetUnavailableError, TextData
from labkit.data.mnist1d import MNIST1D_DEFAULT_SAMPLES, _mnist1d_arrays
from labkit.data.optional import _download, _missing_file, _read_optional, _unavailable_message
from labkit.data.splits import _ceil_percent, _split_embedded, _stratified_split
from labkit.data.text import _load_pydoc

_MAX_SEED = 2**32 - 1  # numpy's legacy seeding (used by mnist1d) accepts no more


def load(
    name: str,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> ArrayData | TextData:
    """Load dataset ``name`` (one of :data:`NAMES`) with deterministic train/val/test splits.

    ``num_samples``: for ``mnist1d`` the number of signals generated (a multiple of 10, >= 100;
    default 10,000) before splitting; for the image datasets, keep only this many *train* samples
    (a stratified, seeded subset; val and test are unchanged); not allowed for ``pydoc``.
    ``seed`` picks the split (digits), the signals and split (mnist1d) or the train subset.
    ``root``: folder of the optional datasets (default ``data_dir()``); the embedded ones ignore it.
    ``download``: fetch a missing optional dataset with torchvision (needs the network).

    Example: ``data = load("mnist1d", num_samples=2000, seed=1)``
    """
    if isinstance(name, str):
        name = name.lower().replace("_", "-")
    utils.check_choice("name", name, NAMES)
    if num_samples is not None:
        num_samples = utils.check_int("num_samples", num_samples, minimum=1)
    seed = utils.check_int("seed", seed, minimum=0, maximum=_MAX_SEED)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path (str or Path) or None; got {root!r}")
    if not isinstance(download, bool):
        raise utils.ArgumentTypeError(f"download must be True or False; got {download!r}")

    if name == "pydoc":
        if num_samples is not None:
            raise ValueError(
                f"num_samples must be None for 'pydoc' (a fixed corpus); got {num_samples}"
            )
        return _load_cached(name, None, 0, None)
    if name == "mnist1d":
        num_samples = MNIST1D_DEFAULT_SAMPLES if num_samples is None else num_samples
        if num_samples < 100 or num_samples % 10:
            raise ValueError(
                f"num_samples must be a multiple of 10 and >= 100 for 'mnist1d'; got {num_samples}"
            )
        return _load_cached(name, num_samples, seed, None)
    if name == "digits":
        return _load_cached(name, num_samples, seed, None)

    folder = Path(root if root is not None else utils.data_dir()).expanduser().resolve()
    if _missing_file(name, folder) is not None:
        if download:
            _download(name, folder)
        else:
            raise DatasetUnavailableError(_unavailable_message(name, folder))
    return _load_cached(name, num_samples, seed if num_samples else 0, str(folder))


def clear_cache() -> None:
    """Forget every dataset held in memory by :func:`load` (the disk cache stays)."""
    _load_cached.cache_clear()
    _read_optional.cache_clear()


def available() -> dict[str, bool]:
    """Which datasets :func:`load` can serve offline now (optional ones: files present, not read).

    Example: ``available()  # {'digits': True, ..., 'mnist': False, ...}``
    """
    result = {
        "digits": importlib.util.find_spec("sklearn") is not None,
        "mnist1d": importlib.util.find_spec("mnist1d") is not None,
        "pydoc": importlib.util.find_spec("pydoc_data") is not None,
    }
    folder = utils.data_dir()
    for name in OPTIONAL:
        result[name] = _missing_file(name, folder) is None
    return result


@functools.lru_cache(maxsize=16)
def _load_cached(
    name: str, num_samples: int | None, seed: int, root: str | None
) -> ArrayData | TextData:
    if name == "pydoc":
        return _load_pydoc()
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()  # reads a file shipped inside scikit-learn
        X = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
        return _split_embedded(name, X, digits.target, num_samples, seed)
    if name == "mnist1d":
        X, y = _mnist1d_arrays(num_samples, seed)  # (N, 40), (N,)
        return _split_embedded(name, X[:, None, :], y, None, seed)

    X_full, y_full, X_test, y_test, classes = _read_optional(name, root)
    n_val = _ceil_percent(len(y_full), 10)
    n_train = len(y_full) - n_val
    X_train, y_train = X_full[:n_train], y_full[:n_train]
    if num_samples is not None:
        utils.check_int("num_samples", num_samples, minimum=1, maximum=n_train)
        keep = _stratified_split(y_train.numpy(), [num_samples], seed)[0]
        X_train, y_train = X_train[keep], y_train[keep]
    return ArrayData(
        name, X_train, y_train, X_full[n_train:], y_full[n_train:], X_test, y_test,
        num_classes=len(classes), input_shape=tuple(X_full.shape[1:]), classes=classes,
    )  # fmt: skip
