"""Tests of bpexp.datafiles: the IDX reader, the cache of decoded arrays, the search order,
the download and its checksums."""

from __future__ import annotations

import gzip
import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bpexp.data import load_dataset
from bpexp.datafiles import IDX_FILES, SHA256, SYSTEM_FOLDERS, load_idx, read_idx
from bpexp.errors import ConfigError
from tests.conftest import (
    MNIST_FOLDER,
    TEST_IMAGES,
    TRAIN_IMAGES,
    idx_bytes,
    needs_fashion,
    needs_mnist,
    write_idx_files,
)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def serve(folder: Path):
    """A real HTTP server on 127.0.0.1 serving ``folder``: (url, server, thread)."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server, thread


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the gzipped IDX files: (url, hashes, server)."""
    folder = tmp_path / "mirror"
    hashes = write_idx_files(folder, compress=True)
    url, server, thread = serve(folder)
    yield url, hashes, server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- the IDX format and the cache, called directly --------------------------------------


def test_read_idx_decodes_a_hand_written_file_plain_or_gzip(tmp_path):
    # Magic 00 00 08 02 (unsigned bytes, 2 dims), sizes 2 and 3 big-endian, then 6 bytes.
    content = b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03\x00\x01\x02\xfd\xfe\xff"
    plain, packed = tmp_path / "plain", tmp_path / "packed.gz"
    plain.write_bytes(content)
    packed.write_bytes(gzip.compress(content))
    for file in (plain, packed):
        array = read_idx(file, 2)
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, [[0, 1, 2], [253, 254, 255]])
    with pytest.raises(ConfigError, match="allowed: 00000801"):
        read_idx(plain, 1)


def test_load_idx_without_a_writable_cache_decodes_every_time(tmp_path):
    file = tmp_path / "labels"
    file.write_bytes(idx_bytes(np.array([7, 0, 9], dtype=np.uint8)))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    cache = blocked / "cache"  # cannot be made: its parent is a file (this stops root too)
    for _ in range(2):
        np.testing.assert_array_equal(load_idx(file, 1, cache), [7, 0, 9])
    assert not cache.exists()


# --- downloads, the cache of decoded arrays, IDX files refused ------------------------------


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


# --- the search order ----------------------------------------------------------------------


@needs_fashion
def test_data_path_first_then_debians_folder_then_the_cache(tmp_path):
    cache = tmp_path / "cache"
    write_idx_files(tmp_path / "idx", compress=True)
    mine = load_dataset(
        "fashion_mnist", path=str(tmp_path / "idx"), val_fraction=0.0, cache_dir=str(cache)
    )
    assert len(mine.X_train) == 20
    write_idx_files(cache, compress=True)  # the cache has files too: Debian's win
    system = load_dataset("fashion_mnist", val_fraction=0.0, cache_dir=str(cache))
    assert (len(system.X_train), len(system.X_test)) == (60_000, 10_000)


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
# independent copy, so that a typo in bpexp.datafiles.SHA256 fails here and not at a user's
# download.
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


# --- the real MNIST, from a folder of its four .gz files ------------------------------------


def published_uncompressed_sha256() -> dict[str, str]:
    """File name -> sha256 from the folder's SHA256SUMS.uncompressed (``<digest> <name>``)."""
    lines = (MNIST_FOLDER / "SHA256SUMS.uncompressed").read_text().split("\n")
    pairs = [line.split() for line in lines if line.strip()]
    return {name.lstrip("*"): digest.lower() for digest, name in pairs}


@needs_mnist
def test_real_mnist_decodes_to_the_published_uncompressed_files(tmp_path):
    # The published digests are of the uncompressed IDX files: header + bytes. The arrays
    # decoded from the .gz files, written back as IDX, must have exactly those digests, both
    # when decoded and when memory-mapped from the cache on the next load.
    published = published_uncompressed_sha256()
    assert sorted(published) == sorted(IDX_FILES)
    cache = tmp_path / "cache"
    for stem in IDX_FILES:
        ndim = 3 if "images" in stem else 1
        decoded = load_idx(MNIST_FOLDER / f"{stem}.gz", ndim, cache)
        cached = load_idx(MNIST_FOLDER / f"{stem}.gz", ndim, cache)
        assert isinstance(cached, np.memmap), stem  # the second load came from the cache
        for array in (decoded, cached):
            assert hashlib.sha256(idx_bytes(np.asarray(array))).hexdigest() == published[stem]
        assert decoded.shape[1:] == ((28, 28) if ndim == 3 else ())
    # (The .gz bytes need not be the published .gz files: a folder recompressed elsewhere holds
    # the same data set. data.path is read without checking them; the arrays are what counts.)


@pytest.mark.slow
@needs_mnist
def test_real_mnist_gunzipped_loads_to_the_same_arrays(tmp_path):
    # A user's folder may hold the files gunzipped: same data set, array for array.
    plain = tmp_path / "plain"
    plain.mkdir()
    for stem in IDX_FILES:
        with gzip.open(MNIST_FOLDER / f"{stem}.gz") as packed:
            (plain / stem).write_bytes(packed.read())
    published = published_uncompressed_sha256()
    for stem in IDX_FILES:
        assert hashlib.sha256((plain / stem).read_bytes()).hexdigest() == published[stem]
    kwargs = dict(val_fraction=1 / 6, seed=3)
    packed = load_dataset("mnist", path=str(MNIST_FOLDER), cache_dir=str(tmp_path / "a"), **kwargs)
    unpacked = load_dataset("mnist", path=str(plain), cache_dir=str(tmp_path / "b"), **kwargs)
    for part in ("X_train", "Y_train", "X_val", "Y_val", "X_test", "Y_test"):
        np.testing.assert_array_equal(getattr(unpacked, part), getattr(packed, part), part)
    assert (len(packed.X_train), len(packed.X_val), len(packed.X_test)) == (50_000, 10_000, 10_000)
    # Each folder's sources were decoded into their own .npy files, named after their digest.
    npy_a = sorted(p.name for p in (tmp_path / "a").glob("*.npy"))
    npy_b = sorted(p.name for p in (tmp_path / "b").glob("*.npy"))
    assert len(npy_a) == len(npy_b) == 4 and set(npy_a).isdisjoint(npy_b)


def npz_claiming(shape: tuple[int, ...], tail: int = 1000) -> bytes:
    """An .npz whose X.npy header claims ``shape`` (float64) but holds ``tail`` bytes of data,
    and a y of 4 labels: about 1.3 KB."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    y = io.BytesIO()
    np.save(y, np.array([0, 1, 0, 1]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("X.npy", header.getvalue() + bytes(tail))
        archive.writestr("y.npy", y.getvalue())
    return out.getvalue()


def test_an_npz_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    """Issue 28, defect 6: a 1.3 KB .npz whose header claims shape (10⁷, 10⁵) made NumPy ask
    for 7.3 TiB (a raw MemoryError) as data.path. The headers are read first: as data.path and
    as network.init_path it is refused naming the key, with nothing large allocated."""
    from bpexp.network import Network, load_weights

    path = tmp_path / "claims.npz"
    path.write_bytes(npz_claiming((10**7, 10**5)))
    assert path.stat().st_size < 2000
    with pytest.raises(ConfigError) as caught:
        load_dataset("file", path=str(path))
    message = str(caught.value)
    assert f"data.path={str(path)!r}" in message
    assert "array 'X': its header claims shape (10000000, 100000) of float64" in message
    with pytest.raises(ConfigError, match="network.init_path=.*its header claims shape"):
        load_weights(Network([2, 2]), path)


def test_an_idx_header_claiming_more_than_memory_is_refused_before_reading(tmp_path):
    """An IDX header is read before its data: sizes claiming more than this machine's memory
    (here 2⁶² bytes, in a 16-byte file, or gzipped as a bomb would be) are refused at once."""
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2**30, 2**16, 2**16))
    plain = tmp_path / "huge-idx3-ubyte"
    plain.write_bytes(header)
    packed = tmp_path / "huge-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(header + bytes(10_000)))
    for file in (plain, packed):
        with pytest.raises(ConfigError, match="more than this machine's memory") as caught:
            read_idx(file, 3)
        assert str(file) in str(caught.value)
