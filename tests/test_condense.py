"""labkit.condense: coresets against brute-force references (herding, k-center), baselines against
torch / scikit-learn (class means, k-means), the matching losses against direct formulas, shifts
as pure translations, the batched trainer against separate runs, and the byte counts against the
serialized arrays."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import condense
from labkit.condense import coresets


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(classes: int = 3, per_class: int = 12, dim: int = 5, seed: int = 0):
    """Features (N, dim) with one Gaussian blob per class, labels interleaved."""
    g = _gen(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    y = torch.arange(classes).repeat(per_class)  # (N,) 0, 1, 2, 0, 1, 2, ...
    X = centres[y] + torch.randn(len(y), dim, generator=g)
    return X, y


def _images(classes: int = 3, per_class: int = 8, size: int = 8, seed: int = 0):
    """Images (N, 1, size, size) in [0, 1]: a class-specific bright square plus noise."""
    g = _gen(seed)
    y = torch.arange(classes).repeat(per_class)
    X = torch.rand(len(y), 1, size, size, generator=g) * 0.3
    for c in range(classes):
        X[y == c, :, c : c + 3, 2:5] += 0.7
    return X.clamp(0, 1), y


# --------------------------------------------------------------------------- random


def test_random_select_is_per_class_distinct_and_seeded():
    _, y = _blobs(per_class=10)
    idx = condense.random_select(y, 4, seed=0)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert torch.equal(torch.bincount(y[idx]), torch.tensor([4, 4, 4]))
    assert torch.equal(idx, condense.random_select(y, 4, seed=0))
    assert not torch.equal(idx, condense.random_select(y, 4, seed=1))
    everything = condense.random_select(y, 10, seed=3)
    assert sorted(everything.tolist()) == list(range(30))


# --------------------------------------------------------------------------- herding


def _brute_herding(F64: torch.Tensor, k: int) -> list[int]:
    """Herding written out: at step t try every unused row, keep the one whose addition puts the
    mean of the picks nearest to the mean of all rows (lowest index on ties)."""
    mu = F64.mean(dim=0)
    picks: list[int] = []
    for _ in range(k):
        best, best_d = -1, math.inf
        for i in range(len(F64)):
            if i in picks:
                continue
            d = float(torch.linalg.vector_norm(mu - F64[picks + [i]].mean(dim=0)))
            if d < best_d - 1e-12:
                best, best_d = i, d
        picks.append(best)
    return picks


def test_herding_matches_the_brute_force_greedy():
    feats = torch.randn(25, 6, generator=_gen(1), dtype=torch.float64)
    picks = condense.herding_class(feats, 10)
    assert picks.tolist() == _brute_herding(feats, 10)
    first = int(torch.cdist(feats, feats.mean(0, keepdim=True)).argmin())
    assert int(picks[0]) == first  # the first pick is the sample nearest the class mean


def test_herding_mean_approaches_the_class_mean_faster_than_random():
    feats = torch.randn(200, 8, generator=_gen(2)) ** 2  # skewed, so the mean is not a sample
    mu = feats.mean(0)
    picks = condense.herding_class(feats, 20)
    g = _gen(3)
    for t in (1, 2, 5, 10, 20):
        herd = float(torch.linalg.vector_norm(feats[picks[:t]].mean(0) - mu))
        rand = [
            float(
                torch.linalg.vector_norm(feats[torch.randperm(200, generator=g)[:t]].mean(0) - mu)
            )
            for _ in range(200)
        ]
        assert herd < min(rand), f"t={t}: herding {herd:.3f} vs best random {min(rand):.3f}"


def test_herding_picks_ipc_members_of_each_class():
    X, y = _blobs(per_class=9)
    idx = condense.herding(X, y, 3)
    assert len(idx) == 9 and len(set(idx.tolist())) == 9
    for c in range(3):
        members = torch.nonzero(y == c).flatten()
        picks = idx[y[idx] == c]
        assert torch.equal(picks, members[condense.herding_class(X[members], 3)])


# --------------------------------------------------------------------------- k-center


def test_kcenter_step_maximises_the_distance_to_the_nearest_pick():
    feats = torch.randn(40, 3, generator=_gen(4))
    for selected in ([0], [5, 17], [1, 2, 3, 30]):
        brute = torch.cdist(feats, feats[selected]).min(dim=1).values  # (40,)
        brute[selected] = -1
        assert condense.kcenter_step(feats, selected) == int(brute.argmax())
    line = torch.tensor([[0.0], [1.0], [5.0], [2.0]])
    assert condense.kcenter_step(line, [0]) == 2
    assert condense.kcenter_step(line, [0, 2]) == 3  # 2 from both 0 and 5: the gap's middle


def test_kcenter_greedy_is_kcenter_steps_from_the_point_nearest_the_mean():
    X, y = _blobs(per_class=15, seed=5)
    idx = condense.kcenter_greedy(X, y, 4)
    assert torch.equal(torch.bincount(y[idx]), torch.tensor([4, 4, 4]))
    for c in range(3):
        members = torch.nonzero(y == c).flatten()
        Fc = X[members]
        local = [int((members == i).nonzero()) for i in idx[y[idx] == c]]
        assert local[0] == int(torch.cdist(Fc, Fc.mean(0, keepdim=True)).argmin())
        for t in range(1, 4):
            assert local[t] == condense.kcenter_step(Fc, local[:t])


def test_kcenter_greedy_covers_within_twice_the_optimal_radius():
    """Gonzalez's bound: greedy's covering radius <= 2 x the best radius over all k-subsets."""
    feats = torch.randn(12, 2, generator=_gen(6), dtype=torch.float64)
    y = torch.zeros(12, dtype=torch.long)
    for k in (2, 3, 4):
        idx = condense.kcenter_greedy(feats, y, k)
        greedy = float(torch.cdist(feats, feats[idx]).min(dim=1).values.max())
        best = min(
            float(torch.cdist(feats, feats[list(s)]).min(dim=1).values.max())
            for s in itertools.combinations(range(12), k)
        )
        assert best <= greedy <= 2 * best + 1e-9


# --------------------------------------------------------------------------- baselines


def test_class_means_equal_the_per_class_torch_mean():
    X, y = _images(per_class=5)
    X_s, y_s = condense.class_means(X, y)
    assert y_s.tolist() == [0, 1, 2] and X_s.shape == (3, 1, 8, 8)
    onehot = F.one_hot(y).double()  # (N, C): the means as one matrix product
    ref = (onehot.T @ X.flatten(1).double()) / onehot.sum(0, keepdim=True).T
    assert torch.allclose(X_s.flatten(1).double(), ref, atol=1e-6)
    for c in range(3):
        assert torch.allclose(X_s[c], X[y == c].mean(dim=0))


def test_kmeans_with_one_centroid_is_the_class_mean():
    X, y = _images(per_class=6)
    X_k, y_k = condense.kmeans_centroids(X, y, 1)
    X_m, y_m = condense.class_means(X, y)
    assert torch.equal(y_k, y_m) and torch.allclose(X_k, X_m, atol=1e-6)


def _inertia(P: torch.Tensor, centres: torch.Tensor) -> float:
    return float(torch.cdist(P, centres).min(dim=1).values.pow(2).sum())


def test_kmeans_centroids_are_a_lloyd_fixed_point_matching_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    P = torch.cat([torch.randn(30, 4, generator=_gen(7)) + 5 * i for i in range(3)]).double()
    init = coresets._kmeans_pp(P, 3, _gen(0))
    ours = coresets._lloyd(P, init, 100)
    assign = torch.cdist(P, ours).argmin(dim=1)
    for j in range(3):  # every centroid is the mean of the points nearest to it
        assert torch.allclose(ours[j], P[assign == j].mean(0))
    assert _inertia(P, ours) <= _inertia(P, init)
    ref = cluster.KMeans(3, init=init.numpy(), n_init=1, tol=0.0, max_iter=100).fit(P.numpy())
    order = torch.cdist(ours, torch.from_numpy(ref.cluster_centers_)).argmin(dim=1)
    assert torch.allclose(ours, torch.from_numpy(ref.cluster_centers_)[order], atol=1e-8)
    X = P.float().view(90, 1, 2, 2)
    X_k, y_k = condense.kmeans_centroids(X, torch.zeros(90, dtype=torch.long), 3, seed=0)
    assert y_k.tolist() == [0, 0, 0] and X_k.shape == (3, 1, 2, 2)
    assert torch.allclose(X_k.flatten(1).double(), ours, atol=1e-5)


def test_lloyd_iterations_never_raise_the_objective():
    P = torch.randn(60, 3, generator=_gen(8), dtype=torch.float64)
    centres = coresets._kmeans_pp(P, 5, _gen(1))
    objective = [_inertia(P, centres)]
    for _ in range(6):
        centres = coresets._lloyd(P, centres, 1)
        objective.append(_inertia(P, centres))
    assert all(b <= a + 1e-12 for a, b in zip(objective, objective[1:]))
    assert objective[-1] < objective[0]


# --------------------------------------------------------------------------- networks


def test_embed_is_the_input_of_the_last_linear_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    X, _ = _images(per_class=4)
    emb = condense.embed(model, X, batch_size=5)
    assert torch.allclose(emb, model[:3](X), atol=1e-6)
    with pytest.raises(ValueError, match="model must contain an nn.Linear"):
        condense.embed(nn.Sequential(nn.Flatten()), X)


def test_convnet_shapes_seed_and_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    net = condense.convnet(num_classes=None, seed=3)
    assert torch.equal(torch.rand(1), before)  # the global RNG was not touched
    assert net(torch.rand(5, 1, 8, 8)).shape == (5, 32 * 2 * 2)
    same = condense.convnet(num_classes=None, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), same.parameters()))
    assert condense.eval_model("convnet", (1, 8, 8), 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert condense.eval_model("mlp", (1, 8, 8), 4)(torch.rand(2, 1, 8, 8)).shape == (2, 4)


# --------------------------------------------------------------------------- shifts


def _roll_translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference translation: torch.roll, then zero the rows/columns that wrapped around."""
    out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1)).clone()
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


def test_translate_matches_roll_with_zero_fill():
    x = torch.rand(2, 3, 6, 7, generator=_gen(9))
    for dy, dx in itertools.product(range(-2, 3), repeat=2):
        assert torch.equal(condense.translate(x, dy, dx), _roll_translate(x, dy, dx))
    per_image = condense.translate(x, torch.tensor([1, -1]), torch.tensor([0, 2]))
    assert torch.equal(per_image[0], _roll_translate(x[0], 1, 0))
    assert torch.equal(per_image[1], _roll_translate(x[1], -1, 2))


def test_shift_is_a_pure_random_translation_and_differentiable():
    x = torch.zeros(64, 2, 8, 8)
    x[:, :, 2:6, 2:6] = torch.rand(64, 2, 4, 4, generator=_gen(10))  # zero border: nothing lost
    out = condense.shift(x, 1, _gen(0))
    assert out.shape == x.shape
    moves = set()
    for b in range(64):
        found = [
            (dy, dx)
            for dy, dx in itertools.product(range(-1, 2), repeat=2)
            if torch.equal(out[b], _roll_translate(x[b], dy, dx))
        ]
        assert found, f"image {b} is not a translation by at most one pixel"
        moves.add(found[0])
    assert len(moves) == 9  # every one of the 9 moves occurs among 64 images
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    assert torch.equal(condense.shift(x, 1, _gen(0)), out)  # seeded
    same = condense.shift(x, 2, _gen(1), same=True)
    dy, dx = next(
        m for m in itertools.product(range(-2, 3), repeat=2)
        if torch.equal(same[0], _roll_translate(x[0], *m))
    )  # fmt: skip
    assert torch.equal(same, _roll_translate(x, dy, dx))
    assert condense.shift(x, 0) is x
    leaf = torch.rand(3, 1, 5, 5, requires_grad=True)
    (weights,) = torch.autograd.grad((condense.shift(leaf, 1, _gen(2)) * 2).sum(), leaf)
    assert set(weights.unique().tolist()) <= {0.0, 2.0}  # each pixel lands once, or falls off


# --------------------------------------------------------------------------- distribution matching


def test_dm_loss_is_the_squared_distance_of_class_mean_embeddings():
    g = _gen(11)
    emb_real, y_real = torch.randn(30, 7, generator=g), torch.randint(0, 4, (30,), generator=g)
    emb_syn, y_syn = torch.randn(8, 7, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    direct = sum(
        (emb_real[y_real == c].mean(0) - emb_syn[y_syn == c].mean(0)).pow(2).sum()
        for c in range(3)  # class 3 has no synthetic images: it does not count
    )
    loss = condense.dm_loss(emb_real, y_real, emb_syn, y_syn, 4)
    assert loss.dim() == 0 and torch.allclose(loss, direct, atol=1e-5)
    assert condense.dm_loss(emb_real, y_real, emb_real, y_real, 4) == 0
    perm = torch.randperm(30, generator=g)  # order within the sets does not matter
    assert torch.allclose(
        condense.dm_loss(emb_real[perm], y_real[perm], emb_syn, y_syn, 4), loss, atol=1e-5
    )


def test_dm_loss_gradient_pulls_each_synthetic_mean_toward_the_real_one():
    emb_real, y_real = torch.randn(12, 3, generator=_gen(12)), torch.arange(2).repeat(6)
    emb_syn = torch.randn(4, 3, generator=_gen(13), requires_grad=True)
    y_syn = torch.tensor([0, 0, 1, 1])
    (grad,) = torch.autograd.grad(condense.dm_loss(emb_real, y_real, emb_syn, y_syn, 2), emb_syn)
    for i, c in enumerate(y_syn.tolist()):
        gap = emb_syn[y_syn == c].mean(0) - emb_real[y_real == c].mean(0)
        assert torch.allclose(grad[i], 2 * gap / 2, atol=1e-6)  # d/ds_i |mean - mu|² = 2 gap / n


def _mean_dm_loss(X, y, X_s, y_s, nets: int = 8) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(nets):
            net = condense.convnet(1, 8, None, width=8, seed=1000 + s)
            total += float(condense.dm_loss(net(X), y, net(X_s), y_s, 3))
    return total / nets


def test_distribution_matching_lowers_the_loss_under_unseen_random_networks():
    X, y = _images(per_class=10)
    X0, y0 = condense.distribution_matching(X, y, 2, num_iters=0, seed=0)
    X_s, y_s = condense.distribution_matching(X, y, 2, num_iters=30, width=8, seed=0)
    assert torch.equal(y_s, y0) and X_s.shape == (6, 1, 8, 8)
    assert float(X_s.min()) >= float(X.min()) and float(X_s.max()) <= float(X.max())
    assert _mean_dm_loss(X, y, X_s, y_s) < 0.5 * _mean_dm_loss(X, y, X0, y0)
    again, _ = condense.distribution_matching(X, y, 2, num_iters=30, width=8, seed=0)
    assert torch.equal(again, X_s)
    shifted, _ = condense.distribution_matching(X, y, 2, num_iters=5, width=8, augment=1)
    assert shifted.shape == X_s.shape


# --------------------------------------------------------------------------- gradient matching


def test_gm_distance_is_one_minus_cosine_per_output_row():
    g = _gen(14)
    weight, bias = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, generator=g)
    other = torch.randn(4, 3, 2, 2, generator=g)
    ref = (1 - F.cosine_similarity(weight.flatten(1), other.flatten(1), dim=1)).sum()
    assert torch.allclose(condense.gm_distance([weight, bias], [other, -bias]), ref, atol=1e-5)
    assert condense.gm_distance([weight], [weight]).abs() < 1e-5
    scales = torch.rand(4, 1, 1, 1, generator=g) + 0.1  # each row rescaled: the same direction
    assert condense.gm_distance([weight], [weight * scales]).abs() < 1e-5
    assert torch.allclose(condense.gm_distance([weight], [-weight]), torch.tensor(8.0), atol=1e-4)
    with pytest.raises(ValueError, match="grads_syn must hold one tensor"):
        condense.gm_distance([weight, bias], [weight])


def test_gradient_matching_aligns_the_gradients_it_matches():
    X, y = _images(per_class=10, seed=1)
    params = dict(num_iters=6, outer_loop=2, inner_loop=1, width=8, batch_real=10, lr=0.1)
    X0, y0 = condense.gradient_matching(X, y, 1, **{**params, "num_iters": 0})
    X_s, y_s = condense.gradient_matching(X, y, 1, **params)
    assert torch.equal(y_s, y0) and X_s.shape == (3, 1, 8, 8)

    def distance(images: torch.Tensor) -> float:
        total = 0.0
        for s in range(6):  # fresh networks, the first one of each iteration's schedule
            net = condense.convnet(1, 8, 3, width=8, seed=s)
            params_ = list(net.parameters())
            for c in range(3):
                g_real = torch.autograd.grad(F.cross_entropy(net(X[y == c]), y[y == c]), params_)
                syn_loss = F.cross_entropy(net(images[c : c + 1]), y0[c : c + 1])
                g_syn = torch.autograd.grad(syn_loss, params_)
                total += float(condense.gm_distance(g_real, g_syn))
        return total

    assert distance(X_s) < distance(X0)
    again, _ = condense.gradient_matching(X, y, 1, **params)
    assert torch.equal(again, X_s)


# --------------------------------------------------------------------------- one entry point


def test_condense_dispatches_to_each_method():
    X, y = _images(per_class=6)
    feats = X.flatten(1)
    X_r, y_r = condense.condense("random", X, y, 2, seed=4)
    idx = condense.random_select(y, 2, seed=4)
    assert torch.equal(X_r, X[idx]) and torch.equal(y_r, y[idx])
    X_h, _ = condense.condense("herding", X, y, 2, features=feats)
    assert torch.equal(X_h, X[condense.herding(feats, y, 2)])
    X_k, _ = condense.condense("kcenter", X, y, 2, features=feats)
    assert torch.equal(X_k, X[condense.kcenter_greedy(feats, y, 2)])
    assert torch.equal(condense.condense("means", X, y, 1)[0], condense.class_means(X, y)[0])
    assert torch.equal(
        condense.condense("kmeans", X, y, 2, num_iters=3)[0],
        condense.kmeans_centroids(X, y, 2, num_iters=3)[0],
    )
    with pytest.raises(ValueError, match="features must be given"):
        condense.condense("kcenter", X, y, 2)
    with pytest.raises(ValueError, match="ipc must be 1 for method 'means'"):
        condense.condense("means", X, y, 2)
    with pytest.raises(ValueError, match="options are only for"):
        condense.condense("random", X, y, 2, num_iters=3)


# --------------------------------------------------------------------------- evaluation


def test_batched_training_equals_separate_runs():
    X, y = _images(per_class=8)
    sets = [condense.condense("random", X, y, 4, seed=s) for s in range(3)]
    options = dict(num_classes=3, num_steps=15, batch_size=5)
    together = condense.train_many([s[0] for s in sets], [s[1] for s in sets], [0, 1, 2], **options)
    for (X_s, y_s), seed, model in zip(sets, [0, 1, 2], together):
        alone = condense.train_on(X_s, y_s, seed=seed, **options)
        for a, b in zip(model.parameters(), alone.parameters()):
            # the same arithmetic in another order: batched and single convolutions round apart,
            # and 15 Adam steps grow that to ~3e-5 on AVX2 kernels (1e-6 on AVX-512); another
            # seed moves them by ~0.4
            assert torch.allclose(a, b, atol=2e-4)
    shifted = condense.train_many([X, X], [y, y], [0, 0], augment=1, **options)
    assert all(torch.equal(a, b) for a, b in zip(shifted[0].parameters(), shifted[1].parameters()))


def test_evaluate_set_reports_the_test_accuracy_of_each_seed():
    class Tiny:
        num_classes = 3

        def __init__(self):
            self.X_train, self.y_train = _images(per_class=8, seed=0)
            self.X_test, self.y_test = _images(per_class=5, seed=1)

        def split(self, name):
            return (self.X_test, self.y_test) if name == "test" else (self.X_train, self.y_train)

    data = Tiny()
    result = condense.evaluate_set(data.X_train, data.y_train, data, seeds=[0, 1], num_steps=20)
    for seed, acc in zip([0, 1], result["accs"]):
        model = condense.train_on(
            data.X_train, data.y_train, num_classes=3, num_steps=20, seed=seed
        )
        with torch.no_grad():
            assert acc == float((model(data.X_test).argmax(1) == data.y_test).float().mean())
    assert result["acc"] == pytest.approx(np.mean(result["accs"]))
    assert result["acc_std"] == pytest.approx(np.std(result["accs"], ddof=1))
    assert result["seconds"] > 0
    with pytest.raises(ValueError, match="seeds must be"):
        condense.evaluate_set(data.X_train, data.y_train, data, seeds=[])


@pytest.mark.parametrize(("dtype", "np_dtype"), [("uint8", np.uint8), ("float16", np.float16),
                                                 ("float32", np.float32)])  # fmt: skip
def test_set_bytes_equals_the_serialized_arrays(dtype, np_dtype):
    X, y = _images(per_class=7)
    pixels = X.numpy()
    if dtype == "uint8":
        pixels = np.round(pixels * 255)
    stored = pixels.astype(np_dtype).tobytes() + y.numpy().astype(np.uint8).tobytes()
    assert condense.set_bytes(X, y, dtype) == len(stored)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda X, y: condense.random_select(y, 0), "ipc"),
        (lambda X, y: condense.random_select(y, 99), "ipc"),
        (lambda X, y: condense.random_select(y.float(), 1), "y must be"),
        (lambda X, y: condense.random_select(y, 1, seed=-1), "seed"),
        (lambda X, y: condense.herding(X.flatten(1), y[:-1], 1), "y must hold one label"),
        (lambda X, y: condense.herding_class(X.flatten(1), 0), "k must"),
        (lambda X, y: condense.kcenter_step(X.flatten(1), []), "selected must be"),
        (lambda X, y: condense.kcenter_step(X.flatten(1), [999]), "selected must be"),
        (lambda X, y: condense.class_means(X.long(), y), "X must be"),
        (lambda X, y: condense.kmeans_centroids(X, y, 2, num_iters=-1), "num_iters"),
        (lambda X, y: condense.condense("magic", X, y, 1), "method must be"),
        (lambda X, y: condense.shift(X.flatten(1)), "x must be"),
        (lambda X, y: condense.shift(X, 8), "max_shift"),
        (lambda X, y: condense.translate(X, 8, 0), "dy and dx"),
        (lambda X, y: condense.dm_loss(X.flatten(1), y, X.flatten(1), y, 2), "num_classes"),
        (lambda X, y: condense.distribution_matching(X, y, 1, lr=0), "lr must be"),
        (lambda X, y: condense.distribution_matching(X.flatten(1), y, 1), "X must have 4"),
        (lambda X, y: condense.distribution_matching(X, y, 1, init="zeros"), "init must be"),
        (lambda X, y: condense.gradient_matching(X, y, 1, outer_loop=0), "outer_loop"),
        (lambda X, y: condense.eval_model("resnet"), "arch must be"),
        (lambda X, y: condense.train_many([X], [y], [0, 1]), "Xs, ys and seeds"),
        (lambda X, y: condense.set_bytes(X, y, "int4"), "pixel_dtype"),
        (lambda X, y: condense.set_bytes(X, y + 300), "labels < 256"),
    ],
)
def test_bad_input_raises_one_line_value_error_naming_the_parameter(call, name):
    X, y = _images(per_class=4)
    with pytest.raises(ValueError, match=name) as err:
        call(X, y)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- DM and the class mean


def test_the_class_mean_minimises_the_dm_loss_of_every_linear_embedding():
    """One image per class, psi(x) = W x + b: the class-c term is ||W (mu_c - s_c)||², zero at the
    class mean for every W; descending the DM loss over fresh random linear maps (DM's loop with a
    linear embedding) reaches the class means from random real images."""
    X, y = _images(per_class=10)
    P = X.flatten(1).double()  # (30, 64)
    means, y_means = condense.class_means(P, y)  # (3, 64)
    idx = condense.random_select(y, 1, seed=0)
    s, y_s = P[idx].clone().requires_grad_(), y[idx]
    start = (s - means[y_s]).norm().item()
    g = _gen(21)
    for _ in range(300):
        W = torch.randn(96, 64, generator=g, dtype=torch.float64) / math.sqrt(96)
        b = torch.randn(96, generator=g, dtype=torch.float64)
        at_mean = condense.dm_loss(P @ W.T + b, y, means @ W.T + b, y_means, 3)
        assert at_mean < 1e-20  # the mean is a minimiser (loss 0) of this W ...
        assert condense.dm_loss(P @ W.T + b, y, P[idx] @ W.T + b, y_s, 3) > 1e-3  # real: not
        loss = condense.dm_loss(P @ W.T + b, y, s @ W.T + b, y_s, 3)
        (grad,) = torch.autograd.grad(loss, s)
        with torch.no_grad():
            s -= 0.2 * grad
    assert start > 1.0 and (s - means[y_s]).norm().item() < 1e-6 * start
