"""The fault harness itself, on the app as it is: private servers that really go down and come back, real workers
that really die, and an invariant checker that really catches what it is meant to."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import App, Database, PrivatePostgres, PrivateRedis, check_invariants, reap_orphans
from tests.support import BASE_DIR, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_a_client_reconnects_and_finds_its_rows_after_the_private_postgres_restarts(
    private_postgres: PrivatePostgres,
):
    url = private_postgres.create_database("smoke_restart")
    connection = psycopg.connect(url, autocommit=True)
    connection.execute("CREATE TABLE kept (n int)")
    connection.execute("INSERT INTO kept VALUES (1)")

    private_postgres.restart(mode="immediate")  # a crash: no checkpoint, recovery on start

    with pytest.raises(psycopg.OperationalError):
        connection.execute("SELECT 1")
    assert Database(url).value("SELECT n FROM kept") == 1


def test_the_private_postgres_refuses_connections_while_down_and_takes_them_again_after(
    private_postgres: PrivatePostgres,
):
    url = private_postgres.create_database("smoke_down")

    with private_postgres.down_for(1), pytest.raises(psycopg.OperationalError):
        Database(url).value("SELECT 1")

    assert Database(url).value("SELECT 1") == 1


def test_restarting_the_private_redis_loses_the_message_of_a_queued_batch(app: App, private_redis: PrivateRedis):
    code, report, stderr = app.runbatch("--queue")
    assert code == 0, stderr
    assert report["status"] == "queued"
    assert private_redis.queued_messages() == 1

    private_redis.restart()

    assert private_redis.queued_messages() == 0
    with pytest.raises(AssertionError, match=f"batch {report['batch']} is still 'queued'"):
        check_invariants(app.database_url)


def test_killing_one_pool_process_leaves_the_worker_up_and_killing_the_worker_takes_down_every_process(app: App):
    worker = app.start_worker(concurrency=2)
    assert len(worker.pool_pids()) == 2

    victim = worker.kill_pool_child()

    wait_for(lambda: len(worker.pool_pids()) == 2 and victim not in worker.pool_pids(), timeout=30,
             what="the worker to replace its killed pool process")
    assert worker.process.poll() is None and gone(victim)
    pool = worker.pool_pids()

    worker.kill()

    assert worker.process.poll() is not None
    wait_for(lambda: all(gone(pid) for pid in pool), timeout=10, what="the pool processes to die")


INVALID_STATE = """
from decimal import Decimal
from django.utils import timezone
from batches.models import Batch, CostLedgerEntry, Newsletter
from topics.models import Topic

first, second = Topic.objects.order_by("pk")[:2]
batch = Batch.objects.create(status="running", budget_usd=Decimal("1"), model="claude-sonnet-4-6")
drafted = Newsletter.objects.create(batch=batch, topic=first, status="generated", body_markdown="Body.",
                                    generated_at=timezone.now())
Newsletter.objects.create(batch=batch, topic=second, status="generating")
for n, status in enumerate(["settled", "settled", "reserved"], start=1):
    CostLedgerEntry.objects.create(idempotency_key=f"key-{n}", batch=batch, newsletter=drafted, status=status,
                                   reserved_usd=Decimal("0.6"), amount_usd=Decimal("0.6"), request_id=f"req_{n}")
print("made", batch.pk, drafted.pk)
"""


def test_the_invariant_checker_names_every_broken_invariant(app: App):
    made = app.manage("shell", "-c", INVALID_STATE)
    assert made.returncode == 0, made.stderr
    batch, drafted = made.stdout.split("made ")[-1].split()

    with pytest.raises(AssertionError) as caught:
        check_invariants(app.database_url, answers=[{"id": "msg_1", "request_id": "req_1"}])

    message = str(caught.value)
    for problem in [
        f"batch {batch} is still 'running'",
        "is still 'generating'",
        f"item {drafted} has 2 settled charges, not 1",
        f"item {drafted} shows a cost of 0.000000 but its ledger entries total 1.800000",
        "1 reservations left open",
        "charges for answers the API never gave: ['req_2']",
        f"batch {batch} spent 1.800000, over its budget of 1.000000",
    ]:
        assert problem in message


ABANDONED_RUN = """
import os, signal
from tests.faults.harness import PrivateRedis
server = PrivateRedis(port=0).start()
print(server.process.pid, server.root, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit handler runs: the server is left behind
"""


def test_the_next_run_stops_a_server_left_behind_by_a_run_that_was_killed():
    run = subprocess.run([sys.executable, "-c", ABANDONED_RUN], cwd=BASE_DIR, capture_output=True, text=True,
                         timeout=60, check=False)
    pid, root = run.stdout.split()
    assert not gone(int(pid))

    reap_orphans()

    assert gone(int(pid)) and not Path(root).exists()
