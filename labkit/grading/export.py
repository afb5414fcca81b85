"""What leaves the gradebook: per-student totals for an LMS, and the late-submission policy.

- :func:`totals_csv`: one row per student, one column per course notebook (its score after any
  late penalty), then ``total`` and ``max`` -- the shape Canvas' and Gradescope's grade imports
  take (map the columns to assignments there; ``student`` is the submission folder's name, so
  name the folders by the LMS's student id).
- :class:`LatePolicy`: a deadline per notebook and a penalty in percent of the score per started
  day late (capped at 100 %; a minute late is one started day). The time a notebook was
  submitted comes from a submissions manifest (a CSV ``submission,notebook,submitted_at`` with
  ISO 8601 times, as an LMS export gives) or else from the file's modification time -- which
  copying can change, so prefer the manifest for a real class. An optional ``deadline`` column
  gives one submission its own deadline (a timed exam started at another time, extra time),
  which replaces the notebook's; such a row may leave ``submitted_at`` empty (the file's time
  is used then). ``grace_minutes`` are added to every deadline.

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
from typing import NamedTuple

from labkit.grading.scoring import format_points
from labkit.grading.submission import Row, SourceNotebook

__all__ = [
    "LatePolicy",
    "Submissions",
    "read_deadlines",
    "read_submissions",
    "read_submitted",
    "totals_csv",
]


EXAMPLE_TIME = "2026-12-10T23:59+01:00"
SUBMITTED_COLUMNS = ("submission", "notebook", "submitted_at")


def _when(text: str, what: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC. ValueError naming ``what`` otherwise."""
    try:
        when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"{what} must be an ISO 8601 time like {EXAMPLE_TIME}; got {text!r}"
        raise ValueError(msg) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_deadlines(path: str | os.PathLike) -> dict[str, datetime]:
    """Deadlines from a JSON file ``{"00_efficiency_basics.ipynb": "2026-12-10T23:59+01:00"}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--deadlines: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--deadlines {path} must be a JSON object: notebook file name -> ISO 8601 time, "
            f'like {{"99_final_exam.ipynb": "{EXAMPLE_TIME}"}}'
        )
    return {str(k): _when(v, f"--deadlines {path}: the deadline of {k}") for k, v in data.items()}


class Submissions(NamedTuple):
    """A submissions manifest: times submitted and own deadlines, by (submission, notebook)."""

    submitted: dict[tuple[str, str], datetime]
    deadlines: dict[tuple[str, str], datetime]


def read_submissions(path: str | os.PathLike) -> Submissions:
    """Submission times, and any own deadlines, from a CSV file.

    Columns ``submission,notebook,submitted_at`` and optionally ``deadline`` (ISO 8601 times; one
    without a zone is UTC). A row's ``deadline`` replaces the notebook's ``--deadlines`` entry for
    that submission; a row with a deadline may leave ``submitted_at`` empty (the file's time is
    used then). Errors are one line naming the file, the line and the column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            names = [(n or "").strip() for n in reader.fieldnames or []]
            missing = [c for c in SUBMITTED_COLUMNS if c not in names]
            if missing:
                raise ValueError(
                    f"--submitted {path} must have the columns submission, notebook, submitted_at "
                    f"(and optionally deadline); it lacks {', '.join(missing)}"
                )
            reader.fieldnames = names
            rows = [(reader.line_num, r) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"--submitted: cannot read {path}: {err}") from None
    out = Submissions({}, {})
    for line, r in rows:
        key = ((r["submission"] or "").strip(), (r["notebook"] or "").strip())
        where = f"--submitted {path}, line {line}, column"
        if not all(key):
            raise ValueError(f"{where} {'notebook' if key[0] else 'submission'}: empty")
        deadline = (r.get("deadline") or "").strip()
        submitted = (r["submitted_at"] or "").strip()
        if submitted or not deadline:
            out.submitted[key] = _when(submitted, f"{where} submitted_at")
        if deadline:
            out.deadlines[key] = _when(deadline, f"{where} deadline")
    return out


def read_submitted(path: str | os.PathLike) -> dict[tuple[str, str], datetime]:
    """Submission times from a CSV with columns ``submission,notebook,submitted_at``."""
    return read_submissions(path).submitted


def _duration(seconds: float) -> str:
    """``45 s``, ``7 min``, ``2 h 5 min``, ``3 d 1 h 2 min`` (minutes rounded up)."""
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    days, rest = divmod(math.ceil(seconds / 60), 1440)
    hours, minutes = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n)


@dataclass
class LatePolicy:
    """Deadlines per notebook and ``per_day`` percent off the score per started day late.

    ``own_deadlines`` (by (submission, notebook), from a manifest's ``deadline`` column) replace
    the notebook's deadline for those submissions; ``grace_minutes`` are added to every deadline.
    """

    deadlines: dict[str, datetime]
    per_day: float = 10.0
    submitted: dict[tuple[str, str], datetime] = field(default_factory=dict)
    own_deadlines: dict[tuple[str, str], datetime] = field(default_factory=dict)
    grace_minutes: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= float(self.per_day) <= 100:
            raise ValueError(f"late penalty per day must be in [0, 100] %; got {self.per_day}")
        if not 0 <= float(self.grace_minutes) < math.inf:
            raise ValueError(f"--grace must be a number of minutes >= 0; got {self.grace_minutes}")

    def penalty(self, days: int) -> float:
        """Percent of the score taken for ``days`` started days late (at most 100)."""
        return min(100.0, float(self.per_day) * max(0, days))

    def unused(self, rows: list[Row]) -> list[tuple[str, str]]:
        """The own deadlines that no graded row matched (a misspelt student or notebook name)."""
        seen = {(r.submission, r.notebook) for r in rows}
        return sorted(k for k in self.own_deadlines if k not in seen)

    def apply(self, row: Row, path: Path | None) -> None:
        """Set ``row.late_days`` and ``row.penalty`` from the manifest time, else the file's.

        Any time after the deadline (plus grace) counts: a second late is one started day.
        """
        key = (row.submission, row.notebook)
        own = self.own_deadlines.get(key)
        deadline = own or self.deadlines.get(row.notebook)
        if deadline is None or row.status in ("missing", "error") or path is None:
            return
        when = self.submitted.get(key)
        source = "the submissions manifest"
        if when is None:
            try:
                when = datetime.fromtimestamp(os.stat(path).st_mtime, tz=UTC)
            except OSError:
                return
            source = "the file's modification time"
        late = (when - deadline).total_seconds() - 60 * float(self.grace_minutes)
        if late > 0:
            row.late_days = math.ceil(late / 86400)
            row.penalty = self.penalty(row.late_days)
            which = "this submission's own deadline" if own else "the deadline"
            grace = f" + {float(self.grace_minutes):g} min grace" if self.grace_minutes else ""
            row.notes.append(
                f"submitted {_duration(late)} after {which} "
                f"({deadline.isoformat(timespec='minutes')}{grace}; time from {source}): "
                f"{row.late_days} started day(s) late, {row.penalty:g} % off the score"
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
