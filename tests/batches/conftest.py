"""Fixtures for the generation tests: topics, runbatch in-process, and real Celery workers in subprocesses."""
from __future__ import annotations

import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.apps import apps as django_apps
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
WORKER_READY_SECONDS = 45
SUBPROCESS_SECONDS = 120


TITLES = {
    "shipping_logistics": "USPS raises Ground Advantage rates for small parcels in January",
    "pricing_margins": "How to hold margins when a supplier raises prices by 12 percent",
    "conversion_optimization": "One-page checkout lifted conversion for a mid-size apparel brand",
    "ads_marketing": "Meta Advantage+ shopping campaigns get cheaper before the holidays",
    "inventory_management": "Reorder points to revisit before Black Friday stockouts hit",
    "customer_retention": "Loyalty programmes that actually bring second orders",
    "product_sourcing": "Vetting factories in Vietnam without flying there",
    "platform_tools": "Shopify Flow adds scheduled triggers for store automations",
}


@pytest.fixture
def migration_data(transactional_db) -> None:
    """Put back what the data migrations seed (categories, prices) for a transactional test.

    An earlier transactional test ends by flushing the database, and the workers and commands these tests start
    need the seeded rows; both seeds update or create, so running them again is harmless.
    """
    for module in ("topics.migrations.0002_seed_categories", "batches.migrations.0002_seed_prices"):
        importlib.import_module(module).seed(django_apps, None)


@pytest.fixture
def topics_in_every_category(categories, make_topic) -> list:
    """One approved topic in each of the eight categories (distinct stories), best-scored first."""
    return [make_topic(TITLES[slug], category=slug, score=100 - i) for i, slug in enumerate(categories)]


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    report: dict
    error: str


@pytest.fixture
def runbatch() -> Callable[..., CommandResult]:
    """`manage.py runbatch --json ARGS` in this process: its exit code, its JSON report and its error, if any."""

    def run(*args: str) -> CommandResult:
        out = io.StringIO()
        try:
            call_command("runbatch", "--json", *args, stdout=out)
        except CommandError as exc:
            returncode, error = exc.returncode, str(exc)
        else:
            returncode, error = 0, ""
        text = out.getvalue().strip()
        return CommandResult(returncode=returncode, report=json.loads(text) if text else {}, error=error)

    return run


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
        "ANTHROPIC_API_KEY": "sk-ant-test-0000000000000000wxyz",
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


def manage(*args: str, env: dict[str, str], timeout: float = SUBPROCESS_SECONDS) -> subprocess.CompletedProcess:
    """Run `manage.py ARGS` in a subprocess; it is killed (with its own children) if it overruns `timeout`."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"manage.py {' '.join(args)} did not finish within {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def manage_in_background(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start `manage.py ARGS` without waiting; the caller collects it with `communicate(timeout=...)`."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


class WorkerProcess:
    """A `celery -A newsroom worker` subprocess, in a process group of its own so it can be killed whole."""

    def __init__(self, *, concurrency: int, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    CELERY, "-A", "newsroom", "worker", "--pool", "prefork", "--concurrency", str(concurrency),
                    "--without-heartbeat", "--without-gossip", "--without-mingle", "-Q", "celery",
                    "--loglevel", "INFO", "-n", self.name,
                ],
                cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log:
                return self
            if self.process.poll() is not None:
                pytest.fail(f"the celery worker exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.1)
        pytest.fail(f"the celery worker was not ready within {timeout} s:\n{self.log}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine that dies would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also takes any pool process the warm shutdown left behind


@pytest.fixture
def start_worker(redis_url, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real Celery workers on the Redis test database and this test's database; all stopped afterwards.

    Tests using it run with `django_db(transaction=True)`, so the workers see what the test wrote, and the
    workers are stopped before the test database is flushed.
    """
    started: list[WorkerProcess] = []

    def start(*, env: dict[str, str], concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(
            concurrency=concurrency, env={**env, "CELERY_BROKER_URL": redis_url},
            log_path=tmp_path / f"worker-{len(started) + 1}.log",
        )
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()
