"""labkit.grading.remote + student: the grader uses the student's objects through data only.

One student process (sandboxed when bubblewrap is there) runs a few cells; the tests call into
it as graded cells do, and compare with the same computation done here.
"""

from __future__ import annotations

import pytest
import torch

from labkit.grading import sandbox
from labkit.grading.remote import Connection, Remote, RemoteTimeout, SubmissionError

CELLS = """
import time
import torch

def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()

def step_no_zero_grad(model, opt, x, y):
    torch.nn.functional.mse_loss(model(x), y).backward()  # gradients accumulate across calls
    opt.step()


def scaled(x, w):
    return (x * w).sum(dim=-1), x.abs()

class Counter:
    def __init__(self, start):
        self.n = start
    def add(self, k):
        self.n += k
        return self.n

def fails(kind):
    raise {"value": ValueError, "custom": type("Odd", (Exception,), {})}[kind]("bad " + kind)

def slow():
    while True:
        time.sleep(0.01)

def overwrite_inputs(x):
    x.zero_()  # in place: the test's reference, computed after the call, would see zeros
    return torch.zeros_like(x)

def sgd_on_tensor(w, opt):
    opt.zero_grad()
    (w**2).sum().backward()
    opt.step()

answer = {"bytes": 1234, "ratio": 3.5}
"""


@pytest.fixture()
def conn():
    proc = sandbox.start(sandbox=sandbox.available(), memory_gb=4)
    c = Connection(proc, timeout=20)
    c.request(("cells", [(0, CELLS)]), startup=True)
    assert c.request(("run", 1)) == {"0": None}
    yield c
    c.close()


def test_data_arrives_as_data_and_functions_as_remotes(conn):
    assert conn.request(("get", "answer")) == {"bytes": 1234, "ratio": 3.5}
    step = conn.request(("get", "train_step"))
    assert isinstance(step, Remote) and callable(step)
    with pytest.raises(TypeError, match="no truth value"):
        bool(step)
    assert step != step.__class__ and step == step
    with pytest.raises(NameError, match="nope"):
        conn.request(("get", "nope"))


def test_a_training_step_updates_the_graders_model_and_optimizer(conn):
    torch.manual_seed(0)
    model, x, y = torch.nn.Linear(4, 2), torch.randn(16, 4), torch.randn(16, 2)
    twin = torch.nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    step = conn.request(("get", "train_step"))
    for _ in range(3):
        loss = step(model, opt, x, y)
        opt_twin.zero_grad()
        ref = torch.nn.functional.mse_loss(twin(x), y)
        ref.backward()
        opt_twin.step()
        assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(model.weight, twin.weight, atol=1e-6)
    momentum = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.allclose(momentum, opt_twin.state_dict()["state"][0]["momentum_buffer"])


def test_parameter_gradients_persist_between_calls_as_they_would_in_one_process(conn):
    torch.manual_seed(1)
    model, x, y = torch.nn.Linear(3, 2), torch.randn(8, 3), torch.randn(8, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    step = conn.request(("get", "step_no_zero_grad"))
    for _ in range(3):
        step(model, opt, x, y)
        torch.nn.functional.mse_loss(twin(x), y).backward()
        opt_twin.step()
    assert torch.allclose(model.weight.grad, twin.weight.grad, atol=1e-6)
    assert torch.allclose(model.weight, twin.weight, atol=1e-6)


def test_a_tests_inputs_stay_as_the_test_made_them(conn):
    x = torch.randn(6)
    before = x.clone()
    out = conn.request(("get", "overwrite_inputs"))(x)
    assert torch.equal(x, before), "an input overwritten on the student's side came back"
    assert not torch.allclose(out, torch.softmax(x, dim=0))


def test_tensors_an_optimizer_holds_come_back_stepped(conn):
    w = torch.randn(3, requires_grad=True)
    twin = w.detach().clone().requires_grad_()
    opt, opt_twin = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([twin], lr=0.1)
    conn.request(("get", "sgd_on_tensor"))(w, opt)
    (twin**2).sum().backward()
    opt_twin.step()
    assert torch.allclose(w, twin) and not torch.allclose(w, twin + 0.1)


def test_gradients_flow_back_through_the_students_function(conn):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    s, a = conn.request(("get", "scaled"))(x, w)
    (s.sum() + a.sum()).backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ((x2 * w2).sum(dim=-1).sum() + x2.abs().sum()).backward()
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(w.grad, w2.grad)


def test_instances_of_the_students_classes_stay_there(conn):
    counter = conn.request(("get", "Counter"))(10)
    assert isinstance(counter, Remote) and "Counter" in repr(counter)
    assert counter.add(5) == 15 and counter.n == 15


def test_exceptions_cross_as_their_builtin_type_or_submission_error(conn):
    fails = conn.request(("get", "fails"))
    with pytest.raises(ValueError, match="bad value"):
        fails("value")
    with pytest.raises(SubmissionError, match="Odd: bad custom"):
        fails("custom")


def test_a_call_past_the_limit_times_out_and_breaks_the_connection(conn):
    conn.timeout = 1
    slow = conn.request(("get", "slow"))
    with pytest.raises(RemoteTimeout, match="did not answer within 1 s"):
        slow()
    assert conn.broken
