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

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
import random
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from labkit import utils

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

EMBEDDED = ("digits", "mnist1d", "pydoc")
OPTIONAL = ("mnist", "fashion-mnist", "cifar10")
NAMES = EMBEDDED + OPTIONAL
SPLITS = ("train", "val", "test")

MNIST1D_DEFAULT_SAMPLES = 10_000
_MNIST1D_CACHE_VERSION = 1  # bump when the cached arrays change meaning
_MAX_SEED = 2**32 - 1  # numpy's legacy seeding (used by mnist1d) accepts no more

_DIGIT_CLASSES = tuple(str(i) for i in range(10))
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_IDX_FILES = {  # split -> (images, labels), torchvision's names under <root>/<folder>/raw/
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


class DatasetUnavailableError(RuntimeError):
    """An optional dataset is not on disk, or could not be fetched or read; the message says why."""


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False, repr=False)
class ArrayData:
    """A classification dataset: float32 inputs ``X_*`` (N, *input_shape) and int64 labels ``y_*``.

    All tensors live on the CPU and may be shared with other callers: do not modify them in place.

    Example: ``X, y = load("digits").split("val")``
    """

    name: str
    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in SPLITS:
            X, y = self.split(split)
            if X.shape[1:] != self.input_shape or y.shape != (len(X),):
                raise ValueError(
                    f"X_{split} must have shape (N, {', '.join(map(str, self.input_shape))}) and "
                    f"y_{split} shape (N,); got {tuple(X.shape)} and {tuple(y.shape)}"
                )

    def __repr__(self) -> str:
        return f"ArrayData({describe(self)})"

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """The ``(X, y)`` tensors of ``split`` ('train', 'val' or 'test').

        Example: ``X_test, y_test = data.split("test")``
        """
        utils.check_choice("split", split, SPLITS)
        return getattr(self, f"X_{split}"), getattr(self, f"y_{split}")

    def loader(
        self, split: str, batch_size: int = 64, shuffle: bool | None = None, seed: int = 0
    ) -> DataLoader:
        """A DataLoader over ``split`` yielding ``(X, y)`` batches of ``batch_size`` samples.

        ``shuffle`` defaults to True for 'train' only. The order is seeded: two loaders made with
        the same ``seed`` yield the same batches (each new epoch of one loader reshuffles).

        Example: ``for X, y in data.loader("train", batch_size=128): ...``
        """
        X, y = self.split(split)
        batch_size = utils.check_int("batch_size", batch_size, minimum=1)
        if shuffle is not None and not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be True, False or None; got {shuffle!r}")
        seed = utils.check_int("seed", seed, minimum=0)
        shuffle = split == "train" if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(X, y), batch_size=batch_size, shuffle=shuffle, generator=generator
        )

    def subset(self, split: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``n`` samples of ``split`` drawn at random without replacement (seeded), as ``(X, y)``.

        Example: ``X, y = data.subset("test", 100)  # a quick evaluation batch``
        """
        X, y = self.split(split)
        n = utils.check_int("n", n, minimum=1, maximum=len(X))
        seed = utils.check_int("seed", seed, minimum=0)
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n]
        return X[idx], y[idx]


@dataclass(frozen=True, eq=False, repr=False)
class TextData:
    """A character-level corpus: int64 token ids ``train`` / ``val`` (N,) and the ``vocab`` (itos).

    Example: ``text = load("pydoc"); text.decode(text.encode("def f():"))``
    """

    name: str
    train: Tensor
    val: Tensor
    vocab: tuple[str, ...]

    def __repr__(self) -> str:
        return f"TextData({describe(self)})"

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (token ids are 0 … vocab_size - 1)."""
        return len(self.vocab)

    @functools.cached_property
    def _codepoints(self) -> np.ndarray:
        return np.array([ord(c) for c in self.vocab], dtype=np.int64)  # sorted, as vocab is

    def encode(self, text: str) -> Tensor:
        """Token ids (int64, (len(text),)) of ``text``; every character must be in the vocab.

        Example: ``text.encode("if")  # tensor([..., ...])``
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str; got {type(text).__name__}")
        return torch.from_numpy(_encode(text, self._codepoints))

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The string of a 1-D sequence of token ids (a Tensor or a list of ints).

        Example: ``text.decode(text.train[:80])``
        """
        ids = torch.as_tensor(ids)
        if ids.numel() == 0 and ids.ndim == 1:
            return ""
        if ids.ndim > 1 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"ids must be a 1-D sequence of ints; got shape {tuple(ids.shape)}")
        ids = ids.reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be in [0, {self.vocab_size - 1}]; got {bad[0]}")
        return "".join(self.vocab[i] for i in ids)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Random windows of ``block_size`` characters: inputs ``x``, next-character targets ``y``.

        ``y[:, t]`` is the character after ``x[:, t]``; both int64, shape (batch_size, block_size).
        Pass a seeded ``generator`` for a repeatable batch.

        Example: ``x, y = text.get_batch("train", 32, 64, generator=g)``
        """
        utils.check_choice("split", split, ("train", "val"))
        data = self.train if split == "train" else self.val
        batch_size = utils.check_int("batch_size", batch_size, minimum=1)
        block_size = utils.check_int("block_size", block_size, minimum=1, maximum=len(data) - 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {generator!r}")
        start = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
        idx = start[:, None] + torch.arange(block_size)  # (B, T)
        return data[idx], data[idx + 1]  # (B, T), (B, T)


# --------------------------------------------------------------------------- public functions


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
        raise ValueError(f"download must be True or False; got {download!r}")

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


def is_split_data(data: Any) -> bool:
    """Whether ``data`` hands out ``(X, y)`` splits like :class:`ArrayData` (``data.split(name)``).
    Example: ``is_split_data(load("digits"))  # True``
    """
    return not isinstance(data, (Tensor, str)) and callable(getattr(data, "split", None))


def as_xy(data: Any, split: str = "test", name: str = "data") -> tuple[Tensor, Tensor]:
    """``(X, y)`` tensors from ``data``: its ``split`` (:class:`ArrayData`, or anything with that
    method) or an ``(X, y)`` pair of tensors of equal, non-zero length. Anything else: a one-line
    ValueError naming ``name``.

    Example: ``X, y = as_xy(load("digits"), "val")``
    """
    if is_split_data(data):
        return data.split(utils.check_choice("split", split, SPLITS))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
        if isinstance(X, Tensor) and isinstance(y, Tensor) and X.dim() and len(X) == len(y) > 0:
            return X, y
        sizes = [len(t) if isinstance(t, Tensor) and t.dim() else type(t).__name__ for t in data]
        raise ValueError(
            f"{name} must be an (X, y) pair of tensors of equal, non-zero length; got {sizes}"
        )
    raise ValueError(
        f"{name} must be ArrayData or an (X, y) tuple of tensors; got {type(data).__name__}"
    )


def describe(data: ArrayData | TextData) -> str:
    """A one-line plain-text summary: name, split sizes, input shape and classes (or vocab).

    Example: ``describe(load("digits"))  # 'digits: 1257 train / 180 val / 360 test, ...'``
    """
    if isinstance(data, TextData):
        return (
            f"{data.name}: {len(data.train):,} train / {len(data.val):,} val characters, "
            f"vocab {data.vocab_size}"
        )
    if isinstance(data, ArrayData):
        sizes = " / ".join(f"{len(data.split(s)[1])} {s}" for s in SPLITS)
        classes = ", ".join(data.classes[:3]) + (", ..." if len(data.classes) > 3 else "")
        return (
            f"{data.name}: {sizes}, input {tuple(data.input_shape)}, "
            f"{data.num_classes} classes ({classes})"
        )
    raise ValueError(f"data must be an ArrayData or TextData; got {type(data).__name__}")


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


# --------------------------------------------------------------------------- building, cached


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


def _split_embedded(
    name: str, X: np.ndarray, y: np.ndarray, num_samples: int | None, seed: int
) -> ArrayData:
    """Stratified test (20 %) / val (10 %) / train split, then optionally subsample train."""
    n = len(y)
    test, val, train = _stratified_split(y, [_ceil_percent(n, 20), _ceil_percent(n, 10)], seed)
    if num_samples is not None:
        utils.check_int("num_samples", num_samples, minimum=1, maximum=len(train))
        train = train[_stratified_split(y[train], [num_samples], seed + 1)[0]]
    X_t, y_t = torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(y)
    parts = [t for idx in (train, val, test) for t in (X_t[idx], y_t[idx].long())]
    return ArrayData(
        name, *parts, num_classes=10, input_shape=tuple(X.shape[1:]), classes=_DIGIT_CLASSES
    )


def _ceil_percent(n: int, percent: int) -> int:
    return (n * percent + 99) // 100


def _stratified_split(y: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Split indices 0..N-1 into parts of ``sizes`` plus a last part with the rest.

    Each class is spread over the parts in proportion to its count (largest remainder, ties to the
    smaller class), members drawn by a seeded shuffle; each part comes back sorted.
    """
    rng = np.random.default_rng(seed)
    labels, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels))
    left = counts.copy()
    allocations = []
    for size in sizes:
        quota = counts * size / len(y)
        take = np.minimum(np.floor(quota).astype(np.int64), left)
        frac = quota - take
        while take.sum() < size:
            order = np.lexsort((np.arange(len(labels)), -frac))  # biggest remainder first
            c = next(c for c in order if take[c] < left[c])
            take[c] += 1
            frac[c] -= 1.0
        left -= take
        allocations.append(take)
    allocations.append(left)
    parts: list[list[np.ndarray]] = [[] for _ in allocations]
    for c in range(len(labels)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        bounds = np.cumsum([0] + [int(a[c]) for a in allocations])
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            part.append(members[lo:hi])
    return [np.sort(np.concatenate(p)) for p in parts]


PYDOC_VOCAB: tuple[str, ...] = tuple(sorted("\n" + "".join(map(chr, range(32, 127))) + "°ß–—‘’“”…"))
"""The pydoc corpus's fixed alphabet (105 characters): newline, printable ASCII and the typographic
marks CPython's help text uses. Fixed, not read from the text, so a character model has the same
shape (and the same bytes) on every Python; the text itself grows between Python versions."""

_PYDOC_FALLBACK = "?"


def _load_pydoc() -> TextData:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DatasetUnavailableError(
            "pydoc needs CPython's pydoc_data module, missing from this Python; "
            "use an embedded dataset 'digits' or 'mnist1d' instead"
        ) from None
    text = "".join(topics[key] for key in sorted(topics))
    known = set(PYDOC_VOCAB)  # a character a future Python adds becomes "?"
    text = "".join(c if c in known else _PYDOC_FALLBACK for c in text)
    vocab = PYDOC_VOCAB
    ids = torch.from_numpy(_encode(text, np.array([ord(c) for c in vocab], dtype=np.int64)))
    n_train = len(ids) * 9 // 10
    return TextData("pydoc", ids[:n_train].clone(), ids[n_train:].clone(), vocab)


def _encode(text: str, codepoints: np.ndarray) -> np.ndarray:
    """Map characters to their index in the sorted ``codepoints`` of the vocab (int64)."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
    ids = np.searchsorted(codepoints, points)
    unknown = (ids >= len(codepoints)) | (
        codepoints[np.minimum(ids, len(codepoints) - 1)] != points
    )
    if unknown.any():
        chars = sorted({chr(p) for p in points[unknown]})
        raise ValueError(
            f"text must use only vocab characters; got {len(chars)} others: {chars[:5]}"
        )
    return ids


# --------------------------------------------------------------------------- mnist1d disk cache


def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated MNIST-1D signals (N, 40) float32 and labels (N,) int64, from the disk cache.

    The file embeds a SHA-256 of its arrays; a missing, unreadable or mismatching file is
    regenerated (the generator is deterministic) and rewritten atomically.
    """
    key_obj = {
        "mnist1d": metadata.version("mnist1d"),
        "num_samples": num_samples,
        "seed": seed,
        "version": _MNIST1D_CACHE_VERSION,
    }
    key = utils.stable_hash(key_obj)
    path = utils.cache_dir("datasets") / f"mnist1d-n{num_samples}-s{seed}-{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                X, y, digest = npz["x"], npz["y"], str(npz["sha256"])
            if X.shape != (num_samples, 40) or X.dtype != np.float32 or y.shape != (num_samples,):
                raise ValueError(f"unexpected arrays {X.shape} {X.dtype}, {y.shape}")
            if digest != _digest(key, X, y):
                raise ValueError("checksum mismatch")
            return X, y.astype(np.int64)
        except Exception as err:  # any unreadable or mismatching cache file: regenerate
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            warnings.warn(
                f"mnist1d cache {path.name} is corrupt ({reason}); regenerating", stacklevel=4
            )
    X, y = _generate_mnist1d(num_samples, seed)
    buf = io.BytesIO()
    np.savez(buf, x=X, y=y, sha256=np.array(_digest(key, X, y)))
    utils.atomic_write_bytes(path, buf.getvalue())
    return X, y


def _digest(key: str, X: np.ndarray, y: np.ndarray) -> str:
    return utils.sha256_bytes(key.encode() + X.tobytes() + y.astype("<i8").tobytes())


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Run mnist1d's generator (a few seconds for 10,000) without touching the global RNGs.

    make_dataset shuffles then cuts its own 80/20 split; we join the two parts back in generated
    order and split them ourselves, stratified, like ``digits``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ds = make_dataset(args)  # seeds numpy and random globally; no file or network access
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X = np.concatenate([ds["x"], ds["x_test"]]).astype(np.float32)  # (N, 40)
    y = np.concatenate([ds["y"], ds["y_test"]]).astype(np.int64)  # (N,)
    return X, y


# --------------------------------------------------------------------------- optional datasets


def _missing_file(name: str, root: Path) -> Path | None:
    """The first required file of ``name`` missing under ``root`` (IDX may also be ``.gz``)."""
    folder = root / _FOLDERS[name]
    if name == "cifar10":
        files = [folder / f for f in (*_CIFAR_TRAIN, "test_batch")]
        return next((f for f in files if not f.is_file()), None)
    for images, labels in _IDX_FILES.values():
        for base in (images, labels):
            if _idx_path(folder / "raw", base) is None:
                return folder / "raw" / base
    return None


def _idx_path(folder: Path, base: str) -> Path | None:
    for path in (folder / base, folder / f"{base}.gz"):
        if path.is_file():
            return path
    return None


def _unavailable_message(name: str, root: Path) -> str:
    return (
        f"{name} is not on disk (missing {_missing_file(name, root)}); fetch it once while online "
        f"with labkit.data.load({name!r}, download=True) (stored under {root}), "
        f"or use an embedded dataset: 'digits', 'mnist1d', 'pydoc'"
    )


@functools.lru_cache(maxsize=2)
def _read_optional(name: str, root: str) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """Official train and test tensors of an optional dataset: X float32 in [0, 1], y int64."""
    folder = Path(root) / _FOLDERS[name]
    if name == "cifar10":
        train = [_read_cifar_batch(folder / f) for f in _CIFAR_TRAIN]
        X_full = np.concatenate([x for x, _ in train])  # (N, 3, 32, 32)
        y_full = np.concatenate([y for _, y in train])
        X_test, y_test = _read_cifar_batch(folder / "test_batch")
        classes = _read_cifar_classes(folder / "batches.meta")
    else:
        arrays = {}
        for split, (images, labels) in _IDX_FILES.items():
            X = _read_idx(_idx_path(folder / "raw", images), shape=(28, 28))[:, None]
            y = _read_idx(_idx_path(folder / "raw", labels), shape=())
            if len(X) != len(y):
                raise _unreadable(folder / "raw" / images, f"{len(X)} images but {len(y)} labels")
            arrays[split] = X, y  # (N, 1, 28, 28), (N,)
        (X_full, y_full), (X_test, y_test) = arrays["train"], arrays["test"]
        classes = _FASHION_CLASSES if name == "fashion-mnist" else _DIGIT_CLASSES
    if len(y_full) < 2 or len(y_test) < 1:
        raise _unreadable(folder, f"only {len(y_full)} train and {len(y_test)} test samples")
    for labels in (y_full, y_test):
        if labels.size and labels.max() >= len(classes):
            raise _unreadable(folder, f"label {labels.max()} >= {len(classes)} classes")

    def to_x(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.float32)).div_(255.0)

    def to_y(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return to_x(X_full), to_y(y_full), to_x(X_test), to_y(y_test), classes


def _unreadable(path: Path, reason: str) -> DatasetUnavailableError:
    reason = " ".join(str(reason).split())[:200]
    return DatasetUnavailableError(
        f"could not read {path} ({reason}); delete it, run labkit.data.load(..., download=True), "
        f"or use an embedded dataset: 'digits', 'mnist1d', 'pydoc'"
    )


def _read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally gzipped) as a uint8 array (N, *shape)."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _unreadable(path, str(err)) from None
    # header: two zero bytes, type 0x08 (unsigned byte), ndim, then ndim big-endian uint32 sizes
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != 1 + len(shape):
        raise _unreadable(path, f"not an IDX file of uint8 with {1 + len(shape)} dimensions")
    header = 4 + 4 * raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if dims[1:] != shape or len(raw) - header != int(np.prod(dims)):
        raise _unreadable(path, f"header says {dims}, expected (N, {shape}) and matching size")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 images (N, 3, 32, 32) and labels (N,)."""
    batch = _read_pickle(path)
    try:
        data = np.asarray(_get(batch, "data"), dtype=np.uint8)
        labels = np.asarray(_get(batch, "labels"), dtype=np.int64)
        return data.reshape(len(labels), 3, 32, 32), labels
    except (KeyError, ValueError, TypeError) as err:
        raise _unreadable(path, f"not a CIFAR-10 batch: {err}") from None


def _read_cifar_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return _CIFAR_CLASSES
    try:
        names = _get(_read_pickle(path), "label_names")
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except (KeyError, TypeError, UnicodeDecodeError) as err:
        raise _unreadable(path, f"no label_names: {err}") from None


def _read_pickle(path: Path) -> dict:
    # CIFAR-10's official format is a Python 2 pickle; only read files from a source you trust.
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise _unreadable(path, str(err)) from None
    if not isinstance(obj, dict):
        raise _unreadable(path, f"expected a dict, got {type(obj).__name__}")
    return obj


def _get(mapping: dict, key: str) -> object:
    return mapping[key.encode()] if key.encode() in mapping else mapping[key]


def _download(name: str, root: Path) -> None:
    """Fetch ``name`` with torchvision into a staging folder, then move it into ``root``.

    Nothing lands under ``root/<folder>`` unless the whole download succeeded, so a failed or
    interrupted download never looks like data on the next offline ``load``.
    """
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DatasetUnavailableError(
            f"downloading {name} needs torchvision, which is not installed; "
            f"use an embedded dataset: 'digits', 'mnist1d', 'pydoc'"
        ) from None
    dataset_class = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".download-{name}-", dir=root))
    try:
        try:
            dataset_class[name](str(staging), train=True, download=True)
        except (OSError, RuntimeError, EOFError, tarfile.TarError, zlib.error) as err:
            reason = " ".join(str(err).split())[:160] or type(err).__name__
            raise DatasetUnavailableError(
                f"could not download {name}; this machine looks offline ({reason}); retry "
                f"labkit.data.load({name!r}, download=True) when online, "
                f"or use an embedded dataset: 'digits', 'mnist1d', 'pydoc'"
            ) from None
        _merge_move(staging / _FOLDERS[name], root / _FOLDERS[name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if _missing_file(name, root) is not None:
        raise DatasetUnavailableError(_unavailable_message(name, root))


def _merge_move(src: Path, dst: Path) -> None:
    """Move the tree ``src`` to ``dst``, keeping files that already exist in ``dst``."""
    if not dst.exists():
        os.replace(src, dst)
        return
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            os.replace(path, target)
