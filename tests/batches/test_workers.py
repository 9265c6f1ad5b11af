"""Batches on real Celery workers (subprocesses) over real Redis, sharing this test's database.

Only the Anthropic API is faked, by the loopback server in this process; the workers reach it over HTTP.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from batches.models import Batch, CostLedgerEntry, Newsletter
from batches.claude_standin import FakeAnthropicServer
from batches.sweeper import sweep
from tests.support import DOWN_BROKER_URL, database_url, manage, manage_in_background, service_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("migration_data")]

# Short recovery settings that still pass the system checks: the lease outlives a 3 s count and a 3 s call plus the answer write,
# the time limits sit above it, and the broker's visibility timeout is not shorter than the hard limit.
RECOVERY_ENV = {"ITEM_LEASE_SECONDS": "12", "ANTHROPIC_TIMEOUT_SECONDS": "3", "ANSWER_WRITE_RETRY_SECONDS": "1",
                "CELERY_TASK_SOFT_TIME_LIMIT": "14", "CELERY_TASK_TIME_LIMIT": "16", "CELERY_VISIBILITY_TIMEOUT": "16"}


@pytest.fixture
def slow_api():
    """The fake API taking two seconds per draft, long enough to kill a worker in the middle of calls."""
    with FakeAnthropicServer(latency=2.0) as server:
        yield server


def assert_one_draft_and_one_charge_per_item(batch: Batch) -> None:
    newsletters = list(batch.newsletters.all())
    assert len(newsletters) == len({n.topic_id for n in newsletters}) == batch.size
    assert {n.status for n in newsletters} == {Newsletter.Status.GENERATED}
    for newsletter in newsletters:
        statuses = Counter(newsletter.ledger_entries.values_list("status", flat=True))
        assert statuses["settled"] == 1, f"newsletter {newsletter.pk} has ledger entries {dict(statuses)}"
        assert newsletter.cost_usd == sum(e.amount_usd for e in newsletter.ledger_entries.all())


@pytest.mark.redis
def test_a_batch_queued_to_real_workers_drafts_every_item_once(
    fake_anthropic, topics_in_every_category, start_worker, redis_url
):
    env = service_env(ANTHROPIC_BASE_URL=fake_anthropic.base_url, CELERY_BROKER_URL=redis_url)
    start_worker(env=env, concurrency=4)

    finished = manage("runbatch", "--queue", "--wait", "--json", env=env)

    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert report["status"] == "done"
    assert [item["status"] for item in report["items"]] == ["generated"] * 8
    batch = Batch.objects.get(pk=report["batch"])
    assert_one_draft_and_one_charge_per_item(batch)
    assert set(CostLedgerEntry.objects.filter(batch=batch).values_list("status", flat=True)) == {"settled"}
    assert fake_anthropic.message_calls == 8


def sessions_opened() -> int:
    """Connections PostgreSQL has opened to this test's database so far (read afresh, outside any snapshot)."""
    with psycopg.connect(database_url(), autocommit=True) as other:
        return other.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


@pytest.mark.redis
def test_a_worker_process_keeps_its_database_connection_from_one_draft_to_the_next(
    fake_anthropic, topics_in_every_category, start_worker, redis_url
):
    if connection.vendor != "postgresql":
        pytest.skip("counts the connections the server opened (PostgreSQL's pg_stat_database)")
    env = service_env(ANTHROPIC_BASE_URL=fake_anthropic.base_url, CELERY_BROKER_URL=redis_url)
    start_worker(env=env, concurrency=1)  # one pool process runs the batch's task and its eight drafts
    before = sessions_opened()

    finished = manage("runbatch", "--queue", "--wait", "--json", env=env)

    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["status"] == "done"
    # Nine tasks: a connection each would be nine sessions or more (Celery's default); here the pool process
    # opens one, the command one, and this test's count one each time.
    assert sessions_opened() - before <= 4


@pytest.mark.redis
def test_a_worker_killed_mid_batch_leaves_no_duplicate_draft_and_no_double_charge(
    slow_api, topics_in_every_category, start_worker, redis_url
):
    env = service_env(ANTHROPIC_BASE_URL=slow_api.base_url, CELERY_BROKER_URL=redis_url, **RECOVERY_ENV)
    doomed = start_worker(env=env, concurrency=4)
    follower = manage_in_background("runbatch", "--queue", "--wait", "--json", "--timeout", "120", env=env)
    try:
        wait_for(lambda: CostLedgerEntry.objects.filter(status="reserved").count() >= 2, timeout=30,
                 what="calls in flight")
        doomed.kill()
        abandoned = set(CostLedgerEntry.objects.filter(status="reserved").values_list("pk", flat=True))
        leased = list(Newsletter.objects.filter(status="generating").values_list("lease_expires_at", flat=True))
        # Before the leases run out, nobody may take the killed worker's items back: their calls may still answer.
        assert sweep().requeued_items == 0
        assert Newsletter.objects.filter(status="generating").count() == len(leased) >= 2
        fresh = start_worker(env=env, concurrency=4)
        time.sleep(max(0.0, (max(leased) - timezone.now()).total_seconds() + 0.5))
        swept = manage("sweep", "--json", env=env)
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout)["requeued_items"] == len(leased)
        try:
            stdout, stderr = follower.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            items = list(Newsletter.objects.values_list("pk", "status", "attempts", "claim_token"))
            pytest.fail(f"the batch did not finish; items {items}\nkilled worker:\n{doomed.log}\n"
                        f"fresh worker:\n{fresh.log}")
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
            follower.wait(timeout=10)

    assert follower.returncode == 0, stderr
    batch = Batch.objects.get(pk=json.loads(stdout)["batch"])
    assert batch.status == Batch.Status.DONE
    assert_one_draft_and_one_charge_per_item(batch)
    # The killed calls' reservations stay: their outcome is unknown, so they still count against the budget.
    kept = list(CostLedgerEntry.objects.filter(pk__in=abandoned))
    assert kept and {e.status for e in kept} == {"reserved"}
    settled = CostLedgerEntry.objects.filter(batch=batch, status="settled")
    assert batch.spent_usd() == sum(e.amount_usd for e in settled) + sum(e.reserved_usd for e in kept)
    assert batch.spent_usd() <= batch.budget_usd
    assert all(n.attempts == 2 and n.interruptions == 1 for n in Newsletter.objects.filter(ledger_entries__in=kept))


def test_queueing_with_the_broker_down_fails_within_seconds_and_marks_the_batch_failed(topics_in_every_category):
    env = service_env(CELERY_BROKER_URL=DOWN_BROKER_URL)

    started = time.monotonic()
    result = manage("runbatch", "--queue", "--json", env=env, timeout=60)
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert elapsed < 15
    assert "broker is unreachable" in result.stderr
    batch = Batch.objects.get()
    assert batch.status == Batch.Status.FAILED
    assert "broker is unreachable" in batch.status_reason
    assert not batch.newsletters.exists()
