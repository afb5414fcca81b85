"""The student's side of grading: runs in the sandbox, executes cells, answers with plain data.

``python -m labkit.grading.student`` reads pickled requests on stdin from the grader's verdict
process (:mod:`labkit.grading.verdict`) and answers each with one :mod:`~labkit.grading.wire`
message on stdout. At start it moves the protocol to private file descriptors and points
stdin/stdout/stderr at /dev/null, so nothing the cells print can garble an answer. Requests:

- ``("cells", [(index, source), ...])`` queue the cells to run (the course notebook's ordinary
  cells and the student's solution cells; never a graded cell);
- ``("run", upto)`` run the queued cells with ``index < upto``; answer ``{index: error or None}``;
- ``("get", name)``, ``("call", hid, args, kwargs)``, ``("getattr", hid, name)``,
  ``("getitem", hid, key)``, ``("len", hid)``, ``("iter", hid)`` evaluate on the student's
  objects; answer ``{"value": ..., "updates": [...]}`` where ``updates`` carries the new state of
  modules and optimizers passed in and of the tensors such an optimizer holds (so in-place
  training steps are seen), or ``{"error": "Type: message"}``.

Nothing here decides a grade: whatever this process sends is only data for the verdict process
to check, so a student who tampers with it can only spoil their own answers.

Example:
    $ python -m labkit.grading.student     # spoken to by labkit.grading.verdict, not by hand
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import traceback
from typing import Any

__all__ = ["main", "error_text"]

_MAX_ERROR = 2000


def error_text(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, at most 2,000 characters."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:_MAX_ERROR].rstrip(": ")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, handles: dict[int, Any]) -> None:
        super().__init__(io.BytesIO(data))
        self.handles = handles

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "h" and pid[1] in self.handles:
            return self.handles[pid[1]]
        raise pickle.UnpicklingError(f"the grader refers to an object that is gone: {pid!r}")


class Student:
    """The cells, the namespace and the handle table of one submission."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__main__"}
        self.cells: list[tuple[int, str]] = []
        self.handles: dict[int, Any] = {}
        self.graphs: dict[int, tuple[Any, list]] = {}  # a call's tensor result and its inputs

    def handle(self, obj: Any):  # noqa: ANN201 - a wire.Handle
        from labkit.grading.wire import Handle

        hid = len(self.handles) + 1
        self.handles[hid] = obj
        return Handle(hid, f"{type(obj).__module__}.{type(obj).__qualname__}")

    def run(self, upto: int) -> dict[int, str | None]:
        from IPython.core.inputtransformer2 import TransformerManager

        results: dict[int, str | None] = {}
        while self.cells and self.cells[0][0] < upto:
            index, source = self.cells.pop(0)
            try:
                code = TransformerManager().transform_cell(source)
                exec(compile(code, f"<cell {index}>", "exec"), self.ns)  # noqa: S102
                results[index] = None
            except BaseException as err:  # noqa: BLE001 - a student's cell may raise anything
                if isinstance(err, KeyboardInterrupt):
                    raise
                results[index] = error_text(err)
        return results

    def answer(self, request: tuple) -> dict[str, Any]:
        kind = request[0]
        if kind == "cells":
            self.cells = sorted(self.cells + list(request[1]))
            return {"value": None}
        if kind == "run":
            return {"value": {str(k): v for k, v in self.run(request[1]).items()}}
        if kind == "get":
            if request[1] not in self.ns:
                return {"error": f"NameError: name {request[1]!r} is not defined"}
            return {"value": self.ns[request[1]]}
        if kind == "backward":
            import torch

            value, leaves = self.graphs[request[1]]
            grads = torch.autograd.grad(
                value, leaves, request[2], retain_graph=True, allow_unused=True
            )
            return {"value": list(grads)}
        target = self.handles[request[1]]
        if kind == "call":
            args, kwargs = request[2], request[3]
            for module, grads in zip(
                _modules(args, kwargs), request[4] if len(request) > 4 else []
            ):
                for name, p in module.named_parameters():  # .grad does not travel in a pickle
                    p.grad = grads.get(name)
            value = target(*args, **kwargs)
            reply = {"value": value, "updates": _updates(args, kwargs)}
            leaves = grad_leaves(args, kwargs)
            parts = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
            graphs = []
            for i, part in parts:  # a tensor result, or the tensors of a tuple/list result
                if leaves and getattr(part, "grad_fn", None) is not None:
                    self.graphs[len(self.graphs) + 1] = (part, leaves)
                    graphs.append([i, len(self.graphs)])
            if graphs:
                reply["graphs"] = graphs
            return reply
        if kind == "getattr":
            return {"value": getattr(target, request[2])}
        if kind == "getitem":
            return {"value": target[request[2]]}
        if kind == "len":
            return {"value": len(target)}
        if kind == "iter":
            return {"value": list(target)}
        return {"error": f"ValueError: unknown request {kind!r}"}


def _state(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, torch.nn.Module):
        grads = {k: p.grad for k, p in x.named_parameters() if p.grad is not None}
        return {"state": dict(x.state_dict(keep_vars=False)), "grads": grads}
    if isinstance(x, torch.optim.Optimizer):
        return x.state_dict()
    return None


def _collect(args: tuple, kwargs: dict, take: Any) -> list:
    """What ``take`` finds in the arguments, walking lists, tuples and dict values in order.

    ``take(x)`` returns a list (what x contributes) or None (look inside x). Both sides walk
    their own copy of the arguments in this same order, so the i-th item matches.
    """
    out: list = []

    def walk(x: Any) -> None:
        found = take(x)
        if found is not None:
            out.extend(found)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(list(args))
    walk(kwargs)
    return out


def grad_leaves(args: tuple, kwargs: dict) -> list:
    """Tensors that require grad and trainable parameters of modules among the arguments.

    The i-th gradient the student's side computes belongs to the grader's i-th leaf.
    """
    import torch

    def take(x: Any) -> list | None:
        if isinstance(x, torch.Tensor):
            return [x] if x.requires_grad else []
        if isinstance(x, torch.nn.Module):
            return [p for p in x.parameters() if p.requires_grad]
        return None

    return _collect(args, kwargs, take)


def _modules(args: tuple, kwargs: dict) -> list:
    """The modules among the arguments, in the order both sides walk them."""
    import torch

    return _collect(args, kwargs, lambda x: [x] if isinstance(x, torch.nn.Module) else None)


def _updates(args: tuple, kwargs: dict) -> list:
    """The new state of each module or optimizer argument, and of each tensor argument an
    optimizer among the arguments holds: [path, state] pairs.

    Other tensors (a test's inputs) never come back changed, so a function that overwrites its
    inputs in place cannot change what the test compares its answer with.
    """
    import torch

    optimizers = _collect(
        args, kwargs, lambda x: [x] if isinstance(x, torch.optim.Optimizer) else None
    )
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    out: list = []

    def walk(x: Any, path: list) -> None:
        if isinstance(x, torch.Tensor) and id(x) not in held:
            return
        state = _state(x)
        if state is not None:
            out.append([path, state])
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, [*path, i])
        elif isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, (str, int)):
                    walk(v, [*path, k])

    walk(list(args), ["args"])
    walk(kwargs, ["kwargs"])
    return out


def main() -> None:
    """Serve the verdict process on the original stdin/stdout until it closes the pipe."""
    from labkit.grading import wire

    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    student = Student()
    while True:
        try:
            header, blobs = wire.read_message(fd_in)
        except (wire.WireError, OSError):
            return
        try:
            request = _Unpickler(blobs[0], student.handles).load()
            reply = student.answer(request)
        except BaseException as err:  # noqa: BLE001 - reported to the grader as text
            if isinstance(err, KeyboardInterrupt):
                raise
            reply = {"error": error_text(err)}
            if os.environ.get("LABKIT_GRADE_DEBUG"):
                reply["error"] += "\n" + traceback.format_exc()[-_MAX_ERROR:]
        try:
            head, data = wire.encode(reply, student.handle)
        except BaseException as err:  # noqa: BLE001 - e.g. a student's __reduce__ raising
            head, data = wire.encode({"error": f"cannot send the answer: {error_text(err)}"})
        wire.write_message(fd_out, head, data)


if __name__ == "__main__":
    main()
