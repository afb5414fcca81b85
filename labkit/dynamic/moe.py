"""Mixture of experts: top-k gating, the load-balancing loss, MoE layers and their parameters."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import measure
from labkit.utils import check_int


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
