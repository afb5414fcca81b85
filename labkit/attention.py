"""Attention from scratch, and what a transformer costs: parameters, FLOPs, KV-cache bytes.

From scratch: :func:`attention` (scaled dot-product, optional causal mask),
:class:`MultiHeadAttention` (the weight layout of ``nn.MultiheadAttention``, so the two compare
weight for weight), :class:`KVCache` and :func:`forward_cached` (incremental decoding of a ``GPT``).

Cost model, all in closed form and checked in the tests against ``measure.count_params``,
``measure.flops`` (``torch.utils.flop_counter``) and the bytes a real cache holds:

* parameters of a GPT-2/BERT block (``d_ff = 4d``, biases, LayerNorm): ``12·d² + 13·d``;
* forward FLOPs per token ``≈ 2·N + 4·n_layer·T·d``: 2 FLOPs per weight, plus attention over ``T``;
* KV cache: ``2 · n_layer · batch · T · n_head · head_dim · bytes_per_element``.

Example:
    >>> from labkit import attention
    >>> attention.block_params(768)
    7087872
    >>> attention.kv_cache_bytes(n_layer=12, n_head=12, head_dim=64, seq_len=1024)
    37748736
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.utils import check_choice, check_int

__all__ = [
    "MultiHeadAttention",
    "KVCache",
    "forward_cached",
    "TransformerSpec",
    "REAL_MODELS",
    "block_params",
    "param_breakdown",
    "param_count",
    "forward_flops",
    "flops_per_token",
    "kv_cache_bytes",
    "weight_bytes",
    "real_models_table",
    "attention",
    "attention_weights",
    "causal_mask",
    "split_heads",
    "merge_heads",
]

# --------------------------------------------------------------------------- multi-head attention


class MultiHeadAttention(nn.Module):
    """Multi-head attention from two ``nn.Linear``: ``in_proj`` (q, k, v stacked) and ``out_proj``.

    The weight layout is that of ``nn.MultiheadAttention`` (``in_proj_weight`` is (3d, d) with q, k,
    v stacked) and of nanoGPT's ``c_attn``; :meth:`from_torch` copies a torch module's weights.
    Inputs are batch-first (B, T, d). Boolean masks mean True = may attend (as in
    ``F.scaled_dot_product_attention``; ``nn.MultiheadAttention`` uses the opposite convention).

    Example: ``MultiHeadAttention(64, 4)(torch.randn(2, 10, 64), causal=True).shape  # (2, 10, 64)``
    """

    def __init__(self, d_model: int, n_head: int, *, bias: bool = True) -> None:
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("n_head", n_head, minimum=1)
        if d_model % n_head:
            raise ValueError(f"n_head must divide d_model={d_model}; got {n_head}")
        self.d_model, self.n_head = d_model, n_head
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy with the weights of ``mha`` (packed in-projection, same embed dim for q, k, v)."""
        if not isinstance(mha, nn.MultiheadAttention) or mha.in_proj_weight is None:
            raise ValueError("mha must be an nn.MultiheadAttention with kdim == vdim == embed_dim")
        new = cls(mha.embed_dim, mha.num_heads, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            new.in_proj.weight.copy_(mha.in_proj_weight)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.in_proj.bias.copy_(mha.in_proj_bias)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """Attend from ``query`` (B, T_q, d) to ``key``/``value`` (default: ``query``); (B, T_q, d).

        With ``cache``, this call's keys and values are appended to ``cache`` (slot ``layer``) and
        the queries attend to everything cached so far.
        """
        key = query if key is None else key
        value = key if value is None else value
        w_q, w_k, w_v = self.in_proj.weight.chunk(3)  # 3 x (d, d)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj.bias is None else self.in_proj.bias.chunk(3)
        q = split_heads(F.linear(query, w_q, b_q), self.n_head)  # (B, H, T_q, D)
        k = split_heads(F.linear(key, w_k, b_k), self.n_head)  # (B, H, T_k, D)
        v = split_heads(F.linear(value, w_v, b_v), self.n_head)  # (B, H, T_k, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, T_cached, D)
        y = attention(q, k, v, mask, causal=causal)  # (B, H, T_q, D)
        return self.out_proj(merge_heads(y))  # (B, T_q, d)


class KVCache:
    """Per-layer keys and values kept during decoding, so each new token costs O(T), not O(T²).

    ``update(layer, k, v)`` appends (B, H, T_new, D) tensors along the time axis and returns
    everything stored; ``nbytes`` is the memory the cache really holds (its tensors' storage).
    ``dtype`` stores the cache in another precision (e.g. ``torch.float16``: half the bytes).

    Example: ``cache = KVCache(); model_out = forward_cached(gpt, idx, cache); cache.nbytes``
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``, ``v`` (B, H, T_new, D) to slot ``layer``; return all stored (k's dtype)."""
        # A copy: k and v are often views into a larger (q, k, v) tensor that must not be kept.
        k_new, v_new = (
            t.to(self.dtype or t.dtype, memory_format=torch.contiguous_format, copy=True)
            for t in (k, v)
        )
        if layer in self.keys:
            k_new = torch.cat([self.keys[layer], k_new], dim=2)  # (B, H, T_old + T_new, D)
            v_new = torch.cat([self.values[layer], v_new], dim=2)  # (B, H, T_old + T_new, D)
        self.keys[layer], self.values[layer] = k_new, v_new
        return k_new.to(k.dtype), v_new.to(v.dtype)

    @property
    def seq_len(self) -> int:
        """Number of positions cached (0 when empty)."""
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors (each storage counted once)."""
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for d in (self.keys, self.values)
            for t in d.values()
        }
        return sum(storages.values())


@torch.no_grad()
def forward_cached(model: nn.Module, idx: Tensor, cache: KVCache) -> Tensor:
    """Logits (B, T_new, V) of a labkit ``GPT`` for new tokens ``idx`` (B, T_new), using ``cache``.

    Feed the prompt once, then one token at a time: the logits equal ``model(full_sequence)`` at the
    same positions, but each step only computes the new token's queries, keys and values.
    Example: ``cache = KVCache(); logits = forward_cached(gpt, prompt, cache)[:, -1]``
    """
    c, t = model.config, model.transformer
    start = cache.seq_len
    if start + idx.shape[1] > c.block_size:
        raise ValueError(
            f"idx must fit the context: cached {start} + new {idx.shape[1]} tokens "
            f"<= block_size={c.block_size}"
        )
    pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T_new,)
    x = t.wte(idx) + t.wpe(pos)  # (B, T_new, C)
    for i, block in enumerate(t.h):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(c.n_embd, dim=2)  # 3 x (B, T_new, C)
        k, v = cache.update(i, split_heads(k, c.n_head), split_heads(v, c.n_head))  # (B,H,T,D)
        y = attention(split_heads(q, c.n_head), k, v, causal=True)  # (B, H, T_new, D)
        x = x + block.attn.c_proj(merge_heads(y))  # (B, T_new, C)
        x = x + block.mlp(block.ln_2(x))  # (B, T_new, C)
    return model.lm_head(t.ln_f(x))  # (B, T_new, V)


# --------------------------------------------------------------------------- the cost model

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")


@dataclass(frozen=True)
class TransformerSpec:
    """The shape of a transformer, enough to count its parameters, FLOPs and KV cache.

    ``d_ff=0`` means ``4·d_model``; ``max_len`` learned position embeddings (0: none, e.g. rotary);
    ``mlp='swiglu'`` has three matrices (LLaMA); ``tied`` means the output head reuses the token
    embedding (or there is none, as in BERT-base); ``extra`` counts parameters outside this pattern.
    Example: ``TransformerSpec(vocab_size=50257, n_layer=12, d_model=768, n_head=12, max_len=1024)``
    """

    vocab_size: int
    n_layer: int
    d_model: int
    n_head: int
    d_ff: int = 0
    max_len: int = 0
    bias: bool = True
    norm: str = "layernorm"
    mlp: str = "gelu"
    tied: bool = True
    extra: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model", "n_head"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("d_ff", "max_len", "extra"):
            check_int(name, getattr(self, name), minimum=0)
        if self.d_model % self.n_head:
            raise ValueError(f"n_head must divide d_model={self.d_model}; got {self.n_head}")
        check_choice("norm", self.norm, NORMS)
        check_choice("mlp", self.mlp, MLPS)

    @property
    def hidden(self) -> int:
        """The MLP's hidden width ``d_ff`` (4·d_model when not given)."""
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def from_gpt(cls, config) -> TransformerSpec:
        """The spec of a labkit ``GPTConfig``. Example: ``TransformerSpec.from_gpt(gpt.config)``"""
        return cls(
            config.vocab_size,
            config.n_layer,
            config.n_embd,
            config.n_head,
            max_len=config.block_size,
            bias=config.bias,
        )


def block_params(
    d_model: int,
    d_ff: int | None = None,
    *,
    bias: bool = True,
    norm: str = "layernorm",
    mlp: str = "gelu",
) -> int:
    """Parameters of one transformer block: attention (q, k, v, out), MLP and two norms.

    GPT-2/BERT block (``d_ff = 4d``, biases, LayerNorm): ``12·d² + 13·d``.
    Example: ``block_params(768)  # 7087872``
    """
    d = check_int("d_model", d_model, minimum=1)
    f = 4 * d if d_ff is None else check_int("d_ff", d_ff, minimum=1)
    check_choice("norm", norm, NORMS)
    check_choice("mlp", mlp, MLPS)
    attn = 4 * d * d + (4 * d if bias else 0)
    n_mat = 3 if mlp == "swiglu" else 2
    ffn = n_mat * d * f + ((n_mat - 1) * f + d if bias else 0)
    one_norm = 2 * d if norm == "layernorm" and bias else d
    return attn + ffn + 2 * one_norm


def param_breakdown(spec: TransformerSpec) -> dict[str, int]:
    """Parameters by part: embedding, blocks, final_norm, head, extra, total (an untied head only).

    Example: ``param_breakdown(REAL_MODELS["GPT-2 small"][0])["total"]  # 124439808``
    """
    d = spec.d_model
    parts = {
        "embedding": (spec.vocab_size + spec.max_len) * d,
        "blocks": spec.n_layer
        * block_params(d, spec.hidden, bias=spec.bias, norm=spec.norm, mlp=spec.mlp),
        "final_norm": 2 * d if spec.norm == "layernorm" and spec.bias else d,
        "head": 0 if spec.tied else spec.vocab_size * d,
        "extra": spec.extra,
    }
    parts["total"] = sum(parts.values())
    return parts


def param_count(spec: TransformerSpec) -> int:
    """Total parameters of ``spec``. Example: ``param_count(REAL_MODELS["LLaMA-7B"][0])``"""
    return param_breakdown(spec)["total"]


def forward_flops(spec: TransformerSpec, seq_len: int, batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward pass on (batch, seq_len) tokens, counted as ``FlopCounterMode`` does.

    2 FLOPs per multiply-accumulate, matmuls only: ``linear`` (q, k, v, out and MLP matrices),
    ``attention`` (QKᵀ and AV: ``4·T²·d`` per layer, the causal mask not discounted) and ``head``
    (the vocabulary projection at every position). Embedding lookups cost no FLOPs.
    Example: ``forward_flops(spec, 64)["total"] == measure.flops(gpt, idx)``
    """
    check_int("seq_len", seq_len, minimum=1)
    check_int("batch", batch, minimum=1)
    n_tok, d, f = batch * seq_len, spec.d_model, spec.hidden
    matmul_params = 4 * d * d + (3 if spec.mlp == "swiglu" else 2) * d * f  # per layer
    out = {
        "linear": 2 * n_tok * spec.n_layer * matmul_params,
        "attention": spec.n_layer * batch * 4 * seq_len * seq_len * d,
        "head": 2 * n_tok * d * spec.vocab_size,
    }
    out["total"] = sum(out.values())
    return out


def flops_per_token(spec: TransformerSpec, seq_len: int) -> int:
    """Forward FLOPs per token when ``seq_len`` tokens are processed: ``2·N + 4·n_layer·T·d``.

    N counts the matrices a token meets (blocks and head, not the embedding lookup).
    Example: ``flops_per_token(spec, 1024)``
    """
    return forward_flops(spec, seq_len)["total"] // seq_len


def kv_cache_bytes(
    n_layer: int,
    n_head: int,
    head_dim: int,
    seq_len: int,
    batch: int = 1,
    bytes_per_element: int = 2,
) -> int:
    """Bytes of a KV cache: a key and a value vector per layer, head, position and sequence.

    ``2 · n_layer · batch · seq_len · n_head · head_dim · bytes_per_element`` (fp16: 2 bytes).
    Example: ``kv_cache_bytes(12, 12, 64, seq_len=1024)  # 37748736 (GPT-2 small, fp16)``
    """
    for name, value in (
        ("n_layer", n_layer),
        ("n_head", n_head),
        ("head_dim", head_dim),
        ("batch", batch),
        ("bytes_per_element", bytes_per_element),
    ):
        check_int(name, value, minimum=1)
    check_int("seq_len", seq_len, minimum=0)
    return 2 * n_layer * batch * seq_len * n_head * head_dim * bytes_per_element


def weight_bytes(params: int, bits: int) -> int:
    """Bytes to store ``params`` weights at ``bits`` each (packed, no scales): ``⌈params·bits/8⌉``.

    Example: ``weight_bytes(6_738_415_616, 4)  # 3369207808, about 3.4 GB``
    """
    check_int("params", params, minimum=0)
    check_int("bits", bits, minimum=1, maximum=64)
    return math.ceil(params * bits / 8)


_BERT_EXTRA = 2 * 768 + 768 * 768 + 768  # token-type embeddings + pooler (the embedding LayerNorm
# is counted as final_norm: BERT normalises after the embedding instead of after the last block)
REAL_MODELS: dict[str, tuple[TransformerSpec, int]] = {
    "BERT-base": (TransformerSpec(30522, 12, 768, 12, max_len=512, extra=_BERT_EXTRA), 110_000_000),
    "GPT-2 small": (TransformerSpec(50257, 12, 768, 12, max_len=1024), 124_000_000),
    "GPT-2 XL": (TransformerSpec(50257, 48, 1600, 25, max_len=1024), 1_500_000_000),
    "LLaMA-7B": (
        TransformerSpec(
            32000, 32, 4096, 32, d_ff=11008, bias=False, norm="rmsnorm", mlp="swiglu", tied=False
        ),
        6_700_000_000,
    ),
}
"""Published configurations -> (spec, published parameter count as the papers round it)."""


def real_models_table(bits: tuple[int, ...] = (16, 8, 4, 2), memory_gb: float = 8.0) -> list[dict]:
    """One record per model in :data:`REAL_MODELS`: its parameters and the GB its weights need.

    Params (formula vs published), GB at each bit width, and whether the weights alone fit in
    ``memory_gb`` GB.

    Example: ``sweep.to_table(real_models_table())``
    """
    rows = []
    for name, (spec, published) in REAL_MODELS.items():
        params = param_count(spec)
        row = {
            "model": name,
            "params": params,
            "published": published,
            "ratio": round(params / published, 3),
        }
        for b in bits:
            gigabytes = weight_bytes(params, b) / 1e9
            row[f"GB@{b}bit"] = round(gigabytes, 2)
            row[f"fits@{b}bit"] = gigabytes <= memory_gb
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- primitives


def causal_mask(t_q: int, t_k: int | None = None, device: torch.device | None = None) -> Tensor:
    """Boolean (t_q, t_k) mask, True where query i may attend key j: j <= i + (t_k - t_q).

    The queries are the last ``t_q`` of ``t_k`` positions (bottom-right aligned), which is what a
    KV cache needs; for t_q == t_k it is the lower triangle, ``is_causal=True`` of PyTorch.
    Example: ``causal_mask(3).int()  # [[1, 0, 0], [1, 1, 0], [1, 1, 1]]``
    """
    t_q = check_int("t_q", t_q, minimum=1)
    t_k = t_q if t_k is None else check_int("t_k", t_k, minimum=t_q)
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def attention_weights(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q kᵀ · scale + mask): (..., T_q, T_k) from q (..., T_q, D), k.

    ``scale`` defaults to 1/sqrt(D); a bool ``mask`` is True where attending is allowed, a float
    mask is added to the scores. Each row sums to 1, except a query whose every key is masked
    (all scores −inf): its row is all zeros, as in ``F.scaled_dot_product_attention`` (whose
    ``_safe_softmax`` does the same), where a plain softmax would give 0/0 = NaN.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)  # (T_q, T_k)
        scores = scores.masked_fill(~allowed, float("-inf"))  # (..., T_q, T_k)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # (..., T_q, T_k)
        else:
            scores = scores + mask  # (..., T_q, T_k)
    # A fully masked row: softmax of zeros instead (finite, so no NaN in the gradient), then 0.
    dead = (scores == float("-inf")).all(dim=-1, keepdim=True)  # (..., T_q, 1)
    return scores.masked_fill(dead, 0.0).softmax(dim=-1).masked_fill(dead, 0.0)  # (..., T_q, T_k)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Scaled dot-product attention, ``softmax(q kᵀ / sqrt(D)) v``: (..., T_q, D_v).

    Same arguments and result as ``F.scaled_dot_product_attention(q, k, v, mask, is_causal=...)``
    (except that ``causal`` with T_q < T_k aligns the mask bottom-right, as a KV cache needs),
    including a query whose keys are all masked: its output is 0 (and its gradient 0), not NaN.
    Example: ``attention(q, k, v, causal=True)  # q, k, v (B, H, T, D)``
    """
    return attention_weights(q, k, mask, causal=causal, scale=scale) @ v  # (..., T_q, D_v)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, H·D) -> (B, H, T, D). Example: ``split_heads(torch.zeros(2, 5, 8), 4).shape``"""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H·D), the inverse of :func:`split_heads`."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
