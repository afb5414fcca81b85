"""The registered pretrained entries: each (model, dataset) pair in the zoo and its recipe."""

from __future__ import annotations

from labkit.data import PYDOC_VOCAB
from labkit.models.configs import (
    CNN1dConfig,
    DSCNNConfig,
    GPTConfig,
    LeNetConfig,
    MLPConfig,
    ViTConfig,
)
from labkit.models.zoo import Recipe, register

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
        num_steps=2000,
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
            num_steps=500,
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
