"""labkit.prune.transformer: pruned heads equal masked heads, dropped blocks equal identities."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit import measure, models
from labkit.prune import structured as ps
from labkit.prune import transformer as pt


def _model(name: str = "vit") -> nn.Module:
    torch.manual_seed(0)
    return models.build("vit", dim=32, depth=2, heads=4).eval()


def _x(name: str = "vit", n: int = 5) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_heads_pruned_equal_heads_masked_and_attention_reimplementation():
    vit = _model("vit")
    x = _x("vit")
    attn = vit.blocks[0].attn
    tokens = torch.randn(2, 5, 32)
    full = pt.PrunedSelfAttention(attn, range(4)).eval()
    assert torch.allclose(full(tokens), attn(tokens), atol=1e-6)  # same computation when all kept
    heads = {"blocks.0.attn": [0, 2], "blocks.1.attn": [3]}
    pruned = pt.prune_heads(vit, heads)
    assert torch.allclose(pruned(x), pt.mask_heads(vit, heads)(x), atol=1e-5)
    assert pruned.blocks[0].attn.c_attn.out_features == 3 * 16
    assert measure.count_params(pruned) < measure.count_params(vit)
    none = pt.prune_heads(vit, {"blocks.0.attn": [0, 1, 2, 3]})
    masked = pt.mask_heads(vit, {"blocks.0.attn": [0, 1, 2, 3]})
    assert torch.allclose(none(x), masked(x), atol=1e-5)


def test_heads_in_a_causal_gpt():
    torch.manual_seed(0)
    gpt = models.build("gpt", vocab_size=20, n_embd=32, n_layer=2, n_head=4, block_size=16).eval()
    idx = torch.randint(0, 20, (2, 10))
    heads = {"transformer.h.1.attn": [1]}
    assert torch.allclose(
        pt.prune_heads(gpt, heads)(idx), pt.mask_heads(gpt, heads)(idx), atol=1e-5
    )
    small = ps.prune_channels(gpt, 0.5)  # feed-forward hidden units
    assert torch.allclose(small(idx), ps.mask_channels(gpt, 0.5)(idx), atol=1e-5)


def test_head_importance_and_selection():
    vit = _model("vit")
    scores = pt.head_importance(vit)
    assert list(scores) == ["blocks.0.attn", "blocks.1.attn"]
    w = vit.blocks[1].attn.c_proj.weight
    assert torch.allclose(scores["blocks.1.attn"][2], w[:, 16:24].abs().sum())
    chosen = pt.select_heads(scores, 0.5)
    assert sum(len(v) for v in chosen.values()) == 4
    flat = sorted((float(s), n, h) for n, t in scores.items() for h, s in enumerate(t))
    assert {(n, h) for _, n, h in flat[:4]} == {(n, h) for n, v in chosen.items() for h in v}
    X = _x("vit", 40)
    y = torch.arange(40) % 10
    ablation = pt.head_importance(vit, (X, y), "ablation")
    from labkit import train

    base = train.evaluate(vit, (X, y))["loss"]
    worse = train.evaluate(pt.mask_heads(vit, {"blocks.1.attn": [3]}), (X, y))["loss"]
    assert float(ablation["blocks.1.attn"][3]) == pytest.approx(worse - base)


def test_drop_layers_equals_making_the_block_an_identity():
    vit = _model("vit")
    x = _x("vit")
    ident = copy.deepcopy(vit)
    with torch.no_grad():  # zero both residual branches: the block returns its input
        for lin in (ident.blocks[1].attn.c_proj, ident.blocks[1].mlp.c_proj):
            lin.weight.zero_()
            lin.bias.zero_()
    dropped = pt.drop_layers(vit, [1])
    assert len(dropped.blocks) == 1 and dropped.config.depth == 1
    assert torch.allclose(dropped(x), ident(x), atol=1e-6)
    assert len(vit.blocks) == 2  # original untouched


def test_bad_input():
    vit = _model("vit")
    with pytest.raises(ValueError, match="heads keys must be attention layers"):
        pt.prune_heads(vit, {"blocks.9.attn": [0]})
    with pytest.raises(ValueError, match=r"must be head indices in \[0, 4\)"):
        pt.mask_heads(vit, {"blocks.0.attn": [4]})
    with pytest.raises(ValueError, match=r"layers must be indices in \[0, 2\)"):
        pt.drop_layers(vit, [5])
    with pytest.raises(ValueError, match="data must be given"):
        pt.head_importance(vit, importance="ablation")
