"""Dynamic networks: compute that follows the input, and one model with several operating points.

Three ideas, each with honest accounting (MACs counted for the path a sample actually takes,
latency measured at batch 1 against the full network in the same run):

* **Early exit** (BranchyNet): :class:`EarlyExitCNN1d` puts a classifier head after every block
  of a ``CNN1d``; :func:`fit_exits` trains all heads jointly with per-exit loss weights. At
  inference, :class:`EarlyExit` stops at the first head whose confidence (:func:`exit_confidence`:
  max-prob or 1 - normalised entropy) reaches a threshold. :func:`path_macs` counts what each
  exit costs (blocks *and* the heads tried on the way); :func:`exit_report` replays any threshold
  from cached per-head logits, so a slider over thresholds is instant; :func:`exit_latency` times
  the real thing with ``measure.compare_latency``.
* **Mixture of experts**: :class:`MoE` routes each token to its ``top_k`` of ``n_experts`` MLPs
  (:func:`top_k_gating`: top-1 gates are the router's softmax probability as in Switch
  Transformer, top-k gates the softmax renormalised over the chosen experts) with the
  Switch-Transformer :func:`load_balancing_loss`; :func:`moe_params` gives total vs active
  parameters per token.
* **Slimmable width**: :class:`SlimmableCNN1d` shares one set of weights across 25/50/75/100 %
  width (switchable BatchNorm per width); :meth:`SlimmableCNN1d.at_width` cuts out a real, smaller
  ``CNN1d`` so MACs and latency are those of a physically smaller network.

Trained models are cached on disk (``cache_dir("dynamic")``), keyed by everything that shapes them;
the course's sweeps (notebook 06) are cached by ``labkit.sweep`` and filled by :func:`prepare`.

Example:
    >>> from labkit import dynamic
    >>> model = dynamic.EarlyExitCNN1d(dynamic.EXIT_CONFIG)
    >>> dynamic.path_macs(model, torch.zeros(1, 1, 40))
    [4800, 33600, 88000]
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import measure, models, utils
from labkit.models import CNN1d, CNN1dConfig
from labkit.utils import check_choice, check_int

__all__ = [
    "CRITERIA",
    "EXIT_CONFIG",
    "WEIGHTS",
    "EarlyExitCNN1d",
    "ExitPath",
    "EarlyExit",
    "exit_confidence",
    "first_exit",
    "path_macs",
    "average_macs",
    "exit_logits",
    "exit_report",
    "choose_threshold",
    "operating_point",
    "exit_latency",
    "per_sample_latency",
    "fit_exits",
    "pretrained_exits",
    "pretrained_static",
    "SlimmableCNN1d",
    "fit_slimmable",
    "pretrained_slimmable",
    "top_k_gating",
    "load_balancing_loss",
    "MoE",
    "MoEHead",
    "moe_params",
    "fit_moe",
    "pretrained_moe",
    "COURSE",
    "course_points",
    "course_results",
    "PARTS",
    "prepare",
]

CRITERIA = ("max_prob", "entropy")
"""Confidence measures for the exit rule."""

EXIT_CONFIG = CNN1dConfig(channels=(16, 32, 64))
"""The course's early-exit CNN on mnist1d: channels double as the length halves, so the early
blocks are cheap (exit paths cost 6 %, 41 % and 108 % of the plain network's 81,600 MACs)."""

WEIGHTS = {"summed": (1.0, 1.0, 1.0), "weighted": (0.3, 0.3, 1.0)}
"""The two exit-loss weightings the course compares."""

VERSION = 3
"""Bump to invalidate every model and sweep this module cached."""

MOE_VERSION = 2
"""Bump to retrain the cached MoE models alone (2: top-1 gates are the router's softmax
probability, so the router learns from the task loss)."""

SWEEP_VERSIONS = {"exits": 2, "width": 1, "moe": 2}
"""Bump one to recompute that sweep of notebook 06 (exits 2: the threshold is chosen on the
validation split; moe 2: the retrained MoE models)."""


def _weights(name: str, value: Any, length: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != length or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{name} must be {length} numbers >= 0, one per exit; got {value!r}")
    if values[-1] <= 0:
        raise ValueError(f"{name} must give the final exit a weight > 0; got {value!r}")
    return values


def _threshold(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok:  # NaN fails value >= 0
        raise ValueError(f"threshold must be a number >= 0 (above 1 never exits); got {value!r}")
    return float(value)


def _thresholds(value: Any, num_exits: int) -> tuple[float, ...]:
    """One threshold per early exit (the last head always answers): a number for all, or a list."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_exits - 1:
            raise ValueError(
                f"threshold must be a number or {num_exits - 1} numbers (one per early exit); "
                f"got {value!r}"
            )
        return tuple(_threshold(v) for v in value)
    return (_threshold(value),) * (num_exits - 1)


def _follow(wrapper: nn.Module, model: nn.Module) -> None:
    """Give ``wrapper`` the train/eval mode of the model it wraps. A wrapper left in the default
    train mode would, when a helper restores *its* flag (``measure.macs``, ``train.fit``), switch
    the wrapped model to train mode as well: BatchNorm would then use batch statistics."""
    wrapper.train(model.training)


# --------------------------------------------------------------------------- early exit: model


def _block(c_in: int, c_out: int, k: int) -> nn.Sequential:
    conv = nn.Conv1d(c_in, c_out, k, stride=2, padding=k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm1d(c_out), nn.ReLU())


class _Head(nn.Linear):
    """``Flatten -> Linear`` as one module: an exit head costs one call, like ``CNN1d.head``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))  # (B, C, L) -> (B, num_classes)


class EarlyExitCNN1d(nn.Module):
    """A ``CNN1d`` with a ``Flatten -> Linear`` exit head after every block; the last head is the
    network's own classifier. ``forward`` runs the full network (no intermediate heads), so
    ``to_plain()`` gives the identical ``CNN1d``; ``forward_exits`` returns every head's logits.

    Example: ``logits = EarlyExitCNN1d().forward_exits(torch.rand(8, 1, 40))  # 3 x (8, 10)``
    """

    def __init__(self, config: CNN1dConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNN1dConfig()
        blocks, heads = [], []
        channels, length = config.in_channels, config.length
        for out in config.channels:
            blocks.append(_block(channels, out, config.kernel_size))
            channels, length = out, (length - 1) // 2 + 1
            heads.append(_Head(channels * length, config.num_classes))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)  # (B, C, L / 2**i)
        return self.heads[-1](x)  # (B, num_classes)

    def forward_exits(self, x: Tensor) -> list[Tensor]:
        """Logits of every exit head, first to last: ``num_exits`` tensors of (B, num_classes)."""
        out = []
        for block, head in zip(self.blocks, self.heads):
            x = block(x)
            out.append(head(x))
        return out

    def to_plain(self) -> CNN1d:
        """The equivalent ``CNN1d`` (blocks and final head copied, intermediate heads dropped)."""
        plain = CNN1d(self.config)
        for i, block in enumerate(self.blocks):
            for j in range(3):
                plain.features[3 * i + j].load_state_dict(block[j].state_dict())
        plain.head.load_state_dict(self.heads[-1].state_dict())
        return plain.train(self.training)

    @classmethod
    def from_plain(cls, plain: CNN1d) -> EarlyExitCNN1d:
        """Start from a trained ``CNN1d``: its blocks and head, fresh intermediate heads."""
        model = cls(plain.config)
        for i, block in enumerate(model.blocks):
            for j in range(3):
                block[j].load_state_dict(plain.features[3 * i + j].state_dict())
        model.heads[-1].load_state_dict(plain.head.state_dict())
        return model.train(plain.training)


class ExitPath(nn.Module):
    """What a sample leaving at ``exit_index`` computes: blocks 0..i and heads 0..i (the earlier
    heads were tried and not confident enough). Returns head i's logits; for MAC counting.

    Example: ``measure.macs(ExitPath(model, 0), x[:1])``
    """

    def __init__(self, model: EarlyExitCNN1d, exit_index: int) -> None:
        super().__init__()
        check_int("exit_index", exit_index, minimum=0, maximum=model.num_exits - 1)
        self.model, self.exit_index = model, exit_index
        _follow(self, model)

    def forward(self, x: Tensor) -> Tensor:
        logits = x
        for i in range(self.exit_index + 1):
            x = self.model.blocks[i](x)
            logits = self.model.heads[i](x)  # (B, num_classes); earlier heads were tried too
        return logits


def exit_confidence(logits: Tensor, criterion: str = "max_prob") -> Tensor:
    """Confidence in [0, 1] per sample from (..., C) logits: the top softmax probability
    (``max_prob``) or ``1 - H(p) / log C`` (``entropy``: 1 is one-hot, 0 is uniform).

    Example: ``exit_confidence(torch.tensor([[4.0, 0.0]]))  # tensor([0.9820])``
    """
    check_choice("criterion", criterion, CRITERIA)
    if logits.dtype != torch.float32:
        logits = logits.float()
    if criterion == "max_prob":  # two ops: this runs after every head at inference
        return logits.softmax(dim=-1).amax(dim=-1)
    p = logits.softmax(dim=-1)  # (..., C)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # (...,) in nats; 0 log 0 = 0 (a -inf logit)
    return (1 - entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)


def first_exit(confidence: Tensor, threshold: float | Sequence[float]) -> Tensor:
    """Exit index per sample from (E, N) confidences: the first head with confidence >=
    ``threshold`` (one number, or one per early exit); the last head when none is (the final
    exit always answers).

    Example: ``first_exit(torch.tensor([[0.5, 0.95], [0.9, 0.99]]), 0.8)  # tensor([1, 0])``
    """
    limits = torch.tensor(_thresholds(threshold, confidence.shape[0]) + (0.0,))  # (E,)
    passed = confidence >= limits.to(confidence.dtype)[:, None]  # (E, N)
    passed[-1] = True
    return passed.int().argmax(dim=0)  # argmax returns the first maximum


def average_macs(exit_index: Tensor | Sequence[int], macs: Sequence[int]) -> float:
    """Mean MACs per sample when sample n leaves at ``exit_index[n]`` and exit i costs ``macs[i]``.

    Example: ``average_macs([0, 0, 2, 1], [10, 50, 100])  # 42.5``
    """
    idx = torch.as_tensor(exit_index, dtype=torch.long)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= len(macs):
        raise ValueError(f"exit_index must hold indices in [0, {len(macs) - 1}]; got {idx}")
    return float(torch.as_tensor(macs, dtype=torch.float64)[idx].mean())


def path_macs(model: EarlyExitCNN1d, x: Tensor) -> list[int]:
    """MACs of the path to each exit for one sample (``x``: (1, C, L)), counted by
    ``measure.macs`` on :class:`ExitPath`: blocks up to the exit plus every head tried.

    Example: ``path_macs(EarlyExitCNN1d(EXIT_CONFIG), torch.zeros(1, 1, 40))  # [4800, ...]``
    """
    if x.shape[0] != 1:
        raise ValueError(f"x must hold one sample (batch 1); got batch {x.shape[0]}")
    return [measure.macs(ExitPath(model, i), x) for i in range(model.num_exits)]


@torch.no_grad()
def exit_logits(model: EarlyExitCNN1d, X: Tensor, batch_size: int = 512) -> Tensor:
    """Every head's logits for ``X`` in eval mode, as one (E, N, num_classes) CPU tensor.

    Cache this once; :func:`exit_report` then evaluates any threshold without the model.
    Example: ``cached = exit_logits(model, data.X_test)  # (3, 2000, 10)``
    """
    was = model.training
    model.eval()
    try:
        parts = [
            torch.stack(model.forward_exits(X[i : i + batch_size]))
            for i in range(0, len(X), batch_size)
        ]
    finally:
        model.train(was)
    return torch.cat(parts, dim=1).cpu()  # (E, N, C)


def exit_report(
    logits: Tensor,
    y: Tensor,
    threshold: float | Sequence[float],
    macs: Sequence[int],
    criterion: str = "max_prob",
) -> dict[str, Any]:
    """Accuracy, mean MACs per sample and the exit histogram of the early-exit rule at
    ``threshold``, from cached (E, N, C) head logits (:func:`exit_logits`) and per-exit path MACs.

    Returns ``acc`` (fraction), ``macs`` (mean per sample), ``macs_saved`` (fraction of the last
    path), ``exit_fraction`` (list, one per exit) and ``head_acc`` (each head alone).
    Example: ``exit_report(cached, data.y_test, 0.9, path_macs(model, X[:1]))["macs"]``
    """
    if logits.dim() != 3 or logits.shape[0] != len(macs) or logits.shape[1] != len(y):
        raise ValueError(
            f"logits must be (E={len(macs)}, N={len(y)}, C) head logits; got {tuple(logits.shape)}"
        )
    idx = first_exit(exit_confidence(logits, criterion), threshold)  # (N,)
    pred = logits.argmax(-1)  # (E, N)
    chosen = pred.gather(0, idx[None]).squeeze(0)  # (N,)
    avg = average_macs(idx, macs)
    counts = torch.bincount(idx, minlength=len(macs)).double() / len(y)
    return {
        "acc": float((chosen == y).double().mean()),
        "macs": avg,
        "macs_saved": 1 - avg / macs[-1],
        "exit_fraction": counts.tolist(),
        "head_acc": (pred == y[None]).double().mean(dim=1).tolist(),
    }


def choose_threshold(
    logits: Tensor,
    y: Tensor,
    macs: Sequence[int],
    thresholds: Sequence[float],
    tolerance: float = 0.01,
    criterion: str = "max_prob",
) -> float:
    """The cheapest of ``thresholds`` (lowest mean MACs; the higher threshold on a tie) whose
    accuracy on ``(logits, y)`` is at most ``tolerance`` below the last head's on the same data;
    2.0 (never exit) if none is. Pass a **validation** split's head logits (:func:`exit_logits`):
    a threshold picked on the test split flatters the test accuracy it then reports.

    Example: ``choose_threshold(exit_logits(m, ds.X_val), ds.y_val, macs, COURSE["thresholds"])``
    """
    check_choice("criterion", criterion, CRITERIA)
    ok = isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
    if not (ok and 0 <= tolerance < 1):
        raise ValueError(
            f"tolerance must be a number in [0, 1) (an accuracy drop); got {tolerance!r}"
        )
    limits = sorted({_threshold(t) for t in thresholds})
    if not limits:
        raise ValueError("thresholds must hold at least one number >= 0")
    ref = exit_report(logits, y, 2.0, macs, criterion)["acc"]  # everyone at the last head
    best, best_macs = 2.0, float("inf")
    for t in limits:  # increasing: ``<=`` keeps the higher threshold on a tie in MACs
        r = exit_report(logits, y, t, macs, criterion)
        if r["acc"] >= ref - tolerance - 1e-12 and r["macs"] <= best_macs:
            best, best_macs = t, r["macs"]
    return best


def operating_point(
    model: EarlyExitCNN1d,
    ds: Any,
    macs: Sequence[int],
    thresholds: Sequence[float],
    tolerance: float = 0.01,
    criterion: str = "max_prob",
) -> dict[str, Any]:
    """Choose the exit threshold on ``ds``'s validation split (:func:`choose_threshold`), then
    report it on the test split. The test split is touched only after the choice.

    Returns ``threshold``, ``val`` and ``test`` (:func:`exit_report` at that threshold).
    Example: ``operating_point(model, data.load("mnist1d"), macs, COURSE["thresholds"])["test"]``
    """
    val_logits = exit_logits(model, ds.X_val)  # (E, N_val, C)
    threshold = choose_threshold(val_logits, ds.y_val, macs, thresholds, tolerance, criterion)
    val = exit_report(val_logits, ds.y_val, threshold, macs, criterion)
    test = exit_report(exit_logits(model, ds.X_test), ds.y_test, threshold, macs, criterion)
    return {"threshold": threshold, "val": val, "test": test}


class EarlyExit(nn.Module):
    """Inference with early exits: each sample leaves at the first head whose confidence reaches
    ``threshold`` (one number, or one per early exit as in BranchyNet); only the samples still
    running go through the next block. ``forward`` returns the chosen logits; ``predict`` also
    returns each sample's exit index. Use an eval-mode model (the wrapper takes its mode).

    Example: ``EarlyExit(model.eval(), threshold=0.9)(x[:1])``
    """

    def __init__(
        self,
        model: EarlyExitCNN1d,
        threshold: float | Sequence[float],
        criterion: str = "max_prob",
    ) -> None:
        super().__init__()
        self.model = model
        self.thresholds = _thresholds(threshold, model.num_exits)
        self.criterion = check_choice("criterion", criterion, CRITERIA)
        _follow(self, model)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1:  # the latency case: no index bookkeeping
            for block, head, limit in zip(self.model.blocks, self.model.heads, self.thresholds):
                x = block(x)
                logits = head(x)  # (1, num_classes)
                if exit_confidence(logits, self.criterion).item() >= limit:
                    return logits
            return self.model.heads[-1](self.model.blocks[-1](x))  # the last head answers
        return self.predict(x)[0]

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, num_classes), exit index (B,)) computing only what each sample needs."""
        out = x.new_empty(x.shape[0], self.model.config.num_classes)
        exits = torch.full((x.shape[0],), -1, dtype=torch.long)
        active = torch.arange(x.shape[0])  # samples still running
        last = self.model.num_exits - 1
        for i, (block, head) in enumerate(zip(self.model.blocks, self.model.heads)):
            x = block(x)  # (B_active, C, L_i)
            logits = head(x)  # (B_active, num_classes)
            if i == last:
                done = torch.ones(len(logits), dtype=torch.bool)
            else:
                done = exit_confidence(logits, self.criterion) >= self.thresholds[i]
            out[active[done]] = logits[done]
            exits[active[done]] = i
            active, x = active[~done], x[~done]
            if len(active) == 0:
                break
        return out, exits


# --------------------------------------------------------------------------- early exit: latency


def exit_latency(
    model: EarlyExitCNN1d,
    exit_fraction: Sequence[float],
    criterion: str = "max_prob",
    *,
    plain: nn.Module | None = None,
    x: Tensor | None = None,
    threads: int | None = 1,
    repeats: int = 100,
    warmup: int = 10,
) -> dict[str, Any]:
    """Batch-1 latency of early-exit inference against the full network, measured with
    ``measure.compare_latency``: :class:`EarlyExit` forced to leave at each exit (per-exit
    thresholds 2.0 = never, 0.0 = always, so the rejected heads' tests are timed too) and
    ``plain`` (default: ``model.to_plain()``, the same weights without heads), interleaved in one
    run on ``x`` (default: zeros of the model's input shape). The time of a path does not depend
    on the weights, only on where the sample leaves; the mean weights each exit's median by
    ``exit_fraction`` (e.g. ``exit_report(...)["exit_fraction"]``). Returns ``exit_ms`` (per
    exit), ``full_ms``, ``mean_ms`` and ``speedup`` (full / mean).

    Example: ``exit_latency(model, exit_report(cached, y, 0.8, macs)["exit_fraction"])``
    """
    n = model.num_exits
    share = [float(f) for f in exit_fraction]
    if len(share) != n or any(not f >= 0 for f in share) or abs(sum(share) - 1) > 1e-6:
        raise ValueError(f"exit_fraction must be {n} shares >= 0 summing to 1; got {exit_fraction}")
    if x is None:
        x = torch.zeros(1, model.config.in_channels, model.config.length)
    model.eval()
    plain = (plain if plain is not None else model.to_plain()).eval()
    variants: dict[str, nn.Module] = {"full": plain}
    for i in range(n):  # leave at exit i: never at the heads before it, always at it
        forced = [2.0] * i + [0.0] * (n - 1 - i)
        variants[f"exit {i + 1}"] = EarlyExit(model, forced, criterion)
    times = measure.compare_latency(
        variants, x, threads=threads, repeats=repeats, warmup=warmup, baseline="full"
    )
    exit_ms = [times[f"exit {i + 1}"]["median_ms"] for i in range(n)]
    mean = sum(f * t for f, t in zip(share, exit_ms))
    full = times["full"]["median_ms"]
    return {"exit_ms": exit_ms, "full_ms": full, "mean_ms": mean, "speedup": full / mean}


@torch.no_grad()
def per_sample_latency(
    variants: Mapping[str, nn.Module],
    X: Tensor,
    *,
    baseline: str | None = None,
    threads: int | None = 1,
    rounds: int = 3,
    warmup: int = 20,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency averaged over the samples in ``X``: every sample goes through every model,
    interleaved (the order rotates), ``rounds`` times. An early-exit model's time depends on the
    input, so the mean over a test set is its honest figure (a direct check of
    :func:`exit_latency`). Returns per model ``mean_ms``, ``median_ms`` (of the per-sample means)
    and ``speedup`` (baseline mean / this mean).

    Example: ``per_sample_latency({"full": plain, "exit": EarlyExit(m, 0.9)}, X_test[:200])``
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty dict {name: nn.Module}")
    names = list(variants)
    baseline = names[0] if baseline is None else check_choice("baseline", baseline, names)
    check_int("rounds", rounds, minimum=1)
    check_int("warmup", warmup, minimum=0)
    if threads is not None:
        check_int("threads", threads, minimum=1)
    times = {n: np.zeros((rounds, len(X))) for n in names}
    gc_on = gc.isenabled()
    modes = {n: m.training for n, m in variants.items()}
    try:
        with utils.num_threads(threads):
            for m in variants.values():
                m.eval()
            for n in names:
                for i in range(warmup):
                    variants[n](X[i % len(X)][None])
            gc.collect()
            gc.disable()
            for r in range(rounds):
                for i in range(len(X)):
                    x = X[i][None]  # (1, ...)
                    shift = (r * len(X) + i) % len(names)
                    for n in names[shift:] + names[:shift]:
                        t0 = time.perf_counter()
                        variants[n](x)
                        times[n][r, i] = time.perf_counter() - t0
    finally:
        if gc_on:
            gc.enable()
        for n, m in variants.items():
            m.train(modes[n])
    per_sample = {n: times[n].mean(axis=0) * 1e3 for n in names}  # (N,) ms
    base = float(per_sample[baseline].mean())
    return {
        n: {
            "mean_ms": float(v.mean()),
            "median_ms": float(np.median(v)),
            "speedup": base / float(v.mean()),
        }
        for n, v in per_sample.items()
    }


# --------------------------------------------------------------------------- early exit: training


class _AllExits(nn.Module):
    def __init__(self, model: EarlyExitCNN1d) -> None:
        super().__init__()
        self.model = model
        _follow(self, model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.model.forward_exits(x), dim=1)  # (B, E, C)


def fit_exits(
    model: EarlyExitCNN1d, data: Any, weights: Sequence[float] = (0.3, 0.3, 1.0), **fit_kwargs: Any
) -> Any:
    """Train every exit jointly: loss = sum_i weights[i] * cross_entropy(head_i, y). In place.

    ``fit_kwargs`` go to ``train.fit`` (``num_epochs``, ``lr``, ``schedule``, ``seed``, ...);
    validation inside ``fit`` is off (the model's output is not one logits tensor while training).
    Example: ``fit_exits(model, data.load("mnist1d"), weights=(1, 1, 1), num_epochs=10)``
    """
    from labkit import train

    w = torch.tensor(_weights("weights", weights, model.num_exits))

    def loss_fn(stacked: Tensor, y: Tensor) -> Tensor:  # stacked: (B, E, C)
        per_exit = [F.cross_entropy(stacked[:, i], y) for i in range(stacked.shape[1])]
        return (w.to(stacked.device) * torch.stack(per_exit)).sum()

    return train.fit(_AllExits(model), data, val=False, loss_fn=loss_fn, **fit_kwargs)


# ------------------------------------------------------------------------- cache of trained models


def _build(spec: Mapping[str, Any], build: Callable[[], nn.Module]) -> nn.Module:
    """The untrained model: ``build()`` seeded with ``spec["seed"]``, the global RNG untouched."""
    with utils.seeded(spec["seed"]):
        return build()


def _cached(
    kind: str, spec: Mapping[str, Any], build: Callable[[], nn.Module], fit: Callable
) -> nn.Module:
    """Build with ``seed`` from spec, then load cached weights or train with ``fit`` and save."""
    key = utils.stable_hash(
        {"kind": kind, "spec": dict(spec), "v": VERSION, "torch": torch.__version__}
    )
    path = utils.cache_dir("dynamic") / f"{kind}-{key}.pt"
    model = _build(spec, build)
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError, ValueError):
            path.unlink(missing_ok=True)  # corrupt or stale: retrain
    with utils.num_threads(1):  # tiny models train fastest, and repeatably, on one thread
        fit(model)
    utils.atomic_torch_save(model.state_dict(), path)
    return model.eval()


def _recipe(num_epochs: int, seed: int) -> dict[str, Any]:
    """The zoo's cnn1d/mnist1d recipe, so a plain net and its early-exit twin train alike."""
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("seed", seed, minimum=0)
    return {
        "num_epochs": num_epochs,
        "lr": 1e-2,
        "batch_size": 128,
        "schedule": "cosine",
        "seed": seed,
        "device": "cpu",
        "progress": False,
    }


def _config(ds: Any, config: CNN1dConfig | None) -> CNN1dConfig:
    """``config``, or :data:`EXIT_CONFIG`'s channels on ``ds``'s input shape and classes."""
    if config is not None:
        return config
    return dataclasses.replace(models.config_for("cnn1d", ds), channels=EXIT_CONFIG.channels)


def pretrained_exits(
    weights: Sequence[float] = (0.3, 0.3, 1.0),
    dataset: str = "mnist1d",
    config: CNN1dConfig | None = None,
    num_epochs: int = 10,
    seed: int = 0,
) -> EarlyExitCNN1d:
    """An :class:`EarlyExitCNN1d` (default: :data:`EXIT_CONFIG`) trained from scratch with
    exit-loss ``weights`` and the zoo's cnn1d recipe (cached on disk).

    Example: ``model = pretrained_exits((1, 1, 1), seed=1)  # the summed-loss variant``
    """
    from labkit import data

    ds = data.load(dataset)
    config = _config(ds, config)
    weights = _weights("weights", weights, len(config.channels))
    fit_kw = _recipe(num_epochs, seed)
    spec = {"dataset": dataset, "config": config, "weights": weights, **fit_kw}
    return _cached(
        "exits", spec, lambda: EarlyExitCNN1d(config), lambda m: fit_exits(m, ds, weights, **fit_kw)
    )


def pretrained_static(
    dataset: str = "mnist1d", config: CNN1dConfig | None = None, num_epochs: int = 10, seed: int = 0
) -> CNN1d:
    """A plain ``CNN1d`` (default: :data:`EXIT_CONFIG`) trained with the same recipe as
    :func:`pretrained_exits` (cached). Example: ``pretrained_static(config=small_config)``
    """
    from labkit import data, train

    ds = data.load(dataset)
    config = _config(ds, config)
    fit_kw = _recipe(num_epochs, seed)
    spec = {"dataset": dataset, "config": config, **fit_kw}
    return _cached(
        "static", spec, lambda: CNN1d(config), lambda m: train.fit(m, ds, val=False, **fit_kw)
    )


# --------------------------------------------------------------------------- slimmable width


def _width_channels(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class SlimmableCNN1d(nn.Module):
    """One ``CNN1d`` whose every layer can run at a fraction of its channels, sharing weights:
    at width w a conv uses ``weight[:round(w*C_out), :round(w*C_in)]``. Each width keeps its own
    BatchNorm (switchable BN: statistics differ per width). ``forward(x, width)``; ``width=None``
    uses ``self.width`` (default 1.0). ``at_width(w)`` returns the real smaller ``CNN1d``.

    Example: ``SlimmableCNN1d(widths=(0.5, 1.0))(torch.rand(2, 1, 40), width=0.5)``
    """

    def __init__(
        self, config: CNN1dConfig | None = None, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0)
    ) -> None:
        super().__init__()
        self.config = config = config or CNN1dConfig()
        widths = tuple(sorted(float(w) for w in widths))
        if not widths or widths[0] <= 0 or widths[-1] != 1.0:
            raise ValueError(f"widths must be fractions in (0, 1] that include 1.0; got {widths}")
        self.widths, self.width = widths, 1.0
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()  # bns[layer][width index]
        channels, length = config.in_channels, config.length
        for out in config.channels:
            k = config.kernel_size
            self.convs.append(nn.Conv1d(channels, out, k, stride=2, padding=k // 2, bias=False))
            self.bns.append(nn.ModuleList(nn.BatchNorm1d(_width_channels(out, w)) for w in widths))
            channels, length = out, (length - 1) // 2 + 1
        self.out_length = length
        self.head = nn.Linear(channels * length, config.num_classes)

    def _index(self, width: float | None) -> int:
        width = self.width if width is None else width
        return self.widths.index(check_choice("width", width, self.widths))

    def _head_weight(self, c: int) -> Tensor:
        w = self.head.weight.view(self.head.out_features, -1, self.out_length)  # (K, C, L)
        return w[:, :c].reshape(self.head.out_features, -1)  # (K, c * L)

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        i = self._index(width)
        w, c_in = self.widths[i], self.config.in_channels
        for conv, bns in zip(self.convs, self.bns):
            c_out = _width_channels(conv.out_channels, w)
            weight = conv.weight[:c_out, :c_in]  # (c_out, c_in, k)
            x = F.conv1d(x, weight, None, conv.stride, conv.padding)  # (B, c_out, L / 2)
            x = F.relu(bns[i](x))
            c_in = c_out
        return F.linear(x.flatten(1), self._head_weight(c_in), self.head.bias)  # (B, K)

    @classmethod
    def from_plain(
        cls, plain: CNN1d, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0)
    ) -> SlimmableCNN1d:
        """Start from a trained ``CNN1d``: its convs and head; each width's BatchNorm gets the
        first channels of the plain one (at width 1.0 the output equals ``plain``'s)."""
        model = cls(plain.config, widths)
        with torch.no_grad():
            for j, (conv, bns) in enumerate(zip(model.convs, model.bns)):
                conv.weight.copy_(plain.features[3 * j].weight)
                source = plain.features[3 * j + 1].state_dict()
                for bn in bns:
                    c = bn.num_features
                    bn.load_state_dict({k: v[:c] if v.dim() else v for k, v in source.items()})
            model.head.load_state_dict(plain.head.state_dict())
        return model.train(plain.training)

    def at_width(self, width: float) -> CNN1d:
        """A standalone ``CNN1d`` holding copies of this width's weights (same outputs)."""
        i = self._index(width)
        chans = tuple(_width_channels(c.out_channels, self.widths[i]) for c in self.convs)
        plain = CNN1d(dataclasses.replace(self.config, channels=chans))
        c_in = self.config.in_channels
        with torch.no_grad():
            for j, (conv, bns) in enumerate(zip(self.convs, self.bns)):
                plain.features[3 * j].weight.copy_(conv.weight[: chans[j], :c_in])
                plain.features[3 * j + 1].load_state_dict(bns[i].state_dict())
                c_in = chans[j]
            plain.head.weight.copy_(self._head_weight(c_in))
            plain.head.bias.copy_(self.head.bias)
        return plain.train(self.training)


class _AllWidths(nn.Module):
    def __init__(self, model: SlimmableCNN1d) -> None:
        super().__init__()
        self.model = model
        _follow(self, model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x, w) for w in self.model.widths], dim=1)  # (B, W, C)


def fit_slimmable(model: SlimmableCNN1d, data: Any, **fit_kwargs: Any) -> Any:
    """Train every width at once: each step sums the cross-entropy of all widths. In place.

    Example: ``fit_slimmable(SlimmableCNN1d(), data.load("mnist1d"), num_epochs=10)``
    """
    from labkit import train

    def loss_fn(stacked: Tensor, y: Tensor) -> Tensor:  # stacked: (B, W, C)
        return sum(F.cross_entropy(stacked[:, i], y) for i in range(stacked.shape[1]))

    return train.fit(_AllWidths(model), data, val=False, loss_fn=loss_fn, **fit_kwargs)


def pretrained_slimmable(
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    dataset: str = "mnist1d",
    config: CNN1dConfig | None = None,
    num_epochs: int = 5,
    seed: int = 0,
) -> SlimmableCNN1d:
    """A :class:`SlimmableCNN1d` (default: :data:`EXIT_CONFIG`) started from
    :func:`pretrained_static` (same seed) and trained ``num_epochs`` more at all ``widths`` with
    the cnn1d recipe (cached). Example: ``slim = pretrained_slimmable(); slim.at_width(0.25)``
    """
    from labkit import data

    ds = data.load(dataset)
    config = _config(ds, config)
    plain = pretrained_static(dataset, config, seed=seed)
    fit_kw = _recipe(num_epochs, seed)
    widths = tuple(sorted(float(w) for w in widths))
    spec = {
        "dataset": dataset,
        "config": config,
        "widths": widths,
        "from": {"plain": _recipe(10, seed)},
        **fit_kw,
    }
    return _cached(
        "slim",
        spec,
        lambda: SlimmableCNN1d.from_plain(plain, widths),
        lambda m: fit_slimmable(m, ds, **fit_kw),
    )


# --------------------------------------------------------------------------- mixture of experts


def top_k_gating(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k routing: the ``k`` largest router logits per token and their gates, taken from the
    softmax over **all** experts, ``p = softmax(logits)``.

    * ``k = 1`` (Switch Transformer, Fedus et al., 2021): the gate is ``p_e`` of the chosen expert
      itself. Renormalising one gate would make it the constant 1.0, and the router would get no
      gradient from the task loss.
    * ``k >= 2`` (Shazeer et al., 2017; Mixtral): ``p`` renormalised over the chosen k, so the
      gates sum to 1; their ratios still depend on the logits, so the router learns.

    ``logits``: (N, E). Returns ``(gates (N, k), experts (N, k))``, experts by decreasing logit.
    Example: ``top_k_gating(torch.tensor([[2.0, 0.0, 1.0]]), 1)  # [[0.665]], [[0]]``
    """
    check_int("k", k, minimum=1, maximum=logits.shape[-1])
    experts = logits.topk(k, dim=-1).indices  # (N, k)
    gates = F.softmax(logits, dim=-1).gather(-1, experts)  # (N, k) full-softmax probabilities
    if k == 1:
        return gates, experts
    return gates / gates.sum(dim=-1, keepdim=True), experts


def load_balancing_loss(router_probs: Tensor, experts: Tensor) -> Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e``: ``f_e`` the fraction of routing
    slots sent to expert e, ``P_e`` the mean router probability of e. 1.0 when perfectly even,
    up to E when everything goes to one expert; the gradient flows through ``P_e``.

    ``router_probs``: (N, E) softmax over all experts; ``experts``: (N, k) chosen indices.
    Example: ``load_balancing_loss(torch.full((4, 2), 0.5), torch.tensor([[0], [1], [0], [1]]))``
    ``# tensor(1.)``
    """
    n_experts = router_probs.shape[-1]
    counts = torch.bincount(experts.flatten(), minlength=n_experts).to(router_probs.dtype)
    f = counts / experts.numel()  # (E,) fraction of slots
    p = router_probs.mean(dim=0)  # (E,)
    return n_experts * (f * p).sum()


class MoE(nn.Module):
    """A mixture-of-experts MLP over tokens: a linear router picks ``top_k`` of ``n_experts``
    expert MLPs (``Linear -> ReLU -> Linear``) per token and scales each by its gate
    (:func:`top_k_gating`: the softmax probability for top-1, renormalised over the k for more).
    Only the chosen experts run (tokens are dispatched by index). After each forward,
    ``aux_loss`` holds the load-balancing loss and ``load`` the fraction of routing slots each
    expert received.

    Example: ``MoE(dim=16, hidden=32, n_experts=4, top_k=2)(torch.rand(10, 16))  # (10, 16)``
    """

    def __init__(self, dim: int, hidden: int, n_experts: int = 4, top_k: int = 1) -> None:
        super().__init__()
        check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("n_experts", n_experts, minimum=1)
        self.top_k = check_int("top_k", top_k, minimum=1, maximum=n_experts)
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
            for _ in range(n_experts)
        )
        self.aux_loss: Tensor = torch.zeros(())
        self.load: Tensor = torch.zeros(n_experts)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D) tokens
        logits = self.router(x)  # (N, E)
        gates, experts = top_k_gating(logits, self.top_k)  # (N, k), (N, k)
        self.aux_loss = load_balancing_loss(F.softmax(logits, dim=-1), experts)
        counts = torch.bincount(experts.flatten(), minlength=len(self.experts))
        self.load = (counts.float() / experts.numel()).detach()
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)  # tokens routed to e
            if len(token):
                out.index_add_(0, token, gates[token, slot, None] * expert(x[token]))
        return out.reshape(shape)  # (..., D)


class MoEHead(nn.Module):
    """A classifier over (B, C, L) feature maps where every position is a token of C features:
    ``t + MoE(t)`` per token (the transformer FFN slot), then ``Flatten -> Linear``.
    ``n_experts=1`` is the dense baseline.

    Example: ``MoEHead(16, 20, n_experts=4, top_k=1)(torch.rand(8, 16, 20))  # (8, 10)``
    """

    def __init__(
        self,
        channels: int,
        length: int,
        hidden: int = 64,
        n_experts: int = 4,
        top_k: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        check_int("length", length, minimum=1)
        check_int("num_classes", num_classes, minimum=2)
        self.moe = MoE(channels, hidden, n_experts, top_k)
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = x.transpose(1, 2)  # (B, L, C): one token per position
        t = t + self.moe(t)  # (B, L, C)
        return self.head(t.flatten(1))  # (B, num_classes)


def moe_params(model: nn.Module) -> dict[str, int]:
    """Parameters of ``model``: ``total``, and ``active`` (what one token uses: everything outside
    the experts plus ``top_k`` experts of every :class:`MoE`); ``moe_total`` and ``moe_active``
    count the MoE layers alone (router plus all / top_k experts).

    Example: ``moe_params(MoEHead(16, 20, n_experts=8, top_k=2))  # {'total': 22474, ...}``
    """
    total = measure.count_params(model)
    moe_total = moe_active = 0
    for m in model.modules():
        if isinstance(m, MoE):
            size = measure.count_params(m)
            per_expert = measure.count_params(m.experts[0])
            moe_total += size
            moe_active += size - (len(m.experts) - m.top_k) * per_expert
    return {
        "total": total,
        "active": total - moe_total + moe_active,
        "moe_total": moe_total,
        "moe_active": moe_active,
    }


def fit_moe(model: nn.Module, data: Any, balance: float = 0.01, **fit_kwargs: Any) -> Any:
    """Train with ``cross_entropy + balance * sum(load-balancing losses)`` of every MoE. In place.

    Example: ``fit_moe(MoEHead(16, 20, n_experts=8), (features, y), balance=0.01, num_epochs=5)``
    """
    from labkit import train

    if isinstance(balance, bool) or not isinstance(balance, (int, float)) or not balance >= 0:
        raise ValueError(f"balance must be a number >= 0 (the aux-loss weight); got {balance!r}")
    moes = [m for m in model.modules() if isinstance(m, MoE)]

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        aux = sum(m.aux_loss for m in moes) if moes else logits.new_zeros(())
        return F.cross_entropy(logits, y) + balance * aux

    return train.fit(model, data, val=False, loss_fn=loss_fn, **fit_kwargs)


def pretrained_moe(
    n_experts: int = 4,
    top_k: int = 1,
    hidden: int = 64,
    balance: float = 0.01,
    dataset: str = "mnist1d",
    num_epochs: int = 4,
    seed: int = 0,
    trained: bool = True,
) -> nn.Sequential:
    """``Sequential(stem, head)``: the first block of :func:`pretrained_static` (seed 0, frozen)
    turns a signal into tokens, a :class:`MoEHead` trained on them classifies (Adam 1e-2, cosine,
    batch 256, ``num_epochs``; cached). The frozen stem makes the features cheap to compute once.
    ``trained=False`` returns the same model at its initialisation (router and experts random).

    Example: ``model = pretrained_moe(n_experts=8, top_k=2); model.head.moe.load``
    """
    import copy
    from collections import OrderedDict

    from labkit import data

    ds = data.load(dataset)
    trunk = pretrained_static(dataset, seed=0)
    with torch.no_grad():
        _, channels, length = trunk.features[:3](ds.X_train[:1]).shape
    fit_kw = {**_recipe(num_epochs, seed), "lr": 1e-2, "batch_size": 256}
    spec = {
        "dataset": dataset,
        "trunk": {"config": trunk.config, **_recipe(10, 0)},
        "n_experts": n_experts,
        "top_k": top_k,
        "hidden": hidden,
        "balance": balance,
        "moe_version": MOE_VERSION,
        **fit_kw,
    }

    def build() -> nn.Sequential:
        stem = copy.deepcopy(trunk.features[:3]).requires_grad_(False)
        head = MoEHead(channels, length, hidden, n_experts, top_k, ds.num_classes)
        return nn.Sequential(OrderedDict(stem=stem, head=head))

    def fit(model: nn.Sequential) -> None:
        with torch.no_grad():
            features = model.stem.eval()(ds.X_train)  # (N, C, L), computed once
        fit_moe(model.head, (features, ds.y_train), balance, **fit_kw)

    if not trained:
        return _build(spec, build).eval()
    return _cached("moe", spec, build, fit)


# --------------------------------------------------------------------------- the course's sweeps

COURSE: dict[str, Any] = {
    "seeds": 1,
    "thresholds": (
        *(round(0.2 + 0.025 * i, 3) for i in range(31)),
        0.97,
        0.98,
        0.99,
        0.995,
        0.999,
    ),
    "widths": (0.25, 0.5, 0.75, 1.0),
    "slim_epochs": 5,
    "static_widths": (0.25, 0.5, 1.0),
    "moe": ((1, 1), (4, 1), (8, 1), (8, 2)),
    "moe_hidden": 64,
    "moe_epochs": 4,
    "balance": 0.01,
    "balances": (0.0, 1.0),
    "tolerance": 0.01,
}
"""What notebook 06 shows and :func:`prepare` computes: exit models per seed with a threshold
curve each and the threshold chosen on the validation split (at most ``tolerance`` below the
last head's validation accuracy, :func:`choose_threshold`); slimmable (trained ``slim_epochs``
on top of the plain CNN) and static widths; MoE (experts, top-k) points with the balancing-loss
weight ``balance``, a dense layer of the same total size, and 8 experts top-1 trained with each
weight in ``balances`` (none, strong); each MoE trained ``moe_epochs``."""


def _sweep_version(kind: str) -> str:
    return utils.stable_hash({"v": VERSION, "course": COURSE, "sweep": SWEEP_VERSIONS[kind]})


def exits_run(weights: str, seed: int = 0) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-exits``: the plain CNN (``weights="none"``) or the exit
    model trained with ``WEIGHTS[weights]``: test accuracy per head, MACs per exit path, the
    max-prob threshold curve on the test split (accuracy, mean MACs, exit fractions) at
    ``COURSE["thresholds"]``, and the operating point: the threshold chosen on the validation
    split (``threshold``, ``val_acc``) and its test ``chosen_acc``, ``chosen_macs`` and
    ``chosen_exit_fraction`` (:func:`operating_point`).
    Example: ``exits_run("weighted", seed=0)["head_acc"]``
    """
    from labkit import data, train

    check_choice("weights", weights, ("none", *WEIGHTS))
    ds = data.load("mnist1d")
    x1 = ds.X_test[:1]
    if weights == "none":
        model = pretrained_static(seed=seed)
        acc = train.evaluate(model, ds, device="cpu")["acc"]
        macs = measure.macs(model, x1)
        params = measure.count_params(model)
        return {"acc": acc, "head_acc": [acc], "macs": macs, "path_macs": [macs], "params": params}
    model = pretrained_exits(WEIGHTS[weights], seed=seed)
    logits = exit_logits(model, ds.X_test)  # (E, N, C)
    macs = path_macs(model, x1)
    curve = [exit_report(logits, ds.y_test, t, macs) for t in COURSE["thresholds"]]
    head_acc = curve[0]["head_acc"]
    point = operating_point(model, ds, macs, COURSE["thresholds"], COURSE["tolerance"])
    return {
        "acc": head_acc[-1],
        "head_acc": head_acc,
        "macs": measure.macs(model, x1),  # the full network, no intermediate heads
        "path_macs": macs,
        "params": measure.count_params(model),
        "thresholds": list(COURSE["thresholds"]),
        "curve_acc": [r["acc"] for r in curve],
        "curve_macs": [r["macs"] for r in curve],
        "curve_exit_fraction": [r["exit_fraction"] for r in curve],
        "threshold": point["threshold"],
        "val_acc": point["val"]["acc"],
        "val_head_acc": point["val"]["head_acc"],
        "chosen_acc": point["test"]["acc"],
        "chosen_macs": point["test"]["macs"],
        "chosen_exit_fraction": point["test"]["exit_fraction"],
    }


def width_run(method: str, width: float, seed: int = 0) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-width``: the slimmable CNN cut to ``width``, or a static
    ``CNN1d`` with that fraction of :data:`EXIT_CONFIG`'s channels trained alone.
    Example: ``width_run("slimmable", 0.5)["acc"]``
    """
    from labkit import data, train

    check_choice("method", method, ("slimmable", "static"))
    ds = data.load("mnist1d")
    if method == "slimmable":
        slim = pretrained_slimmable(COURSE["widths"], num_epochs=COURSE["slim_epochs"], seed=seed)
        model = slim.at_width(width)
    else:
        channels = tuple(_width_channels(c, width) for c in EXIT_CONFIG.channels)
        config = None if width == 1.0 else dataclasses.replace(EXIT_CONFIG, channels=channels)
        model = pretrained_static(config=config, seed=seed)
    return {
        "acc": train.evaluate(model.eval(), ds, device="cpu")["acc"],
        "macs": measure.macs(model, ds.X_test[:1]),
        "params": measure.count_params(model),
        "channels": list(model.config.channels),
    }


def moe_run(
    n_experts: int, top_k: int, hidden: int = 64, balance: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """One point of sweep ``06-dynamic-moe``: :func:`pretrained_moe`'s test accuracy, parameters
    (:func:`moe_params`), MACs per signal (only the experts that run are counted) and the expert
    load on the test set (fraction of routing slots per expert), after training (``load``) and
    of the same model at its initialisation (``init_load``: the random router).
    Example: ``moe_run(8, 2)["active"]``
    """
    from labkit import data, train

    ds = data.load("mnist1d")
    loads = []
    for trained in (True, False):
        model = pretrained_moe(
            n_experts, top_k, hidden, balance, num_epochs=COURSE["moe_epochs"], seed=seed,
            trained=trained,
        )  # fmt: skip
        with torch.no_grad():
            model(ds.X_test)  # the load over every test token
        loads.append(model.head.moe.load.tolist())
        if trained:
            macs = measure.macs(model, ds.X_test[:1])
            acc = train.evaluate(model, ds, device="cpu")["acc"]
            params = moe_params(model)
    load, init_load = loads
    return {
        "acc": acc,
        "macs": macs,
        **params,
        "load": load,
        "load_max": max(load),
        "init_load": init_load,
    }


_SWEEPS = {"exits": exits_run, "width": width_run, "moe": moe_run}


def course_points(seeds: int = COURSE["seeds"]) -> dict[str, list[dict]]:
    """The sweep points of notebook 06: ``exits`` (plain, summed, weighted x seeds), ``width``
    (slimmable and static widths) and ``moe`` (experts x top-k, a dense layer as big as 4
    experts, and 8 experts top-1 with the balancing-loss weights ``COURSE["balances"]``).
    Example: ``course_points(3)["exits"][0]  # {'weights': 'none', 'seed': 0}``
    """
    from labkit import sweep

    seeds = list(range(check_int("seeds", seeds, minimum=1)))
    hidden, balance = COURSE["moe_hidden"], COURSE["balance"]
    moe = [
        {"n_experts": e, "top_k": k, "hidden": hidden, "balance": balance} for e, k in COURSE["moe"]
    ]
    moe.append({"n_experts": 1, "top_k": 1, "hidden": 4 * hidden, "balance": balance})
    moe += [
        {"n_experts": 8, "top_k": 1, "hidden": hidden, "balance": b} for b in COURSE["balances"]
    ]
    return {
        "exits": sweep.grid(weights=["none", *WEIGHTS], seed=seeds),
        "width": sweep.grid(method=["slimmable"], width=list(COURSE["widths"]))
        + sweep.grid(method=["static"], width=list(COURSE["static_widths"])),
        "moe": moe,
    }


def _sweep(kind: str, points: Sequence[dict], progress: bool | None = None) -> list[dict]:
    from labkit import sweep

    return sweep.run(
        _SWEEPS[kind],
        points,
        name=f"06-dynamic-{kind}",
        version=_sweep_version(kind),
        progress=progress,
    )


def course_results(
    seeds: int = COURSE["seeds"], progress: bool | None = None
) -> dict[str, list[dict]]:
    """Records of the three sweeps at :func:`course_points` (``sweep.run``, cached on disk as
    ``06-dynamic-exits``, ``-width`` and ``-moe``; whatever is missing is trained here).
    Example: ``results = course_results(); results["moe"][0]["active"]``
    """
    points = course_points(seeds)
    return {kind: _sweep(kind, pts, progress) for kind, pts in points.items()}


PARTS = ("plain", "summed", "weighted", "static", "slim", "moe")
"""The units of :func:`prepare`, one per model family; ``slim`` and ``moe`` start from the plain
CNN (``plain``). ``labkit prepare`` runs them as steps in parallel worker processes."""


def _part(kind: str, point: Mapping[str, Any]) -> str:
    """The part of :func:`prepare` that computes a sweep point (the model family it trains)."""
    if kind == "exits":
        return "plain" if point["weights"] == "none" else point["weights"]
    if kind == "width":
        if point["method"] == "slimmable":
            return "slim"
        return "plain" if point["width"] == 1.0 else "static"
    return "moe"


def prepare(
    parts: Sequence[str] | None = None, progress: bool | None = None
) -> dict[str, list[dict]]:
    """Compute (or verify cached) the sweeps notebook 06 shows, at its default parameters.

    ``parts``: some of :data:`PARTS` (default: all; ``slim`` and ``moe`` train the ``plain`` CNN
    first if it is not cached). Part of ``labkit prepare``; cold, all parts take about 45 s of
    CPU time (one thread), instant when cached. Returns the records of each part.
    Example: ``records = prepare(["moe"])["moe"]``
    """
    parts = list(PARTS) if parts is None else [check_choice("parts", p, PARTS) for p in parts]
    points = course_points()
    out: dict[str, list[dict]] = {}
    for part in parts:
        out[part] = []
        for kind, pts in points.items():
            chosen = [p for p in pts if _part(kind, p) == part]
            if chosen:
                out[part] += _sweep(kind, chosen, progress)
    return out
