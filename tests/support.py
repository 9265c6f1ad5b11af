"""Helpers for tests that start the app in other processes: the test database's URL, their environment,
`manage.py` subprocesses and a real Celery worker. A plain module, so test files may import from it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[1]
CELERY = str(Path(sys.executable).with_name("celery"))
TEST_API_KEY = "sk-ant-test-0000000000000000wxyz"
DOWN_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connecting fails at once
WORKER_READY_SECONDS = 45
SUBPROCESS_SECONDS = 120


def database_url() -> str:
    """The URL of the database this test is using, for processes that must share it (workers, commands)."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    auth = quote(params["USER"] or "", safe="")
    if params.get("PASSWORD"):
        auth += ":" + quote(params["PASSWORD"], safe="")
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{params['NAME']}"


def service_env(**overrides: str) -> dict[str, str]:
    """Environment for a subprocess of the app: this test's database, a test API key, debug settings."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_DEBUG": "1",
        "ANTHROPIC_API_KEY": TEST_API_KEY,
        "ANTHROPIC_MODEL": django_settings.ANTHROPIC_MODEL,
        "ANTHROPIC_RETRY_BASE_SECONDS": "0.01",
        "ANTHROPIC_TIMEOUT_SECONDS": "10",
        "BATCH_BUDGET_USD": "40",
        "MONTHLY_BUDGET_USD": "",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


def _start_manage(args: tuple[str, ...], env: Mapping[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=dict(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def manage(*args: str, env: Mapping[str, str], timeout: float = SUBPROCESS_SECONDS) -> subprocess.CompletedProcess:
    """Run `manage.py ARGS` in a subprocess; it is killed (with its own children) if it overruns `timeout`."""
    process = _start_manage(args, env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"manage.py {' '.join(args)} did not finish within {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def manage_in_background(*args: str, env: Mapping[str, str]) -> subprocess.Popen:
    """Start `manage.py ARGS` without waiting; the caller collects it with `communicate(timeout=...)`."""
    return _start_manage(args, env)


def child_pids(pid: int) -> set[int]:
    """The live children of process `pid`, read from /proc (Linux)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":  # fields: state, ppid, ...
            children.add(int(stat.parent.name))
    return children


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it is true; fail the test, saying `what` was awaited, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class WorkerProcess:
    """A `celery -A newsroom worker` on the default queue, in a process group of its own, logging to a file.

    `env` is the worker's whole environment and `extra_env` is laid over it; `pool` is Celery's pool type.
    """

    def __init__(self, *, env: Mapping[str, str], log_path: Path, pool: str = "prefork", concurrency: int = 4,
                 extra_env: Mapping[str, str] | None = None):
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    CELERY, "-A", "newsroom", "worker", "--pool", pool, "--concurrency", str(concurrency),
                    "--without-heartbeat", "--without-gossip", "--without-mingle", "-Q", "celery",
                    "--loglevel", "INFO", "-n", self.name,
                ],
                cwd=BASE_DIR, env={**env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> WorkerProcess:
        """Wait until the worker says it is ready; fail the test if it exits or takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log:
                return self
            if self.process.poll() is not None:
                pytest.fail(f"the celery worker exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.1)
        pytest.fail(f"the celery worker was not ready within {timeout} s:\n{self.log}")

    def pool_pids(self) -> list[int]:
        """The worker's pool processes (the prefork children of its main process), oldest first."""
        return sorted(child_pids(self.process.pid))

    def kill_pool_child(self, pid: int | None = None) -> int:
        """SIGKILL one pool process (`pid`, else the oldest), as the kernel's OOM killer would; returns its pid.

        The main process survives it: it starts a new pool process and hands back the message the dead one
        held (acks_late + reject_on_worker_lost)."""
        victim = pid if pid is not None else self.pool_pids()[0]
        os.kill(victim, signal.SIGKILL)
        return victim

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine that dies would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown, up to 10 s), then SIGKILL whatever of the process group is left."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()  # also takes any pool process the warm shutdown left behind


def record_ledger_entry(**fields):
    """A ledger entry written as history (a past month, an earlier run), with the running totals on batches and
    months brought in line with it, as `manage.py reconcile_ledger --fix` would after such an edit."""
    from batches import ledger
    from batches.models import CostLedgerEntry

    entry = CostLedgerEntry.objects.create(**fields)
    ledger.reconcile(fix=True)
    return entry
