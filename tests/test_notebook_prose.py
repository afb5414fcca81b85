"""No number a run measures is typed into a notebook's markdown.

A measured figure (an accuracy, a speed-up, a loss, a latency, a size ratio) moves with the CPU's
kernels, the Python version and the seed; typed into prose it soon disagrees with the student's
screen. Such paragraphs are generated in the run (``display(Markdown(f"..."))``) or point at the
course figures table. This test flags markdown that reads like a measurement: a decimal or a
percentage with a unit, a ratio written ``1.9x``/``2×``, a timing.

Numbers that are definitions, not measurements (``8 bits``, ``50 % sparsity`` as a setting, a
paper's published figure, the 90 s budget) are allowed phrase by phrase in ``ALLOWED`` below: each
entry is the exact text of the match in that notebook, so a new typed figure still fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

_NUM = r"(?<![\w.])[~≈]?\s?\d[\d,]*(?:\.\d+)?"
MEASURED = re.compile(
    "|".join(
        [
            _NUM + r"\s?%",  # 96.1 %, 39%
            _NUM + r"\s?[x×](?![\w])",  # 1.9x, 7×
            _NUM + r"\s?(?:ms|µs|us|s|sec|seconds|minutes?|min)\b",  # 21 s, 0.4 ms
            _NUM + r"\s?(?:nats?|bits?)(?:/char| per char(?:acter)?)",  # 1.40 nats/char
            r"(?<![\w.])\d+\.\d+\s?(?:points?|pts?|pp|nats?|B|bytes|KB|kB|MB|GB)\b",  # 3.3 points
            r"(?:perplexity|ppl|accuracy|loss)\s*(?:of\s*|=\s*|:\s*|≈\s*)?\d+\.\d+",
        ]
    ),
    re.IGNORECASE,
)

# Phrases that look like measurements but are settings, definitions or cited figures.
# notebook stem -> exact matched texts allowed there (each with the reason in a comment).
ALLOWED: dict[str, set[str]] = {
    "00_efficiency_basics": set(),
    "01_transformers": {
        "90 %",  # the train/validation split of the pydoc text, a setting
        "1.5B",  # GPT-2 XL's published parameter count
    },
    "02_distillation": {
        "97 %",  # DistilBERT paper (Sanh et al., 2019): share of BERT's score kept
        "40 %",  # DistilBERT paper: fewer parameters than BERT
        "3 %",  # Hinton et al. (2015): the share of the speech data in their soft-target experiment
    },
    "03_pruning": {
        "90 %",  # a sparsity setting (scan, lottery mask, encoded layer, timed model)
        "95 %",  # the lottery tickets' second sparsity setting
        "300 ×",  # a layer's shape, 300 × 64
    },
    "04_quantization_8bit": {
        "4×",  # fp32 -> int8 by definition (32 / 8 bits), not a measurement
        "10×",  # an illustrative channel-range ratio in the per-channel explanation
        "0.01 %",  # the percentile observer's setting (low quantile)
        "99.99 %",  # the percentile observer's setting (high quantile)
    },
    "05_lowbit_quantization": {
        "16×",  # 32 / 2 bits: the 2-bit ratio without scales, by definition
        "8×",  # 32 / 4 bits: the 4-bit ratio without scales, by definition
    },
    "06_dynamic_networks": {
        "25 %",  # a width setting of the slimmable and static networks
        "50 %",  # a width setting
        "100 %",  # a width setting (full width)
        "4x",  # a channel / hidden-size multiplier, a setting
        "16x",  # a channel multiplier, a setting
    },
    "07_dataset_distillation": {
        "49 %",  # DM on CIFAR-10 at 10 images per class, published (Zhao & Bilen, 2023)
        "26 %",  # random picks on CIFAR-10, same paper
        "25×",  # images processed, full set vs 1 per class (51,200 / 2,000): counts, checked output
        "4×",  # float32 vs 8-bit pixels: 4 bytes vs 1, by definition
    },
    "08_capstone": {
        "49×",  # Deep Compression's published ratio (Han et al., 2016)
        "50 %",  # AMOUNT, the pruning setting
        "3.8×",  # teacher / student MACs from their shapes (81,600 / 21,600), checked output
        "3×",  # teacher / student file bytes, fixed by their shapes (48,834 / 14,402)
        "100 %",  # a width setting of notebook 06's CNNs
        "90 %",  # the accuracy bar of the claim the checked cell tests, not a measurement
        "60 %",  # the cited range of a data centre's overhead (PUE 1.1 to 1.6)
    },
    "98_practice_exam": {
        "75 minutes",  # the suggested time for the practice exam, a setting
    },
    "99_final_exam": {
        "90 minutes",  # the exam's time limit, a setting (and the deadline it gives)
        "100 %",  # the late penalty per day that makes the deadline a hard limit, a setting
    },
}


def _markdown_hits(path: Path) -> list[tuple[int, str]]:
    nb = json.loads(path.read_text())
    hits = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        text = re.sub(r"`[^`]*`", "", text)  # code spans are code, not claims
        text = re.sub(r"\$[^$]*\$", "", text)  # so are formulas
        hits += [(i, m.group(0).strip()) for m in MEASURED.finditer(text)]
    return hits


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_measured_number_is_typed_in_markdown(path):
    allowed = ALLOWED.get(path.stem, set())
    bad = [(i, t) for i, t in _markdown_hits(path) if t not in allowed]
    assert not bad, (
        f"{path.name}: markdown types what a run measures; generate it with "
        f"display(Markdown(...)) or allow a definition in ALLOWED: {bad}"
    )


def test_the_check_catches_typed_figures(tmp_path):
    nb = {
        "cells": [
            {
                "cell_type": "markdown",
                "source": ["The student reaches 79.8 % and runs 1.9x faster; "],
            },
            {"cell_type": "markdown", "source": ["loss ≈ 1.40 nats/char, 21 s, perplexity 5.03"]},
            {
                "cell_type": "markdown",
                "source": ["`x = 0.5 %` in code and $2.5x$ in math are fine"],
            },
        ]
    }
    path = tmp_path / "99_probe.ipynb"
    path.write_text(json.dumps(nb))
    found = [t for _, t in _markdown_hits(path)]
    assert found == ["79.8 %", "1.9x", "loss ≈ 1.40", "21 s", "perplexity 5.03"]


def test_allowed_phrases_still_occur():
    """An allow-list entry that no longer matches anything is stale: remove it."""
    by_stem = {p.stem: {t for _, t in _markdown_hits(p)} for p in NOTEBOOKS}
    stale = {k: v - by_stem.get(k, set()) for k, v in ALLOWED.items()}
    assert not any(stale.values()), f"stale ALLOWED entries: {stale}"
