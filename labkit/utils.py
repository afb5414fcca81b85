"""Shared plumbing: seeding, devices, data/cache folders, atomic files, hashing, checks, progress.

Everything here is small and has no side effects at import.

Example:
    >>> from labkit import utils
    >>> import torch
    >>> first = torch.rand(3, generator=utils.seed(0))  # seeds random, numpy, torch; a Generator
    >>> bool(torch.equal(first, torch.rand(3, generator=utils.seed(0))))
    True
    >>> utils.check_choice("split", "train", ("train", "val", "test"))
    'train'
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "seed",
    "seeded",
    "num_threads",
    "on_device",
    "get_device",
    "data_dir",
    "cache_dir",
    "atomic_write_bytes",
    "atomic_torch_save",
    "save_verified",
    "load_verified",
    "sha256_bytes",
    "sha256_file",
    "stable_hash",
    "json_default",
    "ArgumentTypeError",
    "check_choice",
    "check_int",
    "check_number",
    "check_fraction",
    "is_ci",
    "progress_enabled",
    "progress",
]


# --------------------------------------------------------------------------- seeding, devices


def seed(value: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA if present); return a seeded torch.Generator.

    Example: ``g = labkit.seed(0)``
    """
    value = check_int("seed", value, minimum=0)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's RNG seeded to ``seed`` (weight init, dropout, shuffles).

    The caller's RNG state comes back afterwards, so a seeded call leaves the global RNG untouched.
    The CPU generator always; ``device``'s too when it is a CUDA device.

    Example: ``with seeded(0): model = nn.Linear(4, 2)  # the same weights every time``
    """
    seed = check_int("seed", seed, minimum=0)
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch threads inside the block only, restored even on error.

    None: leave the setting alone.
    Example: ``with num_threads(1): train.fit(...)``
    """
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(check_int("threads", threads, minimum=1))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def on_device(model: torch.nn.Module, device: torch.device, training: bool) -> Iterator[None]:
    """Run the block with ``model`` on ``device`` in train (``training=True``) or eval mode.

    Its device and mode come back afterwards.
    Example: ``with on_device(teacher, dev, False): ...``
    """
    home = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    was_training = model.training
    model.to(device).train(training)
    try:
        yield
    finally:
        model.to(home).train(was_training)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: the one asked for, else CUDA when present, else CPU. Never requires CUDA.

    Example: ``get_device()  # device(type='cpu') on a laptop``
    """
    if device is None:
        if os.environ.get("LABKIT_DEVICE"):
            device = os.environ["LABKIT_DEVICE"]
        else:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device must be 'cpu' on this machine (no CUDA available); got 'cuda'")
    return dev


# --------------------------------------------------------------------------- folders


def data_dir() -> Path:
    """Folder for optional datasets and the cache: ``$LABKIT_DATA``, else the repo's ``data/``.

    Falls back to ``~/.cache/labkit`` when labkit is installed outside the repository.
    """
    env = os.environ.get("LABKIT_DATA")
    if env:
        path = Path(env).expanduser()
    else:
        repo_data = Path(__file__).resolve().parent.parent / "data"
        path = repo_data if repo_data.is_dir() else Path.home() / ".cache" / "labkit"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    """A sub-folder of ``data_dir()/cache`` (created), e.g. ``cache_dir("models")``."""
    path = data_dir().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- atomic files, hashing


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    A reader never sees a half-written file, even if the writer is killed midway.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` through :func:`atomic_write_bytes`; returns the SHA-256 of the bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, payload)
    return sha256_bytes(payload)


def _sidecar(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_verified(obj: Any, path: str | os.PathLike, info: dict) -> dict:
    """``torch.save`` ``obj`` to ``path`` atomically, then its JSON sidecar; returns the sidecar.

    The sidecar (``path`` + ``.json``) holds ``info`` plus the file's ``sha256``, which
    :func:`load_verified` checks.
    Example: ``save_verified(model.state_dict(), "m.pt", {"key": "abc"})``
    """
    sidecar = {**info, "sha256": atomic_torch_save(obj, path)}
    atomic_write_bytes(_sidecar(path), json.dumps(sidecar, indent=1, default=list).encode())
    return sidecar


def load_verified(path: str | os.PathLike) -> tuple[Any, dict]:
    """``(object, sidecar)`` written by :func:`save_verified`, its sha256 checked.

    ``FileNotFoundError`` when a file is missing, ``ValueError`` when the sha256 does not match.
    Example: ``state, info = load_verified("m.pt")``
    """
    info = json.loads(_sidecar(path).read_text())
    if info.get("sha256") != sha256_file(path):
        raise ValueError("sha256 does not match the sidecar")
    return torch.load(path, map_location="cpu", weights_only=True), info


def sha256_bytes(payload: bytes) -> str:
    """Hex SHA-256 of ``payload``."""
    return hashlib.sha256(payload).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-able object (dicts sorted), stable across runs and machines.

    Example: ``stable_hash({"lr": 1e-3, "epochs": 5})  # '3f2a...'``
    """
    text = json.dumps(obj, sort_keys=True, default=json_default, separators=(",", ":"))
    return sha256_bytes(text.encode())[:length]


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for labkit values: dataclasses, tuples, sets, paths, NumPy."""
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot hash object of type {type(obj).__name__}")


# --------------------------------------------------------------------------- argument checks


class ArgumentTypeError(TypeError, ValueError):
    """A parameter of the wrong type (a string where a number belongs).

    A ``TypeError``, as Python's convention asks, and also a ``ValueError`` like every other bad
    argument labkit refuses, so one ``except ValueError`` still catches them all (numpy's
    ``AxisError`` is both a ``ValueError`` and an ``IndexError`` for the same reason).

    Example:
        >>> try:
        ...     check_int("seed", "0")
        ... except TypeError as err:
        ...     print(err)
        seed must be an integer; got '0' (a str)
    """


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a one-line ValueError naming both.

    Example: ``check_choice("scope", "global", ("layer", "global"))``
    """
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
    return value


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` if it is an int within [minimum, maximum], else a one-line ValueError.

    The error is :class:`ArgumentTypeError`, also a TypeError, when it is not an integer at all.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"{name} must be an integer{_range(minimum, maximum)}; got {value!r}"
            f" (a {type(value).__name__})"
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{_range(minimum, maximum)}; got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """Return ``value`` as a float if finite, real and within the bounds, else a ValueError.

    ``min_open`` / ``max_open``: the bound itself excluded. The ValueError is one line, naming
    ``name`` and the allowed range (:class:`ArgumentTypeError`, also a TypeError, when it is not a
    real number).
    Example: ``check_number("lr", 0.01, minimum=0, min_open=True)  # 0.01``
    """
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = real and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if min_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if max_open else value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            low, high = "(" if min_open else "[", ")" if max_open else "]"
            allowed = f" in {low}{minimum:g}, {maximum:g}{high}"
        elif minimum is not None:
            allowed = f" {'>' if min_open else '>='} {minimum:g}"
        elif maximum is not None:
            allowed = f" {'<' if max_open else '<='} {maximum:g}"
        else:
            allowed = " (finite)"
        if not real:
            got = f"{value!r} (a {type(value).__name__})"
            raise ArgumentTypeError(f"{name} must be a number{allowed}; got {got}")
        raise ValueError(f"{name} must be a number{allowed}; got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any, *, inclusive_high: bool = False) -> float:
    """Return ``value`` if it is a float in [0, 1) (or [0, 1]), else a one-line ValueError."""
    return check_number(name, value, minimum=0, maximum=1, max_open=not inclusive_high)


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


# --------------------------------------------------------------------------- progress bars


def is_ci() -> bool:
    """True under continuous integration (``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def progress_enabled() -> bool:
    """Progress bars show unless ``LABKIT_PROGRESS=0`` or under CI; ``LABKIT_PROGRESS=1`` forces."""
    flag = os.environ.get("LABKIT_PROGRESS", "").lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    return not is_ci()


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar written to stderr (quiet under CI or LABKIT_PROGRESS=0).

    Progress goes to stderr so it never lands in stdout outputs that nbval compares.
    """
    if not progress_enabled():
        return iter(iterable)
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    return iter(tqdm(iterable, **kwargs))
