"""labkit.prune: masks checked against torch.nn.utils.prune, schedules, fine-tuning, tickets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from labkit import measure, prune

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))


def _blobs(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 20-D: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.randn(3, 20, generator=g) * 2
    return centers[y] + torch.randn(n, 20, generator=g), y


LAYERS = ["1", "3", "5"]


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("amount", [0.3, 0.8, 7])
def test_layer_masks_equal_torch_l1_unstructured(amount):
    model = _mlp()
    ours = prune.magnitude(model, amount=amount, scope="layer")
    ref = copy.deepcopy(model)
    for name in LAYERS:
        torch_prune.l1_unstructured(ref.get_submodule(name), "weight", amount=amount)
    for name in LAYERS:
        assert torch.equal(
            ours.get_submodule(name).weight_mask, ref.get_submodule(name).weight_mask
        )
    x = torch.randn(5, 20)
    assert torch.allclose(ours(x), ref(x))


def test_conv_masks_equal_torch_l1_unstructured():
    model = _cnn()
    ours = prune.magnitude(model, amount=0.6)
    ref = copy.deepcopy(model)
    torch_prune.l1_unstructured(ref[0], "weight", amount=0.6)
    assert torch.equal(ours[0].weight_mask, ref[0].weight_mask)


@pytest.mark.parametrize("amount", [0.5, 0.9, 100])
def test_global_masks_equal_torch_global_unstructured(amount):
    model = _mlp()
    ours = prune.magnitude(model, amount=amount, scope="global")
    ref = copy.deepcopy(model)
    params = [(ref.get_submodule(n), "weight") for n in LAYERS]
    torch_prune.global_unstructured(
        params, pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    for name in LAYERS:
        assert torch.equal(
            ours.get_submodule(name).weight_mask, ref.get_submodule(name).weight_mask
        )
    s = prune.sparsity(ours)
    total = sum(model.get_submodule(n).weight.numel() for n in LAYERS)
    expected = amount if isinstance(amount, int) else round(amount * total)
    assert s["global"] == pytest.approx(expected / total)
    # global scope lets layers differ; layer scope does not
    assert len({round(s[n], 3) for n in LAYERS}) > 1


def test_magnitude_mask_primitive_matches_torch():
    w = torch.randn(7, 9)
    ref = torch_prune.L1Unstructured(amount=0.4).compute_mask(w, torch.ones_like(w))
    assert torch.equal(prune.magnitude_mask(w, 0.4), ref)
    assert prune.magnitude_mask(torch.tensor([0.1, -2.0, 0.5]), 1).tolist() == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- semantics


def test_amount_is_the_total_target_and_never_unprunes():
    model = _mlp()
    step = prune.magnitude(prune.magnitude(model, 0.5), 0.8)
    direct = prune.magnitude(model, 0.8)
    for name in LAYERS:
        assert torch.equal(
            step.get_submodule(name).weight_mask, direct.get_submodule(name).weight_mask
        )
    # change the kept weights so that pruned ones would win if they were ranked again
    half = prune.magnitude(model, 0.5, scope="global")
    with torch.no_grad():
        for name in LAYERS:
            m = half.get_submodule(name)
            m.weight_orig.mul_(1 - m.weight_mask).add_(m.weight_mask * 1e-4)
    more = prune.magnitude(half, 0.6, scope="global")
    for name in LAYERS:
        old, new = half.get_submodule(name).weight_mask, more.get_submodule(name).weight_mask
        assert torch.all(new <= old)  # pruned stays pruned
    assert prune.sparsity(more)["global"] == pytest.approx(0.6, abs=1e-3)


def test_copy_vs_in_place_and_remove():
    model = _mlp()
    pruned = prune.magnitude(model, 0.7)
    assert not hasattr(model.get_submodule("1"), "weight_mask")  # original untouched
    x = torch.randn(4, 20)
    pruned(x).sum().backward()  # the cached weight now has autograd history
    twin = prune.copy_model(pruned)  # deepcopy works anyway
    assert torch.equal(twin(x), pruned(x))
    folded = prune.remove(pruned)
    keys = list(folded.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert torch.allclose(folded(x), pruned(x))
    assert measure.count_nonzero(folded) == measure.count_nonzero(pruned)
    same = prune.magnitude_(model, 0.7)
    assert same is model and hasattr(model.get_submodule("1"), "weight_mask")


def test_per_layer_amounts_and_sparsity_report():
    model = prune.magnitude(_mlp(), {"1": 0.9, "5": 0.25})
    s = prune.sparsity(model)
    assert s["1"] == pytest.approx(0.9) and s["3"] == 0.0 and s["5"] == pytest.approx(0.25)
    n = [model.get_submodule(k).weight_orig.numel() if k != "3" else 32 * 16 for k in LAYERS]
    assert s["global"] == pytest.approx((0.9 * n[0] + 0.25 * n[2]) / sum(n), abs=1e-3)
    only = prune.magnitude(_mlp(), 0.5, modules=["3"])
    assert set(prune.masks(only)) == {"3"}


def test_masks_transfer_to_a_fresh_model():
    pruned = prune.magnitude(_mlp(0), 0.8, scope="global")
    ticket = prune.masks(pruned)
    fresh = prune.apply_masks_(_mlp(1), ticket)
    for name, mask in ticket.items():
        assert torch.equal(fresh.get_submodule(name).weight_mask, mask)
        assert torch.equal(
            fresh.get_submodule(name).weight, _mlp(1).get_submodule(name).weight * mask
        )
    with pytest.raises(ValueError, match="layer_masks"):
        prune.apply_masks_(_mlp(), {"1": torch.ones(3, 3)})


def test_tied_weights_are_not_pruned_by_default():
    emb = nn.Embedding(3, 16)
    head = nn.Linear(16, 3, bias=False)
    head.weight = emb.weight
    tied = nn.ModuleDict({"emb": emb, "head": head, "body": nn.Linear(16, 16)})
    assert list(prune.prunable(tied)) == ["body"]


# --------------------------------------------------------------------------- schedules


def test_cubic_schedule():
    s = prune.cubic_schedule(0.9, 3)
    assert s[-1] == pytest.approx(0.9)
    assert s[0] == pytest.approx(0.9 * (1 - (2 / 3) ** 3))
    assert all(a < b for a, b in zip(s, s[1:]))
    assert prune.cubic_schedule(0.5, 1) == [0.5]


def test_prune_finetune_keeps_pruned_weights_at_zero():
    X, y = _blobs()
    model = _mlp()
    from labkit import train

    train.fit(model, (X, y), num_epochs=3, lr=1e-2, progress=False, device="cpu")
    for schedule in ("oneshot", "gradual", [0.3, 0.6, 0.85]):
        small, log = prune.prune_finetune(
            model, (X, y), amount=0.85, schedule=schedule, num_stages=3, num_epochs=3, lr=1e-2
        )
        assert [r["stage"] for r in log] == list(range(len(log)))
        assert log[-1]["sparsity"] == pytest.approx(0.85, abs=1e-3)
        assert prune.sparsity(small)["global"] == pytest.approx(0.85, abs=1e-3)
        for name, mask in prune.masks(small).items():
            assert torch.all(small.get_submodule(name).weight[mask == 0] == 0)
        assert all(0 <= r["acc"] <= 1 for r in log)
    _, log = prune.prune_finetune(model, (X, y), amount=0.85, schedule="gradual", num_stages=3)
    assert [r["amount"] for r in log] == pytest.approx(prune.cubic_schedule(0.85, 3))
    assert not hasattr(model.get_submodule("1"), "weight_mask")  # the input model is untouched


def test_sensitivity_scan_and_amounts_for_drop():
    X, y = _blobs()
    model = _mlp()
    from labkit import train

    train.fit(model, (X, y), num_epochs=3, lr=1e-2, progress=False, device="cpu")
    base = train.evaluate(model, (X, y))["acc"]
    records = prune.sensitivity_scan(model, (X, y), [0.5, 0.99])
    assert [(r["layer"], r["amount"]) for r in records] == [
        (n, a) for n in LAYERS for a in (0.5, 0.99)
    ]
    for r in records:
        only = prune.magnitude(model, {r["layer"]: r["amount"]})
        assert r["acc"] == train.evaluate(only, (X, y))["acc"]
        assert r["drop"] == pytest.approx(base - r["acc"])
    chosen = prune.amounts_for_drop(records, max_drop=0.0)
    for n in LAYERS:
        ok = [r["amount"] for r in records if r["layer"] == n and r["drop"] <= 0.0]
        assert chosen[n] == max(ok, default=0.0)


def test_lottery_ticket_runs_and_keeps_one_mask():
    X, y = _blobs(seed=1)
    result = prune.lottery_ticket(
        lambda: _mlp(), (X, y), amount=0.8, rounds=2, num_epochs=2, lr=1e-2
    )
    assert set(result) == {"dense", "rewind", "random", "sparsity"}
    assert result["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert all(0 <= result[k] <= 1 for k in ("dense", "rewind", "random"))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scope": "local"}, "scope must be one of 'layer', 'global'; got 'local'"),
        ({"amount": 1.0}, r"amount must be a number in \[0, 1\); got 1.0"),
        ({"amount": -0.1}, r"amount must be a number in \[0, 1\)"),
        ({"amount": 10_000}, "amount must be an integer in"),
        ({"amount": "half"}, "amount must be an int count or a float fraction"),
        ({"modules": ["nope"]}, "modules must be Linear/Conv layers of the model"),
        ({"amount": {"1": 0.5}, "scope": "global"}, "amount must be a single number"),
        ({"amount": {"9": 0.5}}, "amount keys must be layer names"),
    ],
)
def test_bad_input_is_one_line_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        prune.magnitude(_mlp(), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_schedule():
    with pytest.raises(ValueError, match="schedule must be one of"):
        prune.prune_finetune(_mlp(), _blobs(), schedule="slow")
    with pytest.raises(ValueError, match="increasing amounts"):
        prune.prune_finetune(_mlp(), _blobs(), schedule=[0.8, 0.5])
