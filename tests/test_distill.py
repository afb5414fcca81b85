"""labkit.distill: the KD loss against a direct formula and its T² property, hints, attention
maps against PyTorch's attention, layer-selection init, and the seeded training loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import distill, models, train


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _gpt(n_layer: int = 4, n_head: int = 2, n_embd: int = 16, seed: int = 0) -> models.GPT:
    torch.manual_seed(seed)
    config = models.GPTConfig(
        vocab_size=11, block_size=8, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    return models.GPT(config).eval()


# --------------------------------------------------------------------------- softened


def test_softened_is_softmax_at_t1_and_flattens_with_t():
    z = _logits(5, 10)
    assert torch.allclose(distill.softened(z, 1.0), torch.softmax(z, dim=-1))
    entropies = []
    for T in (0.5, 1.0, 2.0, 4.0, 16.0):
        p = distill.softened(z, T)
        assert torch.allclose(p.sum(-1), torch.ones(5))
        assert torch.equal(p.argmax(-1), z.argmax(-1))
        entropies.append(-(p * p.log()).sum(-1))
    for lo, hi in zip(entropies, entropies[1:]):
        assert (hi > lo).all()
    assert torch.allclose(distill.softened(z, 1e6), torch.full((5, 10), 0.1), atol=1e-5)
    assert torch.allclose(distill.softened(z + 7.0, 3.0), distill.softened(z, 3.0), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "2", True])
def test_softened_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature must be"):
        distill.softened(torch.zeros(3), bad)


# --------------------------------------------------------------------------- kd_loss


def _direct_kd(s, t, y, T, alpha):
    """Hinton's loss written out: T² Σ p_t log(p_t / p_s), averaged, mixed with cross-entropy."""
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(-1, keepdim=True)
    p_s = torch.exp(s / T) / torch.exp(s / T).sum(-1, keepdim=True)
    soft = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    q = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
    hard = -q[torch.arange(len(y)), y].log().mean()
    return alpha * soft + (1 - alpha) * hard


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (8.0, 0.0)])
def test_kd_loss_matches_direct_formula_and_torch_kl_div(T, alpha):
    s, t = _logits(16, 10, seed=1), _logits(16, 10, seed=2)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    ours = distill.kd_loss(s, t, y, temperature=T, alpha=alpha)
    assert torch.allclose(ours, _direct_kd(s.double(), t.double(), y, T, alpha).float(), atol=1e-5)
    kl = F.kl_div(
        F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True
    )
    ref = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(ours, ref, atol=1e-5)


def _old_kd_soft(s, t, T):
    """The soft term as first written, exp(log p_t) * (log p_t - log p_s): NaN at a -inf logit."""
    log_p_s, log_p_t = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def test_kd_loss_takes_0_log_0_as_0_when_the_teacher_rules_out_classes():
    s = _logits(8, 10, seed=10).double()
    t = _logits(8, 10, seed=11).double()
    t[:, 3] = float("-inf")  # a class the teacher rules out everywhere
    t[0, :5] = float("-inf")  # and half the classes of one sample
    for T in (1.0, 4.0):
        p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
        xlogy = (torch.special.xlogy(p_t, p_t) - torch.special.xlogy(p_t, p_s)).sum(-1).mean()
        kl_div = F.kl_div(F.log_softmax(s / T, -1), p_t, reduction="batchmean")  # xlogy inside
        ours = distill.kd_loss(s, t, temperature=T, alpha=1.0)
        assert torch.isfinite(ours) and torch.isnan(_old_kd_soft(s, t, T))
        assert torch.allclose(ours, T * T * xlogy) and torch.allclose(ours, T * T * kl_div)
        s_req = s.clone().requires_grad_()
        (grad,) = torch.autograd.grad(distill.kd_loss(s_req, t, temperature=T, alpha=1.0), s_req)
        assert torch.allclose(grad, T * (p_s - p_t) / len(s))  # finite, the usual gradient
    s[:, 3] = float("-inf")  # the student rules the same class out: still 0, not NaN
    assert torch.isfinite(distill.kd_loss(s, t, temperature=2.0, alpha=1.0))
    s[0, 7] = float("-inf")  # a class the teacher allows: the divergence is infinite
    assert distill.kd_loss(s, t, temperature=2.0, alpha=1.0) == float("inf")


def test_kd_loss_on_finite_logits_is_bitwise_the_old_formula():
    s, t = _logits(32, 10, seed=12), _logits(32, 10, seed=13, scale=40.0)  # some p_t underflow
    for T in (0.5, 1.0, 4.0):
        assert torch.equal(distill.kd_loss(s, t, temperature=T, alpha=1.0), _old_kd_soft(s, t, T))
        s_a, s_b = s.clone().requires_grad_(), s.clone().requires_grad_()
        distill.kd_loss(s_a, t, temperature=T, alpha=1.0).backward()
        _old_kd_soft(s_b, t, T).backward()
        assert torch.equal(s_a.grad, s_b.grad)


def test_kd_loss_is_zero_when_student_equals_teacher():
    t = _logits(8, 10)
    assert distill.kd_loss(t.clone(), t, temperature=3.0, alpha=1.0).abs() < 1e-6


def test_kd_loss_gradient_is_t_times_probability_difference():
    s, t = _logits(6, 10, seed=4).requires_grad_(), _logits(6, 10, seed=5)
    for T in (1.0, 3.0, 10.0):
        (grad,) = torch.autograd.grad(distill.kd_loss(s, t, temperature=T, alpha=1.0), s)
        expected = T * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1)) / len(s)
        assert torch.allclose(grad, expected, atol=1e-6)


def test_t_squared_keeps_gradient_scale_constant_across_temperatures():
    s, t = _logits(32, 10, seed=6, scale=1.0), _logits(32, 10, seed=7, scale=1.0)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)  # zero-mean logits
    s.requires_grad_()
    norms = {}
    for T in (10.0, 20.0, 40.0):
        (grad,) = torch.autograd.grad(distill.kd_loss(s, t, temperature=T, alpha=1.0), s)
        norms[T] = grad.norm().item()
        # high-temperature limit (Hinton et al. 2015, section 2.1): (z_s - z_t) / (C * B)
        limit = (s.detach() - t) / (10 * len(s))
        assert (grad - limit).norm() < (2.0 / T) * limit.norm()
    assert abs(norms[40.0] / norms[10.0] - 1) < 0.05  # without T² the ratio would be 1/16
    raw = {T: norms[T] / T**2 for T in norms}
    assert abs(raw[40.0] / raw[10.0] - 1 / 16) < 0.01


def test_kd_loss_handles_sequences_and_unlabelled_rows():
    s, t = _logits(2, 5, 7, seed=8), _logits(2, 5, 7, seed=9)
    y = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    flat = distill.kd_loss(s.reshape(10, 7), t.reshape(10, 7), y.reshape(10), alpha=0.3)
    assert torch.allclose(distill.kd_loss(s, t, y, alpha=0.3), flat)
    s2, t2, y2 = s.reshape(10, 7), t.reshape(10, 7), y.reshape(10).clone()
    y2[5:] = -1
    soft = distill.kd_loss(s2, t2, temperature=4.0, alpha=1.0)
    ce = F.cross_entropy(s2[:5], y2[:5], reduction="sum") / 10
    ours = distill.kd_loss(s2, t2, y2, temperature=4.0, alpha=0.6)
    assert torch.allclose(ours, 0.6 * soft + 0.4 * ce, atol=1e-6)


def test_kd_loss_rejects_bad_arguments():
    s = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="y must be given"):
        distill.kd_loss(s, s, alpha=0.5)
    with pytest.raises(ValueError, match="alpha must be"):
        distill.kd_loss(s, s, alpha=1.5)
    with pytest.raises(ValueError, match="teacher_logits must have"):
        distill.kd_loss(s, torch.zeros(4, 5), alpha=1.0)
    with pytest.raises(ValueError, match="y must hold 4"):
        distill.kd_loss(s, s, torch.zeros(3, dtype=torch.long), alpha=0.5)


def test_gap_closed():
    assert distill.gap_closed(0.80, 0.65, 0.95) == pytest.approx(0.5)
    assert distill.gap_closed(0.65, 0.65, 0.95) == 0.0
    with pytest.raises(ValueError, match="teacher_acc must differ"):
        distill.gap_closed(0.7, 0.6, 0.6)


# --------------------------------------------------------------------------- distill


def _toy(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 12, generator=g)
    y = (X[:, 0, :6].sum(1) > X[:, 0, 6:].sum(1)).long() + 2 * (X[:, 0, 0] > 0).long()  # 4 classes
    return X, y


def _mlp(seed=0, hidden=(16,)):
    torch.manual_seed(seed)
    return models.MLP(models.MLPConfig(in_features=12, hidden=hidden, num_classes=4))


def test_distill_is_seeded_and_learns_the_teacher():
    X, y = _toy()
    teacher = _mlp(1, hidden=(64,))
    train.fit(teacher, (X, y), num_epochs=30, lr=1e-2, val=False, progress=False)
    extra = _toy(seed=5)[0]
    runs = []
    for _ in range(2):
        student = _mlp(2)
        before = (student(X).argmax(1) == teacher(X).argmax(1)).float().mean()
        hist = distill.distill(
            student, teacher, (X, y), transfer=extra, num_epochs=15, lr=1e-2, progress=False
        )
        runs.append(student.state_dict())
    after = (student(X).argmax(1) == teacher(X).argmax(1)).float().mean()
    assert after > before + 0.2 and len(hist.train_loss) == 15
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    hard = _mlp(2)
    distill.distill(
        hard, teacher, (X, y), targets="hard", alpha=1.0, num_epochs=15, lr=1e-2, progress=False
    )
    assert (hard(X).argmax(1) == teacher(X).argmax(1)).float().mean() > before + 0.2


def test_distill_accepts_precomputed_logits_and_checks_them():
    X, y = _toy()
    teacher = _mlp(1)
    logits = train.predict_logits(teacher, X)
    a, b = _mlp(2), _mlp(2)
    distill.distill(a, teacher, (X, y), num_epochs=2, progress=False)
    distill.distill(b, logits, (X, y), num_epochs=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="teacher logits must have shape"):
        distill.distill(_mlp(), logits[:10], (X, y), progress=False)
    with pytest.raises(ValueError, match="transfer must be a Tensor"):
        distill.distill(_mlp(), teacher, (X, y), transfer=torch.zeros(5, 3), progress=False)
    with pytest.raises(ValueError, match="targets must be one of"):
        distill.distill(_mlp(), teacher, (X, y), targets="medium", progress=False)
    with pytest.raises(ValueError, match="teacher must be"):
        distill.distill(_mlp(), "cnn", (X, y), progress=False)


# --------------------------------------------------------------------------- hints


def test_capture_records_the_real_activation():
    model = _mlp(hidden=(16, 8))
    X = _toy()[0][:5]
    with distill.capture(model, ["net.2", "net.4"]) as feats:
        out = model(X)
    assert torch.allclose(feats["net.2"], model.net[:3](X))
    assert torch.allclose(feats["net.4"], model.net[:5](X))
    assert torch.allclose(out, model(X))
    assert not model.net[2]._forward_hooks  # hooks removed
    with pytest.raises(ValueError, match="layers must name submodules"):
        with distill.capture(model, "nope"):
            pass


def test_hint_loss_is_mse_through_the_projection():
    hint = distill.HintLoss(6, 10)
    s = torch.randn(4, 2, 3, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    loss = hint(s, t)
    assert torch.allclose(loss, F.mse_loss(hint.proj(s.flatten(1)), t))
    loss.backward()
    assert s.grad is not None and hint.proj.weight.grad is not None and t.grad is None
    assert hint(s, hint.proj(s.flatten(1))).item() < 1e-12
    with pytest.raises(ValueError, match="features must flatten"):
        hint(torch.randn(4, 5), t)


def test_fit_hints_reduces_the_hint_loss():
    X, y = _toy()
    teacher = models.CNN1d(models.CNN1dConfig(length=12, channels=(8,), num_classes=4))
    student = _mlp(hidden=(16,))
    hint, losses = distill.fit_hints(
        student, teacher, X, student_layer="net.2", teacher_layer="features", num_epochs=8, lr=1e-2
    )
    assert losses[-1] < 0.7 * losses[0]
    assert hint.proj.in_features == 16 and hint.proj.out_features == 8 * 6


# --------------------------------------------------------------------------- attention maps


def test_attention_maps_reproduce_pytorch_attention():
    gpt = _gpt(n_layer=3, n_head=2)
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    out, maps = distill.attention_maps(gpt, idx)
    assert torch.equal(out, gpt(idx)) and len(maps) == 3
    x = gpt.transformer.wte(idx) + gpt.transformer.wpe(torch.arange(8))  # (B, T, C)
    for block, A in zip(gpt.transformer.h, maps):
        assert A.shape == (3, 2, 8, 8)
        assert torch.allclose(A.sum(-1), torch.ones(3, 2, 8), atol=1e-6)
        assert (A.triu(1) == 0).all()  # causal
        h = block.ln_1(x)
        _, _, v = block.attn.c_attn(h).split(16, dim=2)
        v = v.view(3, 8, 2, 8).transpose(1, 2)  # (B, H, T, D)
        y = (A @ v).transpose(1, 2).reshape(3, 8, 16)
        assert torch.allclose(block.attn.c_proj(y), block.attn(h), atol=1e-5)
        x = block(x)


def test_attention_maps_work_for_vit_and_reject_other_models():
    torch.manual_seed(0)
    vit = models.ViT(models.ViTConfig(dim=16, depth=2, heads=2)).eval()
    _, maps = distill.attention_maps(vit, torch.rand(2, 1, 8, 8))
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17) and (maps[0].triu(1) > 0).any()
    with pytest.raises(ValueError, match="SelfAttention"):
        distill.attention_maps(_mlp(), torch.zeros(1, 1, 12))


def test_attention_loss():
    a = [torch.softmax(torch.randn(2, 2, 5, 5), -1) for _ in range(4)]
    assert distill.attention_loss(a, a).item() == 0.0
    b = [torch.softmax(torch.randn(2, 2, 5, 5), -1) for _ in range(2)]
    # the default follows the default init (select_layers): student 0 -> teacher 0, 1 -> 2
    expected = (F.mse_loss(b[0], a[0]) + F.mse_loss(b[1], a[2])) / 2
    assert torch.allclose(distill.attention_loss(b, a), expected)
    # TinyBERT's uniform mapping, passed explicitly: student 0 -> teacher 1, student 1 -> teacher 3
    expected = (F.mse_loss(b[0], a[1]) + F.mse_loss(b[1], a[3])) / 2
    assert torch.allclose(distill.attention_loss(b, a, [1, 3]), expected)
    one_head = [m.mean(1, keepdim=True) for m in b]
    assert distill.attention_loss(one_head, b).item() == 0.0  # heads averaged first
    swapped = F.mse_loss(b[0].mean(1), b[1].mean(1))
    assert torch.allclose(distill.attention_loss(one_head, b, [1, 0]), swapped)
    with pytest.raises(ValueError, match="layer_map must list 2"):
        distill.attention_loss(b, a, [0, 4])
    with pytest.raises(ValueError, match="layer_map must be given"):
        distill.attention_loss(a, b)
    assert torch.allclose(distill.attention_loss(a[:3], b, [0, 1, 1]), distill.attention_loss(
        a[:3], [b[0], b[1], b[1]], [0, 1, 2]))  # fmt: skip


@pytest.mark.parametrize("n_layer", [2, 4, 6])
def test_default_attention_map_pairs_each_block_with_the_block_it_was_copied_from(n_layer):
    """Right after the default init, student block 0 *is* teacher block 0 on the same input: the
    default map must compare it with that block, so its term is exactly zero."""
    teacher = _gpt(n_layer=n_layer)
    student = distill.init_from_teacher(teacher)
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(4))
    _, s_maps = distill.attention_maps(student, idx)
    _, t_maps = distill.attention_maps(teacher, idx)
    layers = distill.select_layers(n_layer, n_layer // 2)
    assert distill.attention_loss(s_maps[:1], t_maps, layers[:1]).item() == 0.0
    if n_layer == 2:  # one student block: the whole default loss is that term
        assert distill.attention_loss(s_maps, t_maps).item() == 0.0
    default = distill.attention_loss(s_maps, t_maps)
    assert torch.equal(default, distill.attention_loss(s_maps, t_maps, layers))


# --------------------------------------------------------------------------- layer selection


def test_select_layers():
    # the course's rule; DistilBERT's released init copied BERT layers [0, 2, 4, 7, 9, 11]
    assert distill.select_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert distill.select_layers(2, 1) == [0]  # the course's GPT: its student keeps block 0
    assert distill.select_layers(4, 2) == [0, 2]
    assert distill.select_layers(3, 3) == [0, 1, 2]
    assert distill.select_layers(6, 1) == [0]
    with pytest.raises(ValueError, match="num_student_layers must be"):
        distill.select_layers(4, 5)


def test_init_from_teacher_copies_every_other_layer():
    teacher = _gpt(n_layer=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = distill.init_from_teacher(teacher)
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for i, j in enumerate([0, 2]):  # student block i is teacher block 2i
        for key, value in teacher.transformer.h[j].state_dict().items():
            assert torch.equal(s_state[f"transformer.h.{i}.{key}"], value)
    for key in (
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    ):
        assert torch.equal(s_state[key], t_state[key])
    assert student.lm_head.weight is student.transformer.wte.weight  # tying kept
    assert (
        student.transformer.h[0].attn.c_attn.weight
        is not teacher.transformer.h[0].attn.c_attn.weight
    )
    # the student computes exactly the teacher's embeddings -> blocks 0, 2 -> head
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    x = teacher.transformer.wte(idx) + teacher.transformer.wpe(torch.arange(8))
    for j in (0, 2):
        x = teacher.transformer.h[j](x)
    assert torch.allclose(student(idx), teacher.lm_head(teacher.transformer.ln_f(x)), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_init_from_teacher_all_layers_is_the_teacher_and_vit_works():
    teacher = _gpt(n_layer=3)
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(distill.init_from_teacher(teacher, [0, 1, 2])(idx), teacher(idx))
    torch.manual_seed(0)
    vit = models.ViT(models.ViTConfig(dim=16, depth=4, heads=2)).eval()
    small = distill.init_from_teacher(vit, [1, 3])
    assert small.config.depth == 2 and torch.equal(
        small.blocks[1].mlp.c_fc.weight, vit.blocks[3].mlp.c_fc.weight
    )
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        distill.init_from_teacher(teacher, [3])
    with pytest.raises(ValueError, match="teacher must be a labkit GPT or ViT"):
        distill.init_from_teacher(_mlp())


# --------------------------------------------------------------------------- distill_lm


class _Text:
    """A tiny TextData stand-in: a repeating pattern the models can learn."""

    def __init__(self):
        pattern = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 40)
        self.train, self.val, self.vocab = pattern, pattern[:200], tuple("abcdefghijk")

    @property
    def vocab_size(self):
        return 11

    def get_batch(self, split, batch_size, block_size, generator=None):
        data = self.train if split == "train" else self.val
        start = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        idx = start[:, None] + torch.arange(block_size)
        return data[idx], data[idx + 1]


def test_distill_lm_is_seeded_and_lowers_the_loss():
    teacher, text = _gpt(n_layer=2), _Text()
    train.fit_lm(teacher, text, num_steps=60, batch_size=8, progress=False)
    states = []
    for _ in range(2):
        student = distill.init_from_teacher(teacher, [0])
        start = train.evaluate_lm(student, text)["loss"]
        hist = distill.distill_lm(
            student, teacher, text, num_steps=20, batch_size=8, attention_weight=1.0, progress=False
        )
        states.append(student.state_dict())
    assert hist.val_loss[-1] < start and len(hist.steps) == 10
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="attention_weight must be"):
        distill.distill_lm(student, teacher, text, attention_weight=-1)
    assert math.isfinite(hist.train_loss[-1]) and isinstance(student, nn.Module)
