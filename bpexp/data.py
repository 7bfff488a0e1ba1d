"""Data sets as NumPy arrays, one row per sample, split into train, validation and test.

Every loader ends in the same :class:`Dataset`: inputs ``X`` of shape ``(n, n_inputs)`` and
targets ``Y`` of shape ``(n, n_outputs)`` (one-hot rows for classification, real values for
regression), in the configured float dtype and C order. A network that keeps one column per
sample (``A^0 = X.T``) transposes at its edge; the data stay row-major.

Splits are fixed by the seed alone: the random stream ``bpexp.rng.stream(seed, "split")``
is dedicated to splitting, so that changing the initialisation or the mini-batch order never
moves a sample between train, validation and test. Within each part, samples keep the order
of the source.

The files behind a data set (where they are found, downloaded, checked, decoded and cached)
are :mod:`bpexp.datafiles`'s job; this module turns their arrays into data sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bpexp.datafiles import cache_folder, check_size, idx_files, load_idx, read_npz
from bpexp.errors import ConfigError, bad_value
from bpexp.rng import stream

DATASETS = ("digits", "mnist", "fashion_mnist", "pixels3x4", "moons", "file")
# Class labels of a user's file: 0 .. MAX_CLASSES - 1. A label of 10⁶ would otherwise build a
# network of 1,000,001 outputs, and 2⁴⁰ ask for terabytes of one-hot targets.
MAX_CLASSES = 10_000
DTYPES = ("float64", "float32")
CLASSIFICATION = "classification"
REGRESSION = "regression"

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


# --- MNIST and Fashion-MNIST: 8-bit images from IDX files ---------------------------------


def _load_idx_dataset(request: _Request) -> _Source:
    """MNIST or Fashion-MNIST: images ``(n, rows * cols)`` scaled to [0, 1], 10 classes.

    The four IDX files come from :mod:`bpexp.datafiles` (``data.path``, Debian's folder, the
    cache or a download). The images stay 8-bit (memory-mapped from the cache) until
    :func:`load_dataset` scales each part into its float array.
    """
    cache = cache_folder(request.name, request.cache_dir)
    files = idx_files(
        request.name, cache, path=request.path, url=request.url, sha256=request.sha256
    )
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
    images = load_idx(images_file, 3, cache)
    labels = load_idx(labels_file, 1, cache)
    if len(images) != len(labels):
        raise ConfigError(
            f"{labels_file}: {len(labels)} labels for the {len(images)} images of "
            f"{images_file}; allowed: one label per image"
        )
    if labels.size and labels.max() > 9:
        raise ConfigError(f"{labels_file}: label {labels.max()} found; allowed: 0..9")
    return images.reshape(len(images), -1), labels


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
    arrays = read_npz(Path(file).expanduser(), problem)

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
        top = int(max(part.max() for part in labels))
        if top >= MAX_CLASSES:
            raise problem(
                f"has class label {top}, so {top + 1} classes (one network output each); "
                f"allowed: labels 0..{MAX_CLASSES - 1} (at most {MAX_CLASSES} classes)"
            )
        n_classes = top + 1
        rows = sum(len(part) for part in labels)
        check_size(rows * n_classes * 8, f"one-hot targets of {rows} x {n_classes}", problem)
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
