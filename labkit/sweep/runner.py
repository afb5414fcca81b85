"""Running a grid: ``grid`` and ``run`` with a verified cache (memory, and disk for named sweeps),
keyed by the function's code and the point.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labkit import utils

__all__ = ["grid", "run", "clear_cache"]

_FORMAT = "labkit-sweep/1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MEMORY_MAX = 65536
# The in-memory cache, like functools.lru_cache: key -> canonical JSON of the result. Bounded (LRU).
_MEMORY: OrderedDict[str, str] = OrderedDict()


# --------------------------------------------------------------------------- grids


def grid(**axes: Sequence[Any]) -> list[dict]:
    """The cartesian product of the axes as a list of points, the last axis varying fastest.

    Each axis is a non-empty list, tuple or range of values (any JSON-able values).

    Example: ``grid(width=[16, 32], bits=[4, 8])  # [{'width': 16, 'bits': 4}, {.. 16, 8}, ..]``
    """
    if not axes:
        raise ValueError("grid needs at least one axis, e.g. grid(width=[16, 32]); got none")
    for key, values in axes.items():
        if not isinstance(values, (list, tuple, range)) or len(values) == 0:
            raise ValueError(
                f"grid axis {key!r} must be a non-empty list or tuple of values; got {values!r}"
            )
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes.values())]


# --------------------------------------------------------------------------- running with a cache


def run(
    fn: Callable[..., Mapping[str, Any]],
    points: Iterable[Mapping[str, Any]],
    *,
    name: str | None = None,
    cache: bool = True,
    progress: bool | None = None,
    version: int | str = 0,
    jobs: int = 1,
) -> list[dict]:
    """Call ``fn(**point)`` for every point; return records ``{**point, **result}`` in point order.

    ``fn`` must be pure given its parameters and return a dict of JSON-able scalars or lists
    (numpy scalars are converted). Results are cached in memory, keyed by ``(name, fn, version,
    point)`` where ``fn`` is its module, qualified name and a digest of its bytecode, defaults and
    closure values (so editing ``fn``'s body invalidates its cache). With a ``name`` they are also
    cached on disk, one verified JSON file per point, ``cache_dir("sweeps")/f"{name}-{key}.json"``:
    a corrupt file is recomputed. Bump ``version`` when something else ``fn`` depends on changes
    (a global, the data, a helper it calls); ``cache=False`` always calls ``fn`` and stores nothing.
    Duplicate points are computed once. ``progress``: ``False`` hides the bar, otherwise it shows
    on stderr unless under CI or ``LABKIT_PROGRESS=0``. ``jobs`` > 1 computes the missing points
    in that many worker processes (spawned, one torch thread each; results are stored as they
    arrive): ``fn`` must then be a module-level function of an importable module, not one defined
    in a notebook.

    Example: ``run(train_and_measure, grid(width=[16, 32, 64]), name="mlp-widths")``
    """
    if not callable(fn):
        raise ValueError(f"fn must be a callable returning a dict; got {type(fn).__name__}")
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise ValueError(
            "name must be None or a file-name-safe string of letters, digits, '_', '-', '.'; "
            f"got {name!r}"
        )
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise utils.ArgumentTypeError(f"version must be an int or a str; got {version!r}")
    points = _check_points(points)
    utils.check_int("jobs", jobs, minimum=1)
    if jobs > 1:
        _check_importable(fn)
    fn_id = _fn_id(fn) if cache else ""
    folder = utils.cache_dir("sweeps") if (cache and name is not None) else None

    results: dict[str, dict] = {}  # key -> result, this call only
    keys: list[str] = []
    todo: dict[str, dict] = {}  # key -> point, to compute (duplicate points computed once)
    for point in points:
        key = _point_key(name, fn_id, version, point) if cache else str(len(keys))
        keys.append(key)
        if key in results or key in todo:
            continue
        hit = _load(key, folder, name) if cache else None
        if hit is None:
            todo[key] = point
        else:
            results[key] = hit

    def done(key: str, result: Any) -> None:
        result = _check_result(result, todo[key])
        results[key] = result
        if cache:
            _store(key, result, folder, name, fn_id, version, todo[key])

    if jobs > 1 and len(todo) > 1:
        for key, result in _in_workers(fn, todo, min(jobs, len(todo)), progress, name):
            done(key, result)
    else:
        steps = list(todo.items())
        if progress is not False and steps:
            steps = utils.progress(steps, total=len(steps), desc=name)
        for key, point in steps:
            done(key, fn(**point))

    return [{**point, **json.loads(json.dumps(results[key]))} for point, key in zip(points, keys)]


def _check_importable(fn: Callable) -> None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname or not inspect.isfunction(fn):
        raise ValueError(
            "fn must be a module-level function of an importable module when jobs > 1 (worker "
            f"processes import it by name); got {qualname or fn!r} from {module!r}: use jobs=1"
        )


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the workers share the cores: one thread each


def _call(fn: Callable, point: dict) -> Any:
    return fn(**point)


def _in_workers(
    fn: Callable, todo: dict[str, dict], jobs: int, progress: bool | None, name: str | None
) -> Iterable[tuple[str, Any]]:
    """Yield ``(key, fn(**point))`` as worker processes finish the points of ``todo``."""
    import concurrent.futures as cf
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process that runs torch
    with cf.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(_call, fn, point): key for key, point in todo.items()}
        finished = cf.as_completed(futures)
        if progress is not False:
            finished = utils.progress(finished, total=len(futures), desc=name)
        try:
            for future in finished:
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def clear_cache(name: str | None = None) -> int:
    """Forget cached sweep results: the in-memory cache, and the disk files of sweep ``name``.

    Returns the number of disk files removed (0 when ``name`` is None: only memory is cleared).

    Example: ``clear_cache("mlp-widths")  # 12``
    """
    _MEMORY.clear()
    if name is None:
        return 0
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name must be a sweep name (letters, digits, _ - .); got {name!r}")
    removed = 0
    for path in utils.cache_dir("sweeps").glob(f"{name}-*.json"):
        if re.fullmatch(re.escape(name) + r"-[0-9a-f]{16}\.json", path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _check_points(points: Iterable[Mapping[str, Any]]) -> list[dict]:
    bad = f"points must be a list of dicts, e.g. grid(width=[16, 32]); got {type(points).__name__}"
    if isinstance(points, (Mapping, str, bytes)) or not isinstance(points, Iterable):
        raise utils.ArgumentTypeError(bad)
    out = list(points)
    for point in out:
        if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
            raise utils.ArgumentTypeError(f"points must be dicts with str keys; got {point!r}")
    return [dict(p) for p in out]


def _check_result(result: Any, point: Mapping[str, Any]) -> dict:
    if not isinstance(result, Mapping):
        raise utils.ArgumentTypeError(
            f"fn must return a dict of JSON-able scalars/lists; got {type(result).__name__}"
        )
    clash = [k for k in result if k in point]
    if clash:
        raise ValueError(
            f"fn's result keys collide with point keys {clash}; rename them in fn's result"
        )
    out = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise utils.ArgumentTypeError(f"fn's result keys must be str; got {key!r}")
        out[key] = _jsonable(value, key)
    return out


def _jsonable(value: Any, key: str) -> Any:
    """``value`` as plain JSON types (numpy scalars -> Python, tuples -> lists), else ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    hint = " (use .item() or .tolist())" if hasattr(value, "tolist") else ""
    raise ValueError(
        f"fn's result[{key!r}] must be a JSON-able scalar or list{hint}; got {type(value).__name__}"
    )


def _fn_id(fn: Callable) -> str:
    """Module, qualified name and a digest of ``fn``'s bytecode and of the values it closes over
    (closure cells, defaults, functools.partial arguments): stable across runs of the same code.
    Globals it reads are not seen: that is what ``version`` is for."""
    state: list[Any] = []
    target = fn
    while isinstance(target, functools.partial):
        state.append([target.args, target.keywords])
        target = target.func
    target = inspect.unwrap(target)
    target = getattr(target, "__func__", target)  # bound method -> function
    code = getattr(target, "__code__", None)
    if code is None and not hasattr(target, "__qualname__"):  # a callable object: its __call__
        code = getattr(type(target).__call__, "__code__", None)
        label = f"{type(target).__module__}.{type(target).__qualname__}"
    else:
        label = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
        state.append(getattr(target, "__defaults__", None))
        state.append(getattr(target, "__kwdefaults__", None))
        for cell in getattr(target, "__closure__", None) or ():
            try:
                state.append(cell.cell_contents)
            except ValueError:  # an empty cell
                state.append(None)
    digest = hashlib.sha256()
    if code is not None:
        _digest_code(code, digest)
    try:
        text = json.dumps(state, sort_keys=True, default=_state_default)
    except (TypeError, ValueError):  # mixed-type dict keys, a circular list
        text = repr([type(v).__qualname__ for v in state])
    digest.update(text.encode())
    return f"{label}:{digest.hexdigest()[:12]}"


def _state_default(obj: Any) -> Any:
    try:
        return utils.json_default(obj)
    except TypeError:  # a model, a dataset, a function: only its type counts
        return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def _digest_code(code: Any, digest: Any) -> None:
    # Bytecode, constants and names; not file names or line numbers, so moving a cell keeps the key.
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _digest_code(const, digest)
        elif isinstance(const, frozenset):  # iteration order depends on PYTHONHASHSEED
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())


def _point_key(name: str | None, fn_id: str, version: int | str, point: dict) -> str:
    try:
        return utils.stable_hash([name, fn_id, version, point])
    except TypeError:
        raise ValueError(
            f"point values must be JSON-able (numbers, strings, lists) to be cached; got {point!r} "
            "(use cache=False)"
        ) from None


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _load(key: str, folder: Path | None, name: str | None) -> dict | None:
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return json.loads(_MEMORY[key])
    if folder is None:
        return None
    path = folder / f"{name}-{key}.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        payload = stored["payload"]
        ok = (
            utils.sha256_bytes(_canonical(payload).encode()) == stored["sha256"]
            and payload["format"] == _FORMAT
            and payload["key"] == key
            and isinstance(payload["result"], dict)
        )
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        warnings.warn(f"sweep cache file {path.name} is corrupt; recomputing it", stacklevel=3)
        return None
    _remember(key, payload["result"])
    return payload["result"]


def _store(
    key: str,
    result: dict,
    folder: Path | None,
    name: str | None,
    fn_id: str,
    version: int | str,
    point: dict,
) -> None:
    _remember(key, result)
    if folder is None:
        return
    payload = {
        "format": _FORMAT,
        "key": key,
        "name": name,
        "fn": fn_id,
        "version": version,
        "point": json.loads(json.dumps(point, default=utils.json_default)),
        "result": result,
    }
    stored = {"sha256": utils.sha256_bytes(_canonical(payload).encode()), "payload": payload}
    utils.atomic_write_bytes(folder / f"{name}-{key}.json", json.dumps(stored, indent=1).encode())


def _remember(key: str, result: dict) -> None:
    _MEMORY[key] = _canonical(result)
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_MAX:
        _MEMORY.popitem(last=False)
