"""labkit.prune.structured: shrunk models equal their masked twins; torch's ln_structured picks
the same channels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from labkit import measure, models
from labkit.prune import structured as ps

SMALL = {
    "mlp": ({}, (1, 8, 8)),
    "lenet": ({}, (1, 8, 8)),
    "cnn1d": ({"channels": (8, 8, 8)}, (1, 40)),
    "dscnn": ({"channels": (8, 16, 24)}, (1, 8, 8)),
    "vit": ({"dim": 32, "depth": 2, "heads": 4}, (1, 8, 8)),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = models.build(name, **SMALL[name][0])
    if name == "dscnn":  # give BatchNorm non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(64, *SMALL[name][1]))
    return model.eval()


def _x(name: str, n: int = 5) -> torch.Tensor:
    return torch.randn(n, *SMALL[name][1], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("amount", [0.5, 0.75, 1])
def test_shrunk_model_equals_masked_model(name, amount):
    model = _model(name)
    small = ps.prune_channels(model, amount)
    masked = ps.mask_channels(model, amount)
    x = _x(name)
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    assert measure.count_params(small) < measure.count_params(model)
    assert measure.model_bytes(small) < measure.model_bytes(model)
    assert not torch.allclose(small(x), model(x), atol=1e-3)  # something was really removed


@pytest.mark.parametrize("name", ["mlp", "lenet", "cnn1d", "dscnn"])
def test_shrunk_config_rebuilds_the_same_architecture(name):
    small = ps.prune_channels(_model(name), 0.5)
    rebuilt = models.build(name, small.config)
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_channel_groups_of_the_zoo():
    lenet = ps.channel_groups(_model("lenet"))
    assert [(g.producer, g.consumers) for g in lenet] == [
        ("features.0", [("features.3", 1)]),
        ("features.3", [("classifier.1", 4)]),  # 16 channels x 2 x 2 after flatten
        ("classifier.1", [("classifier.3", 1)]),
        ("classifier.3", [("classifier.5", 1)]),
    ]
    dscnn = ps.channel_groups(_model("dscnn"))
    assert dscnn[0].followers == ["stem.1", "blocks.0.depthwise.0", "blocks.0.depthwise.1"]
    assert dscnn[-1].consumers == [("head", 1)]
    vit = ps.channel_groups(_model("vit"))  # only the feed-forward hidden units: residuals stay
    assert [g.producer for g in vit] == ["blocks.0.mlp.c_fc", "blocks.1.mlp.c_fc"]


def test_residual_and_output_channels_are_never_pruned():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 6, 1)
            self.c = nn.Conv2d(6, 6, 1)

        def forward(self, x):
            x = x + torch.relu(self.a(x))  # a feeds a residual add: not prunable
            return self.c(torch.relu(self.b(x)))  # b -> c prunable, c is the output

    groups = ps.channel_groups(Res())
    assert [(g.producer, g.consumers) for g in groups] == [("b", [("c", 1)])]


@pytest.mark.parametrize("importance, n", [("l1", 1), ("l2", 2)])
def test_channel_choice_equals_torch_ln_structured(importance, n):
    model = _model("lenet")
    keep = ps.select_channels(model, 0.5, importance)
    for producer in ("features.0", "features.3", "classifier.1"):
        ref = copy.deepcopy(model.get_submodule(producer))
        torch_prune.ln_structured(ref, "weight", amount=0.5, n=n, dim=0)
        rows = ref.weight_mask.reshape(ref.weight_mask.shape[0], -1).amax(1).nonzero().flatten()
        assert keep[producer].tolist() == rows.tolist()


def test_shrink_by_hand_linear_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    keep = torch.tensor([1, 4, 6])
    small = ps.shrink_(copy.deepcopy(model), {"0": keep})
    assert small[0].weight.shape == (3, 6) and small[2].weight.shape == (3, 3)
    assert torch.equal(small[0].weight, model[0].weight[keep])
    assert torch.equal(small[2].weight, model[2].weight[:, keep])
    with pytest.raises(ValueError, match="keep keys must be producer names"):
        ps.shrink_(copy.deepcopy(model), {"2": keep})


def test_bad_input():
    model = _model("lenet")
    with pytest.raises(ValueError, match="importance must be one of 'l1', 'l2'; got 'l3'"):
        ps.prune_channels(model, 0.5, importance="l3")
    with pytest.raises(ValueError, match=r"amount must be a number in \[0, 1\)"):
        ps.prune_channels(model, 1.5)
    with pytest.raises(ValueError, match="amount keys must be producer names"):
        ps.prune_channels(model, {"features.1": 0.5})
