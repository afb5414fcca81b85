"""What leaves the gradebook: per-student totals for an LMS, and the late-submission policy.

- :func:`totals_csv`: one row per student, one column per course notebook (its score after any
  late penalty), then ``total`` and ``max`` -- the shape Canvas' and Gradescope's grade imports
  take (map the columns to assignments there; ``student`` is the submission folder's name, so
  name the folders by the LMS's student id).
- :class:`LatePolicy`: a deadline per notebook and a penalty in percent of the score per started
  day late (capped at 100 %). The time a notebook was submitted comes from a submissions
  manifest (a CSV ``submission,notebook,submitted_at`` with ISO 8601 times, as an LMS export
  gives) or else from the file's modification time -- which copying can change, so prefer the
  manifest for a real class.

Example:
    >>> from datetime import datetime, timezone
    >>> policy = LatePolicy({"00_x.ipynb": datetime(2026, 12, 10, tzinfo=timezone.utc)}, 10)
    >>> policy.penalty(2)
    20.0
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from labkit.grading.scoring import format_points
from labkit.grading.submission import Row, SourceNotebook

__all__ = ["LatePolicy", "read_deadlines", "read_submitted", "totals_csv"]


def _when(text: str, what: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC. ValueError naming ``what`` otherwise."""
    try:
        when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"{what} must be an ISO 8601 time like 2026-12-10T23:59+01:00; got {text!r}"
        raise ValueError(msg) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_deadlines(path: str | os.PathLike) -> dict[str, datetime]:
    """Deadlines from a JSON file ``{"00_efficiency_basics.ipynb": "2026-12-10T23:59+01:00"}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"deadlines: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("deadlines must be a JSON object: notebook file name -> ISO 8601 time")
    return {str(k): _when(v, f"deadline of {k}") for k, v in data.items()}


def read_submitted(path: str | os.PathLike) -> dict[tuple[str, str], datetime]:
    """Submission times from a CSV with columns ``submission,notebook,submitted_at``."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"submitted: cannot read {path}: {err}") from None
    out = {}
    for i, r in enumerate(rows, 2):
        if not {"submission", "notebook", "submitted_at"} <= set(r):
            raise ValueError("submitted must have the columns submission, notebook, submitted_at")
        out[(r["submission"], r["notebook"])] = _when(r["submitted_at"], f"submitted_at (line {i})")
    return out


@dataclass
class LatePolicy:
    """Deadlines per notebook and ``per_day`` percent off the score per started day late."""

    deadlines: dict[str, datetime]
    per_day: float = 10.0
    submitted: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= float(self.per_day) <= 100:
            raise ValueError(f"late penalty per day must be in [0, 100] %; got {self.per_day}")

    def penalty(self, days: int) -> float:
        """Percent of the score taken for ``days`` started days late (at most 100)."""
        return min(100.0, float(self.per_day) * max(0, days))

    def apply(self, row: Row, path: Path | None) -> None:
        """Set ``row.late_days`` and ``row.penalty`` from the manifest time, else the file's."""
        deadline = self.deadlines.get(row.notebook)
        if deadline is None or row.status in ("missing", "error") or path is None:
            return
        when = self.submitted.get((row.submission, row.notebook))
        source = "the submissions manifest"
        if when is None:
            try:
                when = datetime.fromtimestamp(os.stat(path).st_mtime, tz=UTC)
            except OSError:
                return
            source = "the file's modification time"
        late = (when - deadline).total_seconds()
        if late > 0:
            row.late_days = math.ceil(late / 86400)
            row.penalty = self.penalty(row.late_days)
            row.notes.append(
                f"submitted {row.late_days} day(s) after the deadline ({source}): "
                f"{row.penalty:g} % off the score"
            )


def totals_csv(rows: list[Row], sources: list[SourceNotebook]) -> str:
    """Per-student totals: student, one score column per notebook (after penalty), total, max.

    Scores are summed exactly and written rounded to 2 decimals (scored cells earn fractions).
    """
    names = [s.name for s in sources]
    maxima = {s.name: s.info.max_points for s in sources}
    students: dict[str, dict[str, float]] = {}
    for row in rows:
        students.setdefault(row.submission, {})[row.notebook] = row.score
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["student", *(Path(n).stem for n in names), "total", "max"])
    for student in sorted(students):
        scores = [students[student].get(n, 0.0) for n in names]
        writer.writerow(
            [
                student,
                *(format_points(s) for s in scores),
                format_points(sum(scores)),
                format_points(sum(maxima.values())),
            ]
        )
    return buf.getvalue()
