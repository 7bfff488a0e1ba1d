"""Shared helpers: a real `python -m bpexp` subprocess, a real SQLite MLflow store, and IDX files
with known bytes for the MNIST data sets."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bpexp.datafiles import IDX_FILES, SYSTEM_FOLDERS

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BPEXP_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["HYDRA_FULL_ERROR"] = "0"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, module: str = "bpexp", **env: str):
    """Run ``python -m MODULE ARGS`` (default ``bpexp``) in ``cwd`` (a fresh folder: the default
    store lands there)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tiny_optimizers_sweep(folder: Path) -> dict:
    """Run the ``optimizers`` sweep as a plain grid (its protocol switched off) shrunk to
    3 optimizers x lr {0.3, 1.0} x seeds {0, 1}, 2 epochs (12 runs under one parent) into a
    fresh SQLite store in ``folder``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    args = ["sweep=optimizers", "hydra.sweeper.protocol=null", "optimizer.lr=0.3,1.0", "seed=0,1"]
    args.append("trainer.epochs=2")
    out = run_cli([*args, f"tracking.uri={uri}"], cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    (summary,) = folder.glob("multirun/*/*/summary.csv")
    (parent,) = MlflowClient(tracking_uri=uri).search_runs(["1"], "tags.`bpexp.kind` = 'sweep'")
    return {
        "uri": uri,
        "dir": folder,
        "summary": summary,
        "sweep_dir": summary.parent,
        "parent": parent,
        "out": out,
    }


@pytest.fixture
def store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite MLflow store in a temporary folder, created once before anything uses it.

    The test also runs in that folder: MLflow puts a SQLite store's artifacts under ./mlruns.
    """
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AUTH_ADMIN = ("admin", "bpexp-test-password-1")


def start_mlflow_server(
    folder: Path, auth: bool = False, backend: str | None = None
) -> tuple[str, subprocess.Popen]:
    """Start a real `mlflow server --workers 1` on 127.0.0.1 (on ``backend``, by default a
    SQLite store in ``folder`` created first) and wait until it answers /health; returns its
    URL and process (the caller stops it).

    ``auth``: with MLflow's basic auth (``--app-name basic-auth``), its users in
    ``folder/auth.db`` and the admin user and password of :data:`AUTH_ADMIN`."""
    if backend is None:
        backend = f"sqlite:///{folder / 'server.db'}"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=backend).search_experiments(max_results=1)
    port = free_port()
    log = folder / "server.log"
    env = dict(os.environ)
    auth_args = []
    if auth:
        ini = folder / "auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{folder / 'auth.db'}\n"
            f"admin_username = {AUTH_ADMIN[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": AUTH_ADMIN[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "bpexp-test-secret",
        }
        auth_args = ["--app-name", "basic-auth"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "artifacts"),
            *auth_args,
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return url, proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start in 180 s")


@pytest.fixture
def postgres_url():
    """A PostgreSQL cluster of its own in a temporary folder on a loopback port (initdb refuses
    root: run as `nobody` then); yields its URL, stopped and removed after the test."""
    import glob
    import shutil
    import tempfile

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.skip("PostgreSQL server binaries absent (apt-get install postgresql)")
    bin_dir = Path(binaries[-1]).parent
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="bpexp-pg-"))  # not under pytest's root-only tmp
    if as_user:
        shutil.chown(folder, "nobody")
    port = free_port()

    def pg(tool: str, *args: str) -> None:
        out = subprocess.run(
            [*as_user, str(bin_dir / tool), *args], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, f"{tool}: {out.stdout}{out.stderr}"

    data = str(folder / "data")
    pg("initdb", "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8")
    options = f"-h 127.0.0.1 -p {port} -k {folder}"
    pg("pg_ctl", "-D", data, "-l", str(folder / "postgres.log"), "-o", options, "-w", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        # psycopg2 named: SQLAlchemy 2.1 takes postgresql:// for psycopg 3
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# --- IDX files for the MNIST data sets (tests/test_data.py, tests/test_datafiles.py) ----------


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


FASHION_FOLDER = SYSTEM_FOLDERS["fashion_mnist"]
needs_fashion = pytest.mark.skipif(
    not all((FASHION_FOLDER / f"{stem}.gz").is_file() for stem in IDX_FILES),
    reason=f"no Fashion-MNIST in {FASHION_FOLDER} (apt-get install dataset-fashion-mnist)",
)
# The real MNIST, when a shared folder next to the checkout holds it: the four IDX files,
# gzipped, and SHA256SUMS.uncompressed (the published sha256 of the uncompressed files).
MNIST_FOLDER = Path(__file__).resolve().parents[2] / "shared/datasets/mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_FOLDER / f"{stem}.gz").is_file() for stem in IDX_FILES)
    or not (MNIST_FOLDER / "SHA256SUMS.uncompressed").is_file(),
    reason=f"no MNIST in {MNIST_FOLDER} (the four IDX .gz files and SHA256SUMS.uncompressed); "
    "these tests read the real data set and never download it",
)


def assert_every_point_logged(client, run, folder: Path) -> None:
    """Every point of ``run``'s history.parquet is in the store's metric histories (> 100)."""
    import pandas as pd

    run_id = run.info.run_id
    local = client.download_artifacts(run_id, "history.parquet", str(folder / run_id))
    expected = len(pd.read_parquet(local))
    logged = sum(len(client.get_metric_history(run_id, key)) for key in run.data.metrics)
    assert logged == expected > 100
