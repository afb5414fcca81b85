"""Early exit: a CNN with a classifier after every block, the exit rule, its reports and training.

:class:`EarlyExitCNN1d` puts a head after every block (BranchyNet); :class:`EarlyExit` stops at the
first head whose :func:`exit_confidence` reaches a threshold; :func:`path_macs` and
:func:`exit_report` account for what each exit costs and scores; :func:`choose_threshold` and
:func:`operating_point` pick the threshold on the validation split; :func:`fit_exits` trains all
heads jointly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import measure
from labkit.models import CNN1d, CNN1dConfig
from labkit.utils import check_choice, check_int

CRITERIA = ("max_prob", "entropy")
"""Confidence measures for the exit rule."""

EXIT_CONFIG = CNN1dConfig(channels=(16, 32, 64))
"""The course's early-exit CNN on mnist1d: channels double as the length halves, so the early
blocks are cheap (exit paths cost 6 %, 41 % and 108 % of the plain network's 81,600 MACs)."""

WEIGHTS = {"summed": (1.0, 1.0, 1.0), "weighted": (0.3, 0.3, 1.0)}
"""The two exit-loss weightings the course compares."""


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
    """The cheapest of ``thresholds`` that keeps the accuracy within ``tolerance`` of the last head.

    Cheapest: lowest mean MACs, the higher threshold on a tie; accuracy on ``(logits, y)``,
    compared with the last head's on the same data; 2.0 (never exit) if no threshold qualifies.
    Pass a **validation** split's head logits (:func:`exit_logits`): a threshold picked on the
    test split flatters the test accuracy it then reports.

    Example: ``choose_threshold(exit_logits(m, ds.X_val), ds.y_val, macs, [0.5, 0.7, 0.9])``
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
    """Choose the exit threshold on ``ds``'s validation split, then report it on the test split.

    The choice is :func:`choose_threshold`'s; the test split is touched only after it.
    Returns ``threshold``, ``val`` and ``test`` (:func:`exit_report` at that threshold).
    Example: ``operating_point(model, data.load("mnist1d"), macs, [0.5, 0.7, 0.9])["test"]``
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
