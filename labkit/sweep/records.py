"""Tables made from sweep records: Pareto frontier, selection, unique values, text tables, mean and
spread over seeds, and the record checks plots and widgets share.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Number, Real
from typing import Any

import numpy as np

from labkit import utils

__all__ = [
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


# --------------------------------------------------------------------------- Pareto frontier


def pareto_front(
    records: Sequence[Mapping[str, Any]],
    x: str = "bytes",
    y: str = "acc",
    minimize_x: bool = True,
    maximize_y: bool = True,
) -> list[dict]:
    """The records no other record beats.

    A record is kept iff none is at least as good in both x and y and strictly better in one.
    Duplicates of a front point are all kept; records whose x or y is NaN are left out. Returns the
    same dict objects, sorted by x ascending (ties: input order).

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
        raise utils.ArgumentTypeError(f"columns must be a list of record keys; got {columns!r}")
    if not columns:
        return "(no records)"
    if not isinstance(floatfmt, (str, Mapping)):
        raise utils.ArgumentTypeError(
            f"floatfmt must be a format spec like '.4g' or a dict; got {floatfmt!r}"
        )

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
        raise utils.ArgumentTypeError(
            f"records must be a list of dicts; got {type(records).__name__}"
        )
    records = list(records)
    for rec in records:
        if not isinstance(rec, Mapping):
            raise utils.ArgumentTypeError(f"records must be a list of dicts; got an item {rec!r}")
    return records


def record_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key any record has, in first-seen order."""
    return list(dict.fromkeys(k for rec in records for k in rec))


def check_keys(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """Raise a one-line ValueError unless every record has every key in ``keys``."""
    for key in keys:
        if not isinstance(key, str):
            raise utils.ArgumentTypeError(f"keys must be str record keys; got {key!r}")
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
