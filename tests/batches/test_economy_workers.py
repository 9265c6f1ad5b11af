"""Economy batches on real Celery workers (subprocesses) over real Redis: the workers submit and poll (as beat's
every-minute schedule would make them), and a worker killed while polling leaves nothing settled twice."""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection

from batches.models import Batch, CostLedgerEntry, EconomyRequest, EconomySubmission, Newsletter
from batches.claude_standin_batches import batches_of
from newsroom.celery import app
from tests.support import database_url, manage, service_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("migration_data")]


BEAT_EVERY_SECONDS = 1.0  # beat ticks every minute; the tests tick faster, with the poll's backoff set to 0


def beat_tick(redis_url: str) -> None:
    """Publish the periodic poll once, as celery beat does: the same message, on the workers' Redis broker."""
    with app.connection_for_write(redis_url) as connection:
        app.send_task("batches.poll_economy", connection=connection)


def beat_until(condition: Callable[[], object], *, redis_url: str, timeout: float, what: str) -> None:
    """Tick beat every BEAT_EVERY_SECONDS until `condition` holds, as a deployment's beat keeps ticking.

    One tick is not enough: a poll that lands while the Message Batch is still `in_progress` rightly finds nothing
    to collect, and only the next tick collects it (one tick published 0.9 s after a create with 1 s of processing
    made the kill-mid-poll test wait for ever).
    """
    deadline = time.monotonic() + timeout
    next_tick = 0.0
    while time.monotonic() < deadline:
        if condition():
            return
        if time.monotonic() >= next_tick:
            beat_tick(redis_url)
            next_tick = time.monotonic() + BEAT_EVERY_SECONDS
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s of beat ticks waiting for {what}")


def submitted_by_a_worker(fake_anthropic, start_worker, redis_url):
    """`runbatch --economy --queue`, submitted by a real worker: the environment, the worker and the batch."""
    env = service_env(ANTHROPIC_BASE_URL=fake_anthropic.base_url, CELERY_BROKER_URL=redis_url,
                      ECONOMY_POLL_MIN_SECONDS="0", ECONOMY_POLL_MAX_SECONDS="0")
    worker = start_worker(env=env, concurrency=1)
    queued = manage("runbatch", "--economy", "--queue", "--json", env=env)
    assert queued.returncode == 0, queued.stderr
    batch = Batch.objects.get(pk=json.loads(queued.stdout)["batch"])
    wait_for(lambda: EconomySubmission.objects.filter(batch=batch, state="submitted").exists(), timeout=60,
             what="the worker to submit the Message Batch")
    return env, worker, batch


def test_workers_submit_and_poll_an_economy_batch_and_a_worker_killed_mid_poll_settles_nothing_twice(
    fake_anthropic, topics_in_every_category, start_worker, redis_url
):
    api = batches_of(fake_anthropic)
    api.processing_seconds = 1
    api.results_latency = 60  # the first results download hangs: the worker is killed inside it
    env, doomed, batch = submitted_by_a_worker(fake_anthropic, start_worker, redis_url)
    assert CostLedgerEntry.objects.filter(batch=batch, status="reserved").count() == 8

    beat_until(lambda: api.calls["results"] >= 1, redis_url=redis_url, timeout=60,
               what="a worker downloading the results")
    doomed.kill()
    assert CostLedgerEntry.objects.filter(batch=batch, status="settled").count() == 0

    api.results_latency = 0
    start_worker(env=env, concurrency=1)
    beat_until(lambda: Batch.objects.get(pk=batch.pk).is_finished, redis_url=redis_url, timeout=60,
               what="the next poll to end the batch")

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert set(batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.GENERATED}
    settled = Counter(CostLedgerEntry.objects.filter(batch=batch, status="settled").values_list("newsletter", flat=True))
    assert sorted(settled.values()) == [1] * 8
    assert not CostLedgerEntry.objects.filter(batch=batch, status="reserved").exists()
    assert api.calls["create"] == 1 and fake_anthropic.message_calls == 0


def test_a_worker_killed_while_settling_leaves_the_rest_to_the_next_poll_with_one_settlement_per_line(
    fake_anthropic, topics_in_every_category, start_worker, redis_url
):
    if connection.vendor != "postgresql":
        pytest.skip("holding one request row while the others settle needs row locks (PostgreSQL)")
    api = batches_of(fake_anthropic)
    api.processing_seconds = 0
    env, doomed, batch = submitted_by_a_worker(fake_anthropic, start_worker, redis_url)

    held = EconomyRequest.objects.filter(submission__batch=batch).order_by("pk").last()
    with psycopg.connect(database_url()) as other:
        other.execute("SELECT id FROM batches_economyrequest WHERE id = %s FOR UPDATE", [held.pk])
        beat_tick(redis_url)
        # The worker settles the lines streamed before the held one, then waits on its lock: kill it there.
        # A session waiting on a lock that this one holds: other sessions on the same server (other tests, other
        # databases) have lock waits of their own. (Not pg_stat_activity: it is read once per transaction, so a
        # worker connection opened after the first look would never show.)
        wait_for(lambda: other.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                       "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))").fetchone()[0] > 0,
                 timeout=60, what="the worker to wait on the held request row")
        doomed.kill()
        other.rollback()
    settled_before = CostLedgerEntry.objects.filter(batch=batch, status="settled").count()
    assert settled_before < 8

    start_worker(env=env, concurrency=1)
    beat_until(lambda: Batch.objects.get(pk=batch.pk).is_finished, redis_url=redis_url, timeout=60,
               what="the next poll to end the batch")

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    settled = Counter(CostLedgerEntry.objects.filter(batch=batch, status="settled").values_list("newsletter", flat=True))
    assert sorted(settled.values()) == [1] * 8
