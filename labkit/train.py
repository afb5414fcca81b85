"""Training and evaluation loops: plain functions, seeded, deterministic, quiet under CI.

``fit`` / ``evaluate`` / ``predict_logits`` for classifiers, ``fit_lm`` / ``evaluate_lm`` for
character-level language models. Two ``fit`` calls with the same ``seed`` on identical models give
bit-identical weights; neither touches torch's global random state.

Example:
    >>> from labkit import data, models, train
    >>> digits = data.load("digits")                            # doctest: +SKIP
    >>> model = models.build("lenet")                           # doctest: +SKIP
    >>> history = train.fit(model, digits, num_epochs=5)        # doctest: +SKIP
    >>> train.evaluate(model, digits)["acc"]                    # doctest: +SKIP
    0.97...
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from labkit import utils
from labkit.data import as_xy, is_split_data
from labkit.utils import check_choice, check_int, check_number

__all__ = [
    "History",
    "fit",
    "evaluate",
    "predict_logits",
    "fit_lm",
    "next_char_loss",
    "evaluate_lm",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class History:
    """What a training run recorded, one entry per epoch (``fit``) or evaluation (``fit_lm``).

    ``steps`` says which epoch / step each entry belongs to; ``val_*`` stay empty without
    validation data (``val_acc`` always stays empty for language models). ``seconds``: wall time.
    Example: ``history.val_acc[-1]``
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- argument helpers


def _source(name: str, data: Any, split: str) -> tuple[Tensor, Tensor] | DataLoader:
    """(X, y) tensors or a DataLoader from ArrayData (its ``split``), a tuple, or a DataLoader."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) or is_split_data(data):
        return as_xy(data, split, name)
    raise ValueError(
        f"{name} must be ArrayData, an (X, y) tuple of tensors or a DataLoader; got "
        f"{type(data).__name__}" + (" (use fit_lm)" if hasattr(data, "vocab") else "")
    )


def _batches(
    source: tuple[Tensor, Tensor] | DataLoader,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches in a ``generator``-shuffled order (None: in order); loaders pass through."""
    if isinstance(source, DataLoader):
        yield from source
        return
    X, y = source
    if generator is None:
        for i in range(0, len(X), batch_size):
            yield X[i : i + batch_size], y[i : i + batch_size]
        return
    order = torch.randperm(len(X), generator=generator)  # (N,)
    for i in range(0, len(X), batch_size):
        idx = order[i : i + batch_size]  # (batch,)
        yield X[idx], y[idx]


def _num_batches(source: tuple[Tensor, Tensor] | DataLoader, batch_size: int) -> int:
    return len(source) if isinstance(source, DataLoader) else math.ceil(len(source[0]) / batch_size)


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _scheduler(optimizer, schedule: str, total_steps: int, warmup_steps: int = 0):
    """Per-step learning-rate factor: 1 (constant) or a half cosine from 1 down to 0, times a linear
    warm-up from 1/warmup_steps to 1 over the first ``warmup_steps`` steps (0: none)."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if schedule == "constant":
            return warm
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(iterable: Iterable, enabled: bool | None, **kwargs: Any) -> Iterator:
    """``utils.progress`` unless ``enabled`` is False (None and True defer to the environment)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"progress must be True, False or None; got {enabled!r}")
    return iter(iterable) if enabled is False else utils.progress(iterable, **kwargs)


# --------------------------------------------------------------------------- classification


def fit(
    model: nn.Module,
    data: Any,
    *,
    val: Any = None,
    num_epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    schedule: str = "constant",
    warmup_steps: int = 0,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> History:
    """Train ``model`` in place on ``data`` for ``num_epochs`` epochs; return the History.

    ``data``: ArrayData (its train split; ``val`` then defaults to its val split, ``val=False``
    skips validation), an ``(X, y)`` tuple, or a DataLoader (iterated as it is). ``optimizer``:
    'adam', 'adamw' or 'sgd' (momentum 0.9); ``schedule``: 'constant' or 'cosine' (per step, to 0),
    after a linear warm-up over the first ``warmup_steps`` optimizer steps (0: none).
    ``loss_fn(logits, y)`` defaults to cross-entropy (nats). The batch order comes from a
    ``torch.Generator`` seeded with ``seed``; dropout etc. use torch's RNG seeded with ``seed``
    (restored afterwards). The model keeps its device and train/eval mode.
    Example: ``history = fit(model, load("digits"), num_epochs=5, lr=3e-3)``
    """
    check_int("num_epochs", num_epochs, minimum=1)
    lr = check_number("lr", lr, minimum=0, min_open=True)
    check_int("batch_size", batch_size, minimum=1)
    weight_decay = check_number("weight_decay", weight_decay, minimum=0)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    check_int("warmup_steps", warmup_steps, minimum=0)
    check_int("seed", seed, minimum=0)
    train_source = _source("data", data, "train")
    if val is None and is_split_data(data):
        val = data
    val_source = None if val is None or val is False else _source("val", val, "val")
    loss_fn = loss_fn or F.cross_entropy
    dev = utils.get_device(device)

    history = History()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    with utils.seeded(seed, dev), utils.on_device(model, dev, training=True):
        opt = _optimizer(model, optimizer, lr, weight_decay)
        num_steps = num_epochs * _num_batches(train_source, batch_size)
        sched = _scheduler(opt, schedule, num_steps, warmup_steps)
        for epoch in _progress(range(num_epochs), progress, desc="fit", unit="epoch"):
            model.train()
            total, count = 0.0, 0
            for X, y in _batches(train_source, batch_size, generator):
                X, y = X.to(dev), y.to(dev)
                loss = loss_fn(model(X), y)  # scalar, mean over the batch
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, count = total + loss.item() * len(y), count + len(y)
            history.train_loss.append(total / count)
            history.steps.append(epoch + 1)
            if val_source is not None:
                metrics = evaluate(model, val_source, device=dev, loss_fn=loss_fn)
                history.val_loss.append(metrics["loss"])
                history.val_acc.append(metrics["acc"])
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    *,
    split: str = "test",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    loss_fn: LossFn | None = None,
) -> dict:
    """Accuracy (fraction in [0, 1]) and mean loss (cross-entropy in nats) of ``model`` on ``data``.

    ``data``: ArrayData (uses ``split``: 'train', 'val' or 'test'), an ``(X, y)`` tuple or a
    DataLoader. Runs in eval mode under no_grad; the model's mode and device are restored.
    Example: ``evaluate(model, load("digits"))  # {'acc': 0.975, 'loss': 0.09}``
    """
    check_int("batch_size", batch_size, minimum=1)
    source = _source("data", data, split)
    loss_fn = loss_fn or F.cross_entropy
    dev = utils.get_device(device)
    correct, total_loss, count = 0, 0.0, 0
    with utils.on_device(model, dev, training=False):
        for X, y in _batches(source, batch_size):
            X, y = X.to(dev), y.to(dev)
            logits = model(X)  # (B, num_classes)
            total_loss += loss_fn(logits, y).item() * len(y)
            correct += (logits.argmax(dim=1) == y).sum().item()
            count += len(y)
    if count == 0:
        raise ValueError("data must hold at least one sample; got an empty loader")
    return {"acc": correct / count, "loss": total_loss / count}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    X: Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """The model's logits for inputs ``X`` (N, ...), computed in eval mode, as a CPU tensor.

    Example: ``logits = predict_logits(model, data.X_test)  # (360, 10)``
    """
    if not isinstance(X, Tensor):
        raise ValueError(f"X must be a Tensor; got {type(X).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    dev = utils.get_device(device)
    with utils.on_device(model, dev, training=False):
        outs = [model(X[i : i + batch_size].to(dev)).cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs)  # (N, num_classes)


# --------------------------------------------------------------------------- language models


def _block_size(model: nn.Module, block_size: int | None) -> int:
    limit = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is None:
        if limit is None:
            raise ValueError("block_size must be given for a model without config.block_size")
        return limit
    return check_int("block_size", block_size, minimum=1, maximum=limit)


def _check_text(text: Any) -> None:
    if not (hasattr(text, "train") and hasattr(text, "val") and hasattr(text, "vocab")):
        raise ValueError(
            f"text must be TextData (e.g. data.load('pydoc')); got {type(text).__name__}"
        )


def next_char_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of ``model(x)`` (B, T, V) against the next characters ``y`` (B, T).

    In nats per character: ``fit_lm``'s default loss.
    Example: ``next_char_loss(gpt, x, y).item()``
    """
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def fit_lm(
    model: nn.Module,
    text: Any,
    *,
    num_steps: int = 1000,
    batch_size: int = 32,
    block_size: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    schedule: str = "constant",
    warmup_steps: int = 0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    eval_every: int | None = None,
    eval_batches: int = 4,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> History:
    """Train a next-character model ``(B, T) ids -> (B, T, V) logits`` for ``num_steps`` steps.

    Batches are random windows from ``text.get_batch`` (seeded generator). Every ``eval_every``
    steps (default: 10 times per run, and at the end) History gets the mean train loss since the
    last entry and ``evaluate_lm`` on the first ``eval_batches`` batches of the val split (loss in
    nats/char). ``grad_clip``: max gradient norm (None: off). ``warmup_steps``: linear learning-rate
    warm-up before the schedule (0: none). ``loss_fn(model, x, y)``: one batch's training loss
    (default: next-character cross-entropy; ``distill.distill_lm`` passes its distillation loss);
    validation always reports cross-entropy.
    Example: ``fit_lm(models.build("gpt", vocab_size=text.vocab_size), text, num_steps=500)``
    """
    _check_text(text)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    block_size = _block_size(model, block_size)
    lr = check_number("lr", lr, minimum=0, min_open=True)
    weight_decay = check_number("weight_decay", weight_decay, minimum=0)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if grad_clip is not None:
        grad_clip = check_number("grad_clip", grad_clip, minimum=0, min_open=True)
    check_int("seed", seed, minimum=0)
    eval_every = max(1, num_steps // 10) if eval_every is None else eval_every
    check_int("eval_every", eval_every, minimum=1)
    check_int("eval_batches", eval_batches, minimum=1)
    dev = utils.get_device(device)

    history = History()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    with utils.seeded(seed, dev), utils.on_device(model, dev, training=True):
        opt = _optimizer(model, optimizer, lr, weight_decay)
        sched = _scheduler(opt, schedule, num_steps, warmup_steps)
        total, count = 0.0, 0
        for step in _progress(range(1, num_steps + 1), progress, desc="fit_lm", unit="step"):
            x, y = text.get_batch("train", batch_size, block_size, generator=generator)  # (B, T)
            x, y = x.to(dev), y.to(dev)
            loss = (loss_fn or next_char_loss)(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            total, count = total + loss.item(), count + 1
            if step % eval_every == 0 or step == num_steps:
                history.train_loss.append(total / count)
                history.steps.append(step)
                total, count = 0.0, 0
                metrics = evaluate_lm(
                    model,
                    text,
                    batch_size=batch_size,
                    block_size=block_size,
                    num_batches=eval_batches,
                    device=dev,
                )
                model.train()
                history.val_loss.append(metrics["loss"])
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    text: Any,
    *,
    split: str = "val",
    batch_size: int = 64,
    block_size: int | None = None,
    num_batches: int | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Mean next-character loss (nats/char) and perplexity ``exp(loss)`` on ``split``.

    Exact and deterministic: the split is cut into contiguous, non-overlapping windows of
    ``block_size`` (default: the model's) and every character after the first of each window's
    inputs is scored once. ``num_batches`` limits it to the first ``num_batches * batch_size``
    windows (None: the whole split).
    Example: ``evaluate_lm(model, load("pydoc"))  # {'loss': 1.4, 'ppl': 4.1}``
    """
    _check_text(text)
    ids = getattr(text, check_choice("split", split, ("train", "val")))  # (N,)
    check_int("batch_size", batch_size, minimum=1)
    block_size = _block_size(model, block_size)
    if num_batches is not None:
        check_int("num_batches", num_batches, minimum=1)
    windows = (len(ids) - 1) // block_size
    if windows < 1:
        raise ValueError(
            f"block_size must be < the {split} split's length {len(ids)}; got {block_size}"
        )
    if num_batches is not None:
        windows = min(windows, num_batches * batch_size)
    n = windows * block_size
    X = ids[:n].view(windows, block_size)  # (W, T)
    Y = ids[1 : n + 1].view(windows, block_size)  # (W, T)
    dev = utils.get_device(device)
    total = 0.0
    with utils.on_device(model, dev, training=False):
        for i in range(0, windows, batch_size):
            x, y = X[i : i + batch_size].to(dev), Y[i : i + batch_size].to(dev)  # (B, T)
            logits = model(x)  # (B, T, V)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    loss = total / n
    return {"loss": loss, "ppl": math.exp(loss)}
