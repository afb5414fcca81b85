from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert "labkit" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_doctor_reports_every_check(capsys):
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    for name in ("python", "torch", "widget extension", "threads", "embedded data", "model cache"):
        assert name in out
    kernels = next(d for n, _, d in cli.doctor_checks() if n == "cpu kernels")
    import torch

    assert torch.backends.cpu.get_cpu_capability() in kernels  # what torch really dispatches to
    checks = {name: ok for name, ok, _ in cli.doctor_checks()}
    assert code == (0 if all(checks.values()) else 1)


def test_doctor_fails_without_widget_frontend(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_widget_extension", lambda: None)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "BAD  widget extension" in out and "interactive(...)" in out


def test_doctor_fails_on_wrong_torch(monkeypatch, capsys):
    real = cli._version
    monkeypatch.setattr(cli, "_version", lambda d: "2.13.0" if d == "torch" else real(d))
    assert cli.main(["doctor"]) == 1
    assert "tested with 2.14.1" in capsys.readouterr().out


def test_widget_frontend_is_installed():
    assert cli._widget_extension() is not None, "jupyterlab_widgets must be installed"


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "labkit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "doctor" in out and "prepare" in out


def test_prepare_rejects_unknown_entry(capsys):
    with pytest.raises(ValueError, match="only must be one of"):
        cli.main(["prepare", "--only", "nosuch/model"])
