"""Tests of bpexp.data: each data set's shapes and targets, the splits, the user's .npz files,
and bad arguments named by their key. The files themselves: tests/test_datafiles.py."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from omegaconf import OmegaConf

import bpexp
from bpexp import config
from bpexp.data import DATASETS, load_dataset
from bpexp.datafiles import read_idx
from bpexp.errors import ConfigError
from tests.conftest import (
    FASHION_FOLDER,
    MNIST_FOLDER,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    needs_fashion,
    needs_mnist,
    write_idx_files,
)

# --- helpers -----------------------------------------------------------------------------


def all_rows(data) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of the three parts, stacked."""
    X = np.concatenate([data.X_train, data.X_val, data.X_test])
    Y = np.concatenate([data.Y_train, data.Y_val, data.Y_test])
    return X, Y


# --- digits ------------------------------------------------------------------------------


def test_digits_shapes_and_one_hot():
    data = load_dataset("digits", val_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(data.X_train) + len(data.X_val) + len(data.X_test) == 1797
    assert len(data.X_test) == round(0.2 * 1797)
    assert len(data.X_val) == round(0.1 * (1797 - len(data.X_test)))
    assert (data.n_inputs, data.n_outputs) == (64, 10)
    assert data.task == "classification"
    X, Y = all_rows(data)
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(Y.sum(axis=1), 1.0)
    assert set(np.unique(Y)) == {0.0, 1.0}
    assert set(Y.argmax(axis=1)) == set(range(10))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_digits_dtype_and_layout_honoured(dtype):
    data = load_dataset("digits", dtype=dtype)
    for array in (data.X_train, data.Y_train, data.X_val, data.Y_val, data.X_test, data.Y_test):
        assert array.dtype == np.dtype(dtype)
        assert array.flags.c_contiguous


def test_digits_split_fixed_by_seed():
    first = load_dataset("digits", seed=3)
    again = load_dataset("digits", seed=3)
    other = load_dataset("digits", seed=4)
    np.testing.assert_array_equal(first.X_train, again.X_train)
    np.testing.assert_array_equal(first.Y_val, again.Y_val)
    np.testing.assert_array_equal(first.X_test, again.X_test)
    assert first.X_test.shape == other.X_test.shape
    assert not np.array_equal(first.X_test, other.X_test)


def test_digits_split_does_not_depend_on_dtype():
    wide = load_dataset("digits", seed=5, dtype="float64")
    narrow = load_dataset("digits", seed=5, dtype="float32")
    np.testing.assert_array_equal(wide.X_test.astype(np.float32), narrow.X_test)


def test_digits_without_validation_set():
    data = load_dataset("digits", val_fraction=0.0)
    assert data.X_val.shape == (0, 64)
    assert data.Y_val.shape == (0, 10)
    assert len(data.X_train) + len(data.X_test) == 1797


# --- pixels3x4 ---------------------------------------------------------------------------


def image(*rows: str) -> np.ndarray:
    return np.array([int(ink) for row in rows for ink in row], dtype=float)


def test_pixels3x4_is_64_distinct_images_of_two_classes():
    data = load_dataset("pixels3x4", val_fraction=0.0, test_fraction=0.0)
    assert data.X_train.shape == (64, 12)
    assert data.Y_train.shape == (64, 2)
    assert len(data.X_val) == len(data.X_test) == 0
    labels = data.Y_train.argmax(axis=1)
    assert np.bincount(labels).tolist() == [32, 32]
    assert len({row.tobytes() for row in data.X_train}) == 64
    assert set(np.unique(data.X_train)) == {0.0, 1.0}


def test_pixels3x4_holds_the_canonical_glyphs_first():
    data = load_dataset("pixels3x4", val_fraction=0.0, test_fraction=0.0)
    zero = image("111", "101", "101", "111")
    one = image("010", "110", "010", "010")
    np.testing.assert_array_equal(data.X_train[0], zero)
    np.testing.assert_array_equal(data.Y_train[0], [1.0, 0.0])
    np.testing.assert_array_equal(data.X_train[32], one)
    np.testing.assert_array_equal(data.Y_train[32], [0.0, 1.0])


def test_pixels3x4_every_zero_is_far_from_every_one():
    data = load_dataset("pixels3x4", val_fraction=0.0, test_fraction=0.0)
    zeros, ones = data.X_train[:32], data.X_train[32:]
    distances = np.abs(zeros[:, None, :] - ones[None, :, :]).sum(axis=2)
    assert distances.min() >= 5


# --- moons -------------------------------------------------------------------------------


def test_moons_shapes_and_partition():
    data = load_dataset("moons", n_samples=200, val_fraction=0.1, test_fraction=0.25, seed=7)
    assert (data.n_inputs, data.n_outputs) == (2, 2)
    assert (len(data.X_train), len(data.X_val), len(data.X_test)) == (135, 15, 50)
    from sklearn.datasets import make_moons

    X_all, _ = make_moons(n_samples=200, noise=0.2, random_state=7)
    X, _ = all_rows(data)
    np.testing.assert_array_equal(np.sort(X, axis=0), np.sort(X_all, axis=0))


def test_moons_default_size():
    data = load_dataset("moons", val_fraction=0.0, test_fraction=0.0)
    assert data.X_train.shape == (1000, 2)


# --- MNIST-style IDX files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
def test_idx_files_from_local_folder(tmp_path, name, compress):
    write_idx_files(tmp_path / "idx", compress=compress)
    data = load_dataset(
        name, path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(tmp_path / "cache")
    )
    np.testing.assert_array_equal(data.X_train, TRAIN_IMAGES.reshape(20, 784) / 255)
    np.testing.assert_array_equal(data.Y_train, np.eye(10)[TRAIN_LABELS])
    np.testing.assert_array_equal(data.X_test, TEST_IMAGES.reshape(5, 784) / 255)
    np.testing.assert_array_equal(data.Y_test, np.eye(10)[TEST_LABELS])
    assert (data.n_inputs, data.n_outputs) == (784, 10)
    # The cache holds the decoded arrays and their digests, never a copy of the sources.
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(cached) == 8 and all(name.endswith((".npy", ".npy.sha256")) for name in cached)


def test_idx_validation_split_and_n_samples(tmp_path):
    write_idx_files(tmp_path / "idx", compress=True)
    data = load_dataset(
        "mnist",
        path=str(tmp_path / "idx"),
        val_fraction=0.25,
        n_samples=12,
        cache_dir=str(tmp_path / "cache"),
        dtype="float32",
    )
    assert (len(data.X_train), len(data.X_val), len(data.X_test)) == (9, 3, 5)
    assert data.X_train.dtype == np.float32
    X = np.concatenate([data.X_train, data.X_val])
    expected = (TRAIN_IMAGES[:12].reshape(12, 784) / 255).astype(np.float32)
    np.testing.assert_array_equal(np.sort(X, axis=0), np.sort(expected, axis=0))


# --- the real Fashion-MNIST from Debian's package -----------------------------------------


@pytest.fixture(scope="module")
def fashion_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fashion-cache")


@needs_fashion
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fashion_mnist_from_debians_folder(fashion_cache, dtype):
    data = load_dataset(
        "fashion_mnist", val_fraction=1 / 6, cache_dir=str(fashion_cache), dtype=dtype
    )
    assert (len(data.X_train), len(data.X_val), len(data.X_test)) == (50_000, 10_000, 10_000)
    assert data.X_train.dtype == dtype and data.X_train.flags.c_contiguous
    assert data.X_train.min() == 0 and data.X_train.max() == 1
    # The published set: 6,000 images of each of the 10 classes to train, 1,000 to test.
    train_labels = np.concatenate([data.Y_train, data.Y_val]).argmax(axis=1)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(data.Y_test.argmax(axis=1)).tolist() == [1000] * 10
    for Y in (data.Y_train, data.Y_val, data.Y_test):  # one-hot rows
        assert set(np.unique(Y)) == {0, 1} and (Y.sum(axis=1) == 1).all()
    # The images are the decoded source, divided by 255 in the run's dtype.
    with gzip.open(FASHION_FOLDER / "t10k-images-idx3-ubyte.gz") as source:
        raw = np.frombuffer(source.read(), np.uint8, offset=16).reshape(10_000, 784)
    np.testing.assert_array_equal(data.X_test, raw.astype(dtype) / 255)
    assert len(list(fashion_cache.glob("*.npy"))) == 4


# --- the real MNIST from a folder of its IDX files ----------------------------------------

# MNIST's published label counts (digits 0-9) of its 60,000 training and 10,000 test images.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist-cache")


@pytest.mark.slow
@needs_mnist
def test_mnist_default_split_is_the_books(mnist_cache):
    # data=mnist's own val_fraction (conf/data/mnist.yaml), not load_dataset's generic default.
    val_fraction = OmegaConf.load(config.CONF_DIR / "data" / "mnist.yaml").val_fraction
    data = load_dataset(
        "mnist", path=str(MNIST_FOLDER), val_fraction=val_fraction, cache_dir=str(mnist_cache)
    )
    assert (len(data.X_train), len(data.X_val), len(data.X_test)) == (50_000, 10_000, 10_000)
    assert (data.n_inputs, data.n_outputs) == (784, 10)
    assert data.X_train.min() == 0 and data.X_train.max() == 1
    train_labels = np.concatenate([data.Y_train, data.Y_val]).argmax(axis=1)
    assert np.bincount(train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(data.Y_test.argmax(axis=1)).tolist() == MNIST_TEST_COUNTS
    # Train and validation are a partition of the 60,000 training images (each in file order),
    # the test set is the 10,000 test images: compared through one random projection per row.
    raw_train = read_idx(MNIST_FOLDER / "train-images-idx3-ubyte.gz", 3).reshape(60_000, 784)
    raw_test = read_idx(MNIST_FOLDER / "t10k-images-idx3-ubyte.gz", 3).reshape(10_000, 784)
    direction = np.random.default_rng(0).standard_normal(784)
    split = np.concatenate([data.X_train, data.X_val]) @ direction * 255
    np.testing.assert_allclose(np.sort(split), np.sort(raw_train @ direction), rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(data.X_test, raw_test / 255)
    # The split is the seed's: another seed holds out other images, as many.
    other = load_dataset(
        "mnist",
        path=str(MNIST_FOLDER),
        val_fraction=val_fraction,
        cache_dir=str(mnist_cache),
        seed=1,
    )
    assert len(other.X_val) == 10_000
    assert not np.array_equal(other.X_val @ direction, data.X_val @ direction)


@pytest.mark.slow
@needs_mnist
def test_mnist_short_run_of_the_books_network_learns(mnist_cache):
    # The book's network (bpexp's defaults: 784-30-10 sigmoid, N(0, 1), quadratic, η = 3,
    # batch 10) for one epoch on the first 20,000 training images: 1,667 updates take it from
    # chance (0.1) to far above it on the 10,000 test images, which n_samples does not cut.
    result = bpexp.run(
        [
            "data=mnist",
            f"data.path={MNIST_FOLDER}",
            f"data.cache_dir={mnist_cache}",
            "data.n_samples=20000",
            "trainer.epochs=1",
            "trainer.instruments=false",
            "trainer.sharpness_every=0",
            "tracking.enabled=false",
        ]
    )
    val = result.history["val/accuracy"]
    assert val.loc[0] < 0.2  # untrained: about chance
    assert val.loc[1] > 0.5 and result.metrics["test/accuracy"] > 0.5


# --- the user's own .npz -----------------------------------------------------------------


def test_file_classification_keeps_file_order(tmp_path):
    path = tmp_path / "mine.npz"
    X = np.arange(30.0).reshape(10, 3)
    y = np.array([0, 2, 1, 0, 2, 1, 0, 2, 1, 0])
    np.savez(path, X=X, y=y)
    data = load_dataset("file", path=str(path), val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_array_equal(data.X_train, X)
    np.testing.assert_array_equal(data.Y_train, np.eye(3)[y])
    assert data.task == "classification"
    assert len(data.X_val) == len(data.X_test) == 0


def test_file_split_is_a_partition(tmp_path):
    path = tmp_path / "mine.npz"
    X = np.arange(40.0).reshape(20, 2)
    np.savez(path, X=X, y=np.arange(20) % 2)
    data = load_dataset("file", path=str(path), val_fraction=0.2, test_fraction=0.25, seed=1)
    assert (len(data.X_train), len(data.X_val), len(data.X_test)) == (12, 3, 5)
    for part in (data.X_train, data.X_val, data.X_test):
        assert np.all(np.diff(part[:, 0]) > 0)  # each part in file order
    X_all, _ = all_rows(data)
    np.testing.assert_array_equal(np.sort(X_all, axis=0), X)


def test_file_with_own_test_set(tmp_path):
    path = tmp_path / "mine.npz"
    X, y = np.ones((6, 2)), np.array([0, 1, 0, 1, 0, 1])
    X_test, y_test = np.zeros((2, 2)), np.array([3, 1])
    np.savez(path, X=X, y=y, X_test=X_test, y_test=y_test)
    data = load_dataset("file", path=str(path), val_fraction=0.0, test_fraction=0.5)
    assert len(data.X_train) == 6
    np.testing.assert_array_equal(data.X_test, X_test)
    np.testing.assert_array_equal(data.Y_test, np.eye(4)[y_test])
    assert data.n_outputs == 4


@pytest.mark.parametrize(
    "y", [np.linspace(0, 1, 8), np.linspace(0, 1, 16).reshape(8, 2)], ids=["1-D", "2-D"]
)
def test_file_regression(tmp_path, y):
    path = tmp_path / "mine.npz"
    X = np.arange(16.0).reshape(8, 2)
    np.savez(path, X=X, y=y)
    data = load_dataset(
        "file", path=str(path), val_fraction=0.0, test_fraction=0.0, dtype="float32"
    )
    assert data.task == "regression"
    np.testing.assert_array_equal(data.Y_train, y.reshape(8, -1).astype(np.float32))
    assert data.Y_train.dtype == np.float32


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD = {"X": np.ones((4, 2)), "y": np.array([0, 1, 0, 1])}
BAD_FILES = {
    "missing X": (npz_bytes(y=GOOD["y"]), "'X'"),
    "missing y": (npz_bytes(X=GOOD["X"]), "'y'"),
    "X 1-D": (npz_bytes(X=np.ones(4), y=GOOD["y"]), "X has shape"),
    "y 3-D": (npz_bytes(X=GOOD["X"], y=np.ones((4, 1, 1))), "y has shape"),
    "lengths differ": (npz_bytes(X=GOOD["X"], y=np.array([0, 1, 0])), "rows"),
    "NaN in X": (npz_bytes(X=np.array([[np.nan, 0.0]] * 4), y=GOOD["y"]), "NaN"),
    "inf in y": (npz_bytes(X=GOOD["X"], y=np.array([0.0, np.inf, 1, 2])), "NaN or infinite"),
    "NaN in X_test": (
        npz_bytes(**GOOD, X_test=np.full((1, 2), np.nan), y_test=np.array([0])),
        "X_test",
    ),
    "X_test without y_test": (npz_bytes(**GOOD, X_test=np.ones((1, 2))), "without y_test"),
    "X_test columns": (npz_bytes(**GOOD, X_test=np.ones((1, 3)), y_test=np.array([0])), "columns"),
    "negative label": (npz_bytes(X=GOOD["X"], y=np.array([0, -1, 0, 1])), "negative"),
    "object array": (npz_bytes(X=np.array([[1, "a"]], dtype=object), y=np.array([0])), "npz"),
    "not a zip": (b"X,y\n1,0\n", "not an .npz archive"),
    "truncated": (npz_bytes(**GOOD)[:200], "not a readable .npz"),
}


@pytest.mark.parametrize("content, fragment", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_is_refused_naming_it(tmp_path, content, fragment):
    path = tmp_path / "mine.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_dataset("file", path=str(path))
    message = str(caught.value)
    assert "data.path" in message and str(path) in message
    assert fragment in message


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_dataset("file", path=str(path))
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset("file")


def test_single_npy_array_is_refused(tmp_path):
    path = tmp_path / "mine.npy"
    np.save(path, np.ones((3, 2)))
    with pytest.raises(ConfigError, match=".npy"):
        load_dataset("file", path=str(path))


# --- bad arguments -----------------------------------------------------------------------


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="data.name='cifar'") as caught:
        load_dataset("cifar")
    assert all(name in str(caught.value) for name in DATASETS)


def test_bad_dtype_names_the_key():
    with pytest.raises(ConfigError, match="trainer.dtype='float16'"):
        load_dataset("pixels3x4", dtype="float16")


@pytest.mark.parametrize(
    "key, value",
    [
        ("val_fraction", -0.1),
        ("val_fraction", 1.0),
        ("test_fraction", 1.5),
        ("test_fraction", "0.2"),
        ("test_fraction", float("nan")),
        ("val_fraction", True),
    ],
)
def test_bad_fraction_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"data.{key}="):
        load_dataset("pixels3x4", **{key: value})


def test_fractions_that_leave_no_training_data_are_refused():
    with pytest.raises(ConfigError, match="no training sample"):
        load_dataset("pixels3x4", val_fraction=0.99, test_fraction=0.5)


def test_bad_n_samples_and_seed_name_the_key():
    with pytest.raises(ConfigError, match="data.n_samples=2000"):
        load_dataset("digits", n_samples=2000)
    with pytest.raises(ConfigError, match="data.n_samples=0"):
        load_dataset("moons", n_samples=0)
    with pytest.raises(ConfigError, match="seed=-1"):
        load_dataset("digits", seed=-1)


@pytest.mark.parametrize("label", [10**6, 2**40])
def test_a_class_label_too_large_is_refused_before_allocating(tmp_path, label):
    """Issue 28, defect 6: a label of 2⁴⁰ asked for 800 TiB of one-hot targets (MemoryError,
    exit 1), and one of 10⁶ silently built a 1,000,001-output network. Labels stop at
    MAX_CLASSES - 1, named in the message with the key."""
    from bpexp.data import MAX_CLASSES

    path = tmp_path / "big-label.npz"
    path.write_bytes(npz_bytes(X=np.ones((4, 2)), y=np.array([0, 1, 0, label], dtype=np.int64)))
    with pytest.raises(ConfigError) as caught:
        load_dataset("file", path=str(path))
    message = str(caught.value)
    assert f"data.path={str(path)!r}" in message
    assert f"has class label {label}" in message
    assert f"allowed: labels 0..{MAX_CLASSES - 1}" in message
    top = MAX_CLASSES - 1  # the largest label allowed still loads
    path.write_bytes(npz_bytes(X=np.ones((2, 2)), y=np.array([0, top])))
    assert load_dataset("file", path=str(path), val_fraction=0, test_fraction=0).n_outputs == (
        MAX_CLASSES
    )
