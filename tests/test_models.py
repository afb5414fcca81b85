from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from labkit import data, models, train, utils
from labkit.models import zoo

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_array_data(input_shape, n=40, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, *input_shape, generator=g)
    y = torch.arange(n) % num_classes
    return data.ArrayData(
        "tiny", X, y, X[:9], y[:9], X[:9], y[:9], num_classes, tuple(input_shape),
        tuple(str(i) for i in range(num_classes)),
    )  # fmt: skip


# --------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    ("name", "input_shape", "overrides"),
    [
        ("mlp", (1, 8, 8), {}),
        ("mlp", (1, 40), {"hidden": (32,)}),
        ("lenet", (1, 8, 8), {}),
        ("lenet", (1, 28, 28), {}),
        ("lenet", (3, 32, 32), {}),
        ("cnn1d", (1, 40), {}),
        ("dscnn", (1, 8, 8), {}),
        ("dscnn", (1, 28, 28), {"channels": (8, 16)}),
        ("vit", (1, 8, 8), {"dim": 16, "depth": 1, "heads": 2}),
        ("vit", (3, 32, 32), {"dim": 16, "depth": 1, "heads": 2}),
    ],
)
def test_forward_shape_on_dataset_shaped_input(name, input_shape, overrides):
    dataset = tiny_array_data(input_shape, num_classes=7)
    config = models.config_for(name, dataset, **overrides)
    model = models.build(name, config)
    out = model(dataset.X_train[:5])
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


def test_config_for_fills_shapes_from_datasets():
    assert models.config_for("mlp", "digits") == models.MLPConfig(in_features=64)
    lenet = models.config_for("lenet", tiny_array_data((3, 32, 32), num_classes=4))
    assert (lenet.in_channels, lenet.image_size, lenet.num_classes) == (3, 32, 4)
    assert models.config_for("vit", tiny_array_data((1, 28, 28))).patch_size == 4
    cnn = models.config_for("cnn1d", tiny_array_data((2, 24)), channels=(4,))
    assert (cnn.in_channels, cnn.length, cnn.channels) == (2, 24, (4,))
    text = data.TextData("t", torch.tensor([0, 1, 2, 1]), torch.tensor([2, 1]), ("a", "b", "c"))
    assert models.config_for("gpt", text).vocab_size == 3
    with pytest.raises(ValueError, match="dataset must"):
        models.config_for("gpt", tiny_array_data((1, 40)))
    with pytest.raises(ValueError, match="dataset must"):
        models.config_for("lenet", tiny_array_data((1, 40)))


def linear_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_mlp_parameter_count_matches_formula():
    assert sum(p.numel() for p in models.build("mlp").parameters()) == linear_params(
        [64, 300, 100, 10]
    )  # LeNet-300-100 on 8x8 digits: 50,610
    model = models.build("mlp", in_features=40, hidden=(), num_classes=3)
    assert sum(p.numel() for p in model.parameters()) == 40 * 3 + 3


@pytest.mark.parametrize(("in_channels", "image_size"), [(1, 8), (1, 28), (3, 32)])
def test_lenet_parameter_count_matches_formula(in_channels, image_size):
    model = models.build("lenet", in_channels=in_channels, image_size=image_size)
    conv = (in_channels * 6 * 25 + 6) + (6 * 16 * 25 + 16)  # 5x5 kernels + biases
    flat = 16 * (image_size // 4) ** 2  # two 2x2 max-pools
    expected = conv + linear_params([flat, 120, 84, 10])
    assert sum(p.numel() for p in model.parameters()) == expected


def test_dscnn_is_depthwise_separable():
    model = models.build("dscnn", channels=(8, 16, 32))
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in depthwise] == [8, 16]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_no_multihead_attention_module_anywhere():
    for model in (models.build("vit"), models.build("gpt", vocab_size=11)):
        assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


# --------------------------------------------------------------------------- transformers


def tiny_gpt(**overrides):
    config = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    return models.build("gpt", **{**config, **overrides}).eval()


def test_gpt_forward_is_causal():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 3) % 11
    a, b = model(idx), model(changed)
    assert a.shape == (2, 8, 11)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3  # the change does reach later positions


def test_gpt_lm_head_is_tied_to_token_embedding():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt_generate_is_deterministic_with_a_seeded_generator():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])
    run = lambda s: model.generate(prompt, 12, generator=torch.Generator().manual_seed(s))
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (1, 15) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < 11)).all()


def test_gpt_generate_greedy_and_top_k():
    model = tiny_gpt()
    prompt = torch.tensor([[4, 5]])
    greedy = model.generate(prompt, 1, temperature=0)
    assert greedy[0, -1] == model(prompt)[0, -1].argmax()
    # top_k=1 sampling can only pick the most likely token
    top1 = model.generate(prompt, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, greedy)


def test_gpt_block_size_check_and_cropped_generation():
    model = tiny_gpt(block_size=4)
    with pytest.raises(ValueError, match="block_size=4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 6, temperature=0)  # context cropped
    assert out.shape == (1, 9)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 1, temperature=-1.0)


def test_gpt_crop_block_size():
    model = tiny_gpt(block_size=8)
    idx = torch.randint(0, 11, (1, 4), generator=torch.Generator().manual_seed(0))
    before = model(idx)
    model.crop_block_size(4)
    torch.testing.assert_close(model(idx), before)
    assert model.transformer.wpe.weight.shape == (4, 16)
    with pytest.raises(ValueError, match="idx length"):
        model(torch.zeros(1, 5, dtype=torch.long))


def manual_attention(attn, x, causal):
    """softmax(Q K^T / sqrt(d)) V per head, then the output projection: the oracle."""
    B, T, C = x.shape
    H = attn.heads
    D = C // H
    W, b = attn.c_attn.weight, attn.c_attn.bias
    q, k, v = (x @ W.T + b).split(C, dim=2)
    heads = lambda t: t.reshape(B, T, H, D).permute(0, 2, 1, 3)  # (B, H, T, D)
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)
    y = y.permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


@pytest.mark.parametrize("kind", ["vit", "gpt"])
def test_attention_matches_manual_softmax_oracle(kind):
    torch.manual_seed(0)
    if kind == "vit":
        block = models.build("vit", dim=16, heads=4, depth=1).eval().blocks[0]
    else:
        block = tiny_gpt(n_embd=16, n_head=4).transformer.h[0]
    x = torch.randn(3, 6, 16)
    with torch.no_grad():
        torch.nn.init.normal_(block.attn.c_attn.bias)  # non-zero biases so they are checked too
        got = block.attn(x)
        want = manual_attention(block.attn, x, causal=kind == "gpt")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # the whole pre-norm block from its parts: x + attn(ln_1(x)), then + mlp(ln_2(.))
        h = x + manual_attention(block.attn, block.ln_1(x), causal=kind == "gpt")
        want_block = h + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(h))))
        torch.testing.assert_close(block(x), want_block, rtol=1e-4, atol=1e-5)


def test_vit_patchify_matches_unfold():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    want = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, N, C*p*p)
    torch.testing.assert_close(models.patchify(x, 4), want)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: models.MLPConfig(hidden=(64, 0)), "hidden"),
        (lambda: models.MLPConfig(dropout=1.5), "dropout"),
        (lambda: models.GPTConfig(vocab_size=10, n_embd=30, n_head=4), "n_embd"),
        (lambda: models.GPTConfig(vocab_size=0), "vocab_size"),
        (lambda: models.ViTConfig(image_size=8, patch_size=3), "image_size"),
        (lambda: models.ViTConfig(dim=30, heads=4), "dim"),
        (lambda: models.LeNetConfig(image_size=2), "image_size"),
        (lambda: models.CNN1dConfig(kernel_size=4), "kernel_size"),
        (lambda: models.DSCNNConfig(channels=()), "channels"),
        (lambda: models.build("resnet"), "name"),
        (lambda: models.build("mlp", widht=3), "overrides"),
        (lambda: models.build("gpt"), "vocab_size"),
        (lambda: models.Recipe(models.MLPConfig(), optimizer="rmsprop"), "optimizer"),
        (lambda: models.Recipe(models.MLPConfig(), lr=0), "lr"),
        (lambda: models.Recipe({"hidden": 3}), "config"),
        (lambda: models.pretrained("mlp", "nosuchdata"), "(name, dataset)"),
    ],
)
def test_bad_arguments_raise_one_line_errors_naming_the_field(make, field):
    with pytest.raises(ValueError) as err:
        make()
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


def test_config_normalises_lists_to_tuples():
    config = models.MLPConfig(hidden=[32, 16])
    assert config.hidden == (32, 16)
    assert hash(config) == hash(models.MLPConfig(hidden=(32, 16)))


# --------------------------------------------------------------------------- pretrained cache


def test_issue_2_entries_are_registered_with_distinct_stable_keys():
    expected = {("mlp", "digits"), ("lenet", "digits"), ("dscnn", "digits")}
    expected |= {("cnn1d", "mnist1d"), ("mlp", "mnist1d")}
    assert expected <= set(models.RECIPES)
    keys = [models.cache_key(*entry) for entry in sorted(expected)]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in keys)
    # stable: another interpreter, with another string-hash seed, computes the same keys
    code = (
        "import json; from labkit import models; "
        f"print(json.dumps([models.cache_key(*e) for e in {sorted(expected)!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == keys


@pytest.fixture
def tiny_registry(tmp_data, monkeypatch):
    """An empty registry holding one tiny digits entry, a counting fit, and the cache folder."""
    registry = {}
    monkeypatch.setattr(zoo, "RECIPES", registry)  # the registry the zoo functions read
    monkeypatch.setattr(models, "RECIPES", registry)  # the re-exported name, kept in step
    recipe = models.Recipe(models.MLPConfig(hidden=(16,)), num_epochs=1, lr=1e-2, batch_size=32)
    models.register("tiny", "digits", recipe)
    calls = []
    real_fit = train.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", counting_fit)
    return calls, utils.cache_dir("models")


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_trains_once_then_loads_from_cache(tiny_registry):
    calls, folder = tiny_registry
    assert not models.is_cached("tiny", "digits")
    assert models.pretrained_info("tiny", "digits")["metrics"] is None

    first = models.pretrained("tiny", "digits")
    assert len(calls) == 1
    path = models.cache_path("tiny", "digits")
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["sha256"] == utils.sha256_file(path)
    assert sorted(p.name for p in folder.iterdir()) == [path.name, path.name + ".json"]
    metrics = sidecar["metrics"]
    assert 0.5 < metrics["test_acc"] <= 1 and 0.5 < metrics["val_acc"] <= 1
    assert metrics["params"] == 64 * 16 + 16 + 16 * 10 + 10 and metrics["train_seconds"] > 0
    assert not first.training and next(first.parameters()).device.type == "cpu"
    assert train.evaluate(first, data.load("digits"))["acc"] == pytest.approx(metrics["test_acc"])

    second = models.pretrained("tiny", "digits")
    assert len(calls) == 1  # loaded, not trained
    assert second is not first
    assert_same_state(state_of(first), state_of(second))
    info = models.pretrained_info("tiny", "digits")
    assert info["cached"] and info["metrics"] == metrics
    assert models.prepare()[0]["cached"] is True and len(calls) == 1


def flip_bytes(path):
    payload = bytearray(path.read_bytes())
    middle = len(payload) // 2
    payload[middle : middle + 8] = bytes(b ^ 0xFF for b in payload[middle : middle + 8])
    path.write_bytes(bytes(payload))


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def tamper_sidecar(path):
    sidecar = path.with_name(path.name + ".json")
    record = json.loads(sidecar.read_text())
    record["sha256"] = "0" * 64
    sidecar.write_text(json.dumps(record))


def drop_sidecar(path):
    path.with_name(path.name + ".json").unlink()


@pytest.mark.parametrize("damage", [flip_bytes, truncate, tamper_sidecar, drop_sidecar])
def test_damaged_cache_warns_once_and_retrains(tiny_registry, damage):
    calls, folder = tiny_registry
    original = state_of(models.pretrained("tiny", "digits"))
    path = models.cache_path("tiny", "digits")
    damage(path)
    assert not models.is_cached("tiny", "digits")
    with pytest.warns(UserWarning, match="retraining") as record:
        model = models.pretrained("tiny", "digits")
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert len(calls) == 2
    assert models.is_cached("tiny", "digits")
    assert_same_state(original, state_of(model))  # training is deterministic
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_changed_recipe_gets_a_new_file_and_prepare_removes_the_stale_one(tiny_registry):
    calls, folder = tiny_registry
    models.pretrained("tiny", "digits")
    old = models.cache_path("tiny", "digits")
    models.register(
        "tiny", "digits", models.Recipe(models.MLPConfig(hidden=(16,)), num_epochs=2, lr=1e-2)
    )
    new = models.cache_path("tiny", "digits")
    assert new != old and old.exists()

    rows = models.prepare(["tiny/digits"])
    assert len(calls) == 2
    assert [(r["name"], r["dataset"], r["cached"]) for r in rows] == [("tiny", "digits", False)]
    assert rows[0]["metrics"]["test_acc"] > 0.5 and rows[0]["path"] == str(new)
    assert sorted(p.name for p in folder.iterdir()) == [new.name, new.name + ".json"]

    rows = models.prepare(["tiny"])  # a model name selects all its datasets
    assert rows[0]["cached"] is True and len(calls) == 2
    with pytest.raises(ValueError, match="names must be"):
        models.prepare(["nosuch/digits"])


def test_select_entries_picks_registered_entries_in_order(tiny_registry):
    models.register("tiny", "mnist1d", models.RECIPES[("tiny", "digits")])
    models.register("other", "digits", models.RECIPES[("tiny", "digits")])
    everything = [("other", "digits"), ("tiny", "digits"), ("tiny", "mnist1d")]
    assert models.select_entries(None) == everything
    assert models.select_entries("tiny") == [("tiny", "digits"), ("tiny", "mnist1d")]
    assert models.select_entries(["tiny/mnist1d", ("other", "digits"), "tiny"]) == [
        ("tiny", "mnist1d"),
        ("other", "digits"),
        ("tiny", "digits"),
    ]  # first-seen order, no repeats
    for bad in (["nosuch"], ["tiny/nosuch"], [("tiny", "nosuch")]):
        with pytest.raises(ValueError, match="names must be registered entries"):
            models.select_entries(bad)


def test_retrain_forces_training(tiny_registry):
    calls, _ = tiny_registry
    models.pretrained("tiny", "digits")
    models.pretrained("tiny", "digits", retrain=True)
    assert len(calls) == 2


# --------------------------------------------------------------------------- transformer entries

GPT_ENTRIES = [("gpt", "pydoc"), ("gpt_w16", "pydoc"), ("gpt_w32", "pydoc"), ("gpt_w64", "pydoc")]


def test_gpt_entries_are_sized_for_the_pydoc_vocabulary():
    vocab = data.load("pydoc").vocab_size
    for entry in GPT_ENTRIES:
        recipe = models.RECIPES[entry]
        assert type(recipe.config) is models.GPTConfig, entry
        assert recipe.config.vocab_size == vocab, entry
        assert recipe.num_steps is not None, entry  # text entries train by steps (fit_lm)
    if models.is_cached("gpt", "pydoc"):  # the cached weights agree with the registry
        gpt = models.pretrained("gpt", "pydoc")
        assert gpt.transformer.wte.weight.shape == (vocab, gpt.config.n_embd)
        params = sum(p.numel() for p in gpt.parameters())
        assert params == models.pretrained_info("gpt", "pydoc")["metrics"]["params"]


def test_gpt_width_entries_differ_only_in_width():
    recipes = {w: models.RECIPES[(f"gpt_w{w}", "pydoc")] for w in (16, 32, 64)}
    assert [r.config.n_embd for r in recipes.values()] == [16, 32, 64]
    base = recipes[64]
    for width, recipe in recipes.items():
        # the training recipe is shared; the config differs in n_embd (and n_head, which must
        # divide it), nothing else
        assert dataclasses.replace(recipe, config=base.config) == base, width
        same_shape = dataclasses.replace(recipe.config, n_embd=64, n_head=base.config.n_head)
        assert same_shape == base.config, width
    main = models.RECIPES[("gpt", "pydoc")]  # the main GPT: the width-64 model, trained longer
    assert main.config == base.config and main.num_steps > base.num_steps
    # the same recipe, longer: the warm-up is the same tenth of the run
    assert main.warmup_steps * base.num_steps == base.warmup_steps * main.num_steps
    same = dataclasses.replace(main, num_steps=base.num_steps, warmup_steps=base.warmup_steps)
    assert same == base


def test_vit_digits_entry_has_the_shape_of_the_digits_data():
    config = models.RECIPES[("vit", "digits")].config
    expected = models.config_for("vit", "digits")
    for field in ("image_size", "patch_size", "in_channels", "num_classes"):
        assert getattr(config, field) == getattr(expected, field), field
    digits = data.load("digits")
    assert models.build("vit", config)(digits.X_test[:3]).shape == (3, digits.num_classes)


def _changed(value):
    """A different value of the same kind, or None when there is no obvious one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 2 * value if value else 1
    if isinstance(value, float):
        return 2 * value if value else 0.1
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return (*value, value[-1])
    return None


def _recipe_variants(recipe):
    """(field, recipe) pairs, each recipe differing from ``recipe`` in one field."""
    changes = {
        "optimizer": "sgd" if recipe.optimizer != "sgd" else "adam",
        "schedule": "cosine" if recipe.schedule != "cosine" else "constant",
        "num_steps": (recipe.num_steps or 1000) + 1,
        "data_args": {**dict(recipe.data_args), "seed": 7},
    }
    for field in ("num_epochs", "lr", "batch_size", "weight_decay", "seed"):
        changes[field] = _changed(getattr(recipe, field))
    out = [(field, dataclasses.replace(recipe, **{field: v})) for field, v in changes.items()]
    for field in dataclasses.fields(recipe.config):
        new = _changed(getattr(recipe.config, field.name))
        try:
            config = dataclasses.replace(recipe.config, **{field.name: new})
        except ValueError:  # e.g. a head count that no longer divides the width
            continue
        out.append((f"config.{field.name}", dataclasses.replace(recipe, config=config)))
    return out


def test_registered_entries_have_distinct_keys():
    keys = [models.cache_key(*entry) for entry in sorted(models.RECIPES)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("entry", sorted(models.RECIPES), ids="/".join)
def test_cache_key_changes_when_the_recipe_changes(entry):
    recipe = models.RECIPES[entry]
    key = models.cache_key(*entry)
    assert models.cache_key(*entry, recipe) == key
    assert models.cache_key(*entry, dataclasses.replace(recipe)) == key  # an equal copy
    variants = _recipe_variants(recipe)
    assert sum(f.startswith("config.") for f, _ in variants) >= 3, "too few config fields varied"
    for field, changed in variants:
        assert changed != recipe, field
        assert models.cache_key(*entry, changed) != key, field
