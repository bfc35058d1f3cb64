"""``rnnkit train`` under ``torchrun``: two CPU processes (gloo) on the built-in corpus, with a tiny model.

What two processes promise: the files are written once, by rank 0; with the same global ``--batch-size`` and seed
the weights equal a one-process run's up to float rounding (dropout 0: each rank draws its own masks); ``--resume``
continues to the uninterrupted result; a bad input is reported once; a process that dies ends the run with one
line and leaves the last complete checkpoint readable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.cli import main

TINY = ["--limit", "8", "--embedding-dim", "8", "--encoder-hidden", "8", "--context-hidden", "8",
        "--speaker-hidden", "8", "--batch-size", "4", "--dropout", "0", "--device", "cpu", "--quiet"]
RUN_FILES = {"config.json", "encoder.json", "vocab.json", "model.safetensors", "metrics.json",
             "confusion_matrix.png", "training_curve.png", "checkpoint/trainer_state.pt",
             "checkpoint/epoch-2.safetensors"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "rnnkit.cli", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun(*args), env=_env(), capture_output=True, text=True, timeout=120)


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def _rnnkit_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "rnnkit: error:" in line]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = _launch("--out", str(out), "--epochs", "2", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best epoch") == 1  # only rank 0 reports
    return out


def test_rank_0_writes_each_file_once(ddp_run):
    files = _files(ddp_run)
    assert RUN_FILES <= files
    assert not [name for name in files if Path(name).name.startswith(".")]  # no temporary file left behind


def test_two_processes_equal_one_with_the_same_global_batch(ddp_run, tmp_path):
    assert main(["train", "--out", str(tmp_path / "one"), "--epochs", "2", *TINY]) == 0
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(ddp_run / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-4, msg=name)


def test_resume_under_torchrun_continues_to_the_uninterrupted_result(ddp_run, tmp_path):
    out = tmp_path / "split"
    done = _launch("--out", str(out), "--epochs", "1", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _launch("--out", str(out), "--resume", "--epochs", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("model.safetensors", "checkpoint/epoch-2.safetensors"):
        resumed, whole = load_file(out / name), load_file(ddp_run / name)
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), name


def test_a_bad_input_is_reported_once_and_writes_nothing(tmp_path):
    done = _launch("--out", str(tmp_path / "run"), "--seed", "-1", *TINY)
    assert done.returncode != 0
    assert _rnnkit_errors(done.stderr) == [
        "rnnkit: error: TrainerConfig.seed must be an integer in [0, 2**32 - 1], got -1"]
    assert "[rank" not in done.stderr  # no worker traceback
    assert "exitcode  : 2" in done.stderr
    assert not (tmp_path / "run").exists()


def _worker(launcher: int, local_rank: int) -> int:
    """The pid of the torchrun worker of ``local_rank`` among the children of ``launcher``."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
        if parent == launcher and f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of local rank {local_rank} under pid {launcher}")


def test_a_killed_process_ends_the_run_with_one_line_and_a_readable_checkpoint(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(_torchrun("--out", str(out), "--epochs", "40", *TINY), env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "checkpoint" / "trainer_state.pt"
    deadline = time.monotonic() + 90
    while not state.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.exists(), "no checkpoint was written"
    os.kill(_worker(launcher.pid, 1), signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    errors = _rnnkit_errors(stderr)
    assert len(errors) == 1 and "another process of the run stopped" in errors[0], stderr[-3000:]
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["epoch"] < 40
    weights = load_file(out / "checkpoint" / saved["last_weights"])
    assert weights.keys() == load_file(out / "model.safetensors").keys()
