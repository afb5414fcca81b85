from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import labkit
from labkit import utils


def test_seed_makes_torch_numpy_python_repeatable():
    import random

    utils.seed(3)
    a = (torch.rand(3), np.random.rand(3), random.random())
    utils.seed(3)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    utils.seed(4)
    assert not torch.equal(torch.rand(3), a[0])


def test_seed_returns_seeded_generator():
    g1, g2 = utils.seed(1), utils.seed(1)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_seeded_draws_the_seeds_stream_and_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(5)  # what the global RNG draws next without the block
    torch.manual_seed(123)
    with utils.seeded(7):
        inside = torch.rand(4)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(5), expected_next)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        with utils.seeded(-1):
            pass


def test_num_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with utils.num_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with utils.num_threads(other):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with utils.num_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        with utils.num_threads(0):
            pass


def test_on_device_sets_the_mode_and_restores_it_even_on_error():
    model = torch.nn.Linear(2, 2).train()
    with utils.on_device(model, torch.device("cpu"), training=False):
        assert not model.training
    assert model.training
    with pytest.raises(RuntimeError, match="boom"):
        with utils.on_device(model.eval(), torch.device("cpu"), training=True):
            assert model.training
            raise RuntimeError("boom")
    assert not model.training


def test_get_device_never_requires_cuda():
    dev = utils.get_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert utils.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device must be 'cpu'"):
            utils.get_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        utils.get_device("tpu:7")


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    utils.atomic_write_bytes(path, b"first")
    utils.atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    utils.atomic_write_bytes(path, b"old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        utils.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_torch_save_hash_matches_file(tmp_path):
    path = tmp_path / "w.pt"
    digest = utils.atomic_torch_save({"w": torch.arange(5)}, path)
    assert digest == utils.sha256_file(path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))


def test_stable_hash_is_order_independent_and_sensitive():
    a = utils.stable_hash({"lr": 0.001, "epochs": 5, "hidden": (300, 100)})
    b = utils.stable_hash({"hidden": [300, 100], "epochs": 5, "lr": 0.001})
    c = utils.stable_hash({"lr": 0.001, "epochs": 6, "hidden": (300, 100)})
    assert a == b and a != c and len(a) == 16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: utils.check_choice("split", "tset", ("train", "test")), "split must be one of"),
        (lambda: utils.check_int("batch_size", 0, minimum=1), "batch_size must be an integer >= 1"),
        (lambda: utils.check_int("threads", 2.5, minimum=1), "threads must be an integer"),
        (lambda: utils.check_int("seed", True), "seed must be an integer"),
        (lambda: utils.check_fraction("amount", 1.0), r"amount must be a number in \[0, 1\)"),
        (lambda: utils.check_fraction("amount", -0.1), "amount must be"),
        (lambda: utils.seed(-1), "seed must be an integer >= 0"),
        (
            lambda: utils.check_number("lr", 0, minimum=0, min_open=True),
            r"^lr must be a number > 0",
        ),
        (
            lambda: utils.check_number("wd", -1e-9, minimum=0),
            r"^wd must be a number >= 0; got -1e-09$",
        ),
        (lambda: utils.check_number("lr", True, minimum=0), "lr must be a number"),
        (
            lambda: utils.check_number("lr", "0.1"),
            r"^lr must be a number \(finite\); got '0.1' \(a str\)$",
        ),
        (lambda: utils.check_number("x", float("nan")), r"x must be a number \(finite\)"),
        (lambda: utils.check_number("x", float("inf"), minimum=0), "x must be a number >= 0"),
        (
            lambda: utils.check_number("p", 50, minimum=50, maximum=100, min_open=True),
            r"in \(50, 100\]",
        ),
        (lambda: utils.check_number("t", 2, maximum=1, max_open=True), r"^t must be a number < 1;"),
    ],
)
def test_checks_give_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: utils.check_int("threads", 2.5, minimum=1),
        lambda: utils.check_int("seed", "0"),
        lambda: utils.check_int("seed", True),
        lambda: utils.check_number("lr", "0.1"),
        lambda: utils.check_number("lr", None, minimum=0),
        lambda: utils.check_fraction("amount", [0.5]),
    ],
)
def test_a_wrong_type_is_a_type_error_that_is_also_a_value_error(call):
    with pytest.raises(TypeError) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, utils.ArgumentTypeError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: utils.check_int("n", 0, minimum=1),
        lambda: utils.check_number("x", float("nan")),
        lambda: utils.check_fraction("amount", 1.5),
    ],
)
def test_a_value_out_of_range_is_a_plain_value_error(call):
    with pytest.raises(ValueError) as info:
        call()
    assert not isinstance(info.value, TypeError)


def test_check_number_accepts_the_bounds_it_allows():
    assert utils.check_number("p", 100, minimum=50, maximum=100, min_open=True) == 100.0
    assert utils.check_number("wd", 0, minimum=0) == 0.0
    assert utils.check_number("x", np.float32(0.5), maximum=1, max_open=True) == 0.5
    assert isinstance(utils.check_number("x", np.int64(3)), float)
    assert utils.check_fraction("amount", 1.0, inclusive_high=True) == 1.0


def test_checks_return_valid_values():
    assert utils.check_choice("scope", "global", ("layer", "global")) == "global"
    assert utils.check_int("n", 3, minimum=1, maximum=3) == 3
    assert utils.check_fraction("amount", 1.0, inclusive_high=True) == 1.0


def test_progress_quiet_under_ci(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("LABKIT_PROGRESS", raising=False)
    assert not utils.progress_enabled()
    assert list(utils.progress(range(3), desc="x")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    monkeypatch.setenv("LABKIT_PROGRESS", "1")
    assert utils.progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    assert not utils.progress_enabled()


def test_data_dir_honours_env(tmp_data):
    assert utils.data_dir() == tmp_data
    assert utils.cache_dir("models") == tmp_data / "cache" / "models"
    assert (tmp_data / "cache" / "models").is_dir()


def test_save_verified_round_trip_and_tamper_detection(tmp_path):
    path = tmp_path / "obj.pt"
    info = utils.save_verified({"w": torch.arange(4.0)}, path, {"key": "k1"})
    assert info["key"] == "k1" and info["sha256"] == utils.sha256_file(path)
    obj, read = utils.load_verified(path)
    assert torch.equal(obj["w"], torch.arange(4.0)) and read == info
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF  # one byte changed
    path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="sha256 does not match"):
        utils.load_verified(path)
    (tmp_path / "obj.pt.json").unlink()
    with pytest.raises(FileNotFoundError):
        utils.load_verified(path)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: labkit.sweep.run(dict, [{"a": 1}], name="t", version=1.5), "version"),
        (lambda: labkit.sweep.to_table("not records"), "records"),
        (lambda: labkit.sweep.to_table([{"a": 1}], floatfmt=3), "floatfmt"),
        (lambda: labkit.data.load("digits", download="yes"), "download"),
        (lambda: labkit.prune.to_sparse_bytes([1.0, 2.0]), "tensor"),
        (lambda: labkit.models.register("x", "digits", "recipe"), "recipe"),
    ],
)
def test_wrong_types_across_labkit_are_type_errors_naming_the_parameter(call, name):
    with pytest.raises(TypeError, match=name) as info:
        call()
    assert "\n" not in str(info.value)
