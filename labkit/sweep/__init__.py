"""Parameter sweeps: a pure grid runner with a verified cache, and the tables made from its records.

A sweep calls ``fn(**point)`` once per grid point and returns *records*: flat dicts
``{**point, **result}``. Results are cached in memory and, when the sweep has a ``name``, on disk
(one JSON file per point under ``cache_dir("sweeps")``), so rerunning a notebook recomputes nothing
and adding a grid point computes only the new one. Widgets and plots then index these records.

Files: ``runner`` (``grid``, ``run``, the cache) and ``records`` (the tables and the record
checks).

Example:
    >>> from labkit import sweep
    >>> points = sweep.grid(width=[16, 32], seed=[0, 1])
    >>> records = sweep.run(lambda width, seed: {"acc": 0.5 + width / 100}, points, cache=False)
    >>> sweep.pareto_front([{"bytes": 10, "acc": 0.8}, {"bytes": 20, "acc": 0.7}])
    [{'bytes': 10, 'acc': 0.8}]
"""

from labkit.sweep.records import (
    check_keys,
    check_records,
    mean_std,
    pareto_front,
    record_keys,
    record_number,
    select,
    to_table,
    unique,
)
from labkit.sweep.runner import (
    clear_cache,
    grid,
    run,
)

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
