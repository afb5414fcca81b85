"""Shared fixtures: an isolated data folder and a network guard."""

from __future__ import annotations

import socket

import pytest
import torch

# Fixture notebooks are inputs to the grading tests, not course notebooks for nbval to run.
collect_ignore_glob = ["fixtures/*"]


class NetworkBlocked(OSError):
    """Raised by the guard when code under test tries to open a network connection."""


@pytest.fixture
def no_network(monkeypatch):
    """Block every Python-level network connection; yields the list of attempts made."""
    attempts: list[str] = []

    def blocked(*args, **kwargs):
        attempts.append(repr(args[1:] if args else kwargs)[:200])
        raise NetworkBlocked("network access blocked by the offline test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    yield attempts


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread, and a shared machine is not oversubscribed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """Point labkit's data/cache folder at a fresh temp dir for this test."""
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
