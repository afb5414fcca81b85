"""Scored test cells: partial credit from a graded cell's last expression; metrics, a leaderboard.

nbgrader's convention: a graded test cell whose **last expression evaluates to a number** earns
that many points, clipped to ``[0, points]`` (its ``points`` metadata); a cell that raises earns 0;
a cell that passes with no numeric result earns full points. When grading, the number is computed
in the grader's own process (:mod:`labkit.grading.verdict`), from data the student's code
returned, so the student's code cannot forge it.

End a scored cell with :func:`score`: it returns the points unchanged (the cell's value) and
records the cell's metrics (accuracy, bytes, ...), which ``labkit grade`` writes to the
leaderboard CSV next to the gradebook.

Example:
    >>> score(2.5, acc=0.93, bytes=7_812)
    2.5
    >>> earned_points(7.2, 4), earned_points(-1, 4), earned_points(None, 4)
    (4.0, 0.0, None)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["RESERVED", "score", "earned_points", "take_metrics", "format_points"]

RESERVED = ("rank", "student", "notebook", "grade_id", "points", "max", "status", "error")
"""Leaderboard columns a metric may not be named after."""

_recorded: dict[str, float | int | str] | None = None  # the last score() call's metrics


def _number(value: Any) -> bool:
    """A real number that is not a truth value (``bool`` and NumPy's ``bool_`` are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (
        type(value).__name__ != "bool_"
    )  # fmt: skip


def score(points: float, /, **metrics: float | int | str) -> float:
    """The points a scored cell earns (return it as the cell's last expression); records metrics.

    ``points`` is a number (the grader clips it to ``[0, the cell's points]``); each metric is a
    number or a string of at most 100 characters and is written, one column per name, to the
    leaderboard (``labkit grade`` writes ``<gradebook stem>-leaderboard.csv``). Metric names may
    not be one of :data:`RESERVED`. In a student's own run (``labkit check``) it only returns
    ``points``.

    Example: ``score(4 * fraction, acc=acc, bytes=size)  # last line of the graded cell``
    """
    global _recorded
    if not _number(points):
        raise ValueError(f"points must be a number (int or float); got {points!r}")
    clean: dict[str, float | int | str] = {}
    for name, value in metrics.items():
        if name in RESERVED:
            raise ValueError(f"metric names must not be one of {', '.join(RESERVED)}; got {name!r}")
        if isinstance(value, str) and len(value) <= 100:
            clean[name] = value
        elif _number(value) and isinstance(value, numbers.Integral):
            clean[name] = int(value)
        elif _number(value) and math.isfinite(float(value)):
            clean[name] = float(value)
        else:
            raise ValueError(
                f"metric {name} must be a finite number or a string of at most 100 characters; "
                f"got {value!r}"
            )
    _recorded = clean
    return float(points)


def take_metrics() -> dict[str, float | int | str] | None:
    """The metrics the last :func:`score` call recorded (None if none), and forget them."""
    global _recorded
    recorded, _recorded = _recorded, None
    return recorded


def earned_points(value: Any, points: float) -> float | None:
    """What a graded cell whose last expression is ``value`` earns of ``points``.

    A number is clipped to ``[0, points]`` (NaN earns 0); anything else is None (the cell earns
    full points if it passed).
    Example: ``earned_points(2.49, 4)  # 2.49``
    """
    if not _number(value):
        return None
    value = float(value)
    return 0.0 if math.isnan(value) else min(max(value, 0.0), float(points))


def format_points(x: float) -> str:
    """Points as the CSVs and feedback write them: 2 decimals, no trailing zeros (``2.5``, ``4``).

    Totals are summed exactly and rounded only here.
    Example: ``format_points(2.0 / 3)  # '0.67'``
    """
    text = f"{float(x):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
