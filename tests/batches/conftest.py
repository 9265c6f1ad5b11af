"""Fixtures for the generation tests: topic titles, runbatch in-process, and real Celery workers in subprocesses.

The subprocess helpers themselves (`service_env`, `manage`, `WorkerProcess`) are in tests/support.py."""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.core.management import CommandError, call_command

from tests.support import WorkerProcess

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
def category_titles() -> dict[str, str]:
    """The titles of `topics_in_every_category` (tests/conftest.py): distinct stories, one per category."""
    return TITLES


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


@pytest.fixture
def start_worker(redis_url, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real Celery workers on the Redis test database and this test's database; all stopped afterwards.

    Tests using it run with `django_db(transaction=True)`, so the workers see what the test wrote, and the
    workers are stopped before the test database is flushed.
    """
    started: list[WorkerProcess] = []

    def start(*, env: dict[str, str], concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(
            env=env, extra_env={"CELERY_BROKER_URL": redis_url}, pool="prefork", concurrency=concurrency,
            log_path=tmp_path / f"worker-{len(started) + 1}.log",
        )
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()
