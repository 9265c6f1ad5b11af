"""Recovery after faults (issue 8): each scenario breaks something real -- the private PostgreSQL or Redis, a worker,
the API's answers -- while drafts are in flight, lets the sweeper and the workers recover, and ends with the
invariants of tests/faults/harness.py: every batch final, one draft and one charge per drafted item, every paid
answer kept, no open reservation but for calls of unknown outcome, spend within the budget.

Leases, timeouts and the sweeper's period are seconds here, not minutes, so each recovery takes seconds; the
sweeper runs every second in a process of its own instead of on beat's one-minute schedule.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from batches.claude_standin import FakeAnthropicServer, Fault
from tests.faults.harness import RECEIVED_TASK, App, PrivatePostgres, PrivateRedis, check_invariants

pytestmark = [pytest.mark.faults, pytest.mark.slow]

LATENCY = 1.5  # seconds per draft: long enough to hit calls in flight, well within the 3 s timeout
# The shortest lease the system checks allow with a 3 s call timeout and answers spooled after 1 s of failed
# writes (2 x 3 + 1 + 5 s); a waiting item or batch is published again after 3 s.
RECOVERY = {
    "ITEM_LEASE_SECONDS": "12",
    "ANTHROPIC_TIMEOUT_SECONDS": "3",
    "ANSWER_WRITE_RETRY_SECONDS": "1",
    "ANTHROPIC_MAX_RETRIES": "1",
    "SWEEP_STALE_SECONDS": "3",
}
# Calls of 3 s (and the lease the checks then ask for), where a fault must surely hit a call still in flight.
LONG_CALL_SECONDS = 3.0
LONG_CALLS = {"ANTHROPIC_TIMEOUT_SECONDS": "5", "ITEM_LEASE_SECONDS": "16"}
BATCH_SIZE = "4"  # enough to keep every pool process busy when the fault hits
RECOVERY_SECONDS = 90  # bound on any one recovery; a healthy one takes a fraction of it


@pytest.fixture
def slow_api(fake_api: FakeAnthropicServer) -> FakeAnthropicServer:
    fake_api.latency = LATENCY
    return fake_api


@pytest.fixture
def recovering(app: App) -> App:
    app.settings.update(RECOVERY)
    return app


def test_a_postgres_restart_during_in_flight_calls_keeps_every_paid_draft_and_strands_no_batch(
    recovering: App, slow_api: FakeAnthropicServer, private_postgres: PrivatePostgres
):
    follower = recovering.follow_batch("--size", BATCH_SIZE)
    recovering.start_worker(concurrency=4)
    recovering.start_sweeper()
    recovering.in_flight(2)

    private_postgres.restart(mode="fast")

    code, report, stderr = recovering.outcome(follower, timeout=RECOVERY_SECONDS)
    assert code == 0 and report["status"] == "done", (stderr, recovering.logs())
    check_invariants(recovering.database_url, answers=slow_api.answers, spool=recovering.spool_dir)


def test_postgres_down_for_15_seconds_during_in_flight_calls_keeps_every_paid_draft_and_the_follower_rides_it_out(
    recovering: App, fake_api: FakeAnthropicServer, private_postgres: PrivatePostgres
):
    # Calls of 3 s, so that answers arrive while the database is away: their writes are retried for 1 s, then
    # spooled and replayed. The lease outlives the outage, as the default lease (minutes) does.
    fake_api.latency = LONG_CALL_SECONDS
    recovering.settings.update(LONG_CALLS, ITEM_LEASE_SECONDS="25")
    follower = recovering.follow_batch("--size", BATCH_SIZE)
    recovering.start_worker(concurrency=4)
    recovering.start_sweeper()  # as beat would, right through the outage
    recovering.in_flight(2)

    with private_postgres.down_for(15):
        answered_before = len(fake_api.answers)
        time.sleep(5)
        answered_while_down = len(fake_api.answers) - answered_before

    code, report, stderr = recovering.outcome(follower, timeout=RECOVERY_SECONDS)
    assert code == 0 and report["status"] == "done", (stderr, recovering.logs())
    assert "Traceback" not in stderr
    assert answered_while_down >= 1, "no answer arrived while the database was down"
    check_invariants(recovering.database_url, answers=fake_api.answers, spool=recovering.spool_dir)


def test_a_redis_restart_that_loses_queued_messages_strands_no_batch(
    recovering: App, slow_api: FakeAnthropicServer, private_redis: PrivateRedis
):
    code, report, stderr = recovering.runbatch("--queue", "--size", "3")  # no worker yet: it waits in Redis
    assert code == 0, stderr
    assert private_redis.queued_messages() == 1

    private_redis.restart()  # the batch's message is gone: it would stay queued for ever

    worker = recovering.start_worker(concurrency=1)
    recovering.start_sweeper()
    recovering.in_flight(1)  # published again; its first item is being drafted, the other two wait in line
    assert private_redis.queued_messages() >= 1

    private_redis.restart()  # their messages are gone too (and the one the worker holds)

    recovering.wait_until_final(timeout=RECOVERY_SECONDS)
    assert recovering.db.batch_statuses() == {report["batch"]: "done"}, worker.log
    check_invariants(recovering.database_url, answers=slow_api.answers)


def test_a_pool_process_killed_mid_call_has_its_item_drafted_once_after_its_lease(
    recovering: App, slow_api: FakeAnthropicServer
):
    recovering.settings.update(LONG_CALLS)
    slow_api.latency = LONG_CALL_SECONDS  # the pool process killed is still waiting for its answer
    follower = recovering.follow_batch("--size", BATCH_SIZE)
    recovering.start_sweeper()
    worker = recovering.start_worker(concurrency=2)
    recovering.in_flight(2)  # both pool processes are drafting

    worker.kill_pool_child()
    unknown = recovering.db.open_reservations()

    code, report, stderr = recovering.outcome(follower, timeout=RECOVERY_SECONDS)
    assert code == 0 and report["status"] == "done", (stderr, recovering.logs())
    outcome = check_invariants(recovering.database_url, answers=slow_api.answers, unknown=unknown)
    assert len(outcome.open_reservations) == 1, "the killed pool process's call is the one of unknown outcome"


def test_a_whole_worker_killed_mid_batch_has_its_items_taken_back_by_the_sweeper(
    recovering: App, slow_api: FakeAnthropicServer
):
    recovering.settings.update(LONG_CALLS)
    slow_api.latency = LONG_CALL_SECONDS
    follower = recovering.follow_batch("--size", BATCH_SIZE)
    recovering.start_sweeper()
    doomed = recovering.start_worker(concurrency=2)
    recovering.in_flight(2)

    doomed.kill()
    unknown = recovering.db.open_reservations()
    recovering.start_worker(concurrency=2)

    code, report, stderr = recovering.outcome(follower, timeout=RECOVERY_SECONDS)
    assert code == 0 and report["status"] == "done", (stderr, recovering.logs())
    outcome = check_invariants(recovering.database_url, answers=slow_api.answers, unknown=unknown)
    assert outcome.open_reservations, "the killed calls stay reserved, their outcome unknown"


def test_a_nul_byte_in_an_answer_is_cleaned_and_the_paid_draft_kept(recovering: App, fake_api: FakeAnthropicServer):
    fake_api.enqueue(Fault(kind="nul_body"))

    code, report, stderr = recovering.runbatch("--size", "2")

    assert code == 0 and report["status"] == "done", stderr
    assert "\x00" not in json.dumps(report) and "\\u0000" not in json.dumps(report)
    check_invariants(recovering.database_url, answers=fake_api.answers)


def test_a_call_longer_than_the_visibility_timeout_is_drafted_and_charged_once(
    recovering: App, fake_api: FakeAnthropicServer, private_redis: PrivateRedis
):
    # Workers refuse to start with a visibility timeout shorter than their time limit (batches.E001); but one
    # deployed elsewhere with a shorter one would still hand out again the messages of calls that are still
    # running. That is what redeliver_unacknowledged does, with kombu's own code, once the calls are 1 s old.
    fake_api.latency = 4.0
    slow_calls = {"ANTHROPIC_TIMEOUT_SECONDS": "6", "ITEM_LEASE_SECONDS": "18"}
    follower = recovering.follow_batch("--size", "2", **slow_calls)
    worker = recovering.start_worker(concurrency=4, **slow_calls)
    recovering.in_flight(2)
    time.sleep(1.1)

    assert private_redis.redeliver_unacknowledged(visibility_timeout=1) == 2

    code, report, stderr = recovering.outcome(follower, timeout=RECOVERY_SECONDS)
    assert code == 0 and report["status"] == "done", (stderr, recovering.logs())
    received = Counter(RECEIVED_TASK.findall(worker.log))
    assert sorted(received.values()) == [2, 2], "each message was handed out twice"
    assert fake_api.message_calls == 2
    check_invariants(recovering.database_url, answers=fake_api.answers)


UNREADABLE = ["not_utf8", "html", "empty", "not_json"]


def first_call_of_each_item_unreadable(fake: FakeAnthropicServer, shapes: list[str]) -> None:
    """The first call for each of the first len(shapes) items answers the next unreadable shape; retries (and
    every other call) answer normally. Items are told apart by their prompt."""
    lock = threading.Lock()
    shape_of: dict[str, str] = {}
    answered: set[str] = set()

    def first_call_gets(shape: str):
        def predicate(body: dict) -> bool:
            item = json.dumps(body.get("messages"), sort_keys=True)
            with lock:
                if item not in shape_of and len(shape_of) < len(shapes):
                    shape_of[item] = shapes[len(shape_of)]
                if shape_of.get(item) != shape or item in answered:
                    return False
                answered.add(item)
                return True
        return predicate

    for shape in shapes:
        fake.add_rule(first_call_gets(shape), Fault(kind="unreadable", message=shape))


def test_every_unreadable_answer_shape_is_retried_with_its_reservation_kept(
    recovering: App, fake_api: FakeAnthropicServer
):
    first_call_of_each_item_unreadable(fake_api, UNREADABLE)

    code, report, stderr = recovering.runbatch("--size", str(len(UNREADABLE)))

    assert code == 0 and report["status"] == "done", stderr
    assert "Traceback" not in stderr
    assert fake_api.message_calls == 2 * len(UNREADABLE)  # each item: one unreadable answer, then its draft
    # The unreadable answers may have been billed: their reservations stay, one per item.
    outcome = check_invariants(recovering.database_url, answers=fake_api.answers, unknown=len(UNREADABLE))
    assert len(outcome.open_reservations) == len(UNREADABLE)
    per_item = recovering.db.rows(
        "SELECT newsletter_id, count(*) FROM batches_costledgerentry WHERE status = 'reserved' GROUP BY 1")
    assert sorted(n for _, n in per_item) == [1] * len(UNREADABLE)


def test_an_item_whose_every_answer_is_unreadable_fails_in_plain_words(
    recovering: App, fake_api: FakeAnthropicServer
):
    fake_api.enqueue(*(Fault(kind="unreadable", message=shape) for shape in UNREADABLE))

    code, report, stderr = recovering.runbatch("--size", "1", ANTHROPIC_MAX_RETRIES="3")

    assert code == 4 and report["items"][0]["status"] == "failed", stderr
    assert "Traceback" not in stderr
    error = recovering.db.value("SELECT error FROM batches_newsletter")
    assert "readable answer" in error and "Traceback" not in error
    check_invariants(recovering.database_url, answers=fake_api.answers, unknown=4)


LIST_AND_DRY_RUN = """
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
editor = get_user_model().objects.create_superuser("faults-editor", "editor@example.com", "x")
client = Client()
client.force_login(editor)
print("topic list", client.get("/admin/topics/topic/").status_code)
call_command("runbatch", "--dry-run", "--json")
"""


def test_an_import_with_poison_dates_is_refused_and_the_topic_list_still_works(recovering: App, tmp_path):
    # PostgreSQL stores these, shifted to UTC, beyond what Python's datetime can read back (years 10000 and 0).
    poison = tmp_path / "poison.csv"
    poison.write_text(
        "title,status,published_at\n"
        "A story from the end of time,approved,9999-12-31T23:59:59-12:00\n"
        "A story from before the calendar,approved,0001-01-01T00:00:00+14:00\n"
    )

    imported = recovering.manage("import_topics", str(poison))

    assert imported.returncode == 1
    errors = imported.stderr.lower()
    assert "row 2" in errors and "row 3" in errors and "published_at" in errors
    after = recovering.manage("shell", "-c", LIST_AND_DRY_RUN, ALLOWED_HOSTS="testserver")
    assert after.returncode == 0 and "topic list 200" in after.stdout, after.stderr
    assert json.loads(after.stdout.splitlines()[-1])["dry_run"] is True
    check_invariants(recovering.database_url)
