"""Parameter sweeps: a pure grid runner with a verified cache, and the tables made from its records.

A sweep calls ``fn(**point)`` once per grid point and returns *records*: flat dicts
``{**point, **result}``. Results are cached in memory and, when the sweep has a ``name``, on disk
(one JSON file per point under ``cache_dir("sweeps")``), so rerunning a notebook recomputes nothing
and adding a grid point computes only the new one. Widgets and plots then index these records.

Example:
    >>> from labkit import sweep
    >>> points = sweep.grid(width=[16, 32], seed=[0, 1])
    >>> records = sweep.run(lambda width, seed: {"acc": 0.5 + width / 100}, points, cache=False)
    >>> sweep.pareto_front([{"bytes": 10, "acc": 0.8}, {"bytes": 20, "acc": 0.7}])
    [{'bytes': 10, 'acc': 0.8}]
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Number, Real
from pathlib import Path
from typing import Any

import numpy as np

from labkit import utils

__all__ = [
    "grid",
    "run",
    "clear_cache",
    "pareto_front",
    "select",
    "unique",
    "to_table",
    "mean_std",
    "check_records",
    "check_keys",
    "record_keys",
    "record_number",
]

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
        raise ValueError(f"version must be an int or a str; got {version!r}")
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
        raise ValueError(bad)
    out = list(points)
    for point in out:
        if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
            raise ValueError(f"points must be dicts with str keys; got {point!r}")
    return [dict(p) for p in out]


def _check_result(result: Any, point: Mapping[str, Any]) -> dict:
    if not isinstance(result, Mapping):
        raise ValueError(
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
            raise ValueError(f"fn's result keys must be str; got {key!r}")
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


# --------------------------------------------------------------------------- Pareto frontier


def pareto_front(
    records: Sequence[Mapping[str, Any]],
    x: str = "bytes",
    y: str = "acc",
    minimize_x: bool = True,
    maximize_y: bool = True,
) -> list[dict]:
    """The records no other record beats: kept iff none is at least as good in both x and y and
    strictly better in one. Duplicates of a front point are all kept; records whose x or y is NaN
    are left out. Returns the same dict objects, sorted by x ascending (ties: input order).

    Example: ``pareto_front(records, x="bytes", y="acc")  # smallest models at each accuracy``
    """
    records = check_records(records)
    check_keys(records, (x, y))
    sx = 1.0 if minimize_x else -1.0
    sy = -1.0 if maximize_y else 1.0
    scored = []  # (a, b, index): smaller a and smaller b are better
    for i, rec in enumerate(records):
        xv, yv = record_number(rec[x], x), record_number(rec[y], y)
        if not (math.isnan(xv) or math.isnan(yv)):
            scored.append((sx * xv, sy * yv, i))
    scored.sort()
    kept: list[int] = []
    best_b = math.inf  # best b among points with strictly better a
    for _, group in itertools.groupby(scored, key=lambda t: t[0]):
        group = list(group)
        b_min = group[0][1]  # sorted by b within the same a
        if b_min < best_b:
            kept.extend(i for _, b, i in group if b == b_min)
            best_b = b_min
    kept.sort(key=lambda i: (record_number(records[i][x], x), i))
    return [records[i] for i in kept]


# --------------------------------------------------------------------------- record tables


def select(records: Sequence[Mapping[str, Any]], **where: Any) -> list[dict]:
    """The records whose values equal ``where`` (or satisfy it, when a value is a callable).

    Records lacking a key are not selected; a key that no record has is an error (a typo).

    Example: ``select(records, method="prune", amount=lambda a: a >= 0.5)``
    """
    records = check_records(records)
    for key in where:
        if records and not any(key in rec for rec in records):
            raise ValueError(f"select key {key!r} is in no record; keys: {record_keys(records)}")

    def match(rec: Mapping[str, Any]) -> bool:
        for key, want in where.items():
            if key not in rec:
                return False
            ok = want(rec[key]) if callable(want) else rec[key] == want
            if not ok:
                return False
        return True

    return [rec for rec in records if match(rec)]


def unique(records: Sequence[Mapping[str, Any]], key: str) -> list:
    """The distinct values of ``key`` in order of first appearance (records lacking it skipped).

    Example: ``unique(records, "width")  # [16, 32, 64]``
    """
    records = check_records(records)
    if records and not any(key in rec for rec in records):
        raise ValueError(f"key {key!r} is in no record; keys: {record_keys(records)}")
    out: list = []
    seen: set = set()
    for rec in records:
        if key not in rec:
            continue
        value = rec[key]
        try:
            if value in seen:
                continue
            seen.add(value)
        except TypeError:  # unhashable (a list): compare by equality
            if any(value == v for v in out):
                continue
        out.append(value)
    return out


def to_table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    floatfmt: str | Mapping[str, str] = ".4g",
) -> str:
    """A plain fixed-width text table: a header, a rule, one row per record; deterministic.

    ``columns`` defaults to every key in order of first appearance. Floats use ``floatfmt`` (a
    format spec, or a dict column -> spec); numbers are right-aligned, text left-aligned, a missing
    value is blank. Print it in ``# NBVAL_CHECK_OUTPUT`` cells.

    Example: ``print(to_table(records, ["width", "acc"], floatfmt=".3f"))``
    """
    records = check_records(records)
    if columns is None:
        columns = record_keys(records)
    elif isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"columns must be a list of record keys; got {columns!r}")
    if not columns:
        return "(no records)"
    if not isinstance(floatfmt, (str, Mapping)):
        raise ValueError(f"floatfmt must be a format spec like '.4g' or a dict; got {floatfmt!r}")

    def fmt(col: str, value: Any) -> str:
        if isinstance(value, float):
            spec = floatfmt if isinstance(floatfmt, str) else floatfmt.get(col, ".4g")
            return format(value, spec)
        if isinstance(value, np.generic):
            return fmt(col, value.item())
        return "" if value is None else str(value)

    cells = [[fmt(c, rec[c]) if c in rec else "" for c in columns] for rec in records]
    numeric = [all(_is_number(rec[c]) for rec in records if c in rec) for c in columns]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]

    def line(row: Sequence[str]) -> str:
        parts = [s.rjust(w) if num else s.ljust(w) for s, w, num in zip(row, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


def mean_std(
    records: Sequence[Mapping[str, Any]],
    group_by: str | Sequence[str],
    value: str | Sequence[str],
    ddof: int = 1,
) -> list[dict]:
    """Aggregate repeated runs (e.g. seeds): one record per group with the mean and spread.

    Each output record holds the ``group_by`` keys, ``value`` (the mean), ``f"{value}_std"`` (the
    standard deviation with ``ddof``, default 1: the sample estimate; NaN for a single run) and
    ``n``. Groups keep their order of first appearance; other keys (e.g. ``seed``) are dropped.

    Example: ``mean_std(records, ["method", "bytes"], "acc")  # [{.., 'acc_std': .01, 'n': 3}]``
    """
    records = check_records(records)
    groups = [group_by] if isinstance(group_by, str) else list(group_by)
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ValueError("value must name at least one numeric key, e.g. 'acc'; got none")
    ddof = utils.check_int("ddof", ddof, minimum=0)
    if set(values) & set(groups) or "n" in values:
        raise ValueError(f"value must differ from group_by {groups} and from 'n'; got {values}")
    check_keys(records, groups + values)
    buckets: dict[str, tuple[dict, list[Mapping[str, Any]]]] = {}
    for rec in records:
        head = {g: rec[g] for g in groups}
        key = json.dumps(head, sort_keys=True, default=repr)
        buckets.setdefault(key, (head, []))[1].append(rec)
    out = []
    for head, members in buckets.values():
        agg: dict[str, Any] = dict(head)
        for v in values:
            arr = np.array([record_number(m[v], v) for m in members], dtype=np.float64)
            agg[v] = float(arr.mean())
            agg[f"{v}_std"] = float(arr.std(ddof=ddof)) if len(arr) > ddof else math.nan
        agg["n"] = len(members)
        out.append(agg)
    return out


# --------------------------------------------------------------------------- checks


def check_records(records: Any) -> list[Mapping[str, Any]]:
    """``records`` as a list of dicts, or a one-line ValueError (sweep, plot, widget input)."""
    if isinstance(records, (Mapping, str, bytes)) or not isinstance(records, Iterable):
        raise ValueError(f"records must be a list of dicts; got {type(records).__name__}")
    records = list(records)
    for rec in records:
        if not isinstance(rec, Mapping):
            raise ValueError(f"records must be a list of dicts; got an item {rec!r}")
    return records


def record_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key any record has, in first-seen order."""
    return list(dict.fromkeys(k for rec in records for k in rec))


def check_keys(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """Raise a one-line ValueError unless every record has every key in ``keys``."""
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(f"keys must be str record keys; got {key!r}")
        missing = sum(key not in rec for rec in records)
        if missing:
            raise ValueError(
                f"key {key!r} is missing from {missing} of {len(records)} records; "
                f"keys: {record_keys(records)}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def record_number(value: Any, key: str) -> float:
    """A record's ``key`` value as a float, or a ValueError naming the key (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{key!r} values must be numbers; got {value!r}")
    return float(value)
