"""Data files: getting the arrays behind a data set off the disk or the network, safely.

:mod:`bpexp.data` asks this module for the arrays; what they mean (classes, splits, dtype) is
its job, not this one's.

Search order for the IDX files of MNIST and Fashion-MNIST: the folder ``data.path``, then
Debian's folder (:data:`SYSTEM_FOLDERS`), then the cache folder, then a download into the
cache. Downloads go through a temporary file that is checked against its SHA-256 before it
takes its final name, so the cache never holds a half-written or unverified file. Nothing is
ever unpickled, neither an IDX source nor a user's ``.npz``.

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
from pathlib import Path

import numpy as np

from bpexp.errors import ConfigError, bad_value

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


# --- sizes: checked before anything is allocated ------------------------------------------


def memory_limit() -> int:
    """The bytes a run can have at most: this machine's memory, or less where a cgroup
    (``memory.max``) or ``ulimit -v`` says so. Arrays a file or a config asks for are checked
    against it before they are allocated (:func:`check_size`)."""
    import resource

    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
        limits.append(soft)
    return min(limits)


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_size(nbytes: int, what: str, problem: Callable[[str], ConfigError]) -> None:
    """Refuse, with ``problem(message)`` (which names the config key), ``what`` when its
    ``nbytes`` exceed :func:`memory_limit`: a clear error instead of a MemoryError later."""
    limit = memory_limit()
    if nbytes > limit:
        raise problem(
            f"{what} would take {gib(nbytes)}, more than this machine's memory ({gib(limit)}); "
            "allowed: sizes whose arrays fit in memory"
        )


# --- IDX files: where they are, or their download -----------------------------------------


def cache_folder(name: str, cache_dir: str | None) -> Path:
    """``data.cache_dir`` if given, else ``~/.cache/bpexp/<name>``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path.home() / ".cache" / "bpexp" / name


def idx_files(
    name: str, cache: Path, *, path: str | None, url: str | None, sha256: dict[str, str] | None
) -> list[Path]:
    """The paths of the four :data:`IDX_FILES` of data set ``name``, in that order, each found
    (plain or ``.gz``) or downloaded into ``cache``; ``sha256`` overrides :data:`SHA256`."""
    return [_find_or_download(stem, name, cache, path, url, sha256) for stem in IDX_FILES]


def _find_or_download(
    stem: str,
    name: str,
    cache: Path,
    path: str | None,
    url: str | None,
    sha256: dict[str, str] | None,
) -> Path:
    """The path of IDX file ``stem`` (plain or ``.gz``), downloading the ``.gz`` if needed:
    from ``data.path``, else Debian's folder, else the cache, else the mirror."""
    folders = []
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise bad_value("data.path", path, f"a folder holding the IDX files of {name}")
        folders.append(folder)
    if name in SYSTEM_FOLDERS:
        folders.append(SYSTEM_FOLDERS[name])
    folders.append(cache)
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate

    file_name = f"{stem}.gz"
    hashes = {**SHA256[name], **(sha256 or {})}
    if file_name not in hashes:
        raise ConfigError(f"{file_name}: no known sha256; allowed: sha256 entries for it")
    base = url or MIRRORS[name]
    base = base if base.endswith("/") else f"{base}/"
    return download(f"{base}{file_name}", cache / file_name, hashes[file_name])


def download(url: str, target: Path, sha256: str) -> Path:
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


# --- IDX files: decoding, and the cache of decoded arrays ---------------------------------


def read_idx(file: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (plain or gzip): an array with the header's dims.

    Layout: magic ``00 00 08 <ndim>``, then ``ndim`` big-endian uint32 sizes, then exactly
    ``prod(sizes)`` bytes of data. The header is read first and its sizes checked against the
    memory there is (:func:`check_size`), so a header claiming more (or a gzip bomb) is refused
    before anything that large is read.
    """

    def problem(message: str) -> ConfigError:
        return ConfigError(f"{file}: {message}")

    try:
        with open(file, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if is_gzip else open)(file, "rb") as content:
            head = content.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
                raise ConfigError(
                    f"{file}: magic number {head.hex() or 'missing'} is not allowed; allowed: "
                    f"{bytes([0, 0, 8, ndim]).hex()} (an IDX file of unsigned bytes with {ndim} "
                    "dims)"
                )
            header = content.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise ConfigError(
                    f"{file}: truncated IDX header ({4 + len(header)} bytes, {4 + 4 * ndim} needed)"
                )
            sizes = struct.unpack(f">{ndim}I", header)
            expected = math.prod(sizes)
            check_size(expected, f"an IDX array of shape {sizes}", problem)
            data = content.read(expected + 1)  # one byte more: a longer file is refused too
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigError(
            f"{file}: cannot be read ({error}); allowed: an IDX file, plain or gzip-compressed"
        ) from error
    if len(data) != expected:
        size = 4 + 4 * ndim + len(data)
        raise ConfigError(
            f"{file}: truncated or corrupt IDX file: its header {sizes} promises "
            f"{4 + 4 * ndim + expected} bytes, the file has "
            + (f"{size}" if len(data) < expected else "more")
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(sizes)


def load_idx(file: Path, ndim: int, cache: Path) -> np.ndarray:
    """The array of IDX file ``file``: memory-mapped from the cache's verified ``.npy``, or
    decoded with :func:`read_idx` and written there for next time (atomically; a cache that
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
    array = read_idx(file, ndim)
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


# --- the user's .npz ----------------------------------------------------------------------


def read_npz(file: Path, problem: Callable[[str], ConfigError]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, read without unpickling; a file that is not one
    raises ``problem(message)``, the error naming the config key that gave ``file``."""
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
        shapes = npz_shapes(file, problem)
        check_size(
            sum(nbytes for _, _, nbytes in shapes.values()),
            "its arrays ("
            + ", ".join(f"{k} {shape} {dtype}" for k, (shape, dtype, _) in shapes.items())
            + ")",
            problem,
        )
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # Object arrays land here too: bpexp never unpickles.
        raise problem(f"is not a readable .npz archive ({error}); {allowed}") from error


def npz_shapes(
    file: Path, problem: Callable[[str], ConfigError]
) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """``{array: (shape, dtype, bytes)}`` of an ``.npz`` from each member's ``.npy`` header,
    before any array is read. NumPy allocates the whole array a header claims before reading
    its data, so a 1 KB file claiming shape (10⁷, 10⁵) would ask for 8 TB: an array whose
    header claims more bytes than its member holds is refused here."""
    out = {}
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"{info.filename}: .npy format version {version}")
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }[version]
                shape, _, dtype = read_header(member)
                start = member.tell()
            if dtype.hasobject:
                raise problem(
                    f"array {key!r} holds Python objects ({dtype}); allowed: an .npz archive "
                    "of numeric arrays (bpexp never unpickles)"
                )
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size - start:
                raise problem(
                    f"array {key!r}: its header claims shape {shape} of {dtype} "
                    f"({gib(nbytes)}), but the archive holds {info.file_size - start} bytes "
                    "of it; allowed: an .npz archive as numpy.savez writes it"
                )
            out[key] = (tuple(shape), dtype, nbytes)
    return out
