"""What crosses from a student's sandboxed code to the grader: plain data, never pickle.

The grader decides every verdict from values the student's functions returned. Those values
arrive as one *message*: a JSON header and raw byte blobs for tensors and arrays. Decoding
builds only numbers, strings, lists, tuples, dicts, sets, bytes, NumPy arrays of numeric
dtypes, torch tensors, dtypes, devices, sizes and modules of torch.nn's own classes (rebuilt by
their constructors from data) -- no object of a class the student wrote, no code. Anything else
the student returns stays in the sandbox and arrives as a *handle* (an id and a type name) that
the grader can call through :mod:`labkit.grading.remote`, getting plain data back again.

The other direction (grader to sandbox: a test's inputs) may be pickled: only the sandbox, which
runs untrusted code anyway, unpickles it.

Frame: 8-byte big-endian header length, UTF-8 JSON header ``{"body": ..., "blobs": n}``, then n
times (8-byte length, bytes).

Example:
    >>> import torch
    >>> header, blobs = encode({"w": torch.ones(2, 3), "k": (1, 2.5)})
    >>> decode(header, blobs)["w"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import inspect
import json
import math
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["WireError", "Handle", "encode", "decode", "write_message", "read_message"]

MAX_HEADER = 64 << 20  # bytes of JSON
MAX_TOTAL = 2 << 30  # bytes in one message
_ARRAY_KINDS = "biufc"  # numpy dtype kinds that are plain numbers
_MODULE_SKIP = {"training", "bias"}  # handled apart from constructor arguments
_MODULE_INTERNALS = set(vars(torch.nn.Module()))  # what Module.__init__ makes


class WireError(ValueError):
    """A message that is not well-formed plain data (or a pipe that closed or timed out)."""


class Handle:
    """An object the student's code made that cannot travel as data: its id and type name."""

    def __init__(self, hid: int, type_name: str) -> None:
        self.hid, self.type_name = hid, type_name

    def __repr__(self) -> str:
        return f"Handle({self.hid}, {self.type_name!r})"


# --------------------------------------------------------------------------- encode


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


class _NotData(Exception):
    """Raised inside encode when an object holds something that cannot travel as data."""


def _labkit_class(cls: type) -> bool:
    return str(getattr(cls, "__module__", "")).split(".")[0] == "labkit" and "<locals>" not in (
        cls.__qualname__
    )


def _object_node(obj: Any, enc: Callable[[Any], Any]) -> dict:
    """An instance of one of labkit's own classes (a model, a config) by its attributes."""
    cls = type(obj)
    state = vars(obj)
    if isinstance(obj, torch.nn.Module):
        state = {k: v for k, v in state.items() if k not in _MODULE_INTERNALS}
    return {
        "$object": f"{cls.__module__}:{cls.__qualname__}",
        "state": {str(k): enc(v) for k, v in state.items()},
        **(_module_parts(obj, enc) if isinstance(obj, torch.nn.Module) else {}),
    }


def _module_parts(m: torch.nn.Module, enc: Callable[[Any], Any]) -> dict:
    return {
        "params": {k: None if v is None else enc(v) for k, v in m._parameters.items()},
        "buffers": {k: None if v is None else enc(v) for k, v in m._buffers.items()},
        "children": {k: None if v is None else enc(v) for k, v in m._modules.items()},
        "training": m.training,
    }


def _module_node(m: torch.nn.Module, enc: Callable[[Any], Any]) -> dict | None:
    """A torch.nn module of torch's own class as data, or None (it then travels as a handle)."""
    cls = type(m)
    if getattr(torch.nn, cls.__name__, None) is not cls or not cls.__module__.startswith(
        "torch.nn.modules"
    ):
        return None
    attrs = {k: enc(getattr(m, k)) for k in getattr(cls, "__constants__", ()) if hasattr(m, k)}
    return {
        "$module": cls.__name__,
        "attrs": attrs,
        **_module_parts(m, enc),
    }


def encode(obj: Any, handle: Callable[[Any], Handle] | None = None) -> tuple[dict, list[bytes]]:
    """``obj`` as (JSON-able header, blobs); objects that are not data go through ``handle``.

    Without ``handle`` such an object raises WireError. Example: ``encode([1, "a", None])``
    """
    blobs: list[bytes] = []

    def blob(data: bytes) -> int:
        blobs.append(data)
        return len(blobs) - 1

    def enc(x: Any) -> Any:
        if x is None or isinstance(x, (bool, str)) or type(x) is int:
            return x
        if type(x) is float:
            return x if math.isfinite(x) else {"$f": repr(x)}
        if type(x) is list:
            return [enc(v) for v in x]
        if type(x) is tuple:
            return {"$t": [enc(v) for v in x]}
        if type(x) is dict:
            return {"$d": [[enc(k), enc(v)] for k, v in x.items()]}
        if type(x) in (set, frozenset):
            return {"$set": [enc(v) for v in x]}
        if type(x) is complex:
            return {"$c": [enc(x.real), enc(x.imag)]}
        if type(x) is bytes:
            return {"$bytes": blob(x)}
        if isinstance(x, torch.Size):
            return {"$size": list(x)}
        if isinstance(x, torch.dtype):
            return {"$dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"$device": str(x)}
        if isinstance(x, torch.Tensor) and x.layout == torch.strided and not x.is_quantized:
            t = x.detach()
            return {
                "$tensor": blob(_tensor_bytes(t)),
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "grad": bool(x.requires_grad),
                "param": isinstance(x, torch.nn.Parameter),
            }
        if isinstance(x, (np.ndarray, np.generic)) and np.asarray(x).dtype.kind in _ARRAY_KINDS:
            a = np.asarray(x)
            a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # keeps 0-d as 0-d
            return {
                "$array": blob(a.tobytes()),
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "scalar": isinstance(x, np.generic),
            }
        if isinstance(x, torch.nn.Module) or _labkit_class(type(x)):
            # all of it as data, or all of it a handle: never half
            mark = len(blobs)
            try:
                node = _module_node(x, inner) if isinstance(x, torch.nn.Module) else None
                if node is None and _labkit_class(type(x)) and hasattr(x, "__dict__"):
                    node = _object_node(x, inner)
            except _NotData:
                del blobs[mark:]
                node = None
            if node is not None:
                return node
        if handle is None or depth:
            raise _NotData if depth else WireError(f"a {type(x).__name__} is not plain data")
        h = handle(x)
        return {"$handle": h.hid, "type": h.type_name}

    depth = 0

    def inner(x: Any) -> Any:
        nonlocal depth
        depth += 1
        try:
            return enc(x)
        finally:
            depth -= 1

    return {"body": enc(obj), "blobs": len(blobs)}, blobs


# --------------------------------------------------------------------------- decode


def _dtype(name: Any) -> torch.dtype:
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise WireError(f"unknown torch dtype {str(name)[:40]!r}")
    return value


def _shape(shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise WireError("a shape must be a list of sizes >= 0")
    return shape


def _module(node: dict, dec: Callable[[Any], Any]) -> torch.nn.Module:
    """Rebuild a torch.nn module by calling torch's own constructor with the sent arguments."""
    cls = getattr(torch.nn, str(node.get("$module")), None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)) or not str(
        cls.__module__
    ).startswith("torch.nn.modules"):
        raise WireError(f"not a torch.nn module class: {str(node.get('$module'))[:40]!r}")
    attrs = {k: dec(v) for k, v in dict(node.get("attrs") or {}).items()}
    allowed = set(getattr(cls, "__constants__", ()))
    if set(attrs) - allowed:
        raise WireError(f"{cls.__name__}: unexpected attributes {sorted(set(attrs) - allowed)}")
    params = dict(node.get("params") or {})
    sig = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in attrs.items() if k in sig and k not in _MODULE_SKIP}
    if "bias" in sig and "bias" in params:
        kwargs["bias"] = params["bias"] is not None
    if "bias" in sig and "bias" in attrs and "bias" not in params:
        kwargs["bias"] = bool(attrs["bias"])
    try:
        with torch.device("meta"):
            m = cls(**kwargs) if sig.keys() - {"self", "args", "kwargs"} else cls()
    except Exception as err:  # noqa: BLE001 - the arguments came from the student's side
        raise WireError(f"cannot rebuild {cls.__name__}: {type(err).__name__}: {err}") from None
    for k, v in attrs.items():
        if k not in kwargs:
            setattr(m, k, v)
    _fill_module(m, node, dec)
    return m


def _object(node: dict, dec: Callable[[Any], Any]) -> Any:
    """Rebuild an instance of one of labkit's classes from its attributes (no __init__ runs)."""
    import importlib

    where = str(node.get("$object"))
    module_name, _, qualname = where.partition(":")
    if module_name.split(".")[0] != "labkit" or not qualname.replace(".", "").isidentifier():
        raise WireError(f"not one of labkit's classes: {where[:80]!r}")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise WireError(f"no class {where[:80]!r}") from None
    if not inspect.isclass(cls) or not _labkit_class(cls):
        raise WireError(f"not one of labkit's classes: {where[:80]!r}")
    obj = cls.__new__(cls)
    state = {str(k): dec(v) for k, v in dict(node.get("state") or {}).items()}
    if isinstance(obj, torch.nn.Module):
        torch.nn.Module.__init__(obj)
        state = {k: v for k, v in state.items() if k not in _MODULE_INTERNALS}
        _fill_module(obj, node, dec)
    obj.__dict__.update(state)
    return obj


def _fill_module(m: torch.nn.Module, node: dict, dec: Callable[[Any], Any]) -> None:
    """Parameters, buffers, children and mode of a module from their nodes."""
    name = type(m).__name__
    for group, is_param in ((node.get("params") or {}, True), (node.get("buffers") or {}, False)):
        for k, v in dict(group).items():
            t = None if v is None else dec(v)
            if t is not None and not isinstance(t, torch.Tensor):
                raise WireError(f"{name}.{k} must be a tensor")
            if is_param:
                grad = t is not None and t.requires_grad
                m.register_parameter(str(k), None if t is None else torch.nn.Parameter(t, grad))
            else:
                m.register_buffer(str(k), t)
    for k, v in dict(node.get("children") or {}).items():
        child = None if v is None else dec(v)
        if child is not None and not isinstance(child, torch.nn.Module):
            raise WireError(f"{name}.{k} must be a module")
        m._modules[str(k)] = child
    m.train(bool(node.get("training", True)))


def decode(header: Any, blobs: list[bytes]) -> Any:
    """The value an :func:`encode` header and its blobs describe; WireError if malformed.

    Example: ``decode(*encode((1, [2.0])))  # (1, [2.0])``
    """
    if not isinstance(header, dict) or "body" not in header:
        raise WireError("a message must be {'body': ..., 'blobs': n}")

    def get_blob(i: Any) -> bytes:
        if type(i) is not int or not 0 <= i < len(blobs):
            raise WireError("a blob index is out of range")
        return blobs[i]

    def hashable(x: Any) -> Any:
        try:
            hash(x)
        except TypeError:
            raise WireError("a dict key or set item must be hashable") from None
        return x

    def dec(x: Any) -> Any:
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict) or len([k for k in x if str(k).startswith("$")]) != 1:
            raise WireError("an object must carry exactly one $tag")
        tag = next(k for k in x if k.startswith("$"))
        v = x[tag]
        if tag == "$f" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "$t" and isinstance(v, list):
            return tuple(dec(e) for e in v)
        if (
            tag == "$d"
            and isinstance(v, list)
            and all(isinstance(p, list) and len(p) == 2 for p in v)
        ):
            return {hashable(dec(k)): dec(e) for k, e in v}
        if tag == "$set" and isinstance(v, list):
            return {hashable(dec(e)) for e in v}
        if tag == "$c" and isinstance(v, list) and len(v) == 2:
            return complex(float(dec(v[0])), float(dec(v[1])))
        if tag == "$bytes":
            return bytes(get_blob(v))
        if tag == "$size":
            return torch.Size(_shape(v))
        if tag == "$dtype":
            return _dtype(v)
        if tag == "$device" and isinstance(v, str):
            try:
                return torch.device(v)
            except RuntimeError:
                raise WireError(f"not a device: {v[:20]!r}") from None
        if tag == "$tensor":
            return _tensor(x, get_blob(v))
        if tag == "$array":
            return _array(x, get_blob(v))
        if tag == "$module":
            return _module(x, dec)
        if tag == "$object":
            return _object(x, dec)
        if tag == "$handle" and type(v) is int:
            return Handle(v, str(x.get("type", "object"))[:200])
        raise WireError(f"unknown or malformed tag {tag[:20]!r}")

    return dec(header["body"])


def _tensor(node: dict, data: bytes) -> torch.Tensor:
    dtype, shape = _dtype(node.get("dtype")), _shape(node.get("shape"))
    size = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
    if len(data) != size:
        raise WireError(f"a tensor of shape {shape} and {dtype} needs {size} bytes")
    t = (
        torch.empty(0, dtype=torch.uint8)
        if not data
        else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    )
    t = t.view(dtype).reshape(shape) if shape else t.view(dtype).reshape(())
    if node.get("param") is True:
        return torch.nn.Parameter(t, requires_grad=bool(node.get("grad")))
    return t.requires_grad_(True) if node.get("grad") is True and t.is_floating_point() else t


def _array(node: dict, data: bytes) -> np.ndarray | np.generic:
    try:
        dtype = np.dtype(str(node.get("dtype")))
    except TypeError:
        raise WireError("unknown numpy dtype") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
        raise WireError(f"numpy dtype {dtype} is not plain numbers")
    shape = _shape(node.get("shape"))
    if len(data) != dtype.itemsize * math.prod(shape):
        raise WireError(f"an array of shape {shape} and {dtype} needs other bytes")
    a = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return a[()] if node.get("scalar") is True and not shape else a


# --------------------------------------------------------------------------- framing


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise WireError("the pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_message(fd: int, header: dict, blobs: list[bytes]) -> None:
    """Write one framed message to the file descriptor ``fd``."""
    head = json.dumps(header, allow_nan=False).encode()
    parts = [struct.pack(">Q", len(head)), head]
    for b in blobs:
        parts += [struct.pack(">Q", len(b)), b]
    data = memoryview(b"".join(parts))
    while data:
        data = data[os.write(fd, data) :]


def read_message(fd: int, timeout: float | None = None) -> tuple[dict, list[bytes]]:
    """Read one framed message; TimeoutError past ``timeout`` s, WireError if malformed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (n,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    if n > MAX_HEADER:
        raise WireError(f"a header of {n} bytes is too large")
    try:
        header = json.loads(_read_exact(fd, n, deadline).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise WireError(f"the header is not JSON: {type(err).__name__}") from None
    count = header.get("blobs") if isinstance(header, dict) else None
    if type(count) is not int or not 0 <= count <= 1 << 16:
        raise WireError("the header has no blob count")
    blobs, total = [], n
    for _ in range(count):
        (size,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
        total += size
        if total > MAX_TOTAL:
            raise WireError("the message is too large")
        blobs.append(_read_exact(fd, size, deadline))
    return header, blobs
