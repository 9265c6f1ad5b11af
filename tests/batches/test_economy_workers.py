"""Economy batches on real Celery workers (subprocesses) over real Redis: the workers submit and poll (as beat's
every-minute schedule would make them), and a worker killed while polling leaves nothing settled twice."""
from __future__ import annotations

import json
import subprocess
from collections import Counter

import psycopg
import pytest
from django.db import connection

from batches.models import Batch, CostLedgerEntry, EconomyRequest, EconomySubmission, Newsletter
from tests.batches.test_workers import wait_for
from batches.claude_standin_batches import batches_of
from tests.support import BASE_DIR, CELERY, database_url, manage, service_env

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("migration_data")]


def beat_tick(env: dict[str, str]) -> None:
    """Publish the periodic poll once, as celery beat does every minute."""
    sent = subprocess.run([CELERY, "-A", "newsroom", "call", "batches.poll_economy"], cwd=BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr


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


@pytest.mark.xfail(strict=False, reason="flaky under load: the poll that `celery call` publishes after submission is "
                   "sometimes never received by the worker (seen in 3 of 4 runs at load ~10 after the merges); the "
                   "same kill-mid-poll path is covered in-process in test_economy.py; to be found and fixed")
def test_workers_submit_and_poll_an_economy_batch_and_a_worker_killed_mid_poll_settles_nothing_twice(
    fake_anthropic, topics_in_every_category, start_worker, redis_url
):
    api = batches_of(fake_anthropic)
    api.processing_seconds = 1
    api.results_latency = 60  # the first results download hangs: the worker is killed inside it
    env, doomed, batch = submitted_by_a_worker(fake_anthropic, start_worker, redis_url)
    assert CostLedgerEntry.objects.filter(batch=batch, status="reserved").count() == 8

    beat_tick(env)
    wait_for(lambda: api.calls["results"] >= 1, timeout=60, what="a worker downloading the results")
    doomed.kill()
    assert CostLedgerEntry.objects.filter(batch=batch, status="settled").count() == 0

    api.results_latency = 0
    start_worker(env=env, concurrency=1)
    beat_tick(env)
    wait_for(lambda: Batch.objects.get(pk=batch.pk).is_finished, timeout=60, what="the next poll to end the batch")

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
        beat_tick(env)
        # The worker settles the lines streamed before the held one, then waits on its lock: kill it there.
        wait_for(lambda: other.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0,
                 timeout=60, what="the worker to wait on the held request row")
        doomed.kill()
        other.rollback()
    settled_before = CostLedgerEntry.objects.filter(batch=batch, status="settled").count()
    assert settled_before < 8

    start_worker(env=env, concurrency=1)
    beat_tick(env)
    wait_for(lambda: Batch.objects.get(pk=batch.pk).is_finished, timeout=60, what="the next poll to end the batch")

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    settled = Counter(CostLedgerEntry.objects.filter(batch=batch, status="settled").values_list("newsletter", flat=True))
    assert sorted(settled.values()) == [1] * 8
