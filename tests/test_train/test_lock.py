"""One trainer per output folder: a live holder is named in a one-line refusal; a killed holder's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from comfyui_cointeract.cli import main as cli_main
from comfyui_cointeract.train.config import config_to_toml
from comfyui_cointeract.train.lock import LOCK_NAME, RunLock, RunLocked
from comfyui_cointeract.train.loop import train
from comfyui_cointeract.train.synthetic import smoke_config

HOLD = (
    "import sys, time\n"
    "from comfyui_cointeract.train.lock import RunLock\n"
    "RunLock.acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of tmp_path / "run" (a trainer that is busy)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_trainer_is_refused_with_one_line_naming_the_pid(tmp_path, holder, capsys):
    cfg_file = tmp_path / "cfg.toml"
    cfg_file.write_text(config_to_toml(smoke_config(tmp_path / "run", (1, 1))))
    assert cli_main(["train", str(cfg_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in use by another `cointeract train`: pid {holder.pid} on host" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.toml").exists()


def test_a_killed_trainers_lock_is_taken_over_with_a_log_line(tmp_path, holder, caplog):
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the lock file stays, naming a dead pid
    holder.wait()
    lock_file = tmp_path / "run" / LOCK_NAME
    assert json.loads(lock_file.read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING):
        result = train(smoke_config(tmp_path / "run", (1, 1)))
    assert result.steps == 2
    taken = [r.getMessage() for r in caplog.records if "took over the stale lock" in r.getMessage()]
    assert len(taken) == 1 and f"pid {holder.pid}" in taken[0]
    assert not lock_file.exists()  # released when the run ended


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    with RunLock.acquire(tmp_path) as lock:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] and owner["started"]
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock.acquire(tmp_path)  # a second open file in the same process is refused too
        assert lock.path == tmp_path / LOCK_NAME
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock.acquire(tmp_path).release()  # free again
