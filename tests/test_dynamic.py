"""labkit.dynamic: early exit, slimmable width and mixture of experts, against references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import dynamic, measure
from labkit.dynamic import zoo
from labkit.models import CNN1d, CNN1dConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


CONFIG = CNN1dConfig(channels=(8, 12, 16))


def _exits(seed: int = 0, config: CNN1dConfig = CONFIG) -> dynamic.EarlyExitCNN1d:
    torch.manual_seed(seed)
    model = dynamic.EarlyExitCNN1d(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for block in model.blocks:
            block[1].running_mean.uniform_(-0.5, 0.5)
            block[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _signals(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 40, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- early exit


def test_full_forward_equals_plain_cnn1d_with_same_weights():
    model = _exits()
    x = _signals()
    plain = model.to_plain().eval()
    assert isinstance(plain, CNN1d)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(model.forward_exits(x)[-1], plain(x), rtol=0, atol=0)
    back = dynamic.EarlyExitCNN1d.from_plain(plain).eval()
    torch.testing.assert_close(back(x), plain(x), rtol=0, atol=0)


def test_path_macs_match_hand_formulas_and_the_parts():
    model = _exits()
    x = _signals(1)
    got = dynamic.path_macs(model, x)
    lengths, c_in, total, expected = [], 1, 0, []
    length = 40
    for c in CONFIG.channels:
        length = measure.conv_output_size(length, 5, stride=2, padding=2)
        block = measure.conv1d_macs(c_in, c, 5, length)
        head = measure.linear_macs(c * length, 10)
        total += block + head
        expected.append(total)
        lengths.append(length)
        c_in = c
    assert got == expected
    parts = [
        measure.macs(model.blocks[0], x),
        measure.macs(model.heads[0], model.blocks[0](x).detach()),
    ]
    assert got[0] == sum(parts)
    # the full network without intermediate heads is cheaper than the last exit path
    assert measure.macs(model.to_plain(), x) == got[-1] - sum(
        measure.linear_macs(c * n, 10) for c, n in zip(CONFIG.channels[:-1], lengths[:-1])
    )
    with pytest.raises(ValueError, match="batch 1"):
        dynamic.path_macs(model, _signals(2))


def test_exit_confidence_against_torch():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(1)) * 3
    maxp = dynamic.exit_confidence(logits, "max_prob")
    torch.testing.assert_close(maxp, F.softmax(logits, -1).max(-1).values)
    ent = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(dynamic.exit_confidence(logits, "entropy"), 1 - ent / math.log(10))
    uniform = dynamic.exit_confidence(torch.zeros(3, 10), "entropy")
    assert torch.allclose(uniform, torch.zeros(3), atol=1e-6)
    with pytest.raises(ValueError, match="criterion must be one of"):
        dynamic.exit_confidence(logits, "margin")


def test_entropy_confidence_with_an_impossible_class():
    # a -inf logit is a class with probability 0: 0 log 0 = 0, not NaN
    logits = torch.randn(40, 10, generator=torch.Generator().manual_seed(11)) * 2
    logits[::2, 3] = -math.inf
    logits[1::4, :5] = -math.inf
    ent = torch.distributions.Categorical(logits=logits).entropy()  # (40,), clamps -inf itself
    got = dynamic.exit_confidence(logits, "entropy")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, (1 - ent / math.log(10)).clamp(0, 1))
    one_hot = torch.tensor([[0.0, -math.inf, -math.inf]])  # certain: confidence exactly 1
    assert dynamic.exit_confidence(one_hot, "entropy").item() == 1.0
    assert dynamic.exit_confidence(one_hot, "max_prob").item() == 1.0


def test_first_exit_matches_a_loop():
    conf = torch.rand(3, 200, generator=torch.Generator().manual_seed(2))
    for t in (0.0, 0.3, 0.7, 0.95, 1.5):
        got = dynamic.first_exit(conf.clone(), t)
        ref = [next((e for e in range(3) if conf[e, n] >= t), 2) for n in range(200)]
        assert got.tolist() == ref
    assert dynamic.first_exit(conf, 0.0).eq(0).all()
    assert dynamic.first_exit(conf, 1.5).eq(2).all()  # nobody is ever that confident
    with pytest.raises(ValueError, match="threshold must be"):
        dynamic.first_exit(conf, -0.1)


def test_average_macs_is_the_weighted_mean():
    idx = torch.tensor([0, 0, 1, 2, 2, 2])
    macs = [100, 500, 1000]
    counts = torch.bincount(idx, minlength=3).double()
    assert dynamic.average_macs(idx, macs) == pytest.approx(
        float((counts * torch.tensor(macs)).sum() / len(idx))
    )
    with pytest.raises(ValueError, match="exit_index"):
        dynamic.average_macs([3], macs)


@pytest.mark.parametrize("training", [False, True])
def test_counting_macs_leaves_the_model_mode_alone(training):
    # measure.macs restores the flag of the module it is given: a wrapper built in train mode
    # used to switch an eval model to train mode (BatchNorm then used batch statistics)
    model = _exits().train(training)
    dynamic.path_macs(model, _signals(1))
    measure.macs(dynamic.EarlyExit(model, 0.5), _signals(1))
    assert all(m.training == training for m in model.modules())


def _sharpening_exits(seed: int = 2) -> dynamic.EarlyExitCNN1d:
    """Later heads more confident (scaled logits), so a threshold can use every exit."""
    model = _exits(seed)
    with torch.no_grad():
        for i, head in enumerate(model.heads):
            head.weight.mul_(4.0**i)
    return model


def _mid_threshold(model, x):
    """A threshold at which samples leave at every exit (the middle of the ones that do)."""
    conf = dynamic.exit_confidence(dynamic.exit_logits(model, x))  # (E, N)
    candidates = conf[:-1].flatten().sort().values
    every = [
        float(t)
        for t in candidates
        if dynamic.first_exit(conf.clone(), float(t)).unique().numel() == model.num_exits
    ]
    assert every, "no threshold uses every exit"
    return every[len(every) // 2]


def test_average_macs_equals_counting_each_sample_on_its_own_path():
    model = _sharpening_exits()
    x = _signals(24, seed=7)
    runner = dynamic.EarlyExit(model, _mid_threshold(model, x))
    with torch.no_grad():
        _, exits = runner.predict(x)
    assert set(exits.tolist()) == {0, 1, 2}  # every exit is taken
    counted = [
        measure.macs(dynamic.ExitPath(model, int(e)), x[n : n + 1]) for n, e in enumerate(exits)
    ]
    macs = dynamic.path_macs(model, x[:1])
    assert dynamic.average_macs(exits, macs) == pytest.approx(sum(counted) / len(counted))
    # and each sample's own batch-1 run through the runner ends at the same head
    for n in range(len(x)):
        with torch.no_grad():
            torch.testing.assert_close(runner(x[n : n + 1]), runner.predict(x[n : n + 1])[0])


@pytest.mark.parametrize("criterion", dynamic.CRITERIA)
def test_simulated_report_equals_real_dynamic_inference(criterion):
    model = _exits(3)
    x = _signals(200, seed=4)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(5))
    cached = dynamic.exit_logits(model, x, batch_size=64)
    assert cached.shape == (3, 200, 10)
    macs = dynamic.path_macs(model, x[:1])
    conf = dynamic.exit_confidence(cached, criterion)
    ranked = conf[0].sort().values
    threshold = float(ranked[99] + ranked[100]) / 2  # half leave at head 0; no ties at the line
    report = dynamic.exit_report(cached, y, threshold, macs, criterion)
    runner = dynamic.EarlyExit(model, threshold, criterion)
    with torch.no_grad():
        logits, exits = runner.predict(x)
        single = torch.cat([runner(x[i : i + 1]) for i in range(len(x))])
    assert 0 < report["exit_fraction"][0] < 1
    assert report["acc"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))
    assert report["exit_fraction"] == pytest.approx(
        (torch.bincount(exits, minlength=3).double() / 200).tolist()
    )
    assert report["macs"] == pytest.approx(dynamic.average_macs(exits, macs))
    torch.testing.assert_close(single, logits)
    assert sum(report["exit_fraction"]) == pytest.approx(1.0)


def test_fit_exits_trains_every_head_and_checks_weights():
    torch.manual_seed(0)
    model = dynamic.EarlyExitCNN1d(CNN1dConfig(channels=(4, 4, 4), num_classes=3))
    y = torch.arange(120) % 3
    x = torch.randn(120, 1, 40) * 0.3 + y[:, None, None].float()
    before = [p.clone() for p in model.heads[0].parameters()]
    history = dynamic.fit_exits(model, (x, y), weights=(0.3, 0.3, 1.0), num_epochs=3, lr=1e-2)
    assert history.train_loss[-1] < history.train_loss[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.heads[0].parameters()))
    with pytest.raises(ValueError, match="weights must be 3 numbers"):
        dynamic.fit_exits(model, (x, y), weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="final exit"):
        dynamic.fit_exits(model, (x, y), weights=(1.0, 1.0, 0.0))


def test_cached_models_train_once(tmp_data):
    calls = []

    def fit(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.add_(1.0)

    spec = {"seed": 3, "what": "test"}
    a = zoo._cached("t", spec, lambda: nn.Linear(4, 2), fit)
    (path,) = (tmp_data / "cache" / "dynamic").glob("t-*.pt")
    b = zoo._cached("t", spec, lambda: nn.Linear(4, 2), fit)
    assert len(calls) == 1
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    zoo._cached("t", {**spec, "seed": 4}, lambda: nn.Linear(4, 2), fit)
    assert len(calls) == 2
    # a loadable file with other weights fails its sha256 check: retrained, not trusted
    torch.save({k: v + 1 for k, v in torch.load(path).items()}, path)
    c = zoo._cached("t", spec, lambda: nn.Linear(4, 2), fit)
    assert len(calls) == 3
    torch.testing.assert_close(c.weight, a.weight, rtol=0, atol=0)


def test_per_sample_latency_reports_every_model():
    model = _exits()
    out = dynamic.per_sample_latency(
        {"full": model.to_plain(), "exit": dynamic.EarlyExit(model, 0.5)},
        _signals(5),
        rounds=1,
        warmup=1,
    )
    assert set(out) == {"full", "exit"} and out["full"]["speedup"] == 1.0
    assert all(v["mean_ms"] > 0 for v in out.values())


def test_exit_latency_times_each_forced_path_and_weights_it():
    model = _sharpening_exits()
    x = _signals(40, seed=7)
    # the forced runners exit_latency times do leave where intended
    for i, forced in enumerate([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]]):
        _, exits = dynamic.EarlyExit(model, forced).predict(x)
        assert exits.eq(i).all()
    share = [0.5, 0.3, 0.2]
    out = dynamic.exit_latency(model, share, x=x[:1], repeats=3, warmup=1)
    assert len(out["exit_ms"]) == 3 and all(t > 0 for t in out["exit_ms"])
    assert out["mean_ms"] == pytest.approx(sum(f * t for f, t in zip(share, out["exit_ms"])))
    assert out["speedup"] == pytest.approx(out["full_ms"] / out["mean_ms"])
    assert not model.training
    with pytest.raises(ValueError, match="exit_fraction must be 3 shares"):
        dynamic.exit_latency(model, [0.5, 0.5])


def _between(confidence: torch.Tensor, q: float) -> float:
    """A limit near quantile ``q`` of ``confidence`` that no sample sits near: the midpoint of the
    widest gap between neighbouring sorted values around that rank. A quantile is itself one of
    the values, and the last bit that a batched and a single-sample forward may differ in would
    then decide that sample's exit."""
    ranked = confidence.sort().values
    n = len(ranked)
    lo, hi = max(1, round((q - 0.1) * n)), min(n - 1, round((q + 0.1) * n))
    gaps = ranked[lo:hi] - ranked[lo - 1 : hi - 1]
    k = lo - 1 + int(gaps.argmax())
    assert gaps.max() > 1e-4, "no clear gap between confidences near the quantile"
    return float(ranked[k] + ranked[k + 1]) / 2


def test_per_exit_thresholds_match_a_loop_and_the_runner():
    model = _sharpening_exits()
    x = _signals(60, seed=8)
    conf = dynamic.exit_confidence(dynamic.exit_logits(model, x))  # (3, 60)
    limits = [_between(conf[0], 0.5), _between(conf[1], 0.3)]
    ref = [next((e for e in range(2) if conf[e, n] >= limits[e]), 2) for n in range(60)]
    assert set(ref) == {0, 1, 2}  # every exit is taken, so each limit matters
    swapped = [next((e for e in range(2) if conf[e, n] >= limits[1 - e]), 2) for n in range(60)]
    assert swapped != ref  # the limits are told apart: one per exit, in order
    assert dynamic.first_exit(conf, limits).tolist() == ref
    logits, exits = dynamic.EarlyExit(model, limits).predict(x)
    assert exits.tolist() == ref
    single = torch.cat([dynamic.EarlyExit(model, limits)(x[n : n + 1]) for n in range(60)])
    torch.testing.assert_close(single, logits)
    with pytest.raises(ValueError, match="threshold must be a number or 2 numbers"):
        dynamic.EarlyExit(model, [0.5, 0.5, 0.5])


def _noisy_labels(model, x, seed, flip=0.3):
    """Labels the last head gets right about ``1 - flip`` of the time: accuracy then varies with
    the threshold, as it does on real data."""
    y = dynamic.exit_logits(model, x)[-1].argmax(-1)
    g = torch.Generator().manual_seed(seed)
    flipped = torch.rand(len(y), generator=g) < flip
    return torch.where(flipped, torch.randint(0, 10, y.shape, generator=g), y)


THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 20)]


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.1])
def test_choose_threshold_is_the_cheapest_within_tolerance(tolerance):
    model = _sharpening_exits()
    x = _signals(300, seed=12)
    y = _noisy_labels(model, x, seed=13)
    logits = dynamic.exit_logits(model, x)
    macs = dynamic.path_macs(model, x[:1])
    conf = torch.softmax(logits, dim=-1).amax(-1)  # (E, N) by torch, not exit_confidence
    pred = logits.argmax(-1)

    def replay(t):  # accuracy and mean MACs of the rule, by a loop over samples
        exits = [next((e for e in range(2) if conf[e, n] >= t), 2) for n in range(300)]
        acc = sum(int(pred[e, n] == y[n]) for n, e in enumerate(exits)) / 300
        return acc, sum(macs[e] for e in exits) / 300

    ref = replay(2.0)[0]
    ok = [(replay(t)[1], -t) for t in THRESHOLDS if replay(t)[0] >= ref - tolerance - 1e-12]
    expected = -min(ok)[1] if ok else 2.0
    got = dynamic.choose_threshold(logits, y, macs, THRESHOLDS, tolerance)
    assert got == expected
    if tolerance == 0.1:
        assert got < max(THRESHOLDS)  # a looser tolerance lets the signals out earlier
    with pytest.raises(ValueError, match="tolerance must be a number in"):
        dynamic.choose_threshold(logits, y, macs, THRESHOLDS, -0.1)


def test_operating_point_chooses_the_threshold_without_the_test_split(monkeypatch):
    model = _sharpening_exits()
    x_val, x_test = _signals(300, seed=14), _signals(300, seed=15)
    macs = dynamic.path_macs(model, x_val[:1])
    log = []

    class Split:  # a dataset that logs when its test split is read
        X_val, y_val = x_val, _noisy_labels(model, x_val, seed=16)

        def __init__(self, X_test, y_test):
            self._test = X_test, y_test

        @property
        def X_test(self):
            log.append("test")
            return self._test[0]

        @property
        def y_test(self):
            log.append("test")
            return self._test[1]

    seen = []
    choose = dynamic.choose_threshold

    def spy(logits, y, *args, **kwargs):
        seen.append((logits, y))
        t = choose(logits, y, *args, **kwargs)
        log.append("chosen")
        return t

    monkeypatch.setattr("labkit.dynamic.exits.choose_threshold", spy)  # where operating_point looks
    ds = Split(x_test, _noisy_labels(model, x_test, seed=17))
    point = dynamic.operating_point(model, ds, macs, THRESHOLDS, 0.02)
    assert log.index("chosen") < log.index("test"), "the test split was read before the choice"
    torch.testing.assert_close(seen[0][0], dynamic.exit_logits(model, x_val))  # val logits only
    assert torch.equal(seen[0][1], Split.y_val)
    assert point["test"] == dynamic.exit_report(
        dynamic.exit_logits(model, x_test), ds.y_test, point["threshold"], macs
    )
    # any test split, even noise with shuffled labels, leaves the choice where it was ...
    noise = Split(torch.randn(300, 1, 40) * 5, ds.y_test[torch.randperm(300)])
    other = dynamic.operating_point(model, noise, macs, THRESHOLDS, 0.02)
    assert other["threshold"] == point["threshold"] and other["val"] == point["val"]
    assert other["test"] != point["test"]
    # ... while the validation split decides it (so the check above is not vacuous): labels the
    # first head gets right let every signal out there
    Split.y_val = dynamic.exit_logits(model, x_val)[0].argmax(-1)
    clean = dynamic.operating_point(model, Split(x_test, ds.y_test), macs, THRESHOLDS, 0.02)
    assert clean["threshold"] != point["threshold"]


# --------------------------------------------------------------------------- slimmable width


def _slim(seed: int = 0) -> dynamic.SlimmableCNN1d:
    torch.manual_seed(seed)
    model = dynamic.SlimmableCNN1d(CONFIG)
    with torch.no_grad():
        for bns in model.bns:
            for bn in bns:
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_full_width_equals_a_plain_cnn1d_with_the_same_weights():
    slim = _slim()
    plain = CNN1d(CONFIG).eval()
    with torch.no_grad():  # copy by hand, independent of at_width
        for j, conv in enumerate(slim.convs):
            plain.features[3 * j].weight.copy_(conv.weight)
            plain.features[3 * j + 1].load_state_dict(slim.bns[j][-1].state_dict())
        plain.head.load_state_dict(slim.head.state_dict())
    x = _signals()
    torch.testing.assert_close(slim(x), plain(x))
    torch.testing.assert_close(slim(x, width=1.0), plain(x))


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75])
def test_narrow_widths_are_real_smaller_networks(width):
    slim = _slim(1)
    small = slim.at_width(width).eval()
    x = _signals()
    torch.testing.assert_close(slim(x, width=width), small(x))
    assert small.config.channels == tuple(round(c * width) for c in CONFIG.channels)
    assert measure.macs(small, x[:1]) < measure.macs(slim.at_width(1.0), x[:1])
    # the narrow network really uses the first channels of the shared weights
    c0, c1 = small.config.channels[:2]
    torch.testing.assert_close(small.features[3].weight, slim.convs[1].weight[:c1, :c0])


def test_slimmable_from_plain_is_the_plain_network_at_full_width():
    torch.manual_seed(5)
    plain = CNN1d(CONFIG)
    with torch.no_grad():
        for m in plain.features:
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    plain.eval()
    slim = dynamic.SlimmableCNN1d.from_plain(plain).eval()
    x = _signals()
    torch.testing.assert_close(slim(x, width=1.0), plain(x), rtol=0, atol=0)
    half = slim.at_width(0.5)
    c0 = half.config.channels[0]
    torch.testing.assert_close(half.features[1].running_var, plain.features[1].running_var[:c0])
    torch.testing.assert_close(half.features[0].weight, plain.features[0].weight[:c0])


def test_slimmable_rejects_unknown_widths():
    slim = _slim()
    with pytest.raises(ValueError, match="width must be one of"):
        slim(_signals(2), width=0.6)
    with pytest.raises(ValueError, match="include 1.0"):
        dynamic.SlimmableCNN1d(CONFIG, widths=(0.5,))


def test_fit_slimmable_trains_all_widths():
    torch.manual_seed(0)
    slim = dynamic.SlimmableCNN1d(CNN1dConfig(channels=(4, 8, 8), num_classes=3), (0.5, 1.0))
    y = torch.arange(90) % 3
    x = torch.randn(90, 1, 40) * 0.3 + y[:, None, None].float()
    history = dynamic.fit_slimmable(slim, (x, y), num_epochs=3, lr=1e-2)
    assert history.train_loss[-1] < history.train_loss[0]
    assert slim.bns[0][0].num_batches_tracked > 0 and slim.bns[0][1].num_batches_tracked > 0


# --------------------------------------------------------------------------- mixture of experts


def test_top_1_gate_is_the_full_softmax_probability():
    # Switch Transformer (Fedus et al., 2021): y = p_e(x) E_e(x) for the argmax expert e
    logits = torch.randn(30, 8, generator=torch.Generator().manual_seed(6)) * 2
    gates, experts = dynamic.top_k_gating(logits, 1)
    assert torch.equal(experts[:, 0], logits.argmax(dim=-1))
    ref = torch.softmax(logits, dim=-1).gather(1, logits.argmax(dim=-1, keepdim=True))  # (N, 1)
    torch.testing.assert_close(gates, ref)
    assert (gates < 1).all()  # not the constant 1 a softmax over one logit gives


@pytest.mark.parametrize("k", [2, 3, 8])
def test_top_k_gates_are_the_renormalised_softmax(k):
    logits = torch.randn(30, 8, generator=torch.Generator().manual_seed(6))
    gates, experts = dynamic.top_k_gating(logits, k)
    ref_p, ref_e = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    assert torch.equal(experts, ref_e)
    torch.testing.assert_close(gates, ref_p / ref_p.sum(-1, keepdim=True))
    torch.testing.assert_close(gates.sum(-1), torch.ones(30))
    with pytest.raises(ValueError, match="k must be an integer"):
        dynamic.top_k_gating(logits, 9)


@pytest.mark.parametrize("k", [1, 2])
def test_router_learns_from_the_task_loss(k):
    torch.manual_seed(7)
    moe = dynamic.MoE(dim=8, hidden=16, n_experts=4, top_k=k)
    x, target = torch.randn(64, 8), torch.randn(64, 8)
    F.mse_loss(moe(x), target).backward()  # the task loss alone, no balancing loss
    grad = moe.router.weight.grad
    assert grad is not None and grad.abs().max() > 1e-4, "the router gets no task gradient"
    # and it is the gradient of the gated mixture: a central difference agrees
    direction = torch.randn_like(moe.router.weight)
    losses, routes = [], []
    with torch.no_grad():
        eps, w = 1e-3, moe.router.weight.clone()
        for sign in (1, -1):
            moe.router.weight.copy_(w + sign * eps * direction)
            losses.append(F.mse_loss(moe(x), target))
            routes.append(dynamic.top_k_gating(moe.router(x), k)[1])
        moe.router.weight.copy_(w)
    assert torch.equal(routes[0], routes[1])  # the step moves no token to another expert
    numeric = (losses[0] - losses[1]) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=0.05, abs=1e-5)


def test_all_experts_equal_and_k_equals_n_is_the_dense_layer():
    torch.manual_seed(0)
    moe = dynamic.MoE(dim=16, hidden=24, n_experts=4, top_k=4)
    dense = moe.experts[0]
    for e in moe.experts[1:]:
        e.load_state_dict(dense.state_dict())
    x = torch.randn(2, 7, 16)  # (B, T, D) tokens
    torch.testing.assert_close(moe(x), dense(x))


def test_sparse_dispatch_equals_dense_mixture_reference():
    torch.manual_seed(1)
    moe = dynamic.MoE(dim=12, hidden=20, n_experts=5, top_k=2)
    x = torch.randn(40, 12)
    probs = F.softmax(x @ moe.router.weight.T, dim=-1)  # (N, E)
    top, idx = probs.topk(2, dim=-1)
    weights = torch.zeros_like(probs).scatter(1, idx, top / top.sum(-1, keepdim=True))  # (N, E)
    every = torch.stack([e(x) for e in moe.experts], dim=1)  # (N, E, D)
    ref = (weights[:, :, None] * every).sum(1)
    torch.testing.assert_close(moe(x), ref)
    assert moe.load.sum().item() == pytest.approx(1.0)
    assert torch.equal(moe.load, torch.bincount(idx.flatten(), minlength=5).float() / 80)


def test_load_balancing_loss_bounds_and_gradient():
    n, e = 64, 4
    even = torch.full((n, e), 1 / e)
    experts = (torch.arange(n) % e)[:, None]
    assert dynamic.load_balancing_loss(even, experts).item() == pytest.approx(1.0)
    one_hot = F.one_hot(torch.zeros(n, dtype=torch.long), e).float()
    assert dynamic.load_balancing_loss(one_hot, torch.zeros(n, 1, dtype=torch.long)).item() == (
        pytest.approx(e)
    )
    torch.manual_seed(2)
    moe = dynamic.MoE(dim=8, hidden=8, n_experts=4, top_k=1)
    moe(torch.randn(32, 8))
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_one_expert_top_1_is_the_plain_mlp():
    torch.manual_seed(3)
    moe = dynamic.MoE(dim=10, hidden=16, n_experts=1, top_k=1)
    x = torch.randn(3, 5, 10)  # (B, T, D)
    torch.testing.assert_close(moe(x), moe.experts[0](x))  # the single gate is exactly 1
    assert moe.load.tolist() == [1.0]
    assert moe.aux_loss.item() == pytest.approx(1.0)  # E * f * P = 1 * 1 * 1


def test_active_params_and_macs_follow_top_k():
    c, length, hidden = 16, 20, 32
    for n_experts, k in [(1, 1), (4, 1), (8, 2)]:
        model = dynamic.MoEHead(c, length, hidden, n_experts, k)
        counts = dynamic.moe_params(model)
        expert = c * hidden + hidden + hidden * c + c
        router, head = c * n_experts, c * length * 10 + 10
        assert counts == {
            "total": router + n_experts * expert + head,
            "active": router + k * expert + head,
            "moe_total": router + n_experts * expert,
            "moe_active": router + k * expert,
        }
        # FlopCounter sees only the experts that ran: per token the router and k expert MLPs
        x = torch.randn(1, c, length)
        per_token = c * n_experts + k * 2 * c * hidden
        assert measure.macs(model, x) == length * per_token + c * length * 10


def test_moe_head_is_a_dense_token_mlp_with_one_expert():
    torch.manual_seed(4)
    model = dynamic.MoEHead(6, 7, hidden=8, n_experts=1, top_k=1, num_classes=3)
    x = torch.randn(5, 6, 7)  # (B, C, L)
    t = x.transpose(1, 2)  # (B, L, C)
    ref = model.head((t + model.moe.experts[0](t)).flatten(1))
    torch.testing.assert_close(model(x), ref)


def test_fit_moe_uses_the_balancing_loss():
    torch.manual_seed(0)
    model = dynamic.MoEHead(4, 5, hidden=8, n_experts=4, top_k=1, num_classes=3)
    y = torch.arange(96) % 3
    x = torch.randn(96, 4, 5) + y[:, None, None].float()
    history = dynamic.fit_moe(model, (x, y), balance=0.1, num_epochs=3, lr=1e-2)
    assert history.train_loss[-1] < history.train_loss[0]
    with pytest.raises(ValueError, match="balance must be"):
        dynamic.fit_moe(model, (x, y), balance=-1)


def test_exit_config_is_the_cnn1d_config_for_mnist1d_with_its_channels():
    assert dynamic.EXIT_CONFIG == zoo._config(_Mnist1dShape, None)


def test_width_channels_rounds_and_keeps_at_least_one():
    assert [dynamic.width_channels(64, w) for w in (0.25, 0.5, 0.75, 1.0)] == [16, 32, 48, 64]
    assert dynamic.width_channels(16, 0.01) == 1
    assert dynamic.width_channels(10, 0.25) == 2  # round(2.5): half to even
    slim = dynamic.SlimmableCNN1d(CONFIG)
    for w in slim.widths:
        chans = tuple(dynamic.width_channels(c, w) for c in CONFIG.channels)
        assert slim.at_width(w).config.channels == chans


class _Mnist1dShape:  # what models.config_for reads from a dataset
    input_shape = (1, 40)
    num_classes = 10
