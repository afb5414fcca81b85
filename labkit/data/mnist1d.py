"""MNIST-1D generated locally by mnist1d, cached on disk as a checksummed ``.npz``."""

from __future__ import annotations

import io
import random
import warnings
from importlib import metadata

import numpy as np

from labkit import utils

MNIST1D_DEFAULT_SAMPLES = 10_000


_MNIST1D_CACHE_VERSION = 1  # bump when the cached arrays change meaning


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


def generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh MNIST-1D signals (N, 40) float32 and labels (N,) int64, written to no file.

    The generator ``data.load("mnist1d")`` caches, run as it is: for data that must never reach
    the disk cache (notebook 08's hidden split). A few seconds per 10,000 signals.
    Example: ``X, y = generate(1_000, seed=12345)``
    """
    return _generate_mnist1d(num_samples, seed)


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
