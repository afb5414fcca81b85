"""Tests for labkit.data: embedded datasets, the mnist1d disk cache, optional readers, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import data
from labkit.data import mnist1d, text

SMALL = 100  # mnist1d signals in the cache tests (70 train / 10 val / 20 test): fast to generate


@pytest.fixture(autouse=True)
def isolated(tmp_data):
    """Every test gets its own LABKIT_DATA folder and an empty in-process cache."""
    data.clear_cache()
    yield tmp_data
    data.clear_cache()


def row_hashes(X: torch.Tensor) -> list[str]:
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in X]


def same_data(a: data.ArrayData, b: data.ArrayData) -> bool:
    return all(torch.equal(x, y) for s in data.SPLITS for x, y in zip(a.split(s), b.split(s)))


# --------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_split_sizes():
    d = data.load("digits")
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1257, 180, 360)
    for split in data.SPLITS:
        X, y = d.split(split)
        assert X.shape[1:] == (1, 8, 8) and X.dtype == torch.float32 and y.dtype == torch.int64
    X_all = torch.cat([d.X_train, d.X_val, d.X_test])
    assert X_all.min() == 0.0 and X_all.max() == 1.0
    assert (d.num_classes, d.input_shape, d.classes[:2]) == (10, (1, 8, 8), ("0", "1"))


def test_digits_match_sklearn_images_and_labels():
    from sklearn.datasets import load_digits

    sk = load_digits()
    expected = sorted(
        (row.astype(np.float32).tobytes(), int(t)) for row, t in zip(sk.data, sk.target)
    )
    d = data.load("digits")
    ours = sorted(
        ((X.reshape(-1) * 16).numpy().tobytes(), int(t))
        for s in data.SPLITS
        for X, t in zip(*d.split(s))
    )
    assert ours == expected


def test_digits_splits_are_stratified_and_disjoint():
    d = data.load("digits")
    full = np.bincount(np.concatenate([d.split(s)[1].numpy() for s in data.SPLITS]))
    for split, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        counts = np.bincount(d.split(split)[1].numpy(), minlength=10)
        assert (counts > 0).all(), split
        assert np.abs(counts - full * share).max() <= 1.0, (split, counts)
    hashes = [set(row_hashes(d.split(s)[0])) for s in data.SPLITS]
    assert sum(len(h) for h in hashes) == len(set().union(*hashes)) == 1797


def test_digits_deterministic_and_seed_changes_split():
    a = data.load("digits")
    assert data.load("digits") is a  # cached in-process
    data.clear_cache()
    b = data.load("digits")
    assert b is not a and same_data(a, b)
    c = data.load("digits", seed=1)
    assert not torch.equal(a.y_test, c.y_test) or not torch.equal(a.X_test, c.X_test)
    assert set(row_hashes(a.X_test)) != set(row_hashes(c.X_test))


def test_digits_num_samples_subsamples_train_only():
    full, small = data.load("digits"), data.load("digits", num_samples=100)
    assert len(small.y_train) == 100
    assert np.bincount(small.y_train.numpy(), minlength=10).min() >= 9  # stratified: ~10 each
    assert set(row_hashes(small.X_train)) <= set(row_hashes(full.X_train))
    assert torch.equal(small.X_test, full.X_test) and torch.equal(small.y_val, full.y_val)


def test_loader_is_seeded_and_shuffles_train_only():
    d = data.load("digits")

    def order(loader):
        return torch.cat([y for _, y in loader]), torch.cat([X for X, _ in loader])

    y1, X1 = order(d.loader("train", batch_size=100, seed=3))
    y2, X2 = order(d.loader("train", batch_size=100, seed=3))
    assert torch.equal(y1, y2) and torch.equal(X1, X2)
    assert sorted(row_hashes(X1)) == sorted(row_hashes(d.X_train))  # every sample once
    assert not torch.equal(X1, d.X_train)  # shuffled
    _, X3 = order(d.loader("train", batch_size=100, seed=4))
    assert not torch.equal(X1, X3)
    X_test, _ = next(iter(d.loader("test", batch_size=32)))
    assert torch.equal(X_test, d.X_test[:32])


def test_subset_describe_and_repr():
    d = data.load("digits")
    X, y = d.subset("test", 50, seed=1)
    assert X.shape == (50, 1, 8, 8) and set(row_hashes(X)) <= set(row_hashes(d.X_test))
    assert torch.equal(d.subset("test", 50, seed=1)[1], y)
    line = data.describe(d)
    assert line.startswith("digits: 1257 train / 180 val / 360 test, input (1, 8, 8), 10 classes")
    assert "\n" not in line and repr(d) == f"ArrayData({line})"


# --------------------------------------------------------------------------- mnist1d


def mnist1d_cache_files(folder: Path) -> list[Path]:
    return sorted((folder / "cache" / "datasets").glob("mnist1d-*.npz"))


def test_mnist1d_shapes_and_oracle(isolated):
    from mnist1d.data import get_dataset_args, make_dataset

    d = data.load("mnist1d", num_samples=500, seed=5)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (350, 50, 100)
    assert d.X_train.shape[1:] == (1, 40) and d.X_train.dtype == torch.float32
    for split in data.SPLITS:
        assert (np.bincount(d.split(split)[1].numpy(), minlength=10) > 0).all()
    args = get_dataset_args()
    args.num_samples, args.seed = 500, 5
    ref = make_dataset(args)
    X_ref = np.concatenate([ref["x"], ref["x_test"]]).astype(np.float32)
    y_ref = np.concatenate([ref["y"], ref["y_test"]])
    ours = sorted(
        (X.reshape(-1).numpy().tobytes(), int(t)) for s in data.SPLITS for X, t in zip(*d.split(s))
    )
    assert ours == sorted((x.tobytes(), int(t)) for x, t in zip(X_ref, y_ref))
    assert len(mnist1d_cache_files(isolated)) == 1


def test_mnist1d_reads_cache_and_is_deterministic(isolated, monkeypatch):
    a = data.load("mnist1d", num_samples=SMALL)
    data.clear_cache()

    def no_generation(*args):
        raise AssertionError("regenerated although the cache file is valid")

    with monkeypatch.context() as m:
        m.setattr(mnist1d, "_generate_mnist1d", no_generation)
        b = data.load("mnist1d", num_samples=SMALL)
    assert same_data(a, b)
    mnist1d_cache_files(isolated)[0].unlink()
    data.clear_cache()
    assert same_data(a, data.load("mnist1d", num_samples=SMALL))  # regenerated, identical
    other = data.load("mnist1d", num_samples=SMALL, seed=1)
    assert not torch.equal(a.X_train, other.X_train)
    assert len(mnist1d_cache_files(isolated)) == 2


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
    path.write_bytes(bytes(raw))


def corrupt_tamper(path: Path) -> None:
    """A well-formed npz whose arrays no longer match the stored checksum."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["x"] = arrays["x"] + np.float32(0.5)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_flip, corrupt_tamper])
def test_mnist1d_corrupt_cache_is_regenerated(isolated, corrupt):
    a = data.load("mnist1d", num_samples=SMALL)
    (path,) = mnist1d_cache_files(isolated)
    good = path.read_bytes()
    corrupt(path)
    assert path.read_bytes() != good
    data.clear_cache()
    with pytest.warns(UserWarning, match="corrupt.*regenerating"):
        b = data.load("mnist1d", num_samples=SMALL)
    assert same_data(a, b)
    assert path.read_bytes() == good
    data.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load("mnist1d", num_samples=SMALL)  # the rewritten file is valid again


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    data.load("mnist1d", num_samples=SMALL)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before


# --------------------------------------------------------------------------- pydoc


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def test_pydoc_vocab_split_and_round_trip():
    text, t = pydoc_text(), data.load("pydoc")
    # a fixed alphabet holding every character of this Python's corpus (none is replaced)
    assert t.vocab == data.PYDOC_VOCAB and t.vocab_size == 105 and set(text) <= set(t.vocab)
    assert list(t.vocab) == sorted(t.vocab) and len(set(t.vocab)) == len(t.vocab)
    assert len(t.train) == len(text) * 9 // 10 and len(t.train) + len(t.val) == len(text)
    assert t.decode(t.train) + t.decode(t.val) == text
    assert torch.equal(t.encode(text[:1000]), t.train[:1000])
    assert t.encode("").shape == (0,) and t.decode([]) == ""
    assert t.train.dtype == torch.int64 and int(t.train.max()) < t.vocab_size
    assert data.describe(t).startswith(f"pydoc: {len(t.train):,} train / {len(t.val):,} val")


def test_pydoc_alphabet_is_the_same_on_every_python(monkeypatch):
    """A character outside the fixed alphabet (a newer Python's help text) becomes "?", so the
    vocabulary, and the GPT's shape and bytes, do not depend on the Python version."""
    from pydoc_data import topics as module

    monkeypatch.setattr(module, "topics", {"a": "x ∑ y\n", "b": "~`$"})
    t = text._load_pydoc()
    assert t.vocab == data.PYDOC_VOCAB
    assert t.decode(torch.cat([t.train, t.val])) == "x ? y\n~`$"


def test_pydoc_get_batch_targets_are_shifted_inputs():
    t, text = data.load("pydoc"), pydoc_text()
    train_text = text[: len(t.train)]
    x, y = t.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    for row_x, row_y in zip(x, y):
        assert t.decode(row_x) + t.decode(row_y[-1:]) in train_text
    x2, y2 = t.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = t.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)
    xv, yv = t.get_batch("val", 2, len(t.val) - 1)  # the longest window fits exactly
    assert torch.equal(xv[0], t.val[:-1]) and torch.equal(yv[0], t.val[1:])


# --------------------------------------------------------------------------- optional datasets


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file as specified by LeCun: magic 2051 (images) / 2049 (labels), big-endian sizes."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        path, payload = path.with_name(path.name + ".gz"), gzip.compress(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def write_tiny_idx(folder: Path, compress: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)),
        "test": (rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 10, 10)),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return arrays


def write_tiny_cifar(folder: Path, names: list[str] | None = None) -> dict:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, tuple] = {}
    for i, batch in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images = rng.integers(0, 256, (3 + i, 3072), dtype=np.uint8)  # like the real files
        labels = [int(v) for v in rng.integers(0, 10, 3 + i)]
        content = {b"batch_label": batch.encode(), b"labels": labels, b"data": images}
        (folder / batch).write_bytes(pickle.dumps(content, protocol=2))
        arrays[batch] = images, labels
    if names is not None:
        meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 3}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return arrays


def as_uint8(X: torch.Tensor) -> np.ndarray:
    assert X.dtype == torch.float32 and X.min() >= 0 and X.max() <= 1
    return (X * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize(
    ("name", "folder", "compress"),
    [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)],
)
def test_idx_reader_round_trips_pixels_and_labels(tmp_path, name, folder, compress):
    arrays = write_tiny_idx(tmp_path / folder / "raw", compress=compress)
    d = data.load(name, root=tmp_path)
    (train_X, train_y), (test_X, test_y) = arrays["train"], arrays["test"]
    assert d.input_shape == (1, 28, 28) and d.X_train.shape == (18, 1, 28, 28)
    assert np.array_equal(as_uint8(torch.cat([d.X_train, d.X_val]))[:, 0], train_X)
    assert np.array_equal(torch.cat([d.y_train, d.y_val]).numpy(), train_y)
    assert len(d.y_val) == 2  # the last 10 % of the official train split
    assert np.array_equal(as_uint8(d.X_test)[:, 0], test_X)
    assert np.array_equal(d.y_test.numpy(), test_y)
    assert d.classes[0] == ("T-shirt/top" if name == "fashion-mnist" else "0")


def test_cifar_reader_round_trips_pixels_labels_and_names(tmp_path):
    names = [f"Class{i}" for i in range(10)]
    arrays = write_tiny_cifar(tmp_path / "cifar-10-batches-py", names)
    d = data.load("cifar10", root=tmp_path)
    train_images = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert d.input_shape == (3, 32, 32) and d.classes == tuple(names)
    X = torch.cat([d.X_train, d.X_val])
    assert np.array_equal(as_uint8(X).reshape(len(X), -1), train_images)
    assert torch.cat([d.y_train, d.y_val]).tolist() == train_labels
    assert np.array_equal(as_uint8(d.X_test).reshape(len(d.X_test), -1), arrays["test_batch"][0])
    assert d.y_test.tolist() == arrays["test_batch"][1]
    assert as_uint8(d.X_train)[0, 1, 0, 0] == train_images[0, 1024]  # channel-major layout


def test_optional_num_samples_and_available(isolated):
    assert data.available() == {n: n in data.EMBEDDED for n in data.NAMES}
    write_tiny_idx(isolated / "MNIST" / "raw", compress=True)
    assert data.available()["mnist"] and not data.available()["cifar10"]
    full, small = data.load("mnist"), data.load("mnist", num_samples=5, seed=2)
    assert len(small.y_train) == 5 and torch.equal(small.X_test, full.X_test)
    assert set(row_hashes(small.X_train)) <= set(row_hashes(full.X_train))


def test_corrupt_idx_file_gives_clear_error(tmp_path):
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0c\x01abc")
    with pytest.raises(data.DatasetUnavailableError, match="could not read .*t10k-labels"):
        data.load("mnist", root=tmp_path)


def assert_points_to_alternatives(message: str) -> None:
    assert "\n" not in message
    assert "download=True" in message
    assert all(f"'{n}'" in message for n in data.EMBEDDED)


@pytest.mark.parametrize("name", data.OPTIONAL)
def test_missing_optional_dataset_says_how_to_get_it(tmp_path, name, no_network):
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load(name, root=tmp_path)
    assert_points_to_alternatives(str(err.value))
    assert f"load('{name}', download=True)" in str(err.value)
    assert no_network == []


def test_partially_present_mnist_is_unavailable(tmp_path):
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DatasetUnavailableError, match="missing .*t10k-labels-idx1-ubyte"):
        data.load("mnist", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_while_offline_fails_cleanly(tmp_path, name, no_network):
    root = tmp_path / "store"
    with pytest.raises(data.DatasetUnavailableError, match="looks offline") as err:
        data.load(name, root=root, download=True)
    assert_points_to_alternatives(str(err.value))
    assert no_network, "the download was never attempted"
    assert list(root.iterdir()) == []  # no staging folder, no partial files
    with pytest.raises(data.DatasetUnavailableError, match="is not on disk"):
        data.load(name, root=root)


def test_download_success_moves_files_into_place(tmp_path, monkeypatch, no_network):
    import torchvision.datasets

    calls = []

    class FakeMNIST:  # stands in for torchvision's class: writes the raw files, like a download
        def __init__(self, root, train=True, download=False):
            calls.append(Path(root))
            self.arrays = write_tiny_idx(Path(root) / "MNIST" / "raw", compress=True, seed=7)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    root = tmp_path / "store"
    d = data.load("mnist", root=root, download=True)
    assert len(calls) == 1 and calls[0].parent == root  # staged next to the final folder
    assert sorted(p.name for p in root.iterdir()) == ["MNIST"]
    expected = write_tiny_idx(tmp_path / "ref", seed=7)
    assert np.array_equal(d.y_test.numpy(), expected["test"][1])
    data.clear_cache()
    assert data.load("mnist", root=root, download=True).X_train.shape == (18, 1, 28, 28)
    assert len(calls) == 1  # files present: no second download
    assert no_network == []


def test_embedded_datasets_never_touch_the_network(no_network):
    data.load("digits")
    data.load("mnist1d", num_samples=SMALL)
    data.load("pydoc", download=True)  # nothing to download: ignored
    assert no_network == []


# --------------------------------------------------------------------------- bad inputs


def digits():
    return data.load("digits")


def pydoc():
    return data.load("pydoc")


BAD_INPUTS = [
    (lambda: data.load("mnsit"), r"name must be one of 'digits', 'mnist1d', 'pydoc', 'mnist'"),
    (lambda: data.load(3), "name must be one of"),
    (lambda: data.load("digits", num_samples=0), "num_samples must be an integer >= 1"),
    (lambda: data.load("digits", num_samples=2.5), "num_samples must be an integer"),
    (lambda: data.load("digits", num_samples=5000), r"num_samples must be .*\[1, 1257\]"),
    (lambda: data.load("mnist1d", num_samples=50), "num_samples must be a multiple of 10"),
    (lambda: data.load("mnist1d", num_samples=155), "num_samples must be a multiple of 10"),
    (lambda: data.load("pydoc", num_samples=10), "num_samples must be None for 'pydoc'"),
    (lambda: data.load("digits", seed=-1), "seed must be an integer in"),
    (lambda: data.load("digits", seed="0"), "seed must be an integer"),
    (lambda: data.load("mnist", root=3), "root must be a folder path"),
    (lambda: data.load("mnist", download="yes"), "download must be True or False"),
    (lambda: digits().split("tset"), "split must be one of 'train', 'val', 'test'; got 'tset'"),
    (lambda: digits().loader("train", batch_size=0), "batch_size must be an integer >= 1"),
    (lambda: digits().loader("train", shuffle="yes"), "shuffle must be True, False or None"),
    (lambda: digits().loader("val", seed=-2), "seed must be an integer >= 0"),
    (lambda: digits().subset("train", 0), "n must be an integer in"),
    (lambda: pydoc().get_batch("test", 4, 8), "split must be one of 'train', 'val'"),
    (lambda: pydoc().get_batch("train", 0, 8), "batch_size must be an integer >= 1"),
    (lambda: pydoc().get_batch("val", 2, len(pydoc().val)), "block_size must be an integer in"),
    (lambda: pydoc().encode("snow\u2603man"), "text must use only vocab characters"),
    (lambda: pydoc().decode([10**6]), r"ids must be in \[0, "),
    (lambda: data.describe(42), "data must be an ArrayData or TextData"),
]


@pytest.mark.parametrize(("call", "message"), BAD_INPUTS)
def test_bad_inputs_raise_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_as_xy_takes_arraydata_splits_and_pairs_and_names_bad_input():
    ds = data.load("digits")
    X, y = data.as_xy(ds, "val")
    assert torch.equal(X, ds.X_val) and torch.equal(y, ds.y_val)
    pair = (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert data.as_xy(pair) == pair
    with pytest.raises(ValueError, match=r"^split must be one of"):
        data.as_xy(ds, "dev")
    with pytest.raises(ValueError, match=r"^val must be an \(X, y\) pair .*; got \[3, 2\]$"):
        data.as_xy((torch.zeros(3, 2), torch.zeros(2)), name="val")
    with pytest.raises(ValueError, match=r"^data must be ArrayData or an \(X, y\) tuple"):
        data.as_xy(torch.zeros(3, 2))  # Tensor.split is not a dataset's split
    assert data.is_split_data(ds) and not data.is_split_data("a,b") and not data.is_split_data(pair)
