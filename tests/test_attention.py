"""Attention from scratch against PyTorch, and the cost model against counted params/FLOPs/bytes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import attention as A
from labkit import measure, models


def _qkv(*shape, t_k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, T, D = shape
    t_k = t_k or T
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, H, t_k, D, generator=g)
    v = torch.randn(B, H, t_k, D, generator=g)
    return q, k, v


def _gpt(n_layer=2, n_head=4, n_embd=32, vocab_size=40, block_size=64, bias=True):
    torch.manual_seed(0)
    config = models.GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd, bias=bias)
    return models.GPT(config).eval()


# --------------------------------------------------------------------------- from scratch


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_sdpa(causal):
    q, k, v = _qkv(2, 3, 9, 8)
    ours = A.attention(q, k, v, causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_attention_masks_and_scale_match_sdpa():
    q, k, v = _qkv(2, 2, 5, 4, t_k=7)
    g = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(5, 7, generator=g) > 0.3
    bool_mask[:, 0] = True  # every query may attend somewhere
    float_mask = torch.randn(2, 1, 5, 7, generator=g)
    for mask in (bool_mask, float_mask):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        torch.testing.assert_close(A.attention(q, k, v, mask, scale=0.3), ref, atol=1e-5, rtol=1e-5)


def test_fully_masked_query_gives_zero_like_sdpa():
    """A query with no key to attend to: SDPA returns 0 (and a zero gradient), not 0/0 = NaN."""
    q, k, v = _qkv(2, 2, 4, 8, t_k=6)
    bool_mask = torch.ones(4, 6, dtype=torch.bool)
    bool_mask[1] = False  # query 1 may attend nothing
    bool_mask[3, 2:] = False  # query 3 sees keys 0 and 1 only
    float_mask = torch.zeros(2, 1, 4, 6).masked_fill(~bool_mask, float("-inf"))
    for mask in (bool_mask, float_mask):
        q_ours, q_ref = q.clone().requires_grad_(), q.clone().requires_grad_()
        ours = A.attention(q_ours, k, v, mask)
        ref = F.scaled_dot_product_attention(q_ref, k, v, attn_mask=mask)
        assert torch.equal(ref[:, :, 1], torch.zeros(2, 2, 8))  # what SDPA does on this torch
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(ours[:, :, 1], torch.zeros(2, 2, 8))
        ours.square().sum().backward()
        ref.square().sum().backward()
        assert torch.isfinite(q_ours.grad).all()
        torch.testing.assert_close(q_ours.grad, q_ref.grad, atol=1e-5, rtol=1e-5)
    w = A.attention_weights(q, k, bool_mask)
    assert torch.equal(w[:, :, 1], torch.zeros(2, 2, 6))  # the dead row: zeros, not NaN
    torch.testing.assert_close(w[:, :, [0, 2, 3]].sum(-1), torch.ones(2, 2, 3))
    # causal and a padding mask together can also leave a row empty (query 0 sees key 0 only)
    pad = torch.ones(6, 6, dtype=torch.bool)
    pad[:, 0] = False
    q, k, v = _qkv(1, 2, 6, 8)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=pad & A.causal_mask(6))
    torch.testing.assert_close(A.attention(q, k, v, pad, causal=True), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(ref[:, :, 0], torch.zeros(1, 2, 8))


def test_attention_weights_are_a_causal_distribution():
    q, k, _ = _qkv(1, 2, 6, 4)
    w = A.attention_weights(q, k, causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 6))
    assert torch.all(w.triu(diagonal=1) == 0)  # no query looks ahead
    assert torch.all(w[..., 0, 0] == 1)  # the first token only sees itself


def test_causal_mask_is_torch_lower_triangle_and_bottom_right_for_cache():
    assert torch.equal(A.causal_mask(5), torch.ones(5, 5).tril().bool())
    # 2 new queries at positions 3, 4 of 5 keys: position 3 sees keys 0..3, position 4 all.
    assert A.causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match="t_k must be an integer >= 3"):
        A.causal_mask(3, 2)


def test_split_merge_heads_round_trip():
    x = torch.randn(2, 5, 12)
    assert A.split_heads(x, 3).shape == (2, 3, 5, 4)
    assert torch.equal(A.merge_heads(A.split_heads(x, 3)), x)
    # head h holds channels h*D .. (h+1)*D, the layout nn.MultiheadAttention uses
    assert torch.equal(A.split_heads(x, 3)[:, 1], x[..., 4:8])


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_torch_module(causal):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()  # torch initialises biases to zero: make them matter
        mha.out_proj.bias.normal_()
    ours = A.MultiHeadAttention.from_torch(mha)
    x = torch.randn(2, 7, 32)
    blocked = ~A.causal_mask(7) if causal else None  # torch: True = may NOT attend
    ref, _ = mha(x, x, x, attn_mask=blocked, need_weights=False)
    torch.testing.assert_close(ours(x, causal=causal), ref, atol=1e-5, rtol=1e-5)
    # cross-attention: queries from one sequence, keys/values from another
    mem = torch.randn(2, 11, 32)
    ref, _ = mha(x, mem, mem, need_weights=False)
    torch.testing.assert_close(ours(x, mem), ref, atol=1e-5, rtol=1e-5)


def test_multi_head_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_head must divide d_model=30; got 4"):
        A.MultiHeadAttention(30, 4)


def test_cached_decoding_equals_full_forward_and_cache_bytes_match_formula():
    model = _gpt()
    idx = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(0))
    cache = A.KVCache()
    steps = [A.forward_cached(model, idx[:, :16], cache)]  # prompt
    steps += [A.forward_cached(model, idx[:, t : t + 1], cache) for t in range(16, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 24
    assert cache.nbytes == A.kv_cache_bytes(2, 4, 8, seq_len=24, batch=3, bytes_per_element=4)
    prompt_only = A.KVCache()  # stores copies, not views into the (q, k, v) projection
    A.forward_cached(model, idx[:, :10], prompt_only)
    assert prompt_only.nbytes == A.kv_cache_bytes(2, 4, 8, seq_len=10, batch=3, bytes_per_element=4)
    half = A.KVCache(dtype=torch.float16)
    A.forward_cached(model, idx, half)
    assert half.nbytes == A.kv_cache_bytes(2, 4, 8, seq_len=24, batch=3, bytes_per_element=2)
    with pytest.raises(ValueError, match="block_size=64"):
        A.forward_cached(model, torch.zeros(1, 41, dtype=torch.long), cache)


def test_multi_head_attention_with_cache_equals_causal_forward():
    torch.manual_seed(1)
    mha = A.MultiHeadAttention(16, 2)
    x = torch.randn(1, 9, 16)
    cache = A.KVCache()
    steps = [mha(x[:, :4], causal=True, cache=cache)]
    steps += [mha(x[:, t : t + 1], causal=True, cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), mha(x, causal=True), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the cost model


@pytest.mark.parametrize("d_model,d_ff", [(32, None), (48, 100)])
def test_block_params_matches_torch_encoder_layer(d_model, d_ff):
    layer = nn.TransformerEncoderLayer(d_model, 4, dim_feedforward=d_ff or 4 * d_model)
    assert A.block_params(d_model, d_ff) == measure.count_params(layer)
    assert A.block_params(768) == 12 * 768**2 + 13 * 768


def test_block_params_swiglu_rmsnorm_matches_a_llama_style_block():
    d, f = 64, 172
    block = nn.ModuleDict(
        {
            "q": nn.Linear(d, d, bias=False),
            "k": nn.Linear(d, d, bias=False),
            "v": nn.Linear(d, d, bias=False),
            "o": nn.Linear(d, d, bias=False),
            "gate": nn.Linear(d, f, bias=False),
            "up": nn.Linear(d, f, bias=False),
            "down": nn.Linear(f, d, bias=False),
            "norm1": nn.RMSNorm(d),
            "norm2": nn.RMSNorm(d),
        }
    )
    got = A.block_params(d, f, bias=False, norm="rmsnorm", mlp="swiglu")
    assert got == measure.count_params(block)


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_matches_labkit_gpt(bias):
    model = _gpt(n_layer=3, n_head=2, n_embd=24, bias=bias)
    spec = A.TransformerSpec.from_gpt(model.config)
    assert A.param_count(spec) == measure.count_params(model)
    one_block = measure.count_params(model.transformer.h[0])
    assert A.block_params(24, bias=bias) == one_block


def test_real_models_are_close_to_their_published_sizes():
    got = {name: A.param_count(spec) for name, (spec, _) in A.REAL_MODELS.items()}
    assert got["GPT-2 small"] == 124_439_808  # the count of the released checkpoint
    assert got["BERT-base"] == 109_482_240
    for name, (_, published) in A.REAL_MODELS.items():
        assert abs(got[name] / published - 1) < 0.04, name
    rows = A.real_models_table(bits=(16, 4), memory_gb=8)
    llama = next(r for r in rows if r["model"] == "LLaMA-7B")
    assert not llama["fits@16bit"] and llama["fits@4bit"]
    assert llama["GB@4bit"] == round(A.weight_bytes(got["LLaMA-7B"], 4) / 1e9, 2)


@pytest.mark.parametrize("seq_len,batch", [(1, 1), (40, 3), (64, 2)])
def test_forward_flops_match_flop_counter(seq_len, batch):
    model = _gpt()
    spec = A.TransformerSpec.from_gpt(model.config)
    idx = torch.zeros(batch, seq_len, dtype=torch.long)
    assert A.forward_flops(spec, seq_len, batch)["total"] == measure.flops(model, idx)
    by_hand = measure.macs_by_hand(model, idx) * 2  # the Linear layers only
    parts = A.forward_flops(spec, seq_len, batch)
    assert parts["linear"] + parts["head"] == by_hand


def test_flops_per_token_is_two_n_plus_attention():
    spec = A.TransformerSpec(vocab_size=100, n_layer=4, d_model=64, n_head=4)
    n_matmul = 4 * 12 * 64**2 + 100 * 64  # per layer q, k, v, out (4d²) + MLP (8d²); the head
    for t in (1, 100, 1000):
        assert A.flops_per_token(spec, t) == 2 * n_matmul + 4 * 4 * t * 64
    # the attention term equals the weight term at T = 6·d (for d_ff = 4d, ignoring the head)
    weights = A.forward_flops(spec, 6 * 64)["linear"]
    assert A.forward_flops(spec, 6 * 64)["attention"] == weights


def test_kv_cache_bytes_formula_and_errors():
    assert A.kv_cache_bytes(12, 12, 64, seq_len=1024) == 2 * 12 * 1024 * 768 * 2
    assert A.kv_cache_bytes(2, 4, 8, 10, batch=4, bytes_per_element=4) == 4 * A.kv_cache_bytes(
        2, 4, 8, 10, bytes_per_element=4
    )
    with pytest.raises(ValueError, match="n_head must be an integer >= 1; got 0"):
        A.kv_cache_bytes(2, 0, 8, 10)
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, 64\\]; got 0"):
        A.weight_bytes(10, 0)
    assert A.weight_bytes(10, 3) == 4  # 30 bits round up to 4 bytes


def test_spec_validates():
    with pytest.raises(ValueError, match="norm must be one of 'layernorm', 'rmsnorm'; got 'bn'"):
        A.TransformerSpec(10, 1, 8, 2, norm="bn")
    with pytest.raises(ValueError, match="n_head must divide d_model=10; got 3"):
        A.TransformerSpec(10, 1, 10, 3)
    with pytest.raises(ValueError, match="mlp must be one of 'gelu', 'swiglu'; got 'relu'"):
        A.block_params(8, mlp="relu")
