"""Tests of bpexp.data: shapes, splits, the IDX reader and downloader, the user's .npz files."""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bpexp.data import DATASETS, IDX_FILES, SYSTEM_FOLDERS, load_dataset
from bpexp.errors import ConfigError

# --- helpers -----------------------------------------------------------------------------


def all_rows(data) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of the three parts, stacked."""
    X = np.concatenate([data.X_train, data.X_val, data.X_test])
    Y = np.concatenate([data.Y_train, data.Y_val, data.Y_test])
    return X, Y


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim])
    sizes = b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + sizes + array.astype(np.uint8).tobytes()


# 20 training and 5 test images of 28x28 with known bytes, labels cycling through 0..9.
RNG = np.random.default_rng(1234)
TRAIN_IMAGES = RNG.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
TRAIN_LABELS = np.arange(20, dtype=np.uint8) % 10
TEST_IMAGES = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
TEST_LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
IDX_ARRAYS = dict(
    zip(IDX_FILES, (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS), strict=True)
)


def write_idx_files(folder: Path, compress: bool) -> dict[str, str]:
    """Write the four IDX files into ``folder``; return file name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for stem, array in IDX_ARRAYS.items():
        data = idx_bytes(array)
        name = stem
        if compress:
            data = gzip.compress(data, mtime=0)
            name = f"{stem}.gz"
        (folder / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the gzipped IDX files: (url, hashes, server)."""
    folder = tmp_path / "mirror"
    hashes = write_idx_files(folder, compress=True)
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", hashes, server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


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


def test_download_verifies_caches_and_works_offline(tmp_path, mirror):
    url, hashes, server = mirror
    cache = tmp_path / "cache"
    data = load_dataset("mnist", url=url, cache_dir=str(cache), sha256=hashes, val_fraction=0.0)
    np.testing.assert_array_equal(data.X_test, TEST_IMAGES.reshape(5, 784) / 255)
    downloaded = sorted(path.name for path in cache.iterdir() if path.name.endswith(".gz"))
    assert downloaded == sorted(hashes)
    for name, digest in hashes.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest

    server.shutdown()
    server.server_close()
    again = load_dataset("mnist", url=url, cache_dir=str(cache), sha256=hashes, val_fraction=0.0)
    np.testing.assert_array_equal(again.X_train, data.X_train)


def decoded_files(cache: Path, stem: str) -> tuple[Path, Path]:
    (npy,) = cache.glob(f"{stem}.*.npy")
    return npy, npy.with_name(f"{npy.name}.sha256")


def test_decoded_arrays_are_cached_as_npy_and_read_from_there(tmp_path):
    write_idx_files(tmp_path / "idx", compress=True)
    cache = tmp_path / "cache"
    first = load_dataset(
        "mnist", path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(cache)
    )
    npy, recorded = decoded_files(cache, "train-images-idx3-ubyte")
    source = (tmp_path / "idx" / "train-images-idx3-ubyte.gz").read_bytes()
    # Named after the source's digest; the sidecar holds the digest of the .npy itself.
    assert hashlib.sha256(source).hexdigest()[:16] in npy.name
    assert recorded.read_text().strip() == hashlib.sha256(npy.read_bytes()).hexdigest()
    np.testing.assert_array_equal(np.load(npy), TRAIN_IMAGES)
    # A later load reads the cache: an array put there with a matching digest is what it gets.
    np.save(npy, 255 - TRAIN_IMAGES)
    recorded.write_text(hashlib.sha256(npy.read_bytes()).hexdigest())
    again = load_dataset(
        "mnist", path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(cache)
    )
    np.testing.assert_array_equal(again.X_train, (255 - TRAIN_IMAGES).reshape(20, 784) / 255)
    np.testing.assert_array_equal(again.X_test, first.X_test)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),
        lambda data: b"",
    ],
    ids=["cut", "one-bit", "empty"],
)
def test_corrupt_cached_npy_is_detected_and_rebuilt(tmp_path, damage):
    write_idx_files(tmp_path / "idx", compress=False)
    cache = tmp_path / "cache"
    load = partial(
        load_dataset, "mnist", path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(cache)
    )
    first = load()
    npy, recorded = decoded_files(cache, "t10k-images-idx3-ubyte")
    good = npy.read_bytes()
    npy.write_bytes(damage(good))
    again = load()
    np.testing.assert_array_equal(again.X_test, TEST_IMAGES.reshape(5, 784) / 255)
    np.testing.assert_array_equal(again.X_test, first.X_test)
    assert npy.read_bytes() == good  # rebuilt
    assert recorded.read_text().strip() == hashlib.sha256(good).hexdigest()


def test_a_changed_source_is_decoded_anew(tmp_path):
    folder = tmp_path / "idx"
    write_idx_files(folder, compress=False)
    cache = tmp_path / "cache"
    load_dataset("mnist", path=str(folder), val_fraction=0.0, cache_dir=str(cache))
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(255 - TRAIN_IMAGES))
    data = load_dataset("mnist", path=str(folder), val_fraction=0.0, cache_dir=str(cache))
    np.testing.assert_array_equal(data.X_train, (255 - TRAIN_IMAGES).reshape(20, 784) / 255)
    assert len(list(cache.glob("train-images-idx3-ubyte.*.npy"))) == 2


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, mirror):
    url, hashes, _ = mirror
    cache = tmp_path / "cache"
    wrong = {**hashes, "train-labels-idx1-ubyte.gz": "0" * 64}
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz") as caught:
        load_dataset("mnist", url=url, cache_dir=str(cache), sha256=wrong)
    assert "sha256" in str(caught.value)
    assert not [path for path in cache.iterdir() if "train-labels" in path.name]


def test_broken_download_names_the_url_and_keeps_nothing(tmp_path, mirror):
    url, hashes, _ = mirror
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as caught:
        load_dataset("mnist", url=f"{url}missing/", cache_dir=str(cache), sha256=hashes)
    assert f"{url}missing/train-images-idx3-ubyte.gz" in str(caught.value)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "damage", [lambda data: data[:-10], lambda data: data + b"\x00\x00\x00"], ids=["cut", "extra"]
)
def test_idx_file_of_the_wrong_length_is_refused(tmp_path, damage):
    folder = tmp_path / "idx"
    write_idx_files(folder, compress=False)
    broken = folder / "train-images-idx3-ubyte"
    broken.write_bytes(damage(broken.read_bytes()))
    with pytest.raises(ConfigError, match="truncated or corrupt") as caught:
        load_dataset("mnist", path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert str(broken) in str(caught.value)


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: data[:10] + b"\xff" * 40],
    ids=["cut", "garbled"],
)
def test_corrupt_gzip_is_refused(tmp_path, damage):
    folder = tmp_path / "idx"
    write_idx_files(folder, compress=True)
    broken = folder / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(damage(broken.read_bytes()))
    with pytest.raises(ConfigError) as caught:
        load_dataset("mnist", path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert str(broken) in str(caught.value)


def test_wrong_idx_magic_is_refused(tmp_path):
    folder = tmp_path / "idx"
    write_idx_files(folder, compress=False)
    broken = folder / "train-labels-idx1-ubyte"
    broken.write_bytes(idx_bytes(np.zeros((20, 2), dtype=np.uint8)))  # 2 dims, not 1
    with pytest.raises(ConfigError, match="magic number") as caught:
        load_dataset("mnist", path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert str(broken) in str(caught.value)


# --- the real Fashion-MNIST from Debian's package -----------------------------------------

FASHION_FOLDER = SYSTEM_FOLDERS["fashion_mnist"]
needs_fashion = pytest.mark.skipif(
    not all((FASHION_FOLDER / f"{stem}.gz").is_file() for stem in IDX_FILES),
    reason=f"no Fashion-MNIST in {FASHION_FOLDER} (apt-get install dataset-fashion-mnist)",
)


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


@needs_fashion
def test_data_path_first_then_debians_folder_then_the_cache(tmp_path, fashion_cache):
    write_idx_files(tmp_path / "idx", compress=True)
    mine = load_dataset(
        "fashion_mnist", path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(fashion_cache)
    )
    assert len(mine.X_train) == 20
    write_idx_files(fashion_cache, compress=True)  # the cache has files too: Debian's win
    system = load_dataset("fashion_mnist", val_fraction=0.0, cache_dir=str(fashion_cache))
    assert (len(system.X_train), len(system.X_test)) == (60_000, 10_000)


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


# --- the built-in checksums and the default cache folder -----------------------------------

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def serve(folder: Path):
    """A real HTTP server on 127.0.0.1 serving ``folder``: (url, server, thread)."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server, thread


def test_default_cache_folder_is_under_home(tmp_path, monkeypatch, mirror):
    url, hashes, server = mirror
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = load_dataset("mnist", url=url, sha256=hashes, val_fraction=0.0)
    cache = tmp_path / "home" / ".cache" / "bpexp" / "mnist"
    downloaded = sorted(path.name for path in cache.iterdir() if path.name.endswith(".gz"))
    assert downloaded == sorted(hashes)
    server.shutdown()
    again = load_dataset("mnist", sha256=hashes, val_fraction=0.0)  # offline: from the cache
    np.testing.assert_array_equal(again.X_train, data.X_train)


# The sha256 of the published .gz files, as other data-set libraries list them too: an
# independent copy, so that a typo in bpexp.data.SHA256 fails here and not at a user's download.
PUBLISHED_SHA256 = {
    ("mnist", "train-images"): "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ("mnist", "train-labels"): "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ("mnist", "t10k-images"): "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ("mnist", "t10k-labels"): "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ("fashion_mnist", "train-images"): (
        "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"
    ),
    ("fashion_mnist", "train-labels"): (
        "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"
    ),
    ("fashion_mnist", "t10k-images"): (
        "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"
    ),
    ("fashion_mnist", "t10k-labels"): (
        "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"
    ),
}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_the_default_download_checks_the_published_sha256(tmp_path, monkeypatch, mirror, name):
    # No sha256 given: the built-in values guard the download into the default cache, so the
    # mirror's (synthetic) first file is refused, naming the published digest.
    url, _, _ = mirror
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # Debian's folder comes before any download: point it elsewhere to reach the download.
    monkeypatch.setitem(SYSTEM_FOLDERS, "fashion_mnist", tmp_path / "no-debian-folder")
    with pytest.raises(ConfigError) as caught:
        load_dataset(name, url=url)
    expected = PUBLISHED_SHA256[(name, "train-images")]
    assert str(caught.value).startswith("train-images-idx3-ubyte.gz: sha256 of the download")
    assert str(caught.value).endswith(f"expected {expected}; the file was not kept")
    cache = tmp_path / "home" / ".cache" / "bpexp" / name
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []
    from bpexp.data import SHA256

    published = {
        f"{k}-idx{3 if k.endswith('images') else 1}-ubyte.gz": v
        for (n, k), v in PUBLISHED_SHA256.items()
        if n == name
    }
    assert SHA256[name] == published


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's package dataset-fashion-mnist is not installed (apt-get install "
    "dataset-fashion-mnist)",
)
def test_fashion_mnist_builtin_checksums_on_debians_files(tmp_path, monkeypatch):
    # Debian ships the real data set, recompressed when the package was built (the gzip
    # headers carry the build date), so its .gz bytes are not the published ones: the built-in
    # sha256 values must refuse them on the default download path, into the default cache.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # Debian's folder comes before any download: point it elsewhere to reach the download.
    monkeypatch.setitem(SYSTEM_FOLDERS, "fashion_mnist", tmp_path / "no-debian-folder")
    cache = tmp_path / "home" / ".cache" / "bpexp" / "fashion_mnist"
    url, server, thread = serve(DEBIAN_FASHION)
    try:
        with pytest.raises(ConfigError) as caught:
            load_dataset("fashion_mnist", url=url)
        message = str(caught.value)
        (name,) = [f for f in (f"{stem}.gz" for stem in IDX_FILES) if message.startswith(f)]
        got = hashlib.sha256((DEBIAN_FASHION / name).read_bytes()).hexdigest()
        assert f"is {got}, expected " in message
        assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []
        # With the files' own digests the same download is kept in the default cache, and
        # loads as the real data set: 60,000 + 10,000 images of 784 pixels, 10 balanced classes.
        own = {
            f"{stem}.gz": hashlib.sha256((DEBIAN_FASHION / f"{stem}.gz").read_bytes()).hexdigest()
            for stem in IDX_FILES
        }
        data = load_dataset("fashion_mnist", url=url, sha256=own, val_fraction=0.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith(".gz")) == sorted(own)
    assert data.X_train.shape == (60000, 784) and data.X_test.shape == (10000, 784)
    assert np.bincount(data.Y_train.argmax(axis=1)).tolist() == [6000] * 10
    assert np.bincount(data.Y_test.argmax(axis=1)).tolist() == [1000] * 10
    assert 0.0 == data.X_train.min() < data.X_train.max() == 1.0
    local = load_dataset("fashion_mnist", path=str(DEBIAN_FASHION), val_fraction=0.0)
    np.testing.assert_array_equal(local.X_test, data.X_test)
