"""Model configs: one frozen, validated dataclass per model, and ``CONFIGS`` by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.utils import check_choice, check_fraction, check_int, check_number

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
        check_number("mlp_ratio", self.mlp_ratio, minimum=0, min_open=True)
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
