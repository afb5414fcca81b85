"""Knowledge distillation: a small student learns from a large teacher's outputs and insides.

- **Soft targets** (Hinton et al., 2015): ``softened`` turns logits into a temperature-softened
  distribution; ``kd_loss`` is ``alpha * T² * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``.
  ``distill`` trains a classifier on them (``train.fit`` with a distillation loss), optionally on
  a *transfer set* of extra unlabelled inputs that only the teacher labels.
- **Hints** (FitNets, Romero et al., 2015): ``HintLoss`` regresses a student feature onto a teacher
  feature through a learned projection; ``capture`` records intermediate features; ``fit_hints``
  is the FitNets first stage.
- **Attention maps** (after TinyBERT, Jiao et al., 2020): ``attention_maps`` recomputes every
  attention matrix of a GPT/ViT (post-softmax probabilities), ``attention_loss`` matches them
  (TinyBERT itself matches the pre-softmax scores); ``distill_lm`` distils a character model.
- **Layer selection** (after DistilBERT, Sanh et al., 2019): ``init_from_teacher`` builds a
  shallower student from some of the teacher's blocks. Which ones is this course's own rule,
  ``select_layers`` (evenly spaced from the first); it is also the default ``layer_map`` of
  ``attention_loss``, so each student block is compared with the block it was copied from.

Example:
    >>> import torch
    >>> from labkit import distill
    >>> s, t = torch.zeros(2, 10), torch.randn(2, 10)
    >>> round(distill.softened(torch.zeros(4), 2.0).sum().item(), 6)
    1.0
    >>> distill.select_layers(12, 6)  # DistilBERT's released init copied [0, 2, 4, 7, 9, 11]
    [0, 2, 4, 6, 8, 10]
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import models, train, utils
from labkit.data import as_xy
from labkit.utils import check_choice, check_fraction, check_int

__all__ = [
    "TARGETS",
    "check_temperature",
    "softened",
    "kd_loss",
    "gap_closed",
    "transfer_inputs",
    "distill",
    "capture",
    "HintLoss",
    "fit_hints",
    "attention_maps",
    "attention_loss",
    "select_layers",
    "init_from_teacher",
    "distill_lm",
]

TARGETS = ("soft", "hard")
"""What the student learns from the teacher: its softened distribution, or its argmax label."""


def check_temperature(value: Any) -> float:
    """``value`` as a float softmax temperature, or a one-line ValueError unless it is > 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a number > 0; got {value!r}")
    return float(value)


def _alpha(value: Any) -> float:
    return check_fraction("alpha", value, inclusive_high=True)


# --------------------------------------------------------------------------- soft targets


def softened(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The temperature-softened distribution ``softmax(logits / T)`` over the last dimension.

    ``T = 1`` is the ordinary softmax; larger ``T`` flattens it toward uniform and shows how the
    model ranks the wrong classes (the "dark knowledge"); the argmax never changes.
    Example: ``softened(torch.tensor([2.0, 1.0, 0.0]), 4.0)  # tensor([0.41, 0.32, 0.25])``
    """
    temperature = check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)  # (..., C)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    y: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton's distillation loss, averaged over samples (nats): ``alpha * T² *
    KL(softened(teacher, T) || softened(student, T)) + (1 - alpha) * CE(student, y)``.

    The ``T²`` keeps the soft term's gradients the same size whatever the temperature (they scale
    as ``1/T²`` otherwise), so ``alpha`` means the same at every ``T``. Logits are (B, C) or
    (B, T, C) (flattened to rows); ``y`` holds class ids, and ``-1`` marks an unlabelled sample
    (soft term only). ``y`` may be None only when ``alpha == 1``. A teacher logit of ``-inf``
    (a class it rules out) contributes ``0 log 0 = 0``, as in ``F.kl_div``.
    Example: ``loss = kd_loss(student(X), teacher_logits, y, temperature=4.0, alpha=0.9)``
    """
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(student_logits.shape)}; "
            f"got {tuple(teacher_logits.shape)}"
        )
    C = student_logits.shape[-1]
    s = student_logits.reshape(-1, C)  # (N, C)
    t = teacher_logits.reshape(-1, C).detach()  # (N, C), no gradient into the teacher
    log_p_s = F.log_softmax(s / temperature, dim=-1)  # (N, C)
    log_p_t = F.log_softmax(t / temperature, dim=-1)  # (N, C)
    p_t = log_p_t.exp()  # (N, C)
    # p log(p / q) with 0 log 0 = 0 (the xlogy convention of F.kl_div): a class the teacher rules
    # out (logit -inf, p = 0) adds nothing, where 0 * (-inf - log q) would be NaN
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))  # (N, C)
    kl = terms.sum(dim=-1)  # (N,) KL per sample
    loss = alpha * temperature**2 * kl.mean()
    if alpha < 1.0:
        if y is None:
            raise ValueError("y must be given when alpha < 1 (the hard-label term needs labels)")
        y = y.reshape(-1)  # (N,)
        if y.shape[0] != s.shape[0]:
            raise ValueError(f"y must hold {s.shape[0]} labels, one per row; got {y.shape[0]}")
        labelled = y >= 0  # (N,)
        ce = F.cross_entropy(s, y.clamp(min=0), reduction="none") * labelled  # (N,)
        loss = loss + (1.0 - alpha) * ce.sum() / s.shape[0]
    return loss


def gap_closed(student_acc: float, scratch_acc: float, teacher_acc: float) -> float:
    """The fraction of the teacher-scratch accuracy gap a distilled student closes.

    0: no better than training the student alone; 1: as good as the teacher.
    Example: ``gap_closed(0.80, 0.65, 0.95)  # 0.5``
    """
    if teacher_acc == scratch_acc:
        raise ValueError(f"teacher_acc must differ from scratch_acc; both are {teacher_acc}")
    return (student_acc - scratch_acc) / (teacher_acc - scratch_acc)


def transfer_inputs(dataset: str, num_samples: int, seed: int) -> Tensor:
    """Extra *unlabelled* inputs for a transfer set: a fresh generated ``dataset`` (every split),
    labels thrown away. ``seed`` must differ from the training data's so the inputs are new.

    Only generated datasets can make more samples (``mnist1d``); generation is cached on disk.
    Example: ``X_extra = transfer_inputs("mnist1d", 20_000, seed=1)  # (20000, 1, 40)``
    """
    from labkit import data as data_mod

    check_choice("dataset", dataset, ("mnist1d",))
    check_int("num_samples", num_samples, minimum=100)
    extra = data_mod.load(dataset, num_samples=num_samples, seed=check_int("seed", seed, minimum=0))
    return torch.cat([extra.X_train, extra.X_val, extra.X_test])  # (num_samples, *input_shape)


def _packed_loss(
    student_logits: Tensor, packed: Tensor, *, targets: str, temperature: float, alpha: float
) -> Tensor:
    """The loss ``distill`` hands to ``train.fit``: ``packed`` = [label or -1, teacher logits]."""
    y = packed[:, 0].long()  # (B,) true label, -1 when unlabelled
    teacher_logits = packed[:, 1:]  # (B, C)
    if targets == "soft":
        return kd_loss(student_logits, teacher_logits, y, temperature=temperature, alpha=alpha)
    hard = F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))  # teacher's labels
    if alpha == 1.0:
        return alpha * hard
    labelled = y >= 0  # (B,)
    ce = F.cross_entropy(student_logits, y.clamp(min=0), reduction="none") * labelled  # (B,)
    return alpha * hard + (1.0 - alpha) * ce.sum() / len(y)


def distill(
    student: nn.Module,
    teacher: nn.Module | Tensor,
    data: Any,
    *,
    transfer: Tensor | None = None,
    targets: str = "soft",
    temperature: float = 4.0,
    alpha: float = 0.9,
    num_epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    schedule: str = "cosine",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> train.History:
    """Train ``student`` in place to imitate ``teacher`` on ``data`` (plus a transfer set).

    The teacher's logits are computed once (eval mode) for the training inputs followed by the
    ``transfer`` inputs (unlabelled: soft term only); pass a Tensor as ``teacher`` to reuse them.
    ``targets='soft'``: ``kd_loss`` with ``temperature`` and ``alpha``; ``'hard'``: cross-entropy
    on the teacher's argmax labels, weighted by ``alpha`` against the true labels. The rest is
    ``train.fit`` (seeded, deterministic); returns its History.
    Example: ``distill(student, models.pretrained("cnn1d", "mnist1d"), load("mnist1d"))``
    """
    check_choice("targets", targets, TARGETS)
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    X, y = as_xy(data, "train")
    if transfer is not None:
        if not isinstance(transfer, Tensor) or transfer.shape[1:] != X.shape[1:]:
            shape = tuple(getattr(transfer, "shape", ()))
            raise ValueError(
                f"transfer must be a Tensor of inputs shaped "
                f"(M, {', '.join(map(str, X.shape[1:]))}); got {type(transfer).__name__} {shape}"
            )
        X = torch.cat([X, transfer])  # (N + M, ...)
        y = torch.cat([y, torch.full((len(transfer),), -1, dtype=y.dtype)])  # (N + M,)
    if isinstance(teacher, Tensor):
        if teacher.dim() != 2 or len(teacher) != len(X):
            raise ValueError(
                f"teacher logits must have shape ({len(X)}, num_classes) for the training + "
                f"transfer inputs; got {tuple(teacher.shape)}"
            )
        teacher_logits = teacher.float()
    elif isinstance(teacher, nn.Module):
        teacher_logits = train.predict_logits(teacher, X, device=device)  # (N + M, C)
    else:
        raise ValueError(f"teacher must be an nn.Module or a Tensor; got {type(teacher).__name__}")
    packed = torch.cat([y.float()[:, None], teacher_logits], dim=1)  # (N + M, 1 + C)
    loss_fn = functools.partial(_packed_loss, targets=targets, temperature=temperature, alpha=alpha)
    return train.fit(
        student,
        (X, packed),
        val=False,
        num_epochs=num_epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        optimizer=optimizer,
        schedule=schedule,
        loss_fn=loss_fn,
        seed=seed,
        device=device,
        progress=progress,
    )


# --------------------------------------------------------------------------- hints (FitNets)


@contextlib.contextmanager
def capture(model: nn.Module, layers: str | Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules during forward passes inside the block.

    Yields a dict ``name -> output`` refreshed by every forward; hooks are removed afterwards.
    Gradients flow through the recorded tensors (they are the real activations).
    Example: ``with capture(model, "net.2") as feats: model(X); h = feats["net.2"]``
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            shown = ", ".join(n for n in modules if n)
            raise ValueError(f"layers must name submodules of the model ({shown}); got {name!r}")
    store: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            store[name] = output

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class HintLoss(nn.Module):
    """FitNets' hint loss: mean squared error between a learned linear projection of the
    student's feature and the teacher's feature, both flattened per sample.

    The projection (the "regressor") lets a thin student match a wide teacher layer; it is
    trained with the student and thrown away after. ``student_dim`` / ``teacher_dim`` are the
    flattened feature sizes. Example: ``hint = HintLoss(100, 160); hint(h_s, h_t).backward()``
    """

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        check_int("student_dim", student_dim, minimum=1)
        check_int("teacher_dim", teacher_dim, minimum=1)
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        s = student_feat.flatten(1)  # (B, student_dim)
        t = teacher_feat.flatten(1).detach()  # (B, teacher_dim)
        if s.shape[1] != self.proj.in_features or t.shape[1] != self.proj.out_features:
            raise ValueError(
                f"features must flatten to ({self.proj.in_features}, {self.proj.out_features}) "
                f"per sample; got ({s.shape[1]}, {t.shape[1]})"
            )
        return F.mse_loss(self.proj(s), t)  # scalar


def fit_hints(
    student: nn.Module,
    teacher: nn.Module,
    X: Tensor,
    *,
    student_layer: str,
    teacher_layer: str,
    num_epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[HintLoss, list[float]]:
    """FitNets stage 1: train ``student`` (in place, up to ``student_layer``) and a projection so
    the student's ``student_layer`` output predicts the teacher's ``teacher_layer`` output.

    Returns the trained ``HintLoss`` and the mean hint loss per epoch. Seeded: the init of the
    projection and the batch order come from ``seed``; torch's global RNG is left alone.
    Example: ``fit_hints(mlp, cnn, X, student_layer="net.2", teacher_layer="features")``
    """
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)
    was = teacher.training
    teacher.eval()
    with torch.no_grad(), capture(teacher, teacher_layer) as feats:
        chunks = [
            _run(teacher, X[i : i + 1024], feats, teacher_layer) for i in range(0, len(X), 1024)
        ]
    teacher.train(was)
    t_feat = torch.cat(chunks)  # (N, *teacher feature shape)
    with torch.no_grad(), capture(student, student_layer) as feats:
        s_dim = _run(student, X[:1], feats, student_layer).flatten(1).shape[1]
    with utils.seeded(seed):
        hint = HintLoss(s_dim, t_feat[0].numel())
    params = list(student.parameters()) + list(hint.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    was = student.training
    student.train()
    with capture(student, student_layer) as feats:
        for _ in range(num_epochs):
            order = torch.randperm(len(X), generator=generator)  # (N,)
            total = 0.0
            for i in range(0, len(X), batch_size):
                idx = order[i : i + batch_size]
                loss = hint(_run(student, X[idx], feats, student_layer), t_feat[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            losses.append(total / len(X))
    student.train(was)
    return hint, losses


def _run(model: nn.Module, X: Tensor, feats: dict[str, Tensor], layer: str) -> Tensor:
    model(X)
    return feats[layer]


# --------------------------------------------------------------------------- attention (TinyBERT)


def _attention_modules(model: nn.Module) -> list[models.SelfAttention]:
    found = [m for m in model.modules() if isinstance(m, models.SelfAttention)]
    if not found:
        raise ValueError(
            f"model must contain labkit SelfAttention layers (GPT, ViT); got {type(model).__name__}"
        )
    return found


def _attention_probs(attn: models.SelfAttention, x: Tensor) -> Tensor:
    """The attention matrix softmax(q k^T / sqrt(D)) of one SelfAttention for its input x."""
    B, T, C = x.shape
    H = attn.heads
    q, k, _ = attn.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
    q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // H)  # (B, H, T, T)
    if attn.causal:
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1)  # (B, H, T, T), rows sum to 1


@contextlib.contextmanager
def _attention_recorder(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each SelfAttention's attention matrix (in model order) during forward passes."""
    maps: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        maps.append(_attention_probs(module, inputs[0]))

    handles = [m.register_forward_pre_hook(hook) for m in _attention_modules(model)]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run ``model`` on ``x``; return its output and every attention matrix, one per layer.

    Each map is (B, H, T, T) with rows summing to 1 (causal models: zero above the diagonal),
    recomputed from the layer's own q/k projections, so gradients flow through it.
    Example: ``logits, maps = attention_maps(gpt, idx)  # maps[0].shape == (B, 4, T, T)``
    """
    with _attention_recorder(model) as maps:
        out = model(x)
    return out, list(maps)


def attention_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    layer_map: Sequence[int] | None = None,
) -> Tensor:
    """Attention transfer after TinyBERT: the mean squared error between each student attention
    map and the teacher map it is paired with, averaged over every entry and over the pairs.

    What is matched: the attention *probabilities* ``softmax(q k^T / sqrt(D))`` of
    ``attention_maps`` (rows sum to 1; a causal model's masked entries are 0 on both sides and
    add nothing). TinyBERT (Jiao et al., 2020, section 3.1) instead matches the unnormalised scores
    ``q k^T / sqrt(D)`` before the softmax. Matching probabilities is weaker: a zero loss here
    means the scores agree up to a constant per row (softmax ignores such shifts), and the
    ``-inf`` a causal mask puts in the scores never enters the loss.

    ``layer_map[i]`` is the teacher layer for student layer ``i``. The default,
    ``select_layers(N, M)``, is the map ``init_from_teacher`` uses by default: each student block
    is compared with the block it was initialised from. (TinyBERT's own uniform map pairs student
    layer ``i`` with the last teacher layer of its group, ``(i + 1) * N // M - 1``; pass it
    explicitly.) When head counts differ, the maps are averaged over heads first.
    Example: ``attention_loss(attention_maps(s, x)[1], attention_maps(t, x)[1])``
    """
    M, N = len(student_maps), len(teacher_maps)
    if M == 0 or N == 0:
        raise ValueError(f"maps must be non-empty lists; got {M} student and {N} teacher maps")
    if layer_map is None and M > N:
        raise ValueError(
            f"layer_map must be given when student_maps ({M}) outnumber teacher's ({N})"
        )
    layer_map = select_layers(N, M) if layer_map is None else list(layer_map)
    if len(layer_map) != M or not all(isinstance(j, int) and 0 <= j < N for j in layer_map):
        raise ValueError(
            f"layer_map must list {M} teacher layer indices in [0, {N - 1}]; got {layer_map}"
        )
    total = student_maps[0].new_zeros(())
    for s, j in zip(student_maps, layer_map):
        t = teacher_maps[j].detach()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1), t.mean(dim=1)  # (B, T, T) head-averaged
        if s.shape != t.shape:
            raise ValueError(
                f"maps must match in shape; got student {tuple(s.shape)}, teacher {tuple(t.shape)}"
            )
        total = total + F.mse_loss(s, t)
    return total / M


# --------------------------------------------------------------------------- layers (DistilBERT)


def select_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Which teacher blocks initialise the student, by this course's own rule: evenly spaced from
    the first, ``i * N // M``, so half as many layers means every other one (12 -> 6 takes 0, 2,
    4, 6, 8, 10; 2 -> 1 takes block 0).

    DistilBERT (Sanh et al., 2019) says it takes "one layer out of two"; the initialisation script
    released with it (Hugging Face's ``extract_distilbert.py``) copies BERT-base layers
    ``[0, 2, 4, 7, 9, 11]``, which this rule does not reproduce: pass such a list to
    ``init_from_teacher`` (and the same list as ``layer_map``) to follow it.
    Example: ``select_layers(4, 2)  # [0, 2]``
    """
    n = check_int("num_teacher_layers", num_teacher_layers, minimum=1)
    m = check_int("num_student_layers", num_student_layers, minimum=1, maximum=n)
    return [i * n // m for i in range(m)]


def _blocks(model: nn.Module) -> tuple[nn.ModuleList, str, str]:
    """(blocks, attribute path, config field) of a GPT or ViT."""
    if isinstance(model, models.GPT):
        return model.transformer.h, "transformer.h", "n_layer"
    if isinstance(model, models.ViT):
        return model.blocks, "blocks", "depth"
    raise ValueError(f"teacher must be a labkit GPT or ViT; got {type(model).__name__}")


def init_from_teacher(teacher: nn.Module, layers: Sequence[int] | None = None) -> nn.Module:
    """A new, shallower student: a copy of ``teacher`` (GPT or ViT) keeping only the blocks in
    ``layers`` (default: every other one, ``select_layers(n, n // 2)``), in that order.

    Embeddings, final LayerNorm and head are copied too (GPT's weight tying survives); the
    config's layer count is updated; the teacher is untouched. Give ``distill_lm`` the same list
    as ``layer_map`` when it is not the default (``attention_loss`` assumes ``select_layers``).
    Example: ``student = init_from_teacher(models.pretrained("gpt", "pydoc"))``
    """
    blocks, path, field = _blocks(teacher)
    n = len(blocks)
    if layers is None:
        layers = select_layers(n, max(1, n // 2))
    layers = list(layers)
    if not layers or not all(isinstance(i, int) and 0 <= i < n for i in layers):
        raise ValueError(
            f"layers must be a non-empty list of block indices in [0, {n - 1}]; got {layers}"
        )
    student = copy.deepcopy(teacher)
    kept = nn.ModuleList([copy.deepcopy(blocks[i]) for i in layers])
    if path == "transformer.h":
        student.transformer.h = kept
    else:
        student.blocks = kept
    student.config = dataclasses.replace(teacher.config, **{field: len(layers)})
    return student


def distill_lm(
    student: nn.Module,
    teacher: nn.Module,
    text: Any,
    *,
    steps: int = 300,
    temperature: float = 1.0,
    alpha: float = 0.5,
    attention_weight: float = 0.0,
    layer_map: Sequence[int] | None = None,
    batch_size: int = 32,
    block_size: int | None = None,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    grad_clip: float | None = 1.0,
    seed: int = 0,
    eval_batches: int = 4,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> train.History:
    """Distil a character model in place: ``kd_loss`` on every position's next-character logits
    plus ``attention_weight * attention_loss`` between the attention maps. ``layer_map``: the
    teacher block each student block is compared with (default ``select_layers``, the default
    init of ``init_from_teacher``; pass the ``layers`` the student was initialised from).

    The training loop is ``train.fit_lm`` with this loss (``loss_fn``): batches, seeding, AdamW,
    clipping and the History (validation loss in nats/char at 10 points and the end).
    ``alpha=0`` with ``attention_weight=0`` is plain training.
    Example: ``distill_lm(init_from_teacher(gpt), gpt, load("pydoc"), steps=300)``
    """
    temperature, alpha = check_temperature(temperature), _alpha(alpha)
    if isinstance(attention_weight, bool) or not (
        isinstance(attention_weight, (int, float)) and attention_weight >= 0
    ):
        raise ValueError(f"attention_weight must be a number >= 0; got {attention_weight!r}")
    use_maps = attention_weight > 0

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:  # x, y: (B, T)
        with torch.no_grad():
            t_logits, t_maps = attention_maps(teacher, x) if use_maps else (teacher(x), [])
        s_logits, s_maps = attention_maps(model, x) if use_maps else (model(x), [])
        loss = kd_loss(s_logits, t_logits, y, temperature=temperature, alpha=alpha)
        if use_maps:
            loss = loss + attention_weight * attention_loss(s_maps, t_maps, layer_map)
        return loss

    dev = utils.get_device(device)
    with utils.on_device(teacher, dev, training=False):
        return train.fit_lm(
            student, text, steps=steps, batch_size=batch_size, block_size=block_size, lr=lr,
            weight_decay=weight_decay, optimizer="adamw", schedule=schedule, grad_clip=grad_clip,
            seed=seed, eval_batches=eval_batches, device=dev, progress=progress, loss_fn=loss_fn,
        )  # fmt: skip
