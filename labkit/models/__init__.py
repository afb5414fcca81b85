"""Small model zoo and a cache of pretrained models.

Models: ``MLP``, ``LeNet``, ``CNN1d``, ``DSCNN`` (depthwise-separable, MobileNet-style), ``ViT`` and
``GPT`` (nanoGPT-style). Each takes a frozen config dataclass, validated when it is made; ``build``
makes a model by name and ``config_for`` fills the shape fields from a dataset. Attention is plain
``nn.Linear`` layers + ``F.scaled_dot_product_attention`` (no ``nn.MultiheadAttention``), so later
notebooks can prune or quantize every linear layer.

Pretrained models: ``pretrained(name, dataset)`` trains a registered ``Recipe`` once and caches the
weights under ``cache_dir("models")``; ``prepare()`` builds the whole cache (``labkit prepare``).

Files: ``configs`` (the config dataclasses), ``cnn`` (MLP and CNNs), ``transformer`` (ViT, GPT),
``factory`` (``build``, ``config_for``), ``zoo`` (recipes, cache, ``pretrained``, ``prepare``) and
``recipes`` (the registered entries).

Example:
    >>> from labkit import models
    >>> model = models.build("lenet")                  # doctest: +SKIP
    >>> model = models.pretrained("lenet", "digits")   # doctest: +SKIP
"""

from labkit.models import recipes as _recipes  # noqa: F401 - registers the pretrained entries
from labkit.models.cnn import DSCNN, MLP, CNN1d, DSBlock, LeNet
from labkit.models.configs import (
    CONFIGS,
    CNN1dConfig,
    DSCNNConfig,
    GPTConfig,
    LeNetConfig,
    MLPConfig,
    ViTConfig,
)
from labkit.models.factory import MODELS, build, config_for
from labkit.models.transformer import GPT, Block, FeedForward, SelfAttention, ViT, patchify
from labkit.models.zoo import (
    RECIPES,
    TRAIN_VERSION,
    Recipe,
    cache_key,
    cache_path,
    is_cached,
    prepare,
    pretrained,
    pretrained_info,
    register,
    select_entries,
    train_recipe,
)

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
    "select_entries",
    "prepare",
]
