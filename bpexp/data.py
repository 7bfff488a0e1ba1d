"""Data sets as NumPy arrays, one row per sample, split into train, validation and test.

Every loader ends in the same :class:`Dataset`: inputs ``X`` of shape ``(n, n_inputs)`` and
targets ``Y`` of shape ``(n, n_outputs)`` (one-hot rows for classification, real values for
regression), in the configured float dtype and C order. A network that keeps one column per
sample (``A^0 = X.T``) transposes at its edge; the data stay row-major.

Splits are fixed by the seed alone: the random stream ``bpexp.rng.stream(seed, "split")``
is dedicated to splitting, so that changing the initialisation or the mini-batch order never
moves a sample between train, validation and test. Within each part, samples keep the order
of the source.

Downloads (MNIST, Fashion-MNIST only) go to a cache folder through a temporary file that is
checked against its SHA-256 before it takes its final name, so the cache never holds a
half-written or unverified file. Nothing is ever unpickled.

An IDX file is decoded once: its array is kept in the cache as ``.npy``, named after the
source's SHA-256 (computed on every load) beside a ``.sha256`` file holding the digest of the
``.npy`` itself, and later loads memory-map it. A cached array whose digest does not match is
decoded again. Fashion-MNIST then loads in well under a second instead of about 2.7.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bpexp.errors import ConfigError, bad_value
from bpexp.rng import stream

DATASETS = ("digits", "mnist", "fashion_mnist", "pixels3x4", "moons", "file")
DTYPES = ("float64", "float32")
CLASSIFICATION = "classification"
REGRESSION = "regression"

# The four IDX files shared by MNIST and Fashion-MNIST: (images, labels) of train, then test.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MIRRORS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
# SHA-256 of the published .gz files; load_dataset(sha256=...) overrides entries.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc"
        ),
        "train-labels-idx1-ubyte.gz": (
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf"
        ),
    },
}
DOWNLOAD_TIMEOUT_SECONDS = 60
# Where Debian's packages put the IDX files (apt-get install dataset-fashion-mnist); looked in
# after data.path and before the cache.
SYSTEM_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}

# The 3x4-pixel "0 or 1" set: 4 rows of 3 pixels, flattened row-major (pixel = 3 * row + col).
PIXELS3X4_ZERO = ("111", "101", "101", "111")
PIXELS3X4_ONE = ("010", "110", "010", "010")
# Pixels where handwriting varies: the four corners (square or rounded 0, serifs and foot of
# the 1) and row 1, column 0 (the flag of the 1, a gap in the stroke of the 0).
PIXELS3X4_STYLE_PIXELS = (0, 2, 3, 9, 11)


@dataclass(frozen=True, eq=False)
class Dataset:
    """One data set, split. Rows are samples.

    ``X_*`` have shape ``(n_part, n_inputs)``; ``Y_*`` have shape ``(n_part, n_outputs)``:
    one-hot rows when ``task == "classification"``, real-valued targets when
    ``task == "regression"``. A part may have 0 rows (no validation set when
    ``val_fraction == 0``; no test set when ``test_fraction == 0`` and the source has none).
    """

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    task: str

    @property
    def n_inputs(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.Y_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n_inputs={self.n_inputs}, "
            f"n_outputs={self.n_outputs}, n_train={len(self.X_train)}, "
            f"n_val={len(self.X_val)}, n_test={len(self.X_test)}, dtype={self.X_train.dtype})"
        )


def load_dataset(
    name: str,
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: str = "float64",
    url: str | None = None,
    cache_dir: str | None = None,
    n_samples: int | None = None,
    sha256: dict[str, str] | None = None,
) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`) and split it.

    ``val_fraction`` of the training part is held out for validation. ``test_fraction`` is
    split off first, only for data sets without a test set of their own (MNIST and
    Fashion-MNIST keep their standard 10,000-image test set and ignore it). ``n_samples``
    keeps the first ``n_samples`` samples of the training source before any split (for
    ``moons``: the number of points generated, default 1000). ``path`` is the ``.npz`` file
    for ``file`` and an optional folder holding the IDX files for the MNISTs; ``url``,
    ``cache_dir`` and ``sha256`` (file name -> hex digest) control their download.
    All arrays are returned in ``dtype`` ("float64" or "float32"), C-contiguous.
    """
    if name not in DATASETS:
        raise bad_value("data.name", name, DATASETS)
    if dtype not in DTYPES:
        raise bad_value("trainer.dtype", dtype, DTYPES)
    _check_fraction("data.val_fraction", val_fraction)
    _check_fraction("data.test_fraction", test_fraction)
    if not _is_int(seed) or seed < 0:
        raise bad_value("seed", seed, "a non-negative integer")
    if n_samples is not None and (not _is_int(n_samples) or n_samples < 1):
        raise bad_value("data.n_samples", n_samples, "a positive integer, or null for all")

    request = _Request(name, path, url, cache_dir, sha256, seed, n_samples, np.dtype(dtype))
    source = _LOADERS[name](request)
    X, Y = source.X, source.Y
    if n_samples is not None:
        if n_samples > len(X):
            raise bad_value("data.n_samples", n_samples, f"1..{len(X)} for data.name={name!r}")
        X, Y = X[:n_samples], Y[:n_samples]

    own_test = source.X_test is not None
    train, val, test = _split_rows(len(X), val_fraction, 0.0 if own_test else test_fraction, seed)
    if own_test:
        X_test, Y_test = source.X_test, source.Y_test
    else:
        X_test, Y_test = X[test], Y[test]

    def as_float(array: np.ndarray, divisor: int = 1) -> np.ndarray:
        if divisor == 1:
            return np.ascontiguousarray(array, dtype=dtype)
        # One pass from the raw integers to the scaled floats, into the final array.
        out = np.empty(array.shape, dtype)
        return np.divide(array, divisor, out=out, dtype=dtype)

    return Dataset(
        name=name,
        X_train=as_float(X[train], source.divisor),
        Y_train=as_float(Y[train]),
        X_val=as_float(X[val], source.divisor),
        Y_val=as_float(Y[val]),
        X_test=as_float(X_test, source.divisor),
        Y_test=as_float(Y_test),
        task=source.task,
    )


class _Request(NamedTuple):
    """Everything a loader may need, so that all loaders share one signature."""

    name: str
    path: str | None
    url: str | None
    cache_dir: str | None
    sha256: dict[str, str] | None
    seed: int
    n_samples: int | None
    dtype: np.dtype


class _Source(NamedTuple):
    """A loaded data set before splitting: ``X (n, d)``, ``Y (n, k)``, an optional test set."""

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray | None
    Y_test: np.ndarray | None
    task: str
    divisor: int = 1  # X and X_test (not Y) are divided by this when cast: 255 for 8-bit pixels


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_fraction(key: str, value: object) -> None:
    is_number = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool) or not is_number or not 0 <= value < 1:
        raise bad_value(key, value, "a number with 0 <= fraction < 1")


def _part_size(fraction: float, n: int) -> int:
    """Rows for a part: ``round(fraction * n)``, but at least one when the fraction is > 0."""
    return 0 if fraction == 0 else max(1, round(fraction * n))


def _split_rows(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices ``(train, val, test)`` of ``n`` samples, each part in source order.

    The test part is drawn first (``test_fraction`` of ``n``), then the validation part
    (``val_fraction`` of what is left); the rest is training data. With both fractions 0 the
    training part is ``0..n-1`` in order.
    """
    n_test = _part_size(test_fraction, n)
    n_val = _part_size(val_fraction, n - n_test)
    if n - n_test - n_val < 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction!r} and data.test_fraction={test_fraction!r} "
            f"leave no training sample out of {n}; allowed: fractions that leave at least one"
        )
    order = stream(seed, "split").permutation(n)
    test = np.sort(order[:n_test])
    val = np.sort(order[n_test : n_test + n_val])
    train = np.sort(order[n_test + n_val :])
    return train, val, test


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n,)`` integer labels -> ``(n, n_classes)`` one-hot rows."""
    Y = np.zeros((len(labels), n_classes))
    Y[np.arange(len(labels)), labels] = 1.0
    return Y


# --- built-in small data sets ------------------------------------------------------------


def _load_digits(request: _Request) -> _Source:
    """scikit-learn's 1,797 8x8 digit images (bundled, no download): X in [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data / 16.0
    return _Source(X, _one_hot(digits.target, 10), None, None, CLASSIFICATION)


def _load_moons(request: _Request) -> _Source:
    """Two interleaved half circles, ``make_moons(n, noise=0.2, random_state=seed)``."""
    from sklearn.datasets import make_moons

    X, labels = make_moons(
        n_samples=request.n_samples or 1000, noise=0.2, random_state=request.seed
    )
    return _Source(X, _one_hot(labels, 2), None, None, CLASSIFICATION)


def pixels3x4_images() -> tuple[np.ndarray, np.ndarray]:
    """The 64 images of the 3x4-pixel "0 or 1" example: ``(64, 12)`` pixels, ``(64,)`` labels.

    Each image has 4 rows of 3 pixels, flattened row-major (pixel ``3 * row + col``), 1 = ink.
    The canonical 0 is a ring (rows ``111, 101, 101, 111``); the canonical 1 is a stroke with a
    flag (rows ``010, 110, 010, 010``). Each class is its canonical glyph with every subset of
    the five style pixels :data:`PIXELS3X4_STYLE_PIXELS` flipped -- the four corners and
    (row 1, column 0) -- giving 2^5 = 32 distinct images per class. Image ``k`` of a class
    flips style pixel ``b`` when bit ``b`` of ``k`` is set, so image 0 is the canonical glyph.
    Order: the 32 zeros, then the 32 ones. The two glyphs differ in five pixels outside the
    style set, so every 0 differs from every 1 in at least five pixels.
    """
    images, labels = [], []
    for label, glyph in ((0, PIXELS3X4_ZERO), (1, PIXELS3X4_ONE)):
        canonical = np.array([int(ink) for row in glyph for ink in row])
        for k in range(2 ** len(PIXELS3X4_STYLE_PIXELS)):
            image = canonical.copy()
            for bit, pixel in enumerate(PIXELS3X4_STYLE_PIXELS):
                if k >> bit & 1:
                    image[pixel] = 1 - image[pixel]
            images.append(image)
            labels.append(label)
    return np.array(images, dtype=float), np.array(labels)


def _load_pixels3x4(request: _Request) -> _Source:
    images, labels = pixels3x4_images()
    return _Source(images, _one_hot(labels, 2), None, None, CLASSIFICATION)


# --- MNIST and Fashion-MNIST: IDX files, local or downloaded -------------------------------


def _load_idx_dataset(request: _Request) -> _Source:
    """MNIST or Fashion-MNIST: images ``(n, rows * cols)`` scaled to [0, 1], 10 classes.

    Each of the four IDX files is looked for, plain or ``.gz``, in the folder ``path`` (if
    given), then in Debian's folder (:data:`SYSTEM_FOLDERS`), then in the cache folder; a
    missing one is downloaded into the cache. The images stay 8-bit (memory-mapped from the
    cache) until :func:`load_dataset` scales each part into its float array.
    """
    cache = _cache_folder(request)
    files = [_find_or_download(stem, request, cache) for stem in IDX_FILES]
    X_train, labels_train = _read_idx_pair(files[0], files[1], cache)
    X_test, labels_test = _read_idx_pair(files[2], files[3], cache)
    if X_train.shape[1] != X_test.shape[1]:
        raise ConfigError(
            f"{files[2]}: images have {X_test.shape[1]} pixels, but those of {files[0]} have "
            f"{X_train.shape[1]}; allowed: train and test images of the same size"
        )
    Y_train, Y_test = _one_hot(labels_train, 10), _one_hot(labels_test, 10)
    return _Source(X_train, Y_train, X_test, Y_test, CLASSIFICATION, divisor=255)


def _read_idx_pair(
    images_file: Path, labels_file: Path, cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, rows * cols)`` uint8 images and ``(n,)`` labels in 0..9 from two IDX files."""
    images = _decoded(images_file, 3, cache)
    labels = _decoded(labels_file, 1, cache)
    if len(images) != len(labels):
        raise ConfigError(
            f"{labels_file}: {len(labels)} labels for the {len(images)} images of "
            f"{images_file}; allowed: one label per image"
        )
    if labels.size and labels.max() > 9:
        raise ConfigError(f"{labels_file}: label {labels.max()} found; allowed: 0..9")
    return images.reshape(len(images), -1), labels


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (plain or gzip): an array with the header's dims.

    Layout: magic ``00 00 08 <ndim>``, then ``ndim`` big-endian uint32 sizes, then exactly
    ``prod(sizes)`` bytes of data.
    """
    try:
        with open(file, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if is_gzip else open)(file, "rb") as content:
            data = content.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigError(
            f"{file}: cannot be read ({error}); allowed: an IDX file, plain or gzip-compressed"
        ) from error
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ConfigError(
            f"{file}: magic number {data[:4].hex() or 'missing'} is not allowed; allowed: "
            f"{bytes([0, 0, 8, ndim]).hex()} (an IDX file of unsigned bytes with {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"{file}: truncated IDX header ({len(data)} bytes, {header} needed)")
    sizes = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(sizes)
    if len(data) != expected:
        raise ConfigError(
            f"{file}: truncated or corrupt IDX file: its header {sizes} promises {expected} "
            f"bytes, the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(sizes)


def _decoded(file: Path, ndim: int, cache: Path) -> np.ndarray:
    """The array of IDX file ``file``: memory-mapped from the cache's verified ``.npy``, or
    decoded with :func:`_read_idx` and written there for next time (atomically; a cache that
    cannot be written is skipped)."""
    source_digest = _sha256(file)
    # 16 hex digits (64 bits) of the source's digest tell sources apart in one folder.
    npy = cache / f"{file.name.removesuffix('.gz')}.{source_digest[:16]}.npy"
    recorded = npy.with_name(f"{npy.name}.sha256")
    try:
        if npy.is_file() and recorded.read_text().strip() == _sha256(npy):
            return np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        pass  # missing, unreadable or damaged: decode again below
    array = _read_idx(file, ndim)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _write_atomically(npy, lambda out: np.save(out, array, allow_pickle=False))
        digest = _sha256(npy)
        _write_atomically(recorded, lambda out: out.write(f"{digest}\n".encode()))
    except OSError:
        pass  # a read-only cache: every load decodes
    return array


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as content:
        while chunk := content.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(target: Path, write: Callable[[object], object]) -> None:
    """``write(binary file)`` to a temporary file next to ``target``, then rename it."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _cache_folder(request: _Request) -> Path:
    if request.cache_dir is not None:
        return Path(request.cache_dir).expanduser()
    return Path.home() / ".cache" / "bpexp" / request.name


def _find_or_download(stem: str, request: _Request, cache: Path) -> Path:
    """The path of IDX file ``stem`` (plain or ``.gz``), downloading the ``.gz`` if needed:
    from ``data.path``, else Debian's folder, else the cache, else the mirror."""
    folders = []
    if request.path is not None:
        folder = Path(request.path).expanduser()
        if not folder.is_dir():
            raise bad_value(
                "data.path", request.path, f"a folder holding the IDX files of {request.name}"
            )
        folders.append(folder)
    if request.name in SYSTEM_FOLDERS:
        folders.append(SYSTEM_FOLDERS[request.name])
    folders.append(cache)
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate

    file_name = f"{stem}.gz"
    hashes = {**SHA256[request.name], **(request.sha256 or {})}
    if file_name not in hashes:
        raise ConfigError(f"{file_name}: no known sha256; allowed: sha256 entries for it")
    base = request.url or MIRRORS[request.name]
    url = base if base.endswith("/") else f"{base}/"
    return _download(f"{url}{file_name}", cache / file_name, hashes[file_name])


def _download(url: str, target: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``target`` only if its SHA-256 is ``sha256``; otherwise leave nothing.

    The bytes go to a temporary file next to ``target``, which takes the final name with an
    atomic ``os.replace`` once verified, so concurrent runs and interrupted downloads never
    leave a partial file under the final name.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as error:
        raise ConfigError(f"{target.parent}: cannot write the download cache ({error})") from error
    try:
        digest = hashlib.sha256()
        try:
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError, http.client.HTTPException) as error:
            raise ConfigError(
                f"{target.name}: download from {url} failed ({error}); allowed: a reachable "
                "mirror in data.url, or the files placed in data.path"
            ) from error
        if digest.hexdigest() != sha256.lower():
            raise ConfigError(
                f"{target.name}: sha256 of the download from {url} is {digest.hexdigest()}, "
                f"expected {sha256}; the file was not kept"
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


# --- the user's own arrays -----------------------------------------------------------------


def _load_file(request: _Request) -> _Source:
    """The user's ``.npz``: ``X (n, d)``; ``y (n,)`` integer labels or ``(n,)``/``(n, k)`` reals.

    Integer (or boolean) 1-D ``y`` means classification with ``max label + 1`` classes (over
    ``y`` and ``y_test``); float or 2-D ``y`` means regression with ``Y = y`` as ``(n, k)``.
    Optional ``X_test`` and ``y_test`` are used as the test set.
    """
    if request.path is None:
        raise bad_value("data.path", None, "the path of an .npz file with arrays X and y")
    file = request.path

    def problem(message: str) -> ConfigError:
        return ConfigError(f"data.path={file!r}: {message}")

    if not Path(file).expanduser().is_file():
        raise problem("no such file; allowed: an existing .npz file with arrays X and y")
    arrays = _read_npz(Path(file).expanduser(), problem)

    for key in ("X", "y"):
        if key not in arrays:
            raise problem(
                f"has no array {key!r} (found: {sorted(arrays)}); allowed: an .npz "
                "with X of shape (n, d) and y of shape (n,) or (n, k)"
            )
    if ("X_test" in arrays) != ("y_test" in arrays):
        given, missing = ("X_test", "y_test") if "X_test" in arrays else ("y_test", "X_test")
        raise problem(f"has {given} without {missing}; allowed: both or neither")

    X, y = arrays["X"], arrays["y"]
    _check_pair(X, y, "X", "y", problem)
    has_test = "X_test" in arrays
    if has_test:
        X_test, y_test = arrays["X_test"], arrays["y_test"]
        _check_pair(X_test, y_test, "X_test", "y_test", problem)
        if X_test.shape[1] != X.shape[1]:
            raise problem(
                f"X_test has {X_test.shape[1]} columns, X has {X.shape[1]}; "
                "allowed: the same number"
            )

    if y.ndim == 1 and y.dtype.kind in "biu":
        labels = [y.astype(np.int64)]
        if has_test:
            if y_test.ndim != 1 or y_test.dtype.kind not in "biu":
                raise problem(
                    "y holds integer class labels but y_test does not; allowed: "
                    "y_test of shape (n_test,) with integer labels"
                )
            labels.append(y_test.astype(np.int64))
        if min(part.min() for part in labels) < 0:
            raise problem("has a negative class label; allowed: labels 0, 1, 2, ...")
        n_classes = int(max(part.max() for part in labels)) + 1
        Y = _one_hot(labels[0], n_classes)
        Y_test = _one_hot(labels[1], n_classes) if has_test else None
        task = CLASSIFICATION
    else:
        Y = y.reshape(len(y), -1).astype(np.float64)
        Y_test = y_test.reshape(len(y_test), -1).astype(np.float64) if has_test else None
        if has_test and Y_test.shape[1] != Y.shape[1]:
            raise problem(
                f"y_test has {Y_test.shape[1]} target columns, y has {Y.shape[1]}; "
                "allowed: the same number"
            )
        task = REGRESSION
    return _Source(X, Y, X_test if has_test else None, Y_test, task)


def _read_npz(file: Path, problem: Callable[[str], ConfigError]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, read without unpickling."""
    allowed = "allowed: an .npz archive of numeric arrays, as written by numpy.savez"
    try:
        with open(file, "rb") as raw:
            magic = raw.read(6)
    except OSError as error:
        raise problem(f"cannot be read ({error})") from error
    if magic == b"\x93NUMPY":
        raise problem(f"is a single .npy array; {allowed}, with arrays X and y")
    if not magic.startswith(b"PK"):
        raise problem(f"is not an .npz archive (no zip header); {allowed}")
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # Object arrays land here too: bpexp never unpickles.
        raise problem(f"is not a readable .npz archive ({error}); {allowed}") from error


def _check_pair(
    X: np.ndarray, y: np.ndarray, x_key: str, y_key: str, problem: Callable[[str], ConfigError]
) -> None:
    """Shapes, dtypes and finiteness of one ``(X, y)`` pair of a user's file."""
    if X.ndim != 2:
        raise problem(f"{x_key} has shape {X.shape}; allowed: 2 dims (n_samples, n_inputs)")
    if y.ndim not in (1, 2):
        raise problem(f"{y_key} has shape {y.shape}; allowed: (n_samples,) or (n_samples, k)")
    for key, array in ((x_key, X), (y_key, y)):
        if array.dtype.kind not in "biuf":
            raise problem(f"{key} has dtype {array.dtype}; allowed: numbers")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise problem(f"{key} holds NaN or infinite values; allowed: finite numbers")
    if len(X) != len(y):
        raise problem(
            f"{x_key} has {len(X)} rows but {y_key} has {len(y)}; allowed: one target per sample"
        )
    if len(X) == 0:
        raise problem(f"{x_key} has no rows; allowed: at least one sample")
    if X.shape[1] == 0 or (y.ndim == 2 and y.shape[1] == 0):
        raise problem(f"{x_key} or {y_key} has no columns; allowed: at least one")


_LOADERS: dict[str, Callable[[_Request], _Source]] = {
    "digits": _load_digits,
    "mnist": _load_idx_dataset,
    "fashion_mnist": _load_idx_dataset,
    "pixels3x4": _load_pixels3x4,
    "moons": _load_moons,
    "file": _load_file,
}
