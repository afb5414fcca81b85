from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import data, models, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def blobs(n=200, seed=0):
    """Three well-separated Gaussian blobs in 2-D: (X (n, 2), y (n,))."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])
    return centers[y] + torch.randn(n, 2, generator=g), y


def blob_data():
    X, y = blobs(300)
    return data.ArrayData(
        "blobs", X[:200], y[:200], X[200:250], y[200:250], X[250:], y[250:], 3, (2,),
        ("a", "b", "c"),
    )  # fmt: skip


def small_mlp(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return models.build("mlp", in_features=2, hidden=(16,), num_classes=3, dropout=dropout)


# --------------------------------------------------------------------------- fit / evaluate


def test_fit_lowers_loss_and_separates_blobs():
    dataset = blob_data()
    model = small_mlp()
    before = train.evaluate(model, dataset)
    history = train.fit(model, dataset, num_epochs=15, lr=1e-2, batch_size=32, progress=False)
    assert len(history.train_loss) == len(history.val_acc) == len(history.val_loss) == 15
    assert history.steps == list(range(1, 16))
    assert history.train_loss[-1] < 0.3 * history.train_loss[0]
    assert history.val_acc[-1] >= 0.95 and history.seconds > 0
    after = train.evaluate(model, dataset)
    assert after["acc"] >= 0.95 and after["loss"] < before["loss"]
    assert model.training  # fit leaves the mode as it found it


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_fit_accepts_tuples_loaders_and_every_optimizer(optimizer):
    X, y = blobs()
    model = small_mlp()
    history = train.fit(
        model, (X, y), val=(X, y), num_epochs=8, lr=0.05 if optimizer == "sgd" else 1e-2,
        optimizer=optimizer, schedule="cosine", progress=False,
    )  # fmt: skip
    assert history.val_acc[-1] >= 0.95
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=50)
    history = train.fit(small_mlp(), loader, num_epochs=8, lr=1e-2, progress=False)
    assert history.val_acc == [] and history.train_loss[-1] < history.train_loss[0]


def test_fit_is_deterministic_and_leaves_global_rng_alone():
    X, y = blobs()
    model = small_mlp(dropout=0.3)  # dropout draws random numbers too
    a, b, c = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    train.fit(a, (X, y), num_epochs=3, seed=7, progress=False)
    assert torch.equal(torch.rand(3), expected_next)  # fit forked the global RNG
    train.fit(b, (X, y), num_epochs=3, seed=7, progress=False)
    train.fit(c, (X, y), num_epochs=3, seed=8, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_cosine_schedule_ends_near_zero_learning_rate():
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = train._scheduler(opt, "cosine", total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs == sorted(lrs, reverse=True)
    assert lrs[5] == pytest.approx(0.5) and lrs[-1] == pytest.approx(
        0.5 * (1 + math.cos(0.9 * math.pi))
    )


def test_evaluate_matches_manual_argmax_and_cross_entropy():
    dataset = blob_data()
    model = small_mlp()
    train.fit(model, dataset, num_epochs=1, progress=False)
    model.eval()
    result = train.evaluate(model, dataset, split="val", batch_size=7)
    X, y = dataset.split("val")
    with torch.no_grad():
        logits = model(X)
    assert result["acc"] == (logits.argmax(1) == y).float().mean().item()
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert 0.0 <= result["acc"] <= 1.0
    assert not model.training  # evaluate restores the mode it found
    torch.testing.assert_close(train.predict_logits(model, X, batch_size=4), logits)


def test_evaluate_and_predict_run_in_eval_mode_and_restore_train_mode():
    model = small_mlp(dropout=0.5).train()
    X, y = blobs(40)
    first = train.predict_logits(model, X)
    torch.testing.assert_close(train.predict_logits(model, X), first)  # no dropout noise
    assert model.training
    train.evaluate(model, (X, y))
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_epochs": 0}, "num_epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"schedule": "linear"}, "schedule"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_fit_rejects_bad_arguments_with_one_line_errors(kwargs, field):
    with pytest.raises(ValueError) as err:
        train.fit(small_mlp(), blobs(), progress=False, **kwargs)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_bad_data_and_split_names_are_rejected():
    with pytest.raises(
        ValueError, match="^split must be one of 'train', 'val', 'test'; got 'tset'"
    ):
        train.evaluate(small_mlp(), blob_data(), split="tset")
    with pytest.raises(ValueError, match="^data must be"):
        train.fit(small_mlp(), [1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="^data must be"):
        X, y = blobs()
        train.fit(small_mlp(), (X, y[:-1]), progress=False)
    with pytest.raises(ValueError, match="^split must be one of 'train', 'val'"):
        train.evaluate_lm(tiny_gpt(8), tiny_text(), split="test")


# --------------------------------------------------------------------------- language models

TEXT = "the cat sat on the mat. the dog sat on the log. "


def tiny_text(repeats=40):
    vocab = tuple(sorted(set(TEXT)))
    ids = torch.tensor([vocab.index(c) for c in TEXT * repeats])
    cut = len(ids) * 9 // 10
    return data.TextData("tiny", ids[:cut], ids[cut:], vocab)


def tiny_gpt(vocab_size, block_size=16):
    torch.manual_seed(0)
    return models.build(
        "gpt", vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=32
    )


def unigram_entropy(ids):
    counts = torch.tensor(list(Counter(ids.tolist()).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return -(p * p.log()).sum().item()  # nats per char


def test_fit_lm_beats_the_unigram_entropy():
    text = tiny_text()
    model = tiny_gpt(text.vocab_size)
    history = train.fit_lm(
        model, text, num_steps=150, batch_size=16, lr=1e-2, eval_every=50, progress=False
    )
    assert history.steps == [50, 100, 150] and len(history.val_loss) == 3
    assert history.val_acc == []
    result = train.evaluate_lm(model, text)
    entropy = unigram_entropy(text.train)
    assert result["loss"] < 0.5 * entropy  # the model uses context, not just letter frequencies
    assert history.val_loss[-1] < history.val_loss[0]


def test_evaluate_lm_matches_contiguous_window_oracle():
    text = tiny_text()
    model = tiny_gpt(text.vocab_size, block_size=8).eval()
    result = train.evaluate_lm(model, text, batch_size=5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    ids = text.val
    windows = (len(ids) - 1) // 8
    losses = []
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * 8 : w * 8 + 8][None]
            y = ids[w * 8 + 1 : w * 8 + 9]
            losses.append(F.cross_entropy(model(x)[0], y, reduction="none"))
    assert result["loss"] == pytest.approx(torch.cat(losses).mean().item(), rel=1e-5)
    assert train.evaluate_lm(model, text, batch_size=5) == result  # deterministic
    limited = train.evaluate_lm(model, text, batch_size=2, num_batches=1)
    assert limited["loss"] == pytest.approx(torch.cat(losses[:2]).mean().item(), rel=1e-5)
    # an untrained model is close to uniform guessing: loss ~ log(vocab_size)
    assert abs(result["loss"] - math.log(text.vocab_size)) < 0.5


def test_fit_lm_is_deterministic_and_checks_arguments():
    text = tiny_text(10)
    a, b = tiny_gpt(text.vocab_size), tiny_gpt(text.vocab_size)
    for model in (a, b):
        train.fit_lm(model, text, num_steps=5, batch_size=4, block_size=8, seed=3, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="^num_steps must be"):
        train.fit_lm(a, text, num_steps=0)
    with pytest.raises(ValueError, match="^block_size must be"):
        train.fit_lm(a, text, block_size=17)  # longer than the model's context
    with pytest.raises(ValueError, match="^text must be TextData"):
        train.fit_lm(a, blob_data())
    with pytest.raises(ValueError, match="^block_size must be given"):
        train.evaluate_lm(nn.Embedding(3, 3), text)


def test_fit_lm_trains_on_the_loss_it_is_given():
    text = tiny_text(10)
    a, b, c = (tiny_gpt(text.vocab_size) for _ in range(3))
    kw = dict(num_steps=4, batch_size=4, block_size=8, seed=1, progress=False)
    train.fit_lm(a, text, **kw)
    train.fit_lm(b, text, loss_fn=train.next_char_loss, **kw)  # the default, passed explicitly
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    start = [p.detach().clone() for p in c.parameters()]
    seen = []

    def zero_loss(model, x, y):
        seen.append((tuple(x.shape), tuple(y.shape)))
        return 0.0 * F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    history = train.fit_lm(c, text, loss_fn=zero_loss, **kw)  # zero gradients: AdamW moves nothing
    assert seen == [((4, 8), (4, 8))] * 4
    assert all(torch.equal(p, q) for p, q in zip(c.parameters(), start))
    assert history.train_loss == [0.0] * len(history.steps)
    assert history.val_loss[0] > 0  # validation still reports cross-entropy


def test_warmup_ramps_linearly_then_follows_the_schedule():
    def lrs(schedule, warmup, steps=20):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = train._scheduler(opt, schedule, steps, warmup)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    # cosine without warm-up is torch's own CosineAnnealingLR (to 0 over the run)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    expected = []
    for _ in range(20):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert lrs("cosine", 0) == pytest.approx(expected, abs=1e-12)
    warm, plain = lrs("cosine", 5), lrs("cosine", 0)
    assert warm[:5] == pytest.approx([plain[i] * (i + 1) / 5 for i in range(5)])  # linear ramp
    assert warm[5:] == pytest.approx(plain[5:])  # then the schedule unchanged
    assert lrs("constant", 4)[:6] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_warmup_steps_must_be_a_count():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="^warmup_steps must be"):
        train.fit(model, (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), warmup_steps=-1)
