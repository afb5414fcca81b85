"""Learned synthetic sets: distribution matching (DM) and gradient matching (DC)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.condense.augment import _same_shift, shift
from labkit.condense.checks import _check_ipc, _check_X, _positive, check_labels, class_counts
from labkit.condense.coresets import class_means, random_select
from labkit.condense.networks import convnet
from labkit.utils import check_choice, check_int

# --------------------------------------------------------------------------- distribution matching


def dm_loss(
    emb_real: Tensor, y_real: Tensor, emb_syn: Tensor, y_syn: Tensor, num_classes: int
) -> Tensor:
    """The distribution-matching loss: ``sum_c || mean(emb_real[y_real == c]) -
    mean(emb_syn[y_syn == c]) ||²`` over the classes present in both (a scalar).

    Example: ``dm_loss(net(X), y, net(X_s), y_s, 10)``
    """
    emb_real = _check_X(emb_real, "emb_real", dims=2)
    emb_syn = _check_X(emb_syn, "emb_syn", dims=2)
    y_real = check_labels(y_real, len(emb_real), "y_real")
    y_syn = check_labels(y_syn, len(emb_syn), "y_syn")
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if int(y_real.max()) >= num_classes or int(y_syn.max()) >= num_classes:
        raise ValueError(f"y_real and y_syn must hold labels < num_classes={num_classes}")
    mean_real = _class_mean(emb_real, y_real, num_classes)  # (C, D), counts (C,)
    mean_syn = _class_mean(emb_syn, y_syn, num_classes)
    both = (mean_real[1] > 0) & (mean_syn[1] > 0)  # (C,)
    return ((mean_real[0] - mean_syn[0]) ** 2).sum(dim=1)[both].sum()


def _class_mean(emb: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype).index_add(0, y, emb)  # (C, D)
    counts = torch.bincount(y, minlength=num_classes)  # (C,)
    return sums / counts.clamp(min=1).unsqueeze(1).to(emb.dtype), counts


def _init_syn(X: Tensor, y: Tensor, ipc: int, init: str, seed: int) -> tuple[Tensor, Tensor]:
    check_choice("init", init, ("real", "noise", "means"))
    if init == "real":
        idx = random_select(y, ipc, seed)
        return X[idx].clone(), y[idx].clone()
    if init == "means":
        X_m, y_m = class_means(X, y)
        return X_m.repeat_interleave(ipc, dim=0), y_m.repeat_interleave(ipc)
    g = torch.Generator().manual_seed(seed)
    classes = torch.tensor(list(class_counts(y)), dtype=torch.long)
    y_s = classes.repeat_interleave(ipc)
    return torch.rand((len(y_s), *X.shape[1:]), generator=g, dtype=X.dtype), y_s


def _real_batch(y: Tensor, per_class: int, g: torch.Generator) -> Tensor:
    """Indices of up to ``per_class`` random samples of every class."""
    picks = []
    for c in class_counts(y):
        members = torch.nonzero(y == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(picks)


def distribution_matching(
    X: Tensor,
    y: Tensor,
    ipc: int,
    *,
    num_iters: int = 100,
    lr: float = 0.1,
    batch_real: int = 32,
    width: int = 16,
    augment: int = 0,
    init: str = "real",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Learn ``ipc`` synthetic images per class by distribution matching (Zhao & Bilen, WACV 2023).

    Each iteration draws a freshly initialised embedding network (``convnet`` without head), embeds
    ``batch_real`` real images per class and all synthetic images (when ``augment`` > 0 both
    batches are moved by one random shift of up to ``augment`` pixels: the siamese augmentation of
    the paper) and takes an SGD step (momentum 0.5, ``lr``) on
    the synthetic pixels against ``dm_loss``. ``init``: 'real' (random real images), 'means' or
    'noise'. Pixels are clamped to the range of ``X`` at the end. Returns ``(X_s, y_s)``.

    Example: ``X_s, y_s = distribution_matching(data.X_train, data.y_train, ipc=10, augment=1)``
    """
    X = _check_X(X, dims=4)
    y = check_labels(y, len(X))
    ipc = _check_ipc(ipc, y)
    num_iters = check_int("num_iters", num_iters, minimum=0)
    batch_real = check_int("batch_real", batch_real, minimum=1)
    augment = check_int("augment", augment, minimum=0, maximum=min(X.shape[2:]) - 1)
    seed = check_int("seed", seed, minimum=0)
    lr = _positive("lr", lr)
    num_classes = int(y.max()) + 1
    X_s, y_s = _init_syn(X, y, ipc, init, seed)
    X_s.requires_grad_(True)
    opt = torch.optim.SGD([X_s], lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    for it in range(num_iters):
        net = convnet(X.shape[1], X.shape[2], None, width=width, seed=seed * 100_003 + it)
        for p in net.parameters():
            p.requires_grad_(False)
        idx = _real_batch(y, batch_real, g)
        real, syn = X[idx], X_s
        if augment:  # one shift for real and synthetic images alike (siamese augmentation)
            real, syn = _same_shift(real, syn, augment, g)
        with torch.no_grad():
            emb_real = net(real)  # (B_real, D)
        loss = dm_loss(emb_real, y[idx], net(syn), y_s, num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return X_s.detach().clamp(float(X.min()), float(X.max())), y_s


# --------------------------------------------------------------------------- gradient matching


def gm_distance(grads_real: Sequence[Tensor], grads_syn: Sequence[Tensor]) -> Tensor:
    """The layer-wise gradient distance of dataset condensation (Zhao et al., ICLR 2021): for every
    weight tensor, flatten each output unit's gradient to a row and sum ``1 - cos`` over rows;
    biases and other 1-D tensors are skipped. Zero when each row points the same way.

    Example: ``gm_distance(torch.autograd.grad(loss_real, params), grads_syn)``
    """
    if len(grads_real) != len(grads_syn):
        raise ValueError(
            f"grads_syn must hold one tensor per real gradient ({len(grads_real)}); "
            f"got {len(grads_syn)}"
        )
    total = torch.zeros(())
    for gr, gs in zip(grads_real, grads_syn):
        if gr.shape != gs.shape:
            raise ValueError(f"gradients must have equal shapes; got {gr.shape} and {gs.shape}")
        if gr.dim() == 1:
            continue
        a, b = gr.flatten(1), gs.flatten(1)  # (out, fan_in)
        cos = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)  # (out,)
        total = total + (1 - cos).sum()
    return total


def gradient_matching(
    X: Tensor,
    y: Tensor,
    ipc: int,
    *,
    num_iters: int = 20,
    outer_loop: int = 5,
    inner_loop: int = 5,
    lr: float = 0.1,
    lr_net: float = 0.01,
    batch_real: int = 64,
    width: int = 16,
    augment: int = 0,
    init: str = "real",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Learn ``ipc`` synthetic images per class by gradient matching (dataset condensation).

    ``num_iters`` times: a fresh ``convnet`` (with head); then ``outer_loop`` rounds of (for each
    class: the gradient of the cross-entropy on ``batch_real`` real images and on the synthetic
    images of that class, matched with ``gm_distance``; one SGD step on the synthetic pixels) each
    followed by ``inner_loop`` SGD steps (``lr_net``) of the network on the synthetic set — so the
    images are matched along a training trajectory. ``augment``: as in ``distribution_matching``.
    A CPU-sized version of the paper's schedule.
    Example: ``X_s, y_s = gradient_matching(data.X_train, data.y_train, ipc=1, num_iters=10)``
    """
    X = _check_X(X, dims=4)
    y = check_labels(y, len(X))
    ipc = _check_ipc(ipc, y)
    num_iters = check_int("num_iters", num_iters, minimum=0)
    outer_loop = check_int("outer_loop", outer_loop, minimum=1)
    inner_loop = check_int("inner_loop", inner_loop, minimum=0)
    batch_real = check_int("batch_real", batch_real, minimum=1)
    augment = check_int("augment", augment, minimum=0, maximum=min(X.shape[2:]) - 1)
    seed = check_int("seed", seed, minimum=0)
    lr, lr_net = _positive("lr", lr), _positive("lr_net", lr_net)
    num_classes = int(y.max()) + 1
    X_s, y_s = _init_syn(X, y, ipc, init, seed)
    X_s.requires_grad_(True)
    opt = torch.optim.SGD([X_s], lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    classes = list(class_counts(y))
    by_class = {c: torch.nonzero(y == c).flatten() for c in classes}
    for it in range(num_iters):
        net = convnet(X.shape[1], X.shape[2], num_classes, width=width, seed=seed * 100_003 + it)
        params = [p for p in net.parameters()]
        net_opt = torch.optim.SGD(params, lr=lr_net)
        for ol in range(outer_loop):
            loss = torch.zeros(())
            for c in classes:
                members = by_class[c]
                idx = members[torch.randperm(len(members), generator=g)[:batch_real]]
                real, syn = X[idx], X_s[y_s == c]
                if augment:
                    real, syn = _same_shift(real, syn, augment, g)
                g_real = torch.autograd.grad(F.cross_entropy(net(real), y[idx]), params)
                g_real = [t.detach() for t in g_real]
                syn_loss = F.cross_entropy(net(syn), y_s[y_s == c])
                g_syn = torch.autograd.grad(syn_loss, params, create_graph=True)
                loss = loss + gm_distance(g_real, g_syn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ol == outer_loop - 1:
                break
            syn_data = X_s.detach()
            for _ in range(inner_loop):
                batch = shift(syn_data, augment, g) if augment else syn_data
                step_loss = F.cross_entropy(net(batch), y_s)
                net_opt.zero_grad(set_to_none=True)
                step_loss.backward()
                net_opt.step()
    return X_s.detach().clamp(float(X.min()), float(X.max())), y_s
