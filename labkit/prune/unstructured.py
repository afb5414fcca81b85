"""Unstructured pruning: zero the smallest weights, keep accuracy by fine-tuning.

Masks live where ``torch.nn.utils.prune`` puts them: a pruned layer holds ``weight_orig`` (the
trained values, still a parameter) and a ``weight_mask`` buffer, and its forward uses
``weight = weight_orig * weight_mask``. So fine-tuning keeps pruned weights at exactly zero, and
``remove_`` folds the mask in for good. Zeros do not make a model smaller or faster by
themselves: see ``labkit.prune.sparse`` for the bytes and ``labkit.prune.structured`` for the speed.

``amount`` follows torch: an int is a count of weights, a float in [0, 1) a fraction. Unlike
calling ``torch.nn.utils.prune.l1_unstructured`` twice (which prunes a fraction of what is left),
``amount`` here is always the *total* target: pruning a layer already at 50 % with ``amount=0.8``
takes it to 80 %, never un-pruning a weight.

Example:
    >>> from torch import nn
    >>> from labkit import prune
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> pruned = prune.magnitude(model, amount=0.8, scope="global")
    >>> round(prune.sparsity(pruned)["global"], 2)
    0.8
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from labkit import utils
from labkit.utils import check_choice, check_int

__all__ = [
    "PRUNABLE",
    "amount_to_count",
    "prunable",
    "magnitude",
    "magnitude_",
    "remove",
    "remove_",
    "copy_model",
    "masks",
    "apply_masks_",
    "sparsity",
    "sensitivity_scan",
    "amounts_for_drop",
    "prune_finetune",
    "lottery_ticket",
    "magnitude_mask",
    "global_masks",
    "cubic_schedule",
]

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layer types whose ``weight`` is pruned by default."""

Amount = int | float


# --------------------------------------------------------------------------- which layers


def prunable(
    model: nn.Module, modules: Sequence[str | nn.Module] | None = None
) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers to prune, in model order.

    ``modules=None``: every Linear / Conv1d / Conv2d whose weight is not shared with another layer
    (a tied GPT ``lm_head`` is skipped). Otherwise a list of qualified names (``"net.1"``) or of
    the modules themselves.
    Example: ``list(prunable(model))  # ['net.1', 'net.3', 'net.5']``
    """
    named = dict(model.named_modules())
    if modules is None:
        uses: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        return {
            name: m
            for name, m in named.items()
            if isinstance(m, PRUNABLE) and uses.get(id(_orig(m)), 1) == 1
        }
    if isinstance(modules, (str, nn.Module)):
        modules = [modules]
    by_id = {id(m): name for name, m in named.items()}
    out: dict[str, nn.Module] = {}
    for item in modules:
        name = by_id.get(id(item), "<not in model>") if isinstance(item, nn.Module) else item
        if name not in named or not isinstance(named[name], PRUNABLE):
            choices = ", ".join(repr(n) for n, m in named.items() if isinstance(m, PRUNABLE))
            raise ValueError(
                f"modules must be Linear/Conv layers of the model ({choices}); got {name!r}"
            )
        out[name] = named[name]
    return out


# --------------------------------------------------------------------------- magnitude pruning


def magnitude(
    model: nn.Module,
    amount: Amount | Mapping[str, Amount] = 0.8,
    scope: str = "layer",
    modules: Sequence[str | nn.Module] | None = None,
) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude weights masked to zero (L1 unstructured).

    ``scope="layer"``: each layer loses ``amount`` of its own weights (``amount`` may be a dict
    ``{layer name: amount}`` to set layers separately); ``scope="global"``: one threshold over all
    selected layers, so layers with many small weights lose more. Masks equal
    ``torch.nn.utils.prune.l1_unstructured`` / ``global_unstructured``.
    Example: ``pruned = magnitude(model, amount=0.9, scope="global")``
    """
    return magnitude_(copy_model(model), amount, scope, modules)


def magnitude_(
    model: nn.Module,
    amount: Amount | Mapping[str, Amount] = 0.8,
    scope: str = "layer",
    modules: Sequence[str | nn.Module] | None = None,
) -> nn.Module:
    """In-place :func:`magnitude`; returns ``model``. Already-pruned weights stay pruned.

    Example: ``magnitude_(model, amount=0.5)``
    """
    check_choice("scope", scope, ("layer", "global"))
    layers = prunable(model, modules)
    if isinstance(amount, Mapping):
        if scope != "layer":
            raise ValueError("amount must be a single number when scope='global'; got a dict")
        unknown = sorted(set(amount) - set(layers))
        if unknown:
            raise ValueError(
                f"amount keys must be layer names ({', '.join(layers)}); got {unknown}"
            )
        for name, a in amount.items():
            m = layers[name]
            _set_mask(m, magnitude_mask(_orig(m), a, mask=_mask(m)))
        return model
    if scope == "layer":
        for m in layers.values():
            _set_mask(m, magnitude_mask(_orig(m), amount, mask=_mask(m)))
        return model
    mods = list(layers.values())
    new = global_masks([_orig(m) for m in mods], amount, masks=[_mask(m) for m in mods])
    for m, mask in zip(mods, new):
        _set_mask(m, mask)
    return model


def remove(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every pruning mask folded into a plain ``weight`` parameter.

    Example: ``dense_with_zeros = remove(pruned)``
    """
    return remove_(copy_model(model))


def remove_(model: nn.Module) -> nn.Module:
    """Make masks permanent in place (``torch.nn.utils.prune.remove`` on every pruned tensor).

    Example: ``remove_(pruned)  # state_dict now has 'weight', no 'weight_orig' / 'weight_mask'``
    """
    for module in model.modules():
        for name in [k[: -len("_mask")] for k, _ in module.named_buffers(recurse=False)]:
            if hasattr(module, name + "_orig"):
                torch_prune.remove(module, name)
    return model


def masks(model: nn.Module) -> dict[str, Tensor]:
    """``{layer name: weight mask}`` (1 = kept, 0 = pruned) of every pruned layer, cloned.

    Example: ``ticket = masks(pruned)``
    """
    return {
        name: m.weight_mask.detach().clone()
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight_mask", None), Tensor)
    }


def apply_masks_(model: nn.Module, layer_masks: Mapping[str, Tensor]) -> nn.Module:
    """Put ``layer_masks`` (from :func:`masks`) on ``model``'s layers in place; returns ``model``.

    The current weights become ``weight_orig``. Example: ``apply_masks_(fresh_model, ticket)``
    """
    layers = prunable(model, list(layer_masks))
    for name, mask in layer_masks.items():
        weight = _orig(layers[name])
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"layer_masks[{name!r}] must have shape {tuple(weight.shape)}; got "
                f"{tuple(mask.shape)}"
            )
        _set_mask(layers[name], mask.to(weight.device, weight.dtype), merge=False)
    return model


def sparsity(
    model: nn.Module, modules: Sequence[str | nn.Module] | None = None
) -> dict[str, float]:
    """Fraction of zero entries in each prunable layer's effective weight, plus ``"global"``.

    Example: ``sparsity(pruned)  # {'net.1': 0.8, 'net.3': 0.8, 'net.5': 0.8, 'global': 0.8}``
    """
    out: dict[str, float] = {}
    zeros = total = 0
    for name, m in prunable(model, modules).items():
        w = _effective(m)
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["global"] = zeros / max(total, 1)
    return out


# --------------------------------------------------------------------------- experiments


def sensitivity_scan(
    model: nn.Module,
    data: Any,
    amounts: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    *,
    modules: Sequence[str | nn.Module] | None = None,
    split: str = "val",
) -> list[dict]:
    """Prune one layer at a time (no fine-tuning) and record the accuracy.

    Returns records ``{layer, params, amount, acc, drop}`` (``drop`` = dense acc - acc, in [0, 1]
    units) for every layer and amount; the dense model is untouched.
    Example: ``records = sensitivity_scan(model, load("digits"), [0.5, 0.9])``
    """
    from labkit import train

    base = train.evaluate(model, data, split=split)["acc"]
    records = []
    for name, m in prunable(model, modules).items():
        for a in amounts:
            pruned = magnitude(model, amount={name: a}, scope="layer", modules=[name])
            acc = train.evaluate(pruned, data, split=split)["acc"]
            records.append(
                {
                    "layer": name,
                    "params": _orig(m).numel(),
                    "amount": a,
                    "acc": acc,
                    "drop": base - acc,
                }
            )
    return records


def amounts_for_drop(
    records: Sequence[Mapping[str, Any]], max_drop: float = 0.01
) -> dict[str, float]:
    """Per layer, the largest scanned amount whose accuracy drop is at most ``max_drop``.

    Feed the result to ``magnitude(model, amount=...)``. A layer that cannot be pruned at any
    scanned amount gets 0.0. Example: ``magnitude(model, amounts_for_drop(records, 0.005))``
    """
    out: dict[str, float] = {}
    for r in records:
        ok = r["drop"] <= max_drop
        out[r["layer"]] = max(out.get(r["layer"], 0.0), float(r["amount"]) if ok else 0.0)
    return out


def prune_finetune(
    model: nn.Module,
    data: Any,
    *,
    amount: float = 0.9,
    schedule: str | Sequence[float] = "oneshot",
    num_stages: int = 4,
    scope: str = "global",
    modules: Sequence[str | nn.Module] | None = None,
    num_epochs: int = 4,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Prune a copy of ``model`` to ``amount`` and fine-tune it with the masks held at zero.

    ``schedule``: ``"oneshot"`` prunes once then trains ``num_epochs``; ``"gradual"`` prunes in
    ``num_stages`` stages along :func:`cubic_schedule` with ``num_epochs / num_stages`` epochs
    after each (same total); or an explicit list of increasing amounts. Returns the pruned model
    (masks still attached: call :func:`remove_` to fold them) and one record per stage
    ``{stage, amount, sparsity, acc_pruned, acc}`` (val accuracy before / after fine-tuning).
    Example: ``small, log = prune_finetune(model, load("digits"), amount=0.9, schedule="gradual")``
    """
    from labkit import train

    if isinstance(schedule, str):
        check_choice("schedule", schedule, ("oneshot", "gradual"))
        stages = [amount] if schedule == "oneshot" else cubic_schedule(amount, num_stages)
    else:
        stages = list(schedule)
        if not stages or any(b < a for a, b in zip(stages, stages[1:])):
            raise ValueError(
                f"schedule must be 'oneshot', 'gradual' or increasing amounts; got {schedule!r}"
            )
    check_int("num_epochs", num_epochs, minimum=1)
    per_stage = [
        num_epochs // len(stages) + (i < num_epochs % len(stages)) for i in range(len(stages))
    ]
    model = copy_model(model)
    records = []
    for i, (a, epochs) in enumerate(zip(stages, per_stage)):
        magnitude_(model, a, scope, modules)
        before = train.evaluate(model, data, split="val")["acc"]
        if epochs:
            train.fit(
                model,
                data,
                num_epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed + i,
                device=device,
                val=False,
                progress=False,
            )
        records.append(
            {
                "stage": i,
                "amount": a,
                "sparsity": sparsity(model, modules)["global"],
                "acc_pruned": before,
                "acc": train.evaluate(model, data, split="val")["acc"],
            }
        )
    return model.eval(), records


def lottery_ticket(
    build: Callable[[], nn.Module],
    data: Any,
    *,
    amount: float = 0.9,
    rounds: int = 1,
    num_epochs: int = 20,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The lottery-ticket experiment: is the sparse sub-network trainable from its own init?

    Train ``build()`` (seeded with ``seed``) densely, prune it globally by magnitude to ``amount``
    (in ``rounds`` equal-ratio stages, retraining from the rewound init between them), then train
    the sparse network twice: from the original init values (``rewind``) and from a fresh random
    init (``random``) with the same mask. Returns test accuracies ``{dense, rewind, random,
    sparsity}``. Example: ``lottery_ticket(lambda: build("mlp"), load("digits"), amount=0.95)``
    """
    from labkit import train

    check_int("rounds", rounds, minimum=1)
    kw = {
        "num_epochs": num_epochs,
        "lr": lr,
        "seed": seed,
        "device": device,
        "val": False,
        "progress": False,
    }
    with utils.seeded(seed):
        init = build()
        other = build()  # a second, independent random init for the control
    model = copy_model(init)
    train.fit(model, data, **kw)
    result = {"dense": train.evaluate(model, data)["acc"]}
    for r in range(1, rounds + 1):
        magnitude_(model, 1.0 - (1.0 - amount) ** (r / rounds), "global")
        ticket = masks(model)
        model = apply_masks_(copy_model(init), ticket)  # rewind: init values under the mask
        train.fit(model, data, **kw)
    result["rewind"] = train.evaluate(model, data)["acc"]
    control = apply_masks_(copy_model(other), ticket)
    train.fit(control, data, **kw)
    result["random"] = train.evaluate(control, data)["acc"]
    result["sparsity"] = sparsity(model)["global"]
    return result


# --------------------------------------------------------------------------- module helpers


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on pruned models.

    A pruned layer caches ``weight = weight_orig * weight_mask`` from its last forward, a tensor
    with autograd history that ``deepcopy`` refuses; the cache is recomputed by every forward, so
    it is replaced by a detached copy first. Example: ``twin = copy_model(pruned)``
    """
    for m in model.modules():
        if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
            m.weight = m.weight.detach()
    return copy.deepcopy(model)


def _orig(m: nn.Module) -> Tensor:
    """The trainable weight: ``weight_orig`` when pruned, else ``weight``."""
    return m.weight_orig if hasattr(m, "weight_orig") else m.weight


def _mask(m: nn.Module) -> Tensor | None:
    return m.weight_mask if hasattr(m, "weight_mask") else None


def _effective(m: nn.Module) -> Tensor:
    mask = _mask(m)
    return (_orig(m) * mask if mask is not None else _orig(m)).detach()


def _set_mask(m: nn.Module, mask: Tensor, merge: bool = True) -> None:
    """Install ``mask`` on ``m.weight`` (``custom_from_mask``) or overwrite the existing one."""
    old = _mask(m)
    if old is None:
        torch_prune.custom_from_mask(m, "weight", mask)
        m.weight = m.weight.detach()  # a cache the forward recomputes; detached so copies work
        return
    with torch.no_grad():
        old.copy_(mask * old if merge else mask)
        m.weight = m.weight_orig * m.weight_mask  # what the forward pre-hook recomputes


# --------------------------------------------------------------------------- tensor primitives


def amount_to_count(amount: Amount, n: int, name: str = "amount") -> int:
    """torch's rule: an int is a count (<= n), a float in [0, 1) a fraction rounded half-to-even."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ValueError(
            f"{name} must be an int count or a float fraction in [0, 1); got {amount!r}"
        )
    if isinstance(amount, int):
        return check_int(name, amount, minimum=0, maximum=n)
    return round(utils.check_fraction(name, amount) * n)


def magnitude_mask(weight: Tensor, amount: Amount, *, mask: Tensor | None = None) -> Tensor:
    """0/1 mask (weight's shape and dtype) zeroing the ``amount`` smallest ``|weight|`` entries.

    Entries already 0 in ``mask`` are pruned first and stay pruned; ``amount`` counts them.
    Equals ``torch.nn.utils.prune.l1_unstructured``'s mask for an unpruned weight.
    Example: ``magnitude_mask(torch.tensor([0.1, -2.0, 0.5]), 1)  # tensor([0., 1., 1.])``
    """
    return global_masks([weight], amount, masks=[mask])[0]


def global_masks(
    weights: Sequence[Tensor], amount: Amount, *, masks: Sequence[Tensor | None] | None = None
) -> list[Tensor]:
    """One magnitude threshold over all ``weights``: the ``amount`` smallest ``|w|`` overall go.

    Same ranking as ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``.
    Example: ``global_masks([w1, w2], 0.9)  # [mask1, mask2]``
    """
    masks = list(masks) if masks is not None else [None] * len(weights)
    scores = []
    for w, m in zip(weights, masks):
        s = w.detach().abs().reshape(-1)  # (n_i,)
        if m is not None:
            s = torch.where(m.reshape(-1) == 0, torch.full_like(s, -1.0), s)  # pruned go first
        scores.append(s)
    flat = torch.cat(scores)  # (sum n_i,)
    k = amount_to_count(amount, flat.numel())
    keep = torch.ones_like(flat)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = 0
    out, start = [], 0
    for w in weights:
        out.append(keep[start : start + w.numel()].reshape(w.shape).to(w.dtype))
        start += w.numel()
    return out


def cubic_schedule(amount: float, num_stages: int, initial: float = 0.0) -> list[float]:
    """Gradual-pruning targets ``s_t = s_f + (s_i - s_f)(1 - t/n)^3`` for t = 1..n stages.

    Prunes fast while many redundant weights remain, slowly near the end (Zhu & Gupta, 2017).
    Example: ``cubic_schedule(0.9, 3)  # [0.633.., 0.866.., 0.9]``
    """
    n = check_int("num_stages", num_stages, minimum=1)
    utils.check_fraction("amount", amount)
    return [amount + (initial - amount) * (1 - t / n) ** 3 for t in range(1, n + 1)]
