"""labkit.grading.wire: what the student's side sends is plain data, rebuilt without code.

Round trips are checked against the original objects (torch.equal, module outputs); malformed or
code-bearing messages must raise WireError rather than build anything.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from labkit.grading.wire import Handle, WireError, decode, encode, read_message, write_message


def _round(x, handle=None):
    return decode(*encode(x, handle))


def test_plain_values_round_trip_with_their_types():
    value = {"a": [1, 2.5, None, True], (1, "b"): {3, 4}, "c": complex(1, -2), "d": b"\x00\xff",
             "nan": math.nan, "inf": -math.inf, "size": torch.Size([2, 3]),
             "dtype": torch.bfloat16, "device": torch.device("cpu")}  # fmt: skip
    back = _round(value)
    assert back[(1, "b")] == {3, 4} and type(back[(1, "b")]) is set
    assert back["a"] == [1, 2.5, None, True] and back["c"] == complex(1, -2)
    assert back["d"] == b"\x00\xff" and math.isnan(back["nan"]) and back["inf"] == -math.inf
    assert back["size"] == torch.Size([2, 3]) and back["dtype"] is torch.bfloat16
    assert type(_round((1, 2))) is tuple and type(_round([1, 2])) is list


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.float64]
)
def test_tensors_round_trip_bit_exactly(dtype):
    t = (torch.randn(3, 4, 5) * 10).to(dtype)
    back = _round({"t": t, "view": t[:, 1], "empty": t[:0], "scalar": t[0, 0, 0]})
    assert torch.equal(back["t"], t) and back["t"].dtype == dtype
    assert torch.equal(back["view"], t[:, 1]) and back["empty"].shape == (0, 4, 5)
    assert back["scalar"].shape == () and torch.equal(back["scalar"], t[0, 0, 0])


def test_parameters_and_grad_flags_survive_but_graphs_do_not():
    p = torch.nn.Parameter(torch.randn(3))
    y = p * 2
    back = _round([p, y])
    assert isinstance(back[0], torch.nn.Parameter) and back[0].requires_grad
    assert back[1].requires_grad and back[1].grad_fn is None and torch.equal(back[1], y.detach())


def test_numpy_arrays_and_scalars_round_trip():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    back = _round({"a": a, "s": np.float32(1.5), "b": np.array([True, False])})
    assert back["a"].dtype == np.int16 and np.array_equal(back["a"], a)
    assert type(back["s"]) is np.float32 and back["s"] == 1.5
    assert back["b"].dtype == bool


def test_subclasses_with_tricks_arrive_as_plain_data_or_handles():
    class Yes(float):
        def __eq__(self, other):
            return True

        __hash__ = float.__hash__

    class Arr(np.ndarray):
        def __eq__(self, other):
            return np.ones(self.shape, dtype=bool)

    handles = []

    def handle(obj):
        handles.append(obj)
        return Handle(len(handles), type(obj).__qualname__)

    back = _round([Yes(0.0), np.zeros(3).view(Arr), lambda x: x], handle)
    assert isinstance(back[0], Handle) and type(back[1]) is np.ndarray
    assert not (back[1] == np.ones(3)).any() and isinstance(back[2], Handle)
    with pytest.raises(WireError, match="not plain data"):
        encode(object())


def test_torch_modules_are_rebuilt_by_their_constructors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1, bias=False),
                              torch.nn.BatchNorm2d(5), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(5 * 8 * 8, 4))  # fmt: skip
    net[1].running_mean.add_(0.5)
    net.eval()
    back = _round(net)
    x = torch.randn(2, 3, 8, 8)
    assert type(back[0]) is torch.nn.Conv2d and back[0].bias is None and not back.training
    assert back[0].padding == (1, 1) and back[4].out_features == 4
    assert torch.equal(back(x), net(x))

    class Mine(torch.nn.Linear):
        pass

    assert isinstance(_round(Mine(2, 2), lambda m: Handle(1, "Mine")), Handle)


@pytest.mark.parametrize(
    "body, match",
    [
        ({"$module": "system", "attrs": {}}, "not a torch.nn module class"),
        ({"$module": "Linear", "attrs": {"forward": 1}}, "unexpected attributes"),
        ({"$array": 0, "dtype": "|O", "shape": [1]}, "not plain numbers"),
        ({"$tensor": 0, "dtype": "float32", "shape": [4]}, "needs 16 bytes"),
        ({"$tensor": 5, "dtype": "float32", "shape": [0]}, "out of range"),
        ({"$tensor": 0, "dtype": "os.system", "shape": [0]}, "unknown torch dtype"),
        ({"$x": 1}, "unknown or malformed tag"),
        ({"$t": [], "$l": []}, "exactly one"),
        ({"$d": [[[1], 2]]}, "hashable"),
    ],
)
def test_malformed_or_code_bearing_messages_are_refused(body, match):
    with pytest.raises(WireError, match=match):
        decode({"body": body, "blobs": 1}, [b"\x00" * 4])


def test_framing_round_trips_and_rejects_garbage():
    r, w = os.pipe()
    header, blobs = encode({"x": torch.arange(5)})
    write_message(w, header, blobs)
    got = decode(*read_message(r, timeout=5))
    assert torch.equal(got["x"], torch.arange(5))
    os.write(w, (8).to_bytes(8, "big") + b"\xff\xfe{notjs")
    with pytest.raises(WireError, match="not JSON"):
        read_message(r, timeout=5)
    with pytest.raises(TimeoutError):
        read_message(r, timeout=0.2)
    os.close(w)
    with pytest.raises(WireError, match="closed"):
        read_message(r, timeout=5)
    os.close(r)
