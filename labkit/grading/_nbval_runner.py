"""Run pytest + nbval on one notebook and log every test report as a JSON line.

Started by :func:`labkit.grading.execute.run_nbval` as ``python _nbval_runner.py REPORT ARGS...``;
not imported by labkit. nbval does the running and checking; this only records its verdicts,
including the failure text of cells that nbval marks xfail after a timeout (JUnit XML drops it).
"""

import json
import sys

sys.path.pop(0)  # this file's folder (labkit/grading) must not shadow anything

# jsonschema (via nbformat) imports rfc3987_syntax when present, which builds a grammar for
# seconds at import; nbformat never checks IRI formats, so this run goes without it.
sys.modules.setdefault("rfc3987_syntax", None)

import pytest  # noqa: E402


class JsonLinesReport:
    """A pytest plugin: one JSON line per test phase, flushed at once so a killed run keeps them."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def _write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def pytest_runtest_logreport(self, report) -> None:
        self._write(
            {
                "nodeid": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "wasxfail": getattr(report, "wasxfail", None),
                "longrepr": report.longreprtext if report.longrepr else "",
                "duration": report.duration,
            }
        )

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self._write(
                {
                    "nodeid": report.nodeid,
                    "when": "collect",
                    "outcome": "failed",
                    "longrepr": report.longreprtext,
                }
            )


if __name__ == "__main__":
    sys.exit(int(pytest.main(sys.argv[2:], plugins=[JsonLinesReport(sys.argv[1])])))
