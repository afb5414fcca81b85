"""The grader's view of the student's objects: requests out (pickled), plain data back.

:class:`Connection` speaks to ``python -m labkit.grading.student`` over its stdin/stdout. A
:class:`Remote` stands for an object that stayed on the student's side (a function, a class, an
instance of it): calling it, reading an attribute, indexing, ``len`` and iteration are requests
whose answers are decoded by :mod:`labkit.grading.wire` -- plain data, or another Remote. A
Remote has no truth value and compares equal only to itself, so ``assert student_obj`` or
``student_obj == expected`` never passes by accident. An exception the student's code raised is
raised here as the built-in exception of the same name (or :class:`SubmissionError`) with its
message; no traceback object, no code, crosses over.

Arguments that are modules or optimizers, and tensors such an optimizer holds, come back updated
after a call, so a test can hand the student's training step a model and an optimizer and look at
them afterwards; other tensors (a test's inputs) never come back changed.

Example:
    >>> conn = Connection(sandbox.start(sandbox=True), timeout=60)   # doctest: +SKIP
    >>> mean = conn.request(("get", "mean"))                          # doctest: +SKIP
    >>> mean([1, 2, 3])                                               # doctest: +SKIP
    2.0
"""

from __future__ import annotations

import builtins
import io
import itertools
import pickle
import subprocess
import time
from typing import Any

import torch

from labkit.grading import sandbox, wire

__all__ = ["Connection", "Remote", "SubmissionError", "RemoteTimeout", "RemoteGone"]

_GENERATIONS = itertools.count(1)


class SubmissionError(Exception):
    """An exception raised by the student's code that has no built-in counterpart."""


class RemoteTimeout(TimeoutError):
    """The student's code did not answer within the cell limit."""


class RemoteGone(RuntimeError):
    """The student's process exited, closed its pipe or sent something that is not data."""


class Remote:
    """An object on the student's side; use it as you would the object (calls return data)."""

    __slots__ = ("_conn", "_hid", "_type", "_generation")

    def __init__(self, conn: Connection, hid: int, type_name: str) -> None:
        self._conn, self._hid, self._type = conn, hid, type_name
        self._generation = conn.generation

    def _ask(self, kind: str, *rest: Any) -> Any:
        if self._conn.generation != self._generation or self._conn.broken:
            raise RemoteGone("the submission's process was restarted; this object is gone")
        return self._conn.request((kind, self._hid, *rest))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from labkit.grading.student import _modules

        grads = [
            {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
            for m in _modules(args, kwargs)
        ]  # fmt: skip
        return self._ask("call", args, kwargs, grads)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key)

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("len() of the submission's object is not an int")
        return n

    def __iter__(self):  # noqa: ANN204
        items = self._ask("iter")
        if not isinstance(items, list):
            raise TypeError("the submission's object did not iterate to a list")
        return iter(items)

    def __bool__(self) -> bool:
        raise TypeError(f"the submission's {self._type} has no truth value here; compare its data")

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<the submission's {self._type}>"


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is Remote:
            return ("h", obj._hid)
        return None


def _raise(text: str) -> None:
    """Raise the student's exception here; marked, so its message can be kept from feedback."""
    name, _, message = text.partition(": ")
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and name.isidentifier():
        err: Exception = cls(message)
    else:
        err = SubmissionError(text)
    err.labkit_from_submission = True  # type: ignore[attr-defined]
    raise err


class Connection:
    """Requests to one student process; ``broken`` once it timed out, died or sent non-data."""

    def __init__(self, proc: subprocess.Popen, *, timeout: float, startup: float = 60) -> None:
        self.proc, self.timeout, self.startup = proc, timeout, startup
        self.broken = False
        self.generation = next(_GENERATIONS)
        self.deadline: float | None = None  # time.monotonic() past which nothing is waited for
        self.sealed: str | None = None  # while set, every request raises RuntimeError(sealed)

    def _apply(self, updates: Any, args: tuple, kwargs: dict) -> None:
        """Copy the new state of tensor/module/optimizer arguments into the caller's objects."""
        if not isinstance(updates, list):
            return
        roots = {"args": list(args), "kwargs": kwargs}
        for item in updates:
            try:
                path, state = item
                target = roots[path[0]]
                for key in path[1:]:
                    target = target[key]
                _set_state(target, state)
            except Exception:  # noqa: BLE001, S112 - a malformed update changes nothing
                continue

    def request(self, request: tuple, *, startup: bool = False) -> Any:
        """Send one request; the decoded value, or the student's exception raised here."""
        if self.sealed:
            raise RuntimeError(self.sealed)
        if self.broken:
            raise RemoteGone("the submission's process is not answering")
        buf = io.BytesIO()
        try:
            _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(request)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(f"cannot send this to the submission's code: {err}") from None
        try:
            wire.write_message(
                self.proc.stdin.fileno(), {"body": None, "blobs": 1}, [buf.getvalue()]
            )
            wait = self.startup if startup else self.timeout
            if self.deadline is not None:
                wait = min(wait, max(0.1, self.deadline - time.monotonic()))
            header, blobs = wire.read_message(self.proc.stdout.fileno(), wait)
            reply = wire.decode(header, blobs)
        except TimeoutError:
            self.broken = True
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise RemoteTimeout("the notebook ran past its time limit") from None
            raise RemoteTimeout(
                f"Timeout: the submission's code did not answer within {self.timeout:g} s"
            ) from None
        except (wire.WireError, OSError) as err:
            self.broken = True
            raise RemoteGone(f"the submission's process stopped: {err}") from None
        except Exception as err:  # noqa: BLE001 - e.g. RecursionError on absurdly nested data
            self.broken = True
            raise RemoteGone(f"the submission sent an answer that is not data: {err!r}") from None
        if not isinstance(reply, dict):
            self.broken = True
            raise RemoteGone("the submission's process sent something that is not an answer")
        if "error" in reply:
            _raise(str(reply["error"]))
        value = reply.get("value")
        if request[0] == "call":
            self._apply(reply.get("updates"), request[2], request[3])
            value = self._bridge(value, reply.get("graphs"), request[2], request[3])
        return self._wrap(value)

    def _bridge(self, value: Any, graphs: Any, args: tuple, kwargs: dict) -> Any:
        """Give tensor results a backward into the student's side (see :class:`_Bridge`)."""
        if not isinstance(graphs, list):
            return value
        from labkit.grading.student import grad_leaves

        leaves = grad_leaves(args, kwargs)
        parts = list(value) if isinstance(value, (tuple, list)) else None
        for item in graphs:
            if not (isinstance(item, list) and len(item) == 2 and type(item[1]) is int):
                continue
            i, graph = item
            if i is None and isinstance(value, torch.Tensor):
                return _Bridge.apply(self, graph, value.detach(), *leaves)
            if parts is not None and type(i) is int and 0 <= i < len(parts):
                if isinstance(parts[i], torch.Tensor):
                    parts[i] = _Bridge.apply(self, graph, parts[i].detach(), *leaves)
        return type(value)(parts) if parts is not None else value

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, wire.Handle):
            return Remote(self, value.hid, value.type_name)
        if type(value) is list:
            return [self._wrap(v) for v in value]
        if type(value) is tuple:
            return tuple(self._wrap(v) for v in value)
        if type(value) is dict:
            return {k: self._wrap(v) for k, v in value.items()}
        return value

    def close(self) -> None:
        """Stop the student's process (and everything it started)."""
        self.broken = True
        sandbox.stop(self.proc)


class _Bridge(torch.autograd.Function):
    """A tensor the student's code computed from the grader's tensors, with a backward that
    asks the student's side for the gradients (so ``loss.backward()`` in a test works)."""

    @staticmethod
    def forward(ctx: Any, conn: Connection, graph: int, value: torch.Tensor, *leaves: Any) -> Any:
        ctx.conn, ctx.graph, ctx.leaves = conn, graph, len(leaves)
        ctx.shapes = [leaf.shape for leaf in leaves]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        grads = ctx.conn.request(("backward", ctx.graph, grad))
        if not isinstance(grads, list) or len(grads) != ctx.leaves:
            raise RemoteGone("the submission's side sent no gradients")
        out = []
        for g, shape in zip(grads, ctx.shapes):
            ok = g is None or (isinstance(g, torch.Tensor) and g.shape == shape)
            if not ok:
                raise RemoteGone("the submission's side sent a gradient of the wrong shape")
            out.append(g)
        return (None, None, None, *out)


def _set_state(target: Any, state: Any) -> None:
    if isinstance(target, torch.Tensor) and isinstance(state, torch.Tensor):
        with torch.no_grad():
            if target.shape == state.shape:
                target.copy_(state.to(target.dtype))
            else:
                target.data = state.to(target.dtype)
    elif isinstance(target, torch.nn.Module) and isinstance(state, dict):
        own = target.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in dict(state.get("state") or {}).items():
                if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape:
                    own[k].copy_(v.to(own[k].dtype))
        grads = state.get("grads")
        if isinstance(grads, dict):
            for k, p in target.named_parameters():
                g = grads.get(k)
                ok = isinstance(g, torch.Tensor) and g.shape == p.shape
                p.grad = g.to(p.dtype) if ok else None
    elif isinstance(target, torch.optim.Optimizer) and isinstance(state, dict):
        target.load_state_dict(state)
