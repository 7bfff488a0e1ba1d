"""A multirun's console (issue 27, bpexp/console.py) and the writer process (bpexp/writer.py).

Real ``python -m bpexp -m ...`` subprocesses, in a pipe (not a terminal: a log file) and in a
pseudo-terminal; a real SQLite store for the writer.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import sys
import termios
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from bpexp.trainer import EndRecord, EpochRecord, StepRecord
from tests.conftest import assert_every_point_logged, cli_env, run_cli

GRID = ["-m", "optimizer.lr=0.1,0.5", "seed=0,1", "trainer.epochs=2", "tracking.enabled=false"]
CONTROL = re.compile(r"[\r\x1b]")  # a carriage return or an ANSI escape


def summary_of(folder: Path) -> pd.DataFrame:
    return pd.read_csv(sorted(folder.glob("multirun/*/*/summary.csv"))[-1])


@pytest.mark.slow
def test_a_multirun_in_a_log_file_shows_progress_lines_and_one_line_per_job(tmp_path):
    out = run_cli(GRID, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert not CONTROL.search(text), repr(CONTROL.search(text))
    assert "epoch " not in out.stdout  # per-epoch lines only when asked (verbose=2)
    assert "tracking: run" not in out.stdout
    for job in range(4):  # Hydra's line as each job starts, once, and no other line per job
        assert text.count(f"#{job} : ") == 1, text
    assert re.search(
        r"^progress: 4/4 jobs, \d\d:\d\d elapsed; 4 completed; best val/accuracy: ",
        out.stdout,
        re.M,
    ), out.stdout
    assert len(re.findall(r"^progress: ", out.stdout, re.M)) <= 4 + 1  # a tenth at most + end
    header = next(line for line in out.stdout.splitlines() if line.lstrip().startswith("job "))
    assert "stage" not in header and "overrides" in header  # empty for every job: left out
    assert list(summary_of(tmp_path)["outcome"]) == ["completed"] * 4


@pytest.mark.slow
def test_verbose_1_gives_each_job_one_line_with_its_outcome_yardstick_and_time(tmp_path):
    out = run_cli([*GRID, "verbose=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("#")]
    assert len(lines) == 4, out.stdout
    for job, line in enumerate(lines):
        assert re.fullmatch(
            rf"#{job} all optimizer\.lr=\S+ seed=\d trainer\.epochs=2 "
            r"tracking\.enabled=False verbose=1: "
            r"completed, val/accuracy 0\.\d{4}, \d+\.\d s",
            line,
        ), line
    assert " : " not in out.stdout + out.stderr  # Hydra's own job lines are left out
    assert "epoch " not in out.stdout


@pytest.mark.slow
def test_verbose_2_prints_every_epoch_of_every_job(tmp_path):
    out = run_cli([*GRID, "verbose=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("epoch 2/2") == 4


def in_terminal(args: list[str], folder: Path) -> tuple[int, str]:
    """``python -m bpexp ARGS`` in a pseudo-terminal 160 columns wide: (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(folder)
        os.execve(sys.executable, [sys.executable, "-m", "bpexp", *args], cli_env())
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_multirun_in_a_terminal_shows_one_bar_and_no_job_lines(tmp_path):
    code, text = in_terminal(GRID, tmp_path)
    assert code == 0, text[-3000:]
    assert "\r" in text  # the bar redraws itself in place
    bars = re.findall(r"(\d+)/4 jobs \[", text)
    assert bars and bars[-1] == "4" and {"0", "4"} <= set(bars), text[-3000:]
    assert "best: all lr=" in text
    assert not re.search(r"#\d : ", text)  # no Hydra job lines under the bar
    assert "epoch " not in text
    assert list(summary_of(tmp_path)["outcome"]) == ["completed"] * 4


@pytest.mark.slow
def test_a_protocol_sweep_shows_its_stages_and_each_arms_best(tmp_path):
    args = [
        "sweep=optimizers",
        "optimizer=sgd,momentum",
        "hydra.sweeper.protocol.search.optimizer.lr.points=2",
        "hydra.sweeper.protocol.confirm_seeds=[100]",
        "trainer.epochs=2",
        "tracking.enabled=false",
    ]
    out = run_cli(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    progress = re.findall(r"^progress: (\d+)/10 jobs \((\w+)\).*$", out.stdout, re.M)
    assert ("8", "tune") in [p[:2] for p in progress]  # the tune stage's last line
    assert progress[-1][:2] == ("10", "confirm"), out.stdout
    last = [line for line in out.stdout.splitlines() if line.startswith("progress: 10/10")][-1]
    assert re.search(r"best val/accuracy: sgd [\d.]+ \| momentum [\d.]+$", last), last
    assert "stage" in summary_of(tmp_path).columns
    # The protocol's table is the answer; the table of its 10 jobs is in summary.csv only.
    assert "sweep summary (10 jobs: 10 completed)" in out.stdout
    assert not JOB_ROW.search(out.stdout), out.stdout[-3000:]
    again = run_cli([*args, "verbose=1"], tmp_path)  # verbose=1: the jobs' table too
    assert len(JOB_ROW.findall(again.stdout)) == 10, again.stdout[-3000:]


JOB_ROW = re.compile(r"^\s*\d+\s+(sgd|momentum|nesterov)\s+(tune|confirm)\s", re.M)


@pytest.mark.slow
def test_the_main_job_in_a_terminal_fits_on_one_screen_but_its_answer(tmp_path):
    """The main job's protocol, shrunk to 36 runs of 2 epochs: what a terminal shows, the
    protocol's table apart, fits in 40 rows."""
    args = [
        "sweep=optimizers",
        "hydra.sweeper.protocol.search.optimizer.lr.points=4",
        "hydra.sweeper.protocol.confirm_seeds=[100,101,102,103]",
        "trainer.epochs=2",
    ]
    code, text = in_terminal(args, tmp_path)
    assert code == 0, text[-3000:]
    lines = text.replace("\r\n", "\n").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("protocol result"))
    answer = lines[start : start + 5]  # its title, header and 3 arms
    assert [line.split()[0] for line in answer[2:]] == sorted(
        [line.split()[0] for line in answer[2:]], key=[a.split()[0] for a in answer[2:]].index
    )
    rest = lines[:start] + lines[start + 5 :]
    assert len([line for line in rest if line.strip()]) <= 40 - 5, "\n".join(rest)
    assert not JOB_ROW.search(text) and not re.search(r"#\d+ : ", text)


# ----------------------------------------------------------------------------- the writer


def _new_run(client: MlflowClient) -> str:
    experiment_id = client.create_experiment("writer")
    return client.create_run(experiment_id).info.run_id


def test_the_writer_writes_every_point_before_the_run_is_finished(store_uri):
    from bpexp import writer
    from bpexp.tracking import RunLogger, end_run

    client = MlflowClient(tracking_uri=store_uri)
    logger = RunLogger(client, _new_run(client))
    logger.writer = writer.for_uri(store_uri)
    assert logger.writer is not None and logger.writer.pid != os.getpid()
    for epoch in range(40):
        logger(StepRecord(epoch * 10, epoch, 1.0 / (epoch + 1)))
        logger(EpochRecord(epoch, {"train/loss": 1.0 / (epoch + 1), "val/loss": 2.0}))
    logger(EndRecord(40, {"test/loss": 0.5}, "completed"))
    end_run(logger, "completed")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    stored = sum(len(client.get_metric_history(logger.run_id, k)) for k in run.data.metrics)
    assert stored == logger.points_logged == len(logger.rows) == 121
    assert writer.for_uri(store_uri) is logger.writer  # one writer for the process's runs


def test_a_point_the_store_refuses_through_the_writer_fails_the_run(store_uri):
    from bpexp import writer
    from bpexp.tracking import RunLogger, end_run

    client = MlflowClient(tracking_uri=store_uri)
    logger = RunLogger(client, _new_run(client))
    logger.writer = writer.for_uri(store_uri)
    logger(EpochRecord(0, {"train/loss": 1.0, "bad name!": 2.0}))
    with pytest.raises(writer.StoreWriteError, match="bad name!"):
        end_run(logger, "completed")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "failed"
    assert "bad name!" in run.data.tags["bpexp.error"]
    assert run.data.metrics == {}  # MLflow refused the whole batch


def test_no_writer_for_a_store_that_is_not_a_sqlite_file():
    from bpexp import writer

    assert writer.for_uri("http://127.0.0.1:1") is None


@pytest.mark.slow
@pytest.mark.parametrize("writer_on", ["true", "false"])
def test_a_tracked_multirun_ends_finished_with_every_point_either_way(tmp_path, writer_on):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "optimizer.lr=0.1,0.5", "trainer.epochs=3", f"tracking.uri={uri}"]
    out = run_cli([*args, f"tracking.writer={writer_on}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = [r for r in client.search_runs(["1"]) if r.data.tags.get("bpexp.kind") != "sweep"]
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
        assert "tracking.writer" not in run.data.params and "verbose" not in run.data.params
        assert_every_point_logged(client, run, tmp_path)
