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

from labkit.sweep import records, runner
from labkit.sweep.records import *  # noqa: F403 - the package's names are its files' __all__
from labkit.sweep.runner import *  # noqa: F403

__all__ = [
    *runner.__all__,
    *records.__all__,
]
