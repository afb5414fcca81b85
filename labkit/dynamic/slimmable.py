"""Slimmable width: one CNN whose layers run at a fraction of their channels, sharing weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.dynamic.exits import _follow
from labkit.models import CNN1d, CNN1dConfig
from labkit.utils import check_choice


def width_channels(channels: int, width: float) -> int:
    """The channels a layer of ``channels`` keeps at ``width``: rounded, at least 1.

    Example: ``width_channels(64, 0.25)  # 16``
    """
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
            self.bns.append(nn.ModuleList(nn.BatchNorm1d(width_channels(out, w)) for w in widths))
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
            c_out = width_channels(conv.out_channels, w)
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
        chans = tuple(width_channels(c.out_channels, self.widths[i]) for c in self.convs)
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
