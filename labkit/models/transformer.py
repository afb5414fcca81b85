"""Transformers: ``ViT`` and nanoGPT-style ``GPT`` from plain ``nn.Linear`` attention blocks.

Attention is two ``nn.Linear`` layers + ``F.scaled_dot_product_attention`` (no
``nn.MultiheadAttention``), so later notebooks can prune or quantize every linear layer.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.models.configs import GPTConfig, ViTConfig
from labkit.utils import check_int

# --------------------------------------------------------------------------- transformers


class SelfAttention(nn.Module):
    """Multi-head self-attention from two ``nn.Linear`` (``c_attn`` -> q, k, v and ``c_proj``)."""

    def __init__(
        self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape  # batch, tokens, channels
        H = self.heads
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)  # (B,H,T,D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class FeedForward(nn.Module):
    """``c_fc -> GELU -> c_proj -> Dropout``, the transformer's per-token MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(x))  # (B, T, dim)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        dropout: float = 0.0,
        causal: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, heads, dropout, causal, bias)
        self.ln_2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = FeedForward(dim, hidden, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, dim)
        return x + self.mlp(self.ln_2(x))  # (B, T, dim)


def _init_transformer(module: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj") else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut (B, C, H, W) images into (B, N, C*p*p) flattened non-overlapping patches, row-major."""
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, H/p, p, W/p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


class ViT(nn.Module):
    """Tiny vision transformer; the cls token's final state feeds the head.

    Example: ``ViT()(torch.rand(2, 1, 8, 8)).shape  # (2, 10)``
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ViTConfig()
        num_patches = (c.image_size // c.patch_size) ** 2
        self.patch_embed = nn.Linear(c.in_channels * c.patch_size**2, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_emb = nn.Parameter(torch.zeros(1, num_patches + 1, c.dim))
        self.drop = nn.Dropout(c.dropout)
        hidden = int(c.mlp_ratio * c.dim)
        self.blocks = nn.ModuleList(
            [Block(c.dim, c.heads, hidden, c.dropout) for _ in range(c.depth)]
        )
        self.ln_f = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        _init_transformer(self, c.depth)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, expected))}); got {tuple(x.shape)}"
            )
        x = patchify(x, c.patch_size)  # (B, N, C*p*p)
        x = self.patch_embed(x)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1) + self.pos_emb  # (B, N+1, dim)
        x = self.drop(x)  # (B, N+1, dim)
        for block in self.blocks:
            x = block(x)  # (B, N+1, dim)
        x = self.ln_f(x[:, 0])  # (B, dim)  the cls token
        return self.head(x)  # (B, num_classes)


class GPT(nn.Module):
    """nanoGPT-style decoder: token + position embeddings, causal pre-norm blocks, tied lm_head.

    Example: ``GPT(GPTConfig(vocab_size=65))(idx)  # (B, T) -> (B, T, 65) logits``
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                drop=nn.Dropout(c.dropout),
                h=nn.ModuleList(
                    [
                        Block(c.n_embd, c.n_head, 4 * c.n_embd, c.dropout, True, c.bias)
                        for _ in range(c.n_layer)
                    ]
                ),
                ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        _init_transformer(self, c.n_layer)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one (V, C) matrix

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"idx length must be <= block_size={self.config.block_size}; got {T} "
                "(crop the context: idx[:, -block_size:])"
            )
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); returns (B, T + new).

        The context fed to the model is the last ``block_size`` tokens. ``temperature=0`` is greedy;
        pass a seeded ``generator`` (on the model's device) for repeatable samples. Call
        ``model.eval()`` first when the model has dropout.
        Example: ``model.generate(idx, 50, generator=torch.Generator().manual_seed(0))``
        """
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
        if top_k is not None:
            top_k = min(check_int("top_k", top_k, minimum=1), self.config.vocab_size)
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(
                f"idx must be a (B, T) tensor of token ids with T >= 1; got shape "
                f"{tuple(idx.shape)}"
            )
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]  # (B, <= block_size)
            logits = self(context)[:, -1, :]  # (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature  # (B, V)
                if top_k is not None:
                    kth = torch.topk(logits, top_k).values[:, [-1]]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
                probs = F.softmax(logits, dim=-1)  # (B, V)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
        return idx

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context length in place (model surgery, as in nanoGPT)."""
        check_int("block_size", block_size, minimum=1, maximum=self.config.block_size)
        self.config = dataclasses.replace(self.config, block_size=block_size)
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(wpe.weight[:block_size].detach().clone())
        wpe.num_embeddings = block_size
