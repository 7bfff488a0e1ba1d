"""A real single-node SLURM cluster, started by the tests as their own processes.

:func:`start` runs, each in the foreground as a child of the test process so that it can be
stopped by its pid:

1. ``munged`` as the ``munge`` user, with its socket, pid, seed and log files in a folder of
   its own under ``/run/munge`` (the cluster's ``AuthInfo=socket=...`` points there, so a
   munged of the machine, or of another test process, is left alone);
2. with accounting (``slurmdbd`` and MariaDB installed, as ``sacct`` needs): ``mariadbd`` on a
   fresh data folder and a free port on 127.0.0.1, then ``slurmdbd``;
3. ``slurmctld``, then ``slurmd`` for one node, this host, with 2 CPUs and one partition,
   ``debug``.

Every file (slurm.conf, slurmdbd.conf, the state, spool, log and pid files, the database)
is in one temporary folder; :meth:`Cluster.stop` cancels the cluster's jobs and stops every
process it started, by pid, last started first. A test process killed before it could do so
takes its daemons with it (each gets a signal when its parent ends: PR_SET_PDEATHSIG).
``python -m tests.slurm_cluster FOLDER`` starts one by hand and prints the environment to use
it (docs/scale-out.md).

The session-scoped fixture :func:`slurm_cluster` gives one to the tests that ask for it, and
skips them with the reason when the packages are missing or the tests do not run as root.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = "slurmctld slurmd slurm-client munge"
ACCOUNTING_PACKAGES = "slurmdbd mariadb-server"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel", "scontrol")
ACCOUNTING = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacct")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
SBIN = ("/usr/sbin", "/sbin")
PARTITION = "debug"
CLUSTER_NAME = "bpexptest"
KILL_WAIT = 30  # seconds between SIGTERM and SIGKILL of a cancelled job's processes


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if sys.platform != "linux":
        return "a SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd runs jobs; munged runs as munge)"
    absent = [name for name in (*DAEMONS, *CLIENTS) if which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install {PACKAGES})"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (apt-get install munge)"
    if not MUNGE_KEY.is_file():
        return f"no {MUNGE_KEY} (apt-get install munge creates it; or mungekey --create)"
    return None


def has_accounting() -> bool:
    """slurmdbd and MariaDB are installed: the cluster keeps accounting (sacct answers)."""
    return all(which(name) for name in ACCOUNTING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(
    folder: Path, node: str, cpus: int, memory_mb: int, ports: dict[str, int], munge: Path
) -> str:
    """The minimal slurm.conf of a one-node cluster whose every file is in ``folder``."""
    accounting = (
        "AccountingStorageType=accounting_storage/slurmdbd\n"
        "AccountingStorageHost=localhost\n"
        f"AccountingStoragePort={ports['slurmdbd']}\n"
        # the munge socket of the connections to slurmdbd (AuthInfo is for the others')
        f"AccountingStoragePass={munge / 'munge.socket'}\n"
        if "slurmdbd" in ports
        else "AccountingStorageType=accounting_storage/none\n"
    )
    return (
        f"ClusterName={CLUSTER_NAME}\n"
        f"SlurmctldHost={node}\n"
        "SlurmUser=root\n"
        "SlurmdUser=root\n"
        "AuthType=auth/munge\n"
        "CredType=cred/munge\n"
        f"AuthInfo=socket={munge / 'munge.socket'}\n"
        f"SlurmctldPort={ports['slurmctld']}\n"
        f"SlurmdPort={ports['slurmd']}\n"
        "ProctrackType=proctrack/linuxproc\n"
        "TaskPlugin=task/none\n"
        "SelectType=select/cons_tres\n"
        "SelectTypeParameters=CR_CPU\n"
        "MpiDefault=none\n"
        "SwitchType=switch/none\n"
        "JobAcctGatherType=jobacct_gather/none\n"
        "JobCompType=jobcomp/none\n" + accounting + "ReturnToService=2\n"
        f"KillWait={KILL_WAIT}\n"
        "InactiveLimit=0\n"
        "MinJobAge=300\n"
        "SchedulerType=sched/backfill\n"
        f"StateSaveLocation={folder / 'state'}\n"
        f"SlurmdSpoolDir={folder / 'spool'}\n"
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}\n"
        f"SlurmdPidFile={folder / 'slurmd.pid'}\n"
        f"SlurmctldLogFile={folder / 'slurmctld.log'}\n"
        f"SlurmdLogFile={folder / 'slurmd.log'}\n"
        "SlurmctldDebug=info\n"
        "SlurmdDebug=info\n"
        f"NodeName={node} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )


def slurmdbd_conf(folder: Path, ports: dict[str, int], munge: Path) -> str:
    return (
        "AuthType=auth/munge\n"
        f"AuthInfo=socket={munge / 'munge.socket'}\n"
        "DbdHost=localhost\n"
        f"DbdPort={ports['slurmdbd']}\n"
        "SlurmUser=root\n"
        "StorageType=accounting_storage/mysql\n"
        "StorageHost=127.0.0.1\n"
        f"StoragePort={ports['mariadb']}\n"
        "StorageUser=root\n"
        "StorageLoc=slurm_acct_db\n"
        f"PidFile={folder / 'slurmdbd.pid'}\n"
        f"LogFile={folder / 'slurmdbd.log'}\n"
        "DebugLevel=info\n"
    )


def memory_mb() -> int:
    """The node's memory as slurmd measures it (MemTotal, in MB)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


@dataclass
class Cluster:
    folder: Path
    conf: Path
    node: str
    accounting: bool
    partition: str = PARTITION
    kill_wait: int = KILL_WAIT
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    munge_dir: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command that uses this cluster (``SLURM_CONF``)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
        return env | extra

    def run(self, *args: str, timeout: float = 60, check: bool = True):
        """A SLURM command (``squeue``, ``scancel``, ...) against this cluster."""
        return subprocess.run(
            list(args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes}

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.is_file() else ""

    def _start(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        out = open(self.folder / f"{name}.out", "ab")  # noqa: SIM115 - the process keeps it
        # slurmd does not always take SIGTERM (not while it retries to register)
        on_orphan = signal.SIGKILL if name == "slurmd" else signal.SIGTERM
        proc = subprocess.Popen(
            args,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test does not reach the daemons
            preexec_fn=lambda: _die_with_parent(on_orphan),
            **kw,
        )
        out.close()
        self.processes.append((name, proc))
        return proc

    def _alive(self, name: str) -> None:
        for started, proc in self.processes:
            if started == name and proc.poll() is not None:
                output = (self.folder / f"{name}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}) while starting:\n{output}\n{self.log(name)}"
                )

    def _wait(self, what: str, ready, timeout: float, *names: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                self._alive(name)
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}:\n{self.log(n)}" for n in names)
        raise RuntimeError(f"{what} not ready within {timeout:.0f} s\n{logs}")

    def stop(self) -> None:
        """Cancel every job of the cluster, then stop every process it started, by pid."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.processes):
            try:
                self.run("scancel", "--user", "root", timeout=20, check=False)
                deadline = time.monotonic() + self.kill_wait + 15
                while time.monotonic() < deadline:
                    out = self.run("squeue", "-h", "-o", "%i", timeout=20, check=False)
                    if out.returncode != 0 or not out.stdout.strip():
                        break
                    time.sleep(0.5)
            except (OSError, subprocess.SubprocessError):
                pass
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _die_with_parent(signum: int) -> None:
    """In a daemon just forked: get ``signum`` when the test process ends, even killed (a
    killed pytest runs no fixture teardown; its daemons would otherwise outlive it)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def _start_munge(cluster: Cluster) -> None:
    munge = pwd.getpwnam("munge")
    MUNGE_RUN.mkdir(mode=0o755, exist_ok=True)
    os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
    folder = MUNGE_RUN / f"bpexp-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o755)
    os.chown(folder, munge.pw_uid, munge.pw_gid)
    cluster.munge_dir = folder
    args = [which("munged"), "--foreground", f"--socket={folder / 'munge.socket'}"]
    args += [f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}"]
    args += [f"--seed-file={folder / 'munged.seed'}", "--num-threads=10"]
    cluster._start("munged", args, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
    cluster._wait("munged", (folder / "munge.socket").exists, 20, "munged")


def _start_accounting(cluster: Cluster, ports: dict[str, int]) -> None:
    folder = cluster.folder
    data = folder / "mariadb"
    install = subprocess.run(
        [which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root"]
        + ["--auth-root-authentication-method=normal", "--skip-test-db"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    sock = folder / "mariadb.sock"
    cluster._start(
        "mariadbd",
        [which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root"]
        + [f"--socket={sock}", f"--port={ports['mariadb']}", "--bind-address=127.0.0.1"]
        + [f"--pid-file={folder / 'mariadbd.pid'}", f"--log-error={folder / 'mariadbd.log'}"]
        + ["--skip-grant-tables", "--innodb-use-native-aio=0", "--innodb-buffer-pool-size=64M"],
    )

    def answers() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", ports["mariadb"])) == 0

    cluster._wait("mariadbd", answers, 120, "mariadbd")
    dbd = folder / "slurmdbd.conf"  # read from slurm.conf's folder; root's alone (0600)
    dbd.write_text(slurmdbd_conf(folder, ports, cluster.munge_dir))
    dbd.chmod(0o600)
    cluster._start("slurmdbd", [which("slurmdbd"), "-D"])

    def dbd_answers() -> bool:
        out = cluster.run("sacctmgr", "-n", "list", "cluster", timeout=20, check=False)
        return out.returncode == 0

    cluster._wait("slurmdbd", dbd_answers, 120, "mariadbd", "slurmdbd")
    # slurmctld registers the cluster itself; adding it first makes it known at once.
    cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=False)


def start(folder: Path, accounting: bool | None = None, cpus: int = 2) -> Cluster:
    """Start a one-node cluster whose files are all in ``folder``; raises RuntimeError with the
    daemons' logs when it does not come up. The caller stops it (:meth:`Cluster.stop`)."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    accounting = has_accounting() if accounting is None else accounting
    folder = Path(folder).resolve()
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    names = ("slurmctld", "slurmd", *(("slurmdbd", "mariadb") if accounting else ()))
    ports = {name: free_port() for name in names}
    conf = folder / "slurm.conf"
    cluster = Cluster(folder, conf, node, accounting)
    try:
        _start_munge(cluster)
        conf.write_text(slurm_conf(folder, node, cpus, memory_mb(), ports, cluster.munge_dir))
        if accounting:
            _start_accounting(cluster, ports)
        cluster._start("slurmctld", [which("slurmctld"), "-D", "-i"])

        def ctld_answers() -> bool:
            return cluster.run("scontrol", "ping", timeout=20, check=False).returncode == 0

        cluster._wait("slurmctld", ctld_answers, 60, "slurmctld")
        cluster._start("slurmd", [which("slurmd"), "-D"])

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=20, check=False)
            return out.returncode == 0 and f"{node} idle" in out.stdout

        cluster._wait("sinfo: the node idle", node_idle, 60, "slurmctld", "slurmd")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster for the session's SLURM tests; skipped, with the reason, where none can
    start. Each xdist worker that runs such a test has its own (own ports, own munged)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    cluster = start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    """``python -m tests.slurm_cluster FOLDER``: start a cluster, print how to use it, and
    stop it on Ctrl-C."""
    if len(argv) != 1:
        print("usage: python -m tests.slurm_cluster FOLDER", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Also where a background shell started this with SIGINT ignored: kill PID stops it too.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    cluster = start(Path(argv[0]))
    try:
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        print(f"pids: {cluster.pids()}; Ctrl-C (or kill {os.getpid()}) stops it", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
