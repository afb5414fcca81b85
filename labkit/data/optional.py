"""Optional torchvision datasets (mnist, fashion-mnist, cifar10): files, readers, downloads."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from labkit.data.containers import DatasetUnavailableError
from labkit.data.splits import _DIGIT_CLASSES

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
