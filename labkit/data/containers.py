"""Dataset containers: names, ArrayData / TextData, and helpers that read them (as_xy, describe)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from labkit import utils

EMBEDDED = ("digits", "mnist1d", "pydoc")


OPTIONAL = ("mnist", "fashion-mnist", "cifar10")


NAMES = EMBEDDED + OPTIONAL


SPLITS = ("train", "val", "test")


class DatasetUnavailableError(RuntimeError):
    """An optional dataset is not on disk, or could not be fetched or read; the message says why."""


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
            raise utils.ArgumentTypeError(f"text must be a str; got {type(text).__name__}")
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
