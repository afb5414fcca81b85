"""The embedded pydoc corpus: CPython's pydoc topic help as character-level TextData."""

from __future__ import annotations

import numpy as np
import torch

from labkit.data.containers import DatasetUnavailableError, TextData, _encode

PYDOC_VOCAB: tuple[str, ...] = tuple(sorted("\n" + "".join(map(chr, range(32, 127))) + "°ß–—‘’“”…"))
"""The pydoc corpus's fixed alphabet (105 characters): newline, printable ASCII and the typographic
marks CPython's help text uses. Fixed, not read from the text, so a character model has the same
shape (and the same bytes) on every Python; the text itself grows between Python versions."""


_PYDOC_FALLBACK = "?"


def _load_pydoc() -> TextData:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DatasetUnavailableError(
            "pydoc needs CPython's pydoc_data module, missing from this Python; "
            "use an embedded dataset 'digits' or 'mnist1d' instead"
        ) from None
    text = "".join(topics[key] for key in sorted(topics))
    known = set(PYDOC_VOCAB)  # a character a future Python adds becomes "?"
    text = "".join(c if c in known else _PYDOC_FALLBACK for c in text)
    vocab = PYDOC_VOCAB
    ids = torch.from_numpy(_encode(text, np.array([ord(c) for c in vocab], dtype=np.int64)))
    n_train = len(ids) * 9 // 10
    return TextData("pydoc", ids[:n_train].clone(), ids[n_train:].clone(), vocab)
