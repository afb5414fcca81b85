"""Structured pruning: remove whole channels and neurons, for real.

Unstructured zeros leave every matrix its full size, so dense kernels do the same work. Here the
layers are rebuilt smaller: pruning output channel ``c`` of a Conv/Linear ("producer") also slices
everything that carries that channel (BatchNorm, a depthwise conv) and the inputs of the layers
that read it ("consumers", including a ``Linear`` after ``flatten``). Which layers form such a group
is read from the model's graph with ``torch.fx``, so the zoo models (MLP, LeNet, CNN1d, DSCNN, the
feed-forward layers of ViT / GPT) work without per-model code. A channel feeding a residual ``+``,
a concat or the model output is never pruned.

Every shrink has a *masked* twin of the original shape (``mask_channels``) whose output is the
same: that is the correctness check (``prune_channels(m)(x) ≈ mask_channels(m)(x)``). Attention
heads and whole residual blocks are in ``labkit.prune.transformer``.

Example:
    >>> from labkit import models
    >>> from labkit.prune import structured as ps
    >>> model = models.build("lenet")
    >>> small = ps.prune_channels(model, amount=0.5)
    >>> small.config.channels, small.config.hidden
    ((3, 8), (60, 42))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from labkit.prune.unstructured import amount_to_count, copy_model, remove_
from labkit.utils import check_choice

__all__ = [
    "ChannelGroup",
    "channel_groups",
    "select_channels",
    "prune_channels",
    "mask_channels",
    "shrink_",
    "channel_importance",
]

IMPORTANCE = ("l1", "l2")

_PASS_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Hardswish,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
)  # element-wise and 0 -> 0, so a zeroed channel stays zero
_PASS_MODULES = (
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)  # channel-wise on (B, C, ...) tensors
_PASS_FUNCTIONS = (
    F.relu,
    torch.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.elu,
    F.hardswish,
    torch.tanh,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
)
_PASS_METHODS = ("relu", "tanh", "contiguous")


# --------------------------------------------------------------------------- channel groups


@dataclass
class ChannelGroup:
    """Layers tied to the output channels of ``producer``.

    ``followers`` carry the channels one-to-one (BatchNorm, depthwise conv); ``consumers`` read
    them: ``(name, per_channel)`` where ``per_channel`` > 1 for a Linear after ``flatten``
    (channel c is its inputs ``c*per_channel .. (c+1)*per_channel - 1``).
    """

    producer: str
    channels: int
    followers: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of ``model``, found by tracing it with ``torch.fx``.

    A model that cannot be traced as a whole (data-dependent checks in ``forward``) is searched
    one child module at a time. Example: ``[g.producer for g in channel_groups(model)]``
    """
    groups: list[ChannelGroup] = []
    _collect(model, "", groups)
    return groups


def _collect(module: nn.Module, prefix: str, groups: list[ChannelGroup]) -> None:
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - untraceable forward: look inside the children
        for name, child in module.named_children():
            _collect(child, f"{prefix}{name}.", groups)
        return
    modules = dict(module.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and _is_producer(modules[node.target]):
            group = _follow(node, modules, prefix)
            if group is not None:
                groups.append(group)


def _is_producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == m.in_channels == m.out_channels


def _flatten_from_1(node: fx.Node) -> bool:
    args = list(node.args[1:]) + [node.kwargs.get("start_dim", 1)]
    return args[0] == 1 and node.kwargs.get("end_dim", -1) == -1 and len(node.args) <= 2


def _follow(start: fx.Node, modules: dict[str, nn.Module], prefix: str) -> ChannelGroup | None:
    """Walk forward from a producer through channel-wise ops to the consumers, or give up."""
    producer = modules[start.target]
    is_linear = isinstance(producer, nn.Linear)  # channels on the last dim, else on dim 1
    channels = producer.out_features if is_linear else producer.out_channels
    group = ChannelGroup(prefix + start.target, channels)
    todo = [(user, start, False) for user in start.users]  # (node, its input, flattened yet)
    while todo:
        node, prev, flat = todo.pop()
        if not node.args or node.args[0] is not prev or any(a is prev for a in node.args[1:]):
            return None
        m = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not _is_depthwise(m):
            if isinstance(m, nn.Linear) and (flat or is_linear) and m.in_features % channels == 0:
                group.consumers.append((prefix + node.target, m.in_features // channels))
            elif isinstance(m, nn.Linear) or flat or is_linear or m.groups != 1:
                return None
            else:
                group.consumers.append((prefix + node.target, 1))
            continue
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) or _is_depthwise(m):
            ok = not flat and not (is_linear and not isinstance(m, nn.BatchNorm1d))
            if ok:
                group.followers.append(prefix + node.target)
        elif isinstance(m, nn.Flatten):
            ok = not is_linear and m.start_dim == 1 and m.end_dim == -1
            flat = True
        elif m is not None:
            ok = isinstance(m, _PASS_ACTIVATIONS) or (
                not is_linear and isinstance(m, _PASS_MODULES)
            )
        elif node.op == "call_function" and node.target is torch.flatten:
            ok, flat = not is_linear and _flatten_from_1(node), True
        elif node.op == "call_function":
            ok = node.target in _PASS_FUNCTIONS and not (
                is_linear and "pool" in node.target.__name__
            )
        elif node.op == "call_method" and node.target == "flatten":
            ok, flat = not is_linear and _flatten_from_1(node), True
        else:
            ok = node.op == "call_method" and node.target in _PASS_METHODS
        if not ok:
            return None
        todo += [(user, node, flat) for user in node.users]
    return group if group.consumers else None


# --------------------------------------------------------------------------- choosing channels


def select_channels(
    model: nn.Module,
    amount: int | float | Mapping[str, int | float] = 0.5,
    importance: str = "l1",
    groups: Sequence[ChannelGroup] | None = None,
) -> dict[str, Tensor]:
    """``{producer name: sorted indices of the channels to keep}`` for every channel group.

    Each producer loses ``amount`` of its output channels (int: a count, float: a fraction; a dict
    sets producers separately), the least important first; at least one channel stays.
    Example: ``select_channels(model, 0.5)  # {'features.0': tensor([0, 2, 5]), ...}``
    """
    check_choice("importance", importance, IMPORTANCE)
    groups = channel_groups(model) if groups is None else groups
    named = dict(model.named_modules())
    if isinstance(amount, Mapping):
        known = [g.producer for g in groups]
        unknown = sorted(set(amount) - set(known))
        if unknown:
            raise ValueError(
                f"amount keys must be producer names ({', '.join(known)}); got {unknown}"
            )
    keep = {}
    for g in groups:
        a = amount.get(g.producer, 0) if isinstance(amount, Mapping) else amount
        k = min(amount_to_count(a, g.channels), g.channels - 1)
        score = channel_importance(_weight(named[g.producer]), importance)  # (channels,)
        order = torch.argsort(score, descending=True, stable=True)
        keep[g.producer] = torch.sort(order[: g.channels - k]).values
    return keep


def prune_channels(
    model: nn.Module,
    amount: int | float | Mapping[str, int | float] = 0.5,
    importance: str = "l1",
) -> nn.Module:
    """A physically smaller copy: ``amount`` of every group's channels removed by ``importance``.

    Pruning masks are folded first. The zoo models get an updated ``config`` so that
    ``models.build(name, small.config)`` builds the same (untrained) architecture.
    Example: ``small = prune_channels(models.pretrained("lenet", "digits"), 0.5)``
    """
    model = remove_(copy_model(model))
    groups = channel_groups(model)
    return shrink_(model, select_channels(model, amount, importance, groups), groups)


def mask_channels(
    model: nn.Module,
    amount: int | float | Mapping[str, int | float] = 0.5,
    importance: str = "l1",
) -> nn.Module:
    """Same shape as ``model``, the channels :func:`prune_channels` removes set to exactly zero.

    Zeroes the producer's rows (weight and bias) and the followers' per-channel parameters, so the
    output equals the shrunk model's.
    Example: ``torch.allclose(mask_channels(m)(x), prune_channels(m)(x))  # True``
    """
    model = remove_(copy_model(model))
    groups = channel_groups(model)
    keep = select_channels(model, amount, importance, groups)
    named = dict(model.named_modules())
    with torch.no_grad():
        for g in groups:
            drop = torch.ones(g.channels, dtype=torch.bool)
            drop[keep[g.producer]] = False
            for name in [g.producer, *g.followers]:
                for p in (getattr(named[name], "weight", None), getattr(named[name], "bias", None)):
                    if p is not None:
                        p[drop] = 0
    return model


def shrink_(
    model: nn.Module, keep: Mapping[str, Tensor], groups: Sequence[ChannelGroup] | None = None
) -> nn.Module:
    """Rebuild the layers of each group in place to hold only the ``keep[producer]`` channels.

    Example: ``shrink_(model, {"net.1": torch.tensor([0, 3, 7])})``
    """
    groups = {g.producer: g for g in (channel_groups(model) if groups is None else groups)}
    unknown = sorted(set(keep) - set(groups))
    if unknown:
        raise ValueError(f"keep keys must be producer names ({', '.join(groups)}); got {unknown}")
    named = dict(model.named_modules())
    with torch.no_grad():
        for producer, idx in keep.items():
            g, idx = groups[producer], torch.as_tensor(idx, dtype=torch.long)
            _slice_out(named[producer], idx)
            for name in g.followers:
                _slice_out(named[name], idx)
            for name, per in g.consumers:
                cols = (idx[:, None] * per + torch.arange(per)).reshape(-1)  # (len(idx) * per,)
                _slice_in(named[name], cols)
    _sync_config(model)
    return model


def _weight(m: nn.Module) -> Tensor:
    return m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight


def _slice_out(m: nn.Module, idx: Tensor) -> None:
    """Keep output channels ``idx`` of a Linear / Conv / BatchNorm / depthwise conv."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if isinstance(t, nn.Parameter):
            setattr(m, name, nn.Parameter(t[idx].clone(), requires_grad=t.requires_grad))
        elif isinstance(t, Tensor):
            setattr(m, name, t[idx].clone())
    n = len(idx)
    if isinstance(m, nn.Linear):
        m.out_features = n
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.num_features = n
    elif _is_depthwise_shape(m):
        m.in_channels = m.out_channels = m.groups = n
    else:
        m.out_channels = n


def _is_depthwise_shape(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1 and m.groups == m.in_channels


def _slice_in(m: nn.Module, cols: Tensor) -> None:
    """Keep input features / channels ``cols`` of a Linear or Conv."""
    m.weight = nn.Parameter(m.weight[:, cols].clone())
    if isinstance(m, nn.Linear):
        m.in_features = len(cols)
    else:
        m.in_channels = len(cols)


def _sync_config(model: nn.Module) -> None:
    """Refresh the width fields of a zoo model's config after shrinking (others: untouched)."""
    from labkit import models

    cfg = getattr(model, "config", None)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    if isinstance(model, models.MLP):
        model.config = dataclasses.replace(cfg, hidden=tuple(m.out_features for m in linear[:-1]))
    elif isinstance(model, models.LeNet):
        model.config = dataclasses.replace(
            cfg,
            channels=tuple(m.out_channels for m in convs),
            hidden=tuple(m.out_features for m in linear[:-1]),
        )
    elif isinstance(model, models.CNN1d):
        model.config = dataclasses.replace(cfg, channels=tuple(m.out_channels for m in convs))
    elif isinstance(model, models.DSCNN):
        chans = [model.stem[0].out_channels] + [b.pointwise[0].out_channels for b in model.blocks]
        model.config = dataclasses.replace(cfg, channels=tuple(chans))


# --------------------------------------------------------------------------- tensor primitives


def channel_importance(weight: Tensor, importance: str = "l1") -> Tensor:
    """One score per output channel (row) of a Linear / Conv weight: its L1 or L2 norm.

    Example: ``channel_importance(conv.weight)  # (out_channels,)``
    """
    check_choice("importance", importance, IMPORTANCE)
    w = weight.detach().reshape(weight.shape[0], -1)  # (out, fan_in)
    return w.abs().sum(1) if importance == "l1" else w.pow(2).sum(1).sqrt()  # (out,)
