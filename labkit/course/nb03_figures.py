"""Notebook 03 (pruning): its exercise check and the speed section's measurements and text.

The check compares a student's channel pruning with ``torch.nn.utils.prune.ln_structured``;
the speed section times dense, sparse and channel-pruned variants in one interleaved run
(``measure.compare_latency``) and writes the paragraph from what it measured.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from labkit import measure, prune, sweep
from labkit.prune import structured as ps
from labkit.utils import check_int

__all__ = [
    "check_iterative_prune",
    "check_shrink_conv_pair",
    "batch_of",
    "pruned_variants",
    "time_variants",
    "latency_curve",
    "results_markdown",
]


# --------------------------------------------------------------------------- the notebook's checks


def check_iterative_prune(
    iterative_prune: Callable[..., list[list[Tensor]]],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    sparsities: Sequence[float],
    steps_per_stage: int,
    lr: float,
) -> None:
    """Check ``iterative_prune(model, x, y, sparsities, steps_per_stage, lr)`` (exercise 4).

    The reference runs on a twin of ``model``: at stage k
    ``torch.nn.utils.prune.global_unstructured`` (``L1Unstructured``) removes the
    ``round(s_k * N) - round(s_(k-1) * N)`` smallest ``|w|`` of the weights still unpruned (N: the
    weights of all Linear / Conv layers), then takes ``steps_per_stage`` full-batch SGD steps on
    the cross-entropy of ``(x, y)``. The returned masks (one list per stage, one 0/1 tensor per
    layer in model order) must have exactly ``round(s_k * N)`` zeros, be nested, equal the
    reference's masks, and leave the model's pruned weights exactly zero and its weights and
    biases close to the reference's. ``model`` is left untouched. Raises AssertionError naming
    what differs.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> def keep_all(model, x, y, sparsities, steps, lr):  # right only at sparsity 0
        ...     return [[torch.ones_like(model[0].weight)] for _ in sparsities]
        >>> x, y = torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
        >>> check_iterative_prune(keep_all, net, x, y, [0.0], 0, 0.1)
    """
    student, ref = copy.deepcopy(model), copy.deepcopy(model)
    masks = iterative_prune(student, x, y, list(sparsities), steps_per_stage, lr)
    layers = [m for m in ref.modules() if isinstance(m, prune.PRUNABLE)]
    mine = [m for m in student.modules() if isinstance(m, prune.PRUNABLE)]
    total = sum(m.weight.numel() for m in layers)
    if len(masks) != len(sparsities):
        raise AssertionError(f"one list of masks per stage: {len(sparsities)} expected")
    previous, done = None, 0
    for k, (s, stage) in enumerate(zip(sparsities, masks)):
        if len(stage) != len(layers):
            raise AssertionError(f"stage {k}: one mask per Linear/Conv layer ({len(layers)})")
        stage = [m.detach().float() for m in stage]
        if any(m.shape != layer.weight.shape for m, layer in zip(stage, layers)):
            raise AssertionError(f"stage {k}: each mask has its layer's weight shape")
        target = round(s * total)
        zeros = sum(int((m == 0).sum()) for m in stage)
        if zeros != target:
            raise AssertionError(f"stage {k}: {zeros} weights pruned, {target} expected")
        if previous is not None and any(bool((m > p).any()) for m, p in zip(stage, previous)):
            raise AssertionError(f"stage {k}: a weight pruned at an earlier stage came back")
        params = [(layer, "weight") for layer in layers]
        scores = {p: _effective_weight(p[0]) for p in params}  # the weights as they are now
        torch_prune.global_unstructured(
            params,
            pruning_method=torch_prune.L1Unstructured,
            importance_scores=scores,
            amount=target - done,
        )
        differ = sum(int((m != layer.weight_mask).sum()) for m, layer in zip(stage, layers))
        if differ:
            raise AssertionError(
                f"stage {k}: {differ} mask entries differ from torch's global_unstructured on the "
                "same weights: not the smallest magnitudes"
            )
        opt = torch.optim.SGD(ref.parameters(), lr=lr)
        for _ in range(steps_per_stage):
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x), y).backward()
            opt.step()
        previous, done = stage, target
    if previous is not None:
        for k, (m, layer) in enumerate(zip(previous, mine)):
            if bool((layer.weight.detach()[m == 0] != 0).any()):
                raise AssertionError(f"layer {k}: a pruned weight of the model is not zero")
    for k, (m, layer) in enumerate(zip(mine, layers)):
        if not torch.allclose(m.weight.detach(), _effective_weight(layer), atol=1e-4):
            raise AssertionError(
                f"layer {k}: weights differ from the reference's (SGD on the cross-entropy, "
                "masks re-applied after every step)"
            )
        if layer.bias is not None and not torch.allclose(m.bias.detach(), layer.bias, atol=1e-4):
            raise AssertionError(f"layer {k}: biases differ from the reference's")


def _effective_weight(layer: nn.Module) -> Tensor:
    """``weight_orig * weight_mask`` of a pruned layer, else ``weight``.

    A pruned layer's ``weight`` is recomputed by its next forward, so it is stale after a step.
    """
    if hasattr(layer, "weight_mask"):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def check_shrink_conv_pair(
    shrink: Callable[[nn.Conv2d, nn.Conv2d, float], tuple[nn.Conv2d, nn.Conv2d]],
    conv1: nn.Conv2d,
    conv2: nn.Conv2d,
    amount: float,
    x: Tensor,
) -> None:
    """Check ``shrink(conv1, conv2, amount)`` (exercise 3) against ``torch.nn.utils.prune``.

    The small ``conv1`` must keep exactly the filters ``prune.ln_structured(n=1, dim=0)`` keeps, in
    order, the small ``conv2`` the matching input channels, and the pair must compute on ``x``
    (B, C, H, W) what the big pair computes with the dropped filters (and biases) zeroed, through
    a ReLU. Raises AssertionError naming what differs.

    Example:
        >>> def shrink(c1, c2, amount):  # keeps every filter: right only when none is dropped
        ...     return c1, c2
        >>> c1, c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1)
        >>> check_shrink_conv_pair(shrink, c1, c2, 0.0, torch.randn(1, 1, 5, 5))
    """
    s1, s2 = shrink(conv1, conv2, amount)
    ref = copy.deepcopy(conv1)  # the filters torch's L1 structured pruning keeps
    torch_prune.ln_structured(ref, "weight", amount=amount, n=1, dim=0)
    kept = ref.weight_mask.flatten(1).amax(dim=1).nonzero().flatten()  # (kept,)
    if not (s1.out_channels == len(kept) and s2.in_channels == len(kept)):
        raise AssertionError(f"{len(kept)} filters should remain")
    if not torch.equal(s1.weight, conv1.weight[kept]):
        raise AssertionError("not the filters ln_structured keeps")
    masked = copy.deepcopy(conv1)  # same shape, dropped filters zeroed
    with torch.no_grad():
        drop = torch.ones(conv1.out_channels, dtype=torch.bool)
        drop[kept] = False
        masked.weight[drop] = 0
        if masked.bias is not None:
            masked.bias[drop] = 0
    expected = conv2(torch.relu(masked(x)))
    if not torch.allclose(s2(torch.relu(s1(x))), expected, atol=1e-5):
        raise AssertionError("outputs differ")


# --------------------------------------------------------------------------- the speed section


def batch_of(X: Tensor, n: int) -> Tensor:
    """A batch of ``n`` inputs from ``X``, repeating its samples in order if it holds fewer.

    ``X``: (N, *input_shape); returns (n, *input_shape).

    Example:
        >>> batch_of(torch.arange(3), 5)
        tensor([0, 1, 2, 0, 1])
    """
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor; got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError("X must hold at least one sample; got none")
    n = check_int("n", n, minimum=1)
    return X[torch.arange(n) % len(X)]  # (n, *input_shape), repeating samples if needed


def pruned_variants(
    model: nn.Module, channel_amounts: Sequence[float], sparsity: float = 0.9
) -> dict[str, nn.Module]:
    """The variants timed in section 9: dense, unstructured, and channel-pruned copies of ``model``.

    ``"dense"`` is ``model`` itself; ``f"{sparsity:.0%} unstructured"`` is the global magnitude
    pruning with its masks folded in (a dense matrix full of zeros); ``f"{a:.0%} channels"`` is
    ``ps.prune_channels(model, a)`` for each of ``channel_amounts``, in that order.

    Example:
        >>> from labkit import models
        >>> mlp = models.build("mlp", in_features=8, hidden=(16,), num_classes=3)
        >>> list(pruned_variants(mlp, [0.5]))
        ['dense', '90% unstructured', '50% channels']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    return {
        "dense": model,
        f"{sparsity:.0%} unstructured": prune.remove(prune.magnitude(model, sparsity, "global")),
        **{f"{a:.0%} channels": ps.prune_channels(model, a) for a in channel_amounts},
    }


def time_variants(
    groups: Mapping[str, tuple[Mapping[str, nn.Module], Tensor]],
    batches: Sequence[int],
    threads: int | None = None,
    repeats: int = 30,
    min_time_s: float = 0.3,
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``measure.compare_latency`` of each group's variants at each batch size.

    ``groups[name] = (variants, X)``: the models to compare (the first is the baseline of
    ``speedup``) and the inputs a batch is drawn from (``batch_of``). Returns
    ``{(name, variant, batch): result}`` in group, batch, variant order; each result is
    ``compare_latency``'s (``median_ms``, ``speedup``, ...).
    Example: ``time_variants({"mlp": (pruned_variants(mlp, [0.5]), X)}, [1, 256])``
    """
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"groups must be a mapping name -> (variants, X); got {type(groups).__name__}"
        )
    timings = {}
    for name, (variants, X) in groups.items():
        for batch in batches:
            result = measure.compare_latency(
                variants,
                batch_of(X, batch),
                threads=threads,
                repeats=repeats,
                min_time_s=min_time_s,
            )
            for variant, r in result.items():
                timings[(name, variant, batch)] = r
    return timings


def latency_curve(
    latency_ms: Mapping[str, float],
    dense_acc: float,
    summary: Sequence[Mapping[str, Any]],
    channel_summary: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Accuracy against measured latency, one record per model (``plots.accuracy_vs_size``).

    ``latency_ms``: the median latency of each of ``pruned_variants``' names; ``dense_acc``: the
    dense model's accuracy; ``summary``: the unstructured sweep's mean rows (its global, 90 % row
    is used); ``channel_summary``: the structured sweep's mean rows (``amount``, ``acc``,
    ``acc_scratch``). Returns ``{"method", "latency_ms", "acc"}`` records.

    Example:
        >>> curve = latency_curve({"dense": 2.0, "90% unstructured": 2.0, "50% channels": 1.0},
        ...                       0.9, [{"scope": "global", "amount": 0.9, "acc": 0.88}],
        ...                       [{"amount": 0.5, "acc": 0.89, "acc_scratch": 0.87}])
        >>> [(r["latency_ms"], r["acc"]) for r in curve]
        [(2.0, 0.9), (2.0, 0.88), (1.0, 0.89), (1.0, 0.87)]
    """
    points = [{"method": "dense", "latency_ms": latency_ms["dense"], "acc": dense_acc}]
    points += [
        {"method": "unstructured (masked dense)", "latency_ms": latency_ms["90% unstructured"],
         "acc": r["acc"]}
        for r in sweep.select(summary, scope="global", amount=0.9)
    ]  # fmt: skip
    for method, acc in (("channels pruned + fine-tuned", "acc"),
                        ("smaller dense, from scratch", "acc_scratch")):  # fmt: skip
        points += [
            {"method": method, "latency_ms": latency_ms[f"{r['amount']:.0%} channels"],
             "acc": r[acc]}
            for r in channel_summary
        ]  # fmt: skip
    return points


def results_markdown(
    best: Mapping[str, Any],
    best_layer: Mapping[str, Any],
    dense: Mapping[str, Any],
    dense_bytes: float,
    timings: Mapping[tuple[str, str, int], Mapping[str, Any]],
    channel_summary: Sequence[Mapping[str, Any]],
    *,
    seeds: int,
    threads: int,
    batch: int,
) -> str:
    """Section 11's paragraph, "what pruning bought here", in Markdown.

    ``best``/``best_layer``: the global and layer-wise summary rows at the largest sparsity
    within one point of dense; ``dense``: the dense row (``acc_pruned``, ``acc_pruned_std``);
    ``dense_bytes``: its packed bytes; ``timings``: ``time_variants`` of the ``"mlp"`` and
    ``"dscnn"`` groups at batch 1 and ``batch``; ``channel_summary``: the structured sweep's rows
    (the last: the most neurons removed); ``seeds``, ``threads``: how the run was made.
    Example: ``display(Markdown(results_markdown(best, best_layer, dense, ..., batch=256)))``
    """
    seeds, threads = check_int("seeds", seeds, minimum=1), check_int("threads", threads, minimum=1)
    half = timings[("dscnn", "50% channels", batch)]
    half_mlp = timings[("mlp", "50% channels", batch)]
    masked = timings[("mlp", "90% unstructured", batch)]
    masked_cnn = timings[("dscnn", "90% unstructured", batch)]
    one = {m: timings[(m, "50% channels", 1)]["speedup"] for m in ("dscnn", "mlp")}
    cut = channel_summary[-1]  # the most neurons removed
    return (
        f"**This run** ({seeds} seeds, {threads} thread(s)): the globally pruned and "
        f"fine-tuned MLP stayed within one point of the dense accuracy up to "
        f"**{best['amount']:.0%} sparsity** ({best['acc']:.1%} ± {best['acc_std']:.1%} against "
        f"{dense['acc_pruned']:.1%} ± {dense['acc_pruned_std']:.1%} dense; layer-wise pruning "
        f"held to {best_layer['amount']:.0%}). Shipped with the sparse encoding it takes "
        f"**{dense_bytes / best['bytes_auto']:.1f}× fewer bytes** ({best['bytes_auto']:,.0f} "
        f"against {dense_bytes:,.0f}). Removing **half of the channels** made the DSCNN "
        f"**{half['speedup']:.2f}×** and the MLP **{half_mlp['speedup']:.2f}×** faster at batch "
        f"{batch} ({one['dscnn']:.2f}× and {one['mlp']:.2f}× at batch 1); 90 % "
        f"unstructured sparsity gave {masked['speedup']:.2f}× (MLP) and "
        f"{masked_cnn['speedup']:.2f}× (DSCNN). With {cut['amount']:.0%} of the neurons removed, "
        f"the fine-tuned MLP reached {cut['acc']:.1%} and the same small MLP trained from scratch "
        f"{cut['acc_scratch']:.1%}."
    )
