"""Small model zoo and a cache of pretrained models.

Models: ``MLP``, ``LeNet``, ``CNN1d``, ``DSCNN`` (depthwise-separable, MobileNet-style), ``ViT`` and
``GPT`` (nanoGPT-style). Each takes a frozen config dataclass, validated when it is made; ``build``
makes a model by name and ``config_for`` fills the shape fields from a dataset. Attention is plain
``nn.Linear`` layers + ``F.scaled_dot_product_attention`` (no ``nn.MultiheadAttention``), so later
notebooks can prune or quantize every linear layer.

Pretrained models: ``pretrained(name, dataset)`` trains a registered ``Recipe`` once and caches the
weights under ``cache_dir("models")``; ``prepare()`` builds the whole cache (``labkit prepare``).

Example:
    >>> from labkit import models
    >>> model = models.build("lenet")                  # doctest: +SKIP
    >>> model = models.pretrained("lenet", "digits")   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import utils
from labkit.data import PYDOC_VOCAB
from labkit.utils import check_choice, check_fraction, check_int

__all__ = [
    "MLPConfig",
    "LeNetConfig",
    "CNN1dConfig",
    "DSCNNConfig",
    "ViTConfig",
    "GPTConfig",
    "MLP",
    "LeNet",
    "CNN1d",
    "DSCNN",
    "ViT",
    "GPT",
    "DSBlock",
    "SelfAttention",
    "FeedForward",
    "Block",
    "patchify",
    "CONFIGS",
    "MODELS",
    "build",
    "config_for",
    "TRAIN_VERSION",
    "Recipe",
    "RECIPES",
    "register",
    "cache_key",
    "cache_path",
    "is_cached",
    "pretrained",
    "pretrained_info",
    "train_recipe",
    "prepare",
]


# --------------------------------------------------------------------------- config checks


def _sizes(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints, else a one-line ValueError naming ``name``."""
    what = "a tuple of positive integers" + (" (may be empty)" if allow_empty else "")
    try:
        sizes = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}; got {value!r}") from None
    bad = any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    if bad or (not sizes and not allow_empty):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return sizes


def _positive_number(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name} must be a number > 0; got {value!r}")
    return value


def _set(obj: Any, field: str, value: Any) -> None:
    object.__setattr__(obj, field, value)  # normalise a field of a frozen dataclass


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class MLPConfig:
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden width, then a ``Linear`` head.

    The default is LeNet-300-100 on 8x8 digits. Example: ``MLPConfig(in_features=40, hidden=(64,))``
    """

    in_features: int = 64
    hidden: tuple[int, ...] = (300, 100)
    num_classes: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_int("in_features", self.in_features, minimum=1)
        _set(self, "hidden", _sizes("hidden", self.hidden, allow_empty=True))
        check_int("num_classes", self.num_classes, minimum=2)
        check_fraction("dropout", self.dropout)


@dataclass(frozen=True)
class LeNetConfig:
    """``Conv5x5(padding 2) -> ReLU -> MaxPool2`` per channel count, then an MLP head.

    Padding keeps 8x8 digits valid; 28x28 and 32x32 work too.
    Example: ``LeNetConfig(image_size=28)``
    """

    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, ...] = (6, 16)
    hidden: tuple[int, ...] = (120, 84)
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, minimum=1)
        _set(self, "channels", _sizes("channels", self.channels))
        _set(self, "hidden", _sizes("hidden", self.hidden, allow_empty=True))
        check_int("image_size", self.image_size, minimum=2 ** len(self.channels))
        check_int("num_classes", self.num_classes, minimum=2)


@dataclass(frozen=True)
class CNN1dConfig:
    """``Conv1d(stride 2) -> BatchNorm1d -> ReLU`` per channel count, flatten, ``Linear`` head.

    Sized for MNIST-1D (1 x 40 signals). Example: ``CNN1dConfig(channels=(16, 16))``
    """

    in_channels: int = 1
    length: int = 40
    channels: tuple[int, ...] = (32, 32, 32)
    kernel_size: int = 5
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("length", self.length, minimum=1)
        _set(self, "channels", _sizes("channels", self.channels))
        check_int("kernel_size", self.kernel_size, minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1; got {self.kernel_size}")
        check_int("num_classes", self.num_classes, minimum=2)


@dataclass(frozen=True)
class DSCNNConfig:
    """A 3x3 stem conv to ``channels[0]``, then one depthwise-separable block (stride 2) per
    further entry, global average pool, ``Linear`` head. Example: ``DSCNNConfig(channels=(16, 32))``
    """

    in_channels: int = 1
    image_size: int = 8
    channels: tuple[int, ...] = (32, 64, 128)
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, minimum=1)
        _set(self, "channels", _sizes("channels", self.channels))
        check_int("image_size", self.image_size, minimum=2 ** (len(self.channels) - 1))
        check_int("num_classes", self.num_classes, minimum=2)


@dataclass(frozen=True)
class ViTConfig:
    """Vision transformer: linear patch embedding, cls token, learned positions, pre-norm blocks.

    Example: ``ViTConfig(image_size=28, patch_size=4)``
    """

    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2
    num_classes: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, minimum=1)
        check_int("patch_size", self.patch_size, minimum=1)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be divisible by patch_size={self.patch_size}; "
                f"got {self.image_size}"
            )
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("dim", self.dim, minimum=1)
        check_int("depth", self.depth, minimum=1)
        check_int("heads", self.heads, minimum=1)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads={self.heads}; got {self.dim}")
        _positive_number("mlp_ratio", self.mlp_ratio)
        check_int("num_classes", self.num_classes, minimum=2)
        check_fraction("dropout", self.dropout)


@dataclass(frozen=True)
class GPTConfig:
    """nanoGPT-style character model. ``vocab_size`` comes from the text (``config_for``).

    Example: ``GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64)``
    """

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=1)
        check_int("block_size", self.block_size, minimum=1)
        check_int("n_layer", self.n_layer, minimum=1)
        check_int("n_head", self.n_head, minimum=1)
        check_int("n_embd", self.n_embd, minimum=1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head={self.n_head}; got {self.n_embd}")
        check_fraction("dropout", self.dropout)
        check_choice("bias", self.bias, (True, False))


# --------------------------------------------------------------------------- CNNs and MLP


class MLP(nn.Module):
    """Fully connected classifier on flattened inputs. Example: ``MLP()(X)  # (B, 10)``"""

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MLPConfig()
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.in_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, *input_shape) -> (B, num_classes)


class LeNet(nn.Module):
    """LeNet-style CNN for (B, C, S, S) images. Example: ``LeNet()(torch.rand(2, 1, 8, 8))``"""

    def __init__(self, config: LeNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LeNetConfig()
        features: list[nn.Module] = []
        channels, size = config.in_channels, config.image_size
        for out in config.channels:
            features += [nn.Conv2d(channels, out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*features)
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * size * size
        for hidden in config.hidden:
            head += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head.append(nn.Linear(width, config.num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, C_last, S / 2**len(channels), same)
        return self.classifier(x)  # (B, num_classes)


class CNN1d(nn.Module):
    """1-D CNN for (B, C, L) signals such as MNIST-1D. Example: ``CNN1d()(torch.rand(2, 1, 40))``"""

    def __init__(self, config: CNN1dConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNN1dConfig()
        layers: list[nn.Module] = []
        channels, length, k = config.in_channels, config.length, config.kernel_size
        for out in config.channels:
            conv = nn.Conv1d(channels, out, k, stride=2, padding=k // 2, bias=False)
            layers += [conv, nn.BatchNorm1d(out), nn.ReLU()]
            channels, length = out, (length - 1) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * length, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, C_last, L / 2**len(channels))
        return self.head(x.flatten(1))  # (B, num_classes)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` as a Sequential (0, 1, 2: easy to fuse)."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


class DSBlock(nn.Module):
    """Depthwise 3x3 conv (one filter per channel), then pointwise 1x1 conv mixing channels."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = _conv_bn_relu(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.depthwise(x)  # (B, C_in, H / stride, W / stride)
        return self.pointwise(x)  # (B, C_out, H / stride, W / stride)


class DSCNN(nn.Module):
    """MobileNet-style CNN for (B, C, S, S) images. Example: ``DSCNN()(torch.rand(2, 1, 8, 8))``"""

    def __init__(self, config: DSCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DSCNNConfig()
        chans = config.channels
        self.stem = _conv_bn_relu(config.in_channels, chans[0], 3)
        self.blocks = nn.Sequential(*[DSBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, C_0, S, S)
        x = self.blocks(x)  # (B, C_last, S / 2**(len(channels) - 1), same)
        x = self.pool(x).flatten(1)  # (B, C_last)
        return self.head(x)  # (B, num_classes)


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


# --------------------------------------------------------------------------- build by name

CONFIGS: dict[str, type] = {
    "mlp": MLPConfig,
    "lenet": LeNetConfig,
    "cnn1d": CNN1dConfig,
    "dscnn": DSCNNConfig,
    "vit": ViTConfig,
    "gpt": GPTConfig,
}
"""Model name -> config dataclass; the dataclass field defaults are the defaults."""

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "cnn1d": CNN1d,
    "dscnn": DSCNN,
    "vit": ViT,
    "gpt": GPT,
}
"""Model name -> nn.Module class taking the config."""


def _model_name(name: str) -> str:
    return check_choice("name", name, tuple(CONFIGS))


def _from_config(config: Any) -> nn.Module:
    for name, cls in CONFIGS.items():
        if type(config) is cls:
            return MODELS[name](config)
    shown = ", ".join(c.__name__ for c in CONFIGS.values())
    raise ValueError(f"config must be one of {shown}; got {type(config).__name__}")


def build(name: str, config: Any = None, **overrides: Any) -> nn.Module:
    """A fresh model by name ('mlp', 'lenet', 'cnn1d', 'dscnn', 'vit', 'gpt').

    ``config`` (e.g. from ``config_for``) is used as given, with ``overrides`` replacing fields;
    without it the config class defaults apply. Initialisation uses torch's global RNG
    (``labkit.seed(0)`` first for repeatable weights).
    Example: ``build("mlp", hidden=(64,))``, ``build("lenet", config_for("lenet", "mnist"))``
    """
    cls = CONFIGS[_model_name(name)]
    if config is None:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"overrides must be fields of {cls.__name__} ({', '.join(sorted(fields))})"
                f"; got {', '.join(unknown)}"
            )
        if name == "gpt" and "vocab_size" not in overrides:
            raise ValueError("vocab_size is required for 'gpt'; use config_for('gpt', text)")
        config = cls(**overrides)
    else:
        if type(config) is not cls:
            raise ValueError(
                f"config must be a {cls.__name__} for {name!r}; got {type(config).__name__}"
            )
        config = _replace(config, overrides)
    return MODELS[name](config)


def _replace(config: Any, overrides: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"overrides must be fields of {type(config).__name__} "
            f"({', '.join(sorted(fields))}); got {', '.join(unknown)}"
        )
    return dataclasses.replace(config, **overrides)


def config_for(name: str, dataset: Any, **overrides: Any) -> Any:
    """The config for model ``name`` with its shape fields filled from ``dataset``.

    ``dataset`` is a name for ``data.load`` or a loaded ``ArrayData`` / ``TextData``. Fills
    in_features / in_channels / image_size / length / num_classes / vocab_size; ViT patches are 2x2
    for images under 16 pixels, else 4x4. ``overrides`` win.
    Example: ``config_for("lenet", "mnist")  # LeNetConfig(in_channels=1, image_size=28, ...)``
    """
    name = _model_name(name)
    if isinstance(dataset, str):
        from labkit import data as data_mod

        dataset = data_mod.load(dataset)
    is_text = hasattr(dataset, "vocab") and not hasattr(dataset, "X_train")
    if (name == "gpt") != is_text:
        kind = "a text dataset (TextData)" if name == "gpt" else "an array dataset (ArrayData)"
        raise ValueError(f"dataset must be {kind} for {name!r}; got {type(dataset).__name__}")
    if name == "gpt":
        return _replace(GPTConfig(vocab_size=dataset.vocab_size), overrides)
    shape, k = tuple(dataset.input_shape), dataset.num_classes
    if name == "mlp":
        fields = {"in_features": math.prod(shape), "num_classes": k}
    elif name == "cnn1d":
        if len(shape) != 2:
            raise ValueError(
                f"dataset must hold (C, L) signals for 'cnn1d'; got input_shape {shape}"
            )
        fields = {"in_channels": shape[0], "length": shape[1], "num_classes": k}
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(
                f"dataset must hold square (C, S, S) images for {name!r}; got input_shape {shape}"
            )
        fields = {"in_channels": shape[0], "image_size": shape[1], "num_classes": k}
        if name == "vit":
            fields["patch_size"] = 2 if shape[1] < 16 else 4
    return CONFIGS[name](**{**fields, **overrides})


# --------------------------------------------------------------------------- pretrained cache

TRAIN_VERSION = 1
"""Bump when the training code changes in a way that should invalidate every cached model."""

_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Recipe:
    """How to train one pretrained entry: the full model config plus the ``train.fit`` knobs.

    ``steps`` (not ``num_epochs``) is used for text datasets (``train.fit_lm``). ``data_args`` are
    passed to ``data.load`` (e.g. ``{"num_samples": 4000}``) and are part of the cache key.
    Example: ``Recipe(LeNetConfig(), num_epochs=15, lr=3e-3)``
    """

    config: Any
    num_epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    steps: int | None = None
    data_args: Any = ()

    def __post_init__(self) -> None:
        if type(self.config) not in CONFIGS.values():
            shown = ", ".join(c.__name__ for c in CONFIGS.values())
            raise ValueError(f"config must be one of {shown}; got {type(self.config).__name__}")
        check_int("num_epochs", self.num_epochs, minimum=1)
        _positive_number("lr", self.lr)
        check_int("batch_size", self.batch_size, minimum=1)
        if isinstance(self.weight_decay, bool) or not (
            isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0
        ):
            raise ValueError(f"weight_decay must be a number >= 0; got {self.weight_decay!r}")
        check_choice("optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        check_choice("schedule", self.schedule, ("constant", "cosine"))
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.steps is not None:
            check_int("steps", self.steps, minimum=1)
        try:
            args = tuple(sorted(dict(self.data_args).items()))
        except (TypeError, ValueError):
            raise ValueError(
                f"data_args must be a dict of data.load arguments; got {self.data_args!r}"
            ) from None
        _set(self, "data_args", args)


RECIPES: dict[tuple[str, str], Recipe] = {}
"""The registered pretrained entries: (name, dataset) -> Recipe. Add with ``register``."""

_ID = re.compile(r"[A-Za-z0-9_.]+")


def register(name: str, dataset: str, recipe: Recipe) -> None:
    """Add (or replace) the pretrained entry ``(name, dataset)``; ``name`` is free-form (no '-').

    Example: ``register("lenet_wide", "digits", Recipe(LeNetConfig(channels=(16, 32))))``
    """
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise ValueError(f"name must be letters, digits, '_' or '.'; got {name!r}")
    if not isinstance(dataset, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", dataset):
        raise ValueError(f"dataset must be a dataset name such as 'digits'; got {dataset!r}")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe; got {type(recipe).__name__}")
    RECIPES[(name, dataset)] = recipe


def _recipe(name: str, dataset: str) -> Recipe:
    if (name, dataset) not in RECIPES:
        shown = ", ".join(f"{n}/{d}" for n, d in sorted(RECIPES))
        raise ValueError(
            f"(name, dataset) must be a registered entry ({shown}); got {name}/{dataset}"
        )
    return RECIPES[(name, dataset)]


def cache_key(name: str, dataset: str, recipe: Recipe | None = None) -> str:
    """16 hex digits hashing the model name, config, recipe, dataset + load args and TRAIN_VERSION.

    Example: ``cache_key("lenet", "digits")  # '9f3c0a...'``
    """
    recipe = recipe or _recipe(name, dataset)
    return utils.stable_hash(
        {
            "name": name,
            "config": recipe.config,
            "recipe": recipe,
            "dataset": dataset,
            "data_args": dict(recipe.data_args),
            "train_version": TRAIN_VERSION,
        }
    )


def cache_path(name: str, dataset: str, recipe: Recipe | None = None) -> Path:
    """Where the entry's weights live: ``cache_dir("models")/f"{name}-{dataset}-{key}.pt"``.

    The JSON sidecar (sha256 + metrics) is the same path with ``.json`` appended.
    Example: ``cache_path("lenet", "digits").name  # 'lenet-digits-5cf8acd178385b2d.pt'``
    """
    key = cache_key(name, dataset, recipe)
    return utils.cache_dir("models") / f"{name}-{dataset}-{key}.pt"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _stale_files(name: str, dataset: str, keep: Path) -> list[Path]:
    pattern = re.compile(rf"{re.escape(name)}-{re.escape(dataset)}-[0-9a-f]{{16}}\.pt(\.json)?")
    return sorted(
        p
        for p in keep.parent.iterdir()
        if pattern.fullmatch(p.name) and p not in (keep, _sidecar(keep))
    )


def _read_verified(path: Path, recipe: Recipe) -> tuple[nn.Module | None, dict | None, str]:
    """(model, sidecar, "") from a verified cache file; (None, None, why) when it cannot be used."""
    if not path.exists():
        return None, None, ""
    try:
        state, info = utils.load_verified(path)
        if info.get("key") != path.name.rsplit("-", 1)[1][: -len(".pt")]:
            return None, None, "sidecar key does not match the file name"
        model = _from_config(recipe.config)
        model.load_state_dict(state)
    except FileNotFoundError:
        return None, None, "the .json sidecar is missing"
    except ValueError as err:
        return None, None, str(err)
    except Exception as err:  # noqa: BLE001 - any unreadable cache means retrain
        return None, None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return model.eval(), info, ""


def train_recipe(recipe: Recipe, dataset: str, progress: bool | None = None) -> nn.Module:
    """A fresh model trained on CPU by ``recipe`` on ``dataset`` (seeded init and batch order),
    in eval mode; nothing is cached. ``pretrained`` uses it; so do experiments that need the same
    recipe with another seed or architecture.
    Example: ``train_recipe(dataclasses.replace(RECIPES[("mlp", "digits")], seed=1), "digits")``
    """
    from labkit import data as data_mod
    from labkit import train as train_mod

    data = data_mod.load(dataset, **dict(recipe.data_args))
    with utils.seeded(recipe.seed):  # seeded init without touching the global RNG
        model = _from_config(recipe.config)
    common = dict(
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        optimizer=recipe.optimizer,
        schedule=recipe.schedule,
        warmup_steps=recipe.warmup_steps,
        seed=recipe.seed,
        device="cpu",
        progress=progress,
    )
    if hasattr(data, "X_train"):
        train_mod.fit(model, data, num_epochs=recipe.num_epochs, val=False, **common)
    else:
        train_mod.fit_lm(model, data, steps=recipe.steps or 1000, **common)
    return model.eval()


def _train_entry(name: str, dataset: str, recipe: Recipe, progress: bool | None) -> tuple:
    """Train on CPU from the recipe; return (model, metrics)."""
    from labkit import data as data_mod
    from labkit import train as train_mod

    data = data_mod.load(dataset, **dict(recipe.data_args))
    start = time.perf_counter()
    model = train_recipe(recipe, dataset, progress)
    seconds = time.perf_counter() - start
    if hasattr(data, "X_train"):
        val = train_mod.evaluate(model, data, split="val", device="cpu")
        test = train_mod.evaluate(model, data, split="test", device="cpu")
        metrics = {
            "val_acc": val["acc"],
            "val_loss": val["loss"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
        }
    else:
        val = train_mod.evaluate_lm(model, data, split="val", device="cpu")
        metrics = {"val_loss": val["loss"], "val_ppl": val["ppl"]}
    metrics["train_seconds"] = round(seconds, 3)
    metrics["params"] = sum(p.numel() for p in model.parameters())
    return model.eval(), metrics


def _get(
    name: str, dataset: str, retrain: bool, progress: bool | None
) -> tuple[nn.Module, dict, bool]:
    """(model, sidecar info, cached) for a registered entry, training when needed."""
    recipe = _recipe(name, dataset)
    path = cache_path(name, dataset, recipe)
    if not retrain:
        model, info, why = _read_verified(path, recipe)
        if model is not None:
            return model, info, True
        if why:
            warnings.warn(
                f"labkit: cached model {path.name} is unusable ({why}); retraining", stacklevel=3
            )
    model, metrics = _train_entry(name, dataset, recipe, progress)
    info = {
        "name": name,
        "dataset": dataset,
        "key": path.name.rsplit("-", 1)[1][: -len(".pt")],
        "metrics": metrics,
        "config": {"__type__": type(recipe.config).__name__, **dataclasses.asdict(recipe.config)},
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "config"},
        "train_version": TRAIN_VERSION,
        "torch_version": torch.__version__,
    }
    info = utils.save_verified(model.state_dict(), path, info)
    return model, info, False


def pretrained(
    name: str,
    dataset: str,
    *,
    retrain: bool = False,
    progress: bool | None = None,
    threads: int | None = 1,
) -> nn.Module:
    """The registered model trained on ``dataset``: loaded from the cache, else trained once (CPU).

    Returns a fresh copy in eval mode on CPU. A corrupt or tampered cache file is reported with one
    warning and retrained; ``retrain=True`` always retrains. ``threads``: torch's thread count for
    this call only (these tiny models train fastest, and repeatably, on one thread; None leaves
    the setting alone).
    Example: ``model = pretrained("lenet", "digits")``
    """
    with utils.num_threads(threads):
        model, _, _ = _get(name, dataset, retrain, progress)
    return model


def is_cached(name: str, dataset: str) -> bool:
    """True when the entry's current cache file exists and its sha256 matches the sidecar.

    Example: ``is_cached("lenet", "digits")  # False before labkit prepare``
    """
    return pretrained_info(name, dataset)["cached"]


def pretrained_info(name: str, dataset: str) -> dict:
    """The cache entry's record without training: name, dataset, key, path, cached, metrics.

    ``metrics`` (val_acc, test_acc, train_seconds, params, ...) is None when not cached yet.
    Example: ``pretrained_info("lenet", "digits")["metrics"]["test_acc"]  # 0.98``
    """
    recipe = _recipe(name, dataset)
    path = cache_path(name, dataset, recipe)
    record = {
        "name": name,
        "dataset": dataset,
        "key": path.stem.rsplit("-", 1)[1],
        "path": str(path),
        "cached": False,
        "metrics": None,
    }
    try:
        info = json.loads(_sidecar(path).read_text())
        if info.get("key") == record["key"] and info.get("sha256") == utils.sha256_file(path):
            record.update(cached=True, metrics=info.get("metrics"))
    except (OSError, ValueError):
        pass
    return record


def _select(names: Iterable[Any] | None) -> list[tuple[str, str]]:
    if names is None:
        return sorted(RECIPES)
    if isinstance(names, str):
        names = [names]
    chosen: list[tuple[str, str]] = []
    for item in names:
        if isinstance(item, tuple):
            hits = [item] if item in RECIPES else []
        elif "/" in str(item):
            hits = [tuple(str(item).split("/", 1))]
            hits = hits if hits[0] in RECIPES else []
        else:
            hits = [e for e in sorted(RECIPES) if e[0] == item]
        if not hits:
            shown = ", ".join(f"{n}/{d}" for n, d in sorted(RECIPES))
            raise ValueError(
                f"names must be registered entries ({shown}) or model names; got {item!r}"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def prepare(
    names: Iterable[Any] | None = None, progress: bool | None = None, threads: int | None = 1
) -> list[dict]:
    """Train (or verify) and cache registered entries; remove their stale cache files.

    ``names``: None for all, else items such as ``"lenet/digits"``, ``("lenet", "digits")`` or a
    model name (all its datasets). Returns one dict per entry: name, dataset, key, path, cached,
    seconds (this call's wall time), metrics. ``threads`` as in ``pretrained``.
    Example: ``[(r["name"], r["metrics"]["test_acc"]) for r in prepare()]``
    """
    rows = []
    for name, dataset in _select(names):
        start = time.perf_counter()
        with utils.num_threads(threads):
            _, info, cached = _get(name, dataset, False, progress)
        path = cache_path(name, dataset)
        for stale in _stale_files(name, dataset, path):
            stale.unlink(missing_ok=True)
        rows.append(
            {
                "name": name,
                "dataset": dataset,
                "key": info["key"],
                "path": str(path),
                "cached": cached,
                "seconds": time.perf_counter() - start,
                "metrics": info["metrics"],
            }
        )
    return rows


# --------------------------------------------------------------------------- the registered entries

# Measured on 2 shared CPU cores, one thread: see ``prepare()`` for the numbers on your machine.
register("mlp", "digits", Recipe(MLPConfig(), num_epochs=20, lr=1e-3, batch_size=32))
register(
    "lenet",
    "digits",
    Recipe(
        LeNetConfig(),
        num_epochs=30,
        lr=3e-3,
        batch_size=32,
        optimizer="adamw",
        weight_decay=0.05,
        schedule="cosine",
    ),
)
register("dscnn", "digits", Recipe(DSCNNConfig(), num_epochs=10, lr=3e-3, batch_size=32))
register(
    "cnn1d",
    "mnist1d",
    Recipe(CNN1dConfig(), num_epochs=10, lr=1e-2, batch_size=128, schedule="cosine"),
)
register(
    "mlp",
    "mnist1d",
    Recipe(
        MLPConfig(in_features=40, hidden=(256, 256)),
        num_epochs=15,
        lr=2e-3,
        batch_size=128,
        schedule="cosine",
    ),
)


# Transformers (notebook 01). The char-level GPT reaches ~1.4 nats/char on the pydoc validation
# split (unigram entropy: ~3.25); later notebooks distill, prune and quantize it. The warm-up and
# the peak learning rate make the result independent of the last bit: seeds and CPU kernel sets
# (ATEN_CPU_CAPABILITY=default/avx2/avx512) agree to about 0.01 nats/char (labkit bench --kernels).
_PYDOC_VOCAB = len(PYDOC_VOCAB)
register(
    "gpt",
    "pydoc",
    Recipe(
        GPTConfig(vocab_size=_PYDOC_VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64),
        steps=2000,
        lr=8e-3,
        batch_size=16,
        optimizer="adamw",
        schedule="cosine",
        warmup_steps=200,
    ),
)
for _width in (16, 32, 64):  # the size-against-quality curve: same recipe, 500 steps, only width
    register(
        f"gpt_w{_width}",
        "pydoc",
        Recipe(
            GPTConfig(
                vocab_size=_PYDOC_VOCAB,
                block_size=64,
                n_layer=2,
                n_head=2 if _width == 16 else 4,
                n_embd=_width,
            ),
            steps=500,
            lr=8e-3,
            batch_size=16,
            optimizer="adamw",
            schedule="cosine",
            warmup_steps=50,
        ),
    )
register(
    "vit",
    "digits",
    Recipe(
        ViTConfig(dim=48, depth=3, heads=4),
        num_epochs=20,
        lr=3e-3,
        batch_size=64,
        optimizer="adamw",
        weight_decay=0.05,
        schedule="cosine",
    ),
)
