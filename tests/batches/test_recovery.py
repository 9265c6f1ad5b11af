"""Recovery without SQL: leases, the sweeper, the answer spool, resume from any state, money at the edges.

Drafting runs against the loopback Anthropic API; the broker is real Redis where a task is published. Faults on real
PostgreSQL and Redis servers (restarts, outages) are in tests/faults/.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.checks import run_checks
from django.db import OperationalError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from batches import generation, ledger, running, spool
from batches.generation import claim, generate_newsletter
from batches.models import Batch, CostLedgerEntry, Newsletter
from batches.sweeper import sweep
from batches.tasks import generate_newsletter_task, run_batch
from batches.claude_standin import UNREADABLE_BODIES, Fault

pytestmark = pytest.mark.django_db


def started_batch(*, size: int = 1, budget: str = "40") -> Batch:
    batch = running.create_batch(size=size, budget_usd=Decimal(budget))
    return running.start_batch(batch_id=batch.pk)


def entries_of(newsletter: Newsletter) -> list[str]:
    return list(CostLedgerEntry.objects.filter(newsletter=newsletter).order_by("pk").values_list("status", flat=True))


def expire_lease(newsletter: Newsletter) -> None:
    Newsletter.objects.filter(pk=newsletter.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


@pytest.fixture
def published(monkeypatch) -> dict[str, list[int]]:
    """What the sweeper hands to the broker (the worker tests cover the real broker end to end)."""
    sent: dict[str, list[int]] = {"items": [], "batches": []}
    monkeypatch.setattr(generate_newsletter_task, "apply_async", lambda args, **kw: sent["items"].append(args[0]))
    monkeypatch.setattr(run_batch, "apply_async", lambda args, **kw: sent["batches"].append(args[0]))
    return sent


# --- the lease -------------------------------------------------------------------------------------


def test_a_claimed_item_carries_a_lease_of_item_lease_seconds(topics_in_every_category, settings):
    settings.ITEM_LEASE_SECONDS = 300
    item = started_batch().newsletters.get()
    before = timezone.now()

    claimed = claim(newsletter_id=item.pk, token="a")

    assert claimed.status == Newsletter.Status.GENERATING
    assert timedelta(seconds=299) < claimed.lease_expires_at - before < timedelta(seconds=301)


def test_the_default_lease_outlives_every_attempt_and_ends_before_the_hard_time_limit(settings):
    attempts = settings.ANTHROPIC_MAX_RETRIES + 1
    longest_calls = settings.ANTHROPIC_TIMEOUT_SECONDS * (attempts + 1)  # a token count and every attempt
    assert settings.ITEM_LEASE_SECONDS > longest_calls + settings.ANSWER_WRITE_RETRY_SECONDS
    assert settings.ITEM_LEASE_SECONDS < settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT


def test_a_finished_item_gives_its_lease_back(fake_anthropic, topics_in_every_category):
    item = started_batch().newsletters.get()

    generate_newsletter(newsletter_id=item.pk, token="t")

    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATED and item.lease_expires_at is None


# --- system checks ---------------------------------------------------------------------------------


def check_ids() -> set[str]:
    return {message.id for message in run_checks() if message.id.startswith("batches.")}


def test_start_up_refuses_a_visibility_timeout_shorter_than_the_task_time_limit(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": settings.CELERY_TASK_TIME_LIMIT - 1}
    assert "batches.E001" in check_ids()
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": settings.CELERY_TASK_TIME_LIMIT}
    assert "batches.E001" not in check_ids()


def test_start_up_refuses_a_lease_that_outlasts_the_task_time_limit(settings):
    settings.ITEM_LEASE_SECONDS = settings.CELERY_TASK_TIME_LIMIT
    assert "batches.E002" in check_ids()


def test_start_up_refuses_a_lease_too_short_for_one_call(settings):
    settings.ITEM_LEASE_SECONDS = int(settings.ANTHROPIC_TIMEOUT_SECONDS)
    assert "batches.E004" in check_ids()


# --- the sweeper -----------------------------------------------------------------------------------


def test_the_sweeper_is_a_beat_schedule_that_runs_every_minute():
    task = PeriodicTask.objects.get(task="batches.sweep")
    assert task.enabled and task.interval.every == 60 and task.interval.period == "seconds"
    assert PeriodicTask.objects.filter(task="topics.discover", crontab__isnull=False).exists()


def test_the_sweeper_puts_an_item_whose_lease_expired_back_in_line_and_keeps_its_reservation(
    topics_in_every_category, published
):
    item = started_batch().newsletters.get()
    claim(newsletter_id=item.pk, token="dead-worker")
    ledger.reserve(idempotency_key="killed-call", worst_case_usd=Decimal("0.05"), batch_id=item.batch_id,
                   newsletter_id=item.pk)
    expire_lease(item)

    report = sweep()

    item.refresh_from_db()
    assert (report.requeued_items, item.status, item.interruptions) == (1, Newsletter.Status.PENDING, 1)
    assert published["items"] == [item.pk]
    assert entries_of(item) == ["reserved"]  # the killed call's outcome is unknown: it stays spent


def test_the_sweeper_leaves_an_item_alone_while_its_lease_runs(topics_in_every_category, published):
    item = started_batch().newsletters.get()
    claim(newsletter_id=item.pk, token="slow-call")

    report = sweep()

    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATING and report.requeued_items == 0
    assert published["items"] == []


def test_an_item_interrupted_too_often_fails_with_a_plain_reason(topics_in_every_category, published, settings):
    settings.ITEM_MAX_CLAIMS = 2
    item = started_batch().newsletters.get()
    for _ in range(2):
        claim(newsletter_id=item.pk, token="dies")
        expire_lease(item)
        sweep()

    item.refresh_from_db()
    assert item.status == Newsletter.Status.FAILED and "interrupted 2 times" in item.error
    assert published["items"] == [item.pk]  # once after the first interruption, not after the second
    assert Batch.objects.get(pk=item.batch_id).is_finished
    assert item.topic.usage == "unused"  # its topic is offered again, as after any failed item


def test_a_waiting_item_whose_message_was_lost_is_published_again_once(topics_in_every_category, published, settings):
    settings.SWEEP_STALE_SECONDS = 60
    item = started_batch().newsletters.get()
    Newsletter.objects.filter(pk=item.pk).update(queued_at=timezone.now() - timedelta(seconds=61))

    first, second = sweep(), sweep()

    assert (first.republished_items, second.republished_items) == (1, 0)
    assert published["items"] == [item.pk]


def test_a_queued_batch_nothing_picked_up_is_published_again(topics_in_every_category, published, settings):
    settings.SWEEP_STALE_SECONDS = 60
    batch = running.create_batch(size=2, budget_usd=Decimal("40"))
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.QUEUED,
                                             queued_at=timezone.now() - timedelta(seconds=61))

    assert sweep().republished_batches == 1
    assert sweep().republished_batches == 0
    assert published["batches"] == [batch.pk]


def test_a_running_batch_that_died_before_creating_its_items_is_queued_again(
    topics_in_every_category, published, settings
):
    settings.SWEEP_STALE_SECONDS = 60
    batch = running.create_batch(size=2, budget_usd=Decimal("40"))
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.RUNNING,
                                             started_at=timezone.now() - timedelta(seconds=61))

    sweep()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.QUEUED and published["batches"] == [batch.pk]
    running.start_batch(batch_id=batch.pk)  # the republished task selects as the first would have
    assert batch.newsletters.count() == 2


def test_the_sweeper_closes_a_batch_whose_items_all_ended(topics_in_every_category, published):
    batch = started_batch(size=2)
    batch.newsletters.update(status=Newsletter.Status.GENERATED)

    assert sweep().closed_batches == 1
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert sweep().closed_batches == 0


def test_the_sweep_command_prints_what_it_did_as_json(topics_in_every_category, published, capsys):
    from django.core.management import call_command

    item = started_batch().newsletters.get()
    claim(newsletter_id=item.pk, token="dead")
    expire_lease(item)

    call_command("sweep", "--json")

    assert json.loads(capsys.readouterr().out)["requeued_items"] == 1


# --- a paid answer is never thrown away ------------------------------------------------------------


def test_an_answer_that_cannot_be_written_is_spooled_and_the_sweeper_writes_it(
    fake_anthropic, topics_in_every_category, settings, tmp_path, monkeypatch, published
):
    settings.ANSWER_SPOOL_DIR = tmp_path / "spool"
    settings.ANSWER_WRITE_RETRY_SECONDS = 0.2
    item = started_batch().newsletters.get()
    real_write = generation.write_answer

    def database_down(record):
        raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")

    monkeypatch.setattr(generation, "write_answer", database_down)
    status = generate_newsletter(newsletter_id=item.pk, token="t", sleep=lambda s: None)
    monkeypatch.setattr(generation, "write_answer", real_write)

    assert status == Newsletter.Status.GENERATING and len(spool.pending()) == 1
    assert entries_of(item) == ["reserved"]

    assert sweep().replayed == 1

    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATED and item.subject
    assert entries_of(item) == ["settled"] and spool.pending() == []
    assert fake_anthropic.message_calls == 1  # the draft that was paid for is the one kept
    assert sweep().replayed == 0


def test_replaying_the_same_spooled_answer_twice_settles_it_once(
    fake_anthropic, topics_in_every_category, settings, tmp_path, monkeypatch
):
    settings.ANSWER_SPOOL_DIR = tmp_path / "spool"
    item = started_batch().newsletters.get()
    records = []
    monkeypatch.setattr(generation, "_write_answer_durably", lambda record, sleep: records.append(record) or "x")
    generate_newsletter(newsletter_id=item.pk, token="t")

    generation.write_answer(records[0])
    generation.write_answer(records[0])

    assert entries_of(item) == ["settled"]
    assert CostLedgerEntry.objects.get(newsletter=item).amount_usd == Decimal(records[0]["actual_usd"])


def test_an_answer_with_nul_bytes_is_cleaned_and_saved(fake_anthropic, topics_in_every_category, runbatch):
    fake_anthropic.enqueue(Fault(kind="nul_body"))

    result = runbatch("--size", "1")

    assert (result.returncode, result.report["status"]) == (0, "done")
    item = Newsletter.objects.get(batch_id=result.report["batch"])
    assert item.status == Newsletter.Status.GENERATED
    assert "\x00" not in item.subject + item.preview_text + item.body_markdown and "and" in item.body_markdown


# --- money at the edges ----------------------------------------------------------------------------


def test_the_reservation_keeps_a_safety_margin_over_the_counted_tokens(fake_anthropic, topics_in_every_category):
    item = started_batch().newsletters.get()

    generate_newsletter(newsletter_id=item.pk, token="t")

    entry = CostLedgerEntry.objects.get(newsletter=item)
    counted = [r for r in fake_anthropic.requests if r["path"].endswith("count_tokens")]
    assert len(counted) == 1
    assert entry.reserved_usd > entry.amount_usd


def test_an_answer_without_usage_is_settled_at_its_reservation_and_marked(fake_anthropic, topics_in_every_category):
    fake_anthropic.enqueue(Fault(kind="no_usage"))
    item = started_batch().newsletters.get()

    assert generate_newsletter(newsletter_id=item.pk, token="t") == Newsletter.Status.GENERATED

    entry = CostLedgerEntry.objects.get(newsletter=item)
    assert entry.status == "settled" and entry.note == CostLedgerEntry.Note.USAGE_MISSING
    assert entry.amount_usd == entry.reserved_usd > 0


def test_usage_above_the_reservation_is_recorded_and_stops_the_batch_as_an_overrun(
    fake_anthropic, topics_in_every_category, runbatch
):
    fake_anthropic.enqueue(Fault(kind="over_usage", seconds=100))  # a hundred times the uncached input counted

    result = runbatch("--size", "3")

    assert (result.returncode, result.report["status"]) == (3, "budget_exhausted")
    batch = Batch.objects.get(pk=result.report["batch"])
    overrun = CostLedgerEntry.objects.get(batch=batch, note=CostLedgerEntry.Note.OVERRUN)
    assert overrun.amount_usd > overrun.reserved_usd
    assert batch.overrun_usd == overrun.amount_usd - overrun.reserved_usd
    assert "more than was reserved" in batch.status_reason
    assert Counter(batch.newsletters.values_list("status", flat=True)) == {"generated": 1, "skipped_budget": 2}
    assert fake_anthropic.message_calls == 1


def test_a_batch_resumed_after_an_overrun_that_then_drafts_everything_ends_done(
    fake_anthropic, topics_in_every_category, runbatch
):
    fake_anthropic.enqueue(Fault(kind="over_usage", seconds=100))
    first = runbatch("--size", "3")
    assert (first.returncode, first.report["status"]) == (3, "budget_exhausted")

    resumed = runbatch("--resume", str(first.report["batch"]))

    batch = Batch.objects.get(pk=first.report["batch"])
    assert Counter(batch.newsletters.values_list("status", flat=True)) == {"generated": 3}
    assert (resumed.returncode, batch.status) == (0, Batch.Status.DONE), batch.status_reason
    assert batch.overrun_usd > 0  # the overrun stays on record; it no longer says why the batch stopped


@pytest.mark.parametrize("shape", sorted(UNREADABLE_BODIES))
def test_an_unreadable_answer_is_retried_and_its_reservation_kept(fake_anthropic, topics_in_every_category, shape):
    fake_anthropic.enqueue(Fault(kind="unreadable", message=shape))
    item = started_batch().newsletters.get()

    status = generate_newsletter(newsletter_id=item.pk, token="t", sleep=lambda seconds: None)

    assert status == Newsletter.Status.GENERATED
    assert entries_of(item) == ["reserved", "settled"]  # the garbled answer may have been billed


def test_answers_that_stay_unreadable_fail_the_item_in_plain_words(fake_anthropic, topics_in_every_category, settings):
    fake_anthropic.enqueue(*[Fault(kind="unreadable", message="html")] * (settings.ANTHROPIC_MAX_RETRIES + 1))
    item = started_batch().newsletters.get()

    generate_newsletter(newsletter_id=item.pk, token="t", sleep=lambda seconds: None)

    item.refresh_from_db()
    assert item.status == Newsletter.Status.FAILED and "not a readable answer" in item.error
    assert set(entries_of(item)) == {"reserved"}
    from batches.progress import explain_error

    assert "garbled" in explain_error(status=item.status, error=item.error)


# --- resume from any state -------------------------------------------------------------------------


def test_a_running_batch_with_interrupted_items_resumes_without_drafting_a_draft_again(
    fake_anthropic, topics_in_every_category, runbatch
):
    batch = started_batch(size=3)
    drafted, interrupted, waiting = batch.newsletters.order_by("position")
    generate_newsletter(newsletter_id=drafted.pk, token="first-worker")
    claim(newsletter_id=interrupted.pk, token="killed-worker")
    expire_lease(interrupted)
    drafted.refresh_from_db()
    calls_before = fake_anthropic.message_calls

    result = runbatch("--resume", str(batch.pk))

    assert (result.returncode, result.report["status"]) == (0, "done")
    assert fake_anthropic.message_calls == calls_before + 2
    assert Counter(Newsletter.objects.filter(batch=batch).values_list("status", flat=True)) == {"generated": 3}
    kept = Newsletter.objects.get(pk=drafted.pk)
    assert (kept.subject, kept.generated_at) == (drafted.subject, drafted.generated_at)
    assert entries_of(drafted) == ["settled"]


def test_resume_refuses_a_batch_with_an_item_still_being_drafted(fake_anthropic, topics_in_every_category, runbatch):
    batch = started_batch(size=2)
    claim(newsletter_id=batch.newsletters.first().pk, token="busy")

    result = runbatch("--resume", str(batch.pk))

    assert result.returncode == 1 and "being drafted right now" in result.error


def test_resume_of_an_unknown_batch_is_one_clear_error(runbatch, db):
    result = runbatch("--resume", "999999")

    assert result.returncode == 1 and "no batch #999999" in result.error


def test_an_editor_can_ask_for_a_new_draft_of_an_interrupted_item(topics_in_every_category, published):
    from batches.review import request_regeneration

    item = started_batch().newsletters.get()
    claim(newsletter_id=item.pk, token="dead")
    expire_lease(item)

    request_regeneration(newsletter=item)

    item.refresh_from_db()
    assert item.status == Newsletter.Status.PENDING and item.lease_expires_at is None


def finished(batch: Batch) -> Newsletter:
    """The batch's one item drafted and the batch closed, as after a run."""
    item = batch.newsletters.get()
    Newsletter.objects.filter(pk=item.pk).update(status=Newsletter.Status.GENERATED, subject="s", body_markdown="b")
    running.finalize_batch(batch_id=batch.pk)
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.DONE
    return item


def test_a_new_draft_asked_for_in_a_finished_batch_whose_message_was_lost_is_published_again(
    topics_in_every_category, published, settings, monkeypatch
):
    from batches.review import request_regeneration

    settings.SWEEP_STALE_SECONDS = 60
    item = finished(started_batch())
    request_regeneration(newsletter=item)
    published["items"].clear()  # the broker lost it
    Newsletter.objects.filter(pk=item.pk).update(queued_at=timezone.now() - timedelta(seconds=600))

    report = sweep()

    assert published["items"] == [item.pk]
    assert report.republished_items == 1


def test_a_new_draft_asked_for_in_a_finished_economy_batch_is_drafted(
    fake_anthropic, topics_in_every_category, monkeypatch, django_capture_on_commit_callbacks
):
    from batches.review import request_regeneration

    monkeypatch.setattr(run_batch, "apply_async", lambda args, **kw: None)
    batch = running.create_batch(size=1, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY)
    item = finished(running.start_batch(batch_id=batch.pk))
    monkeypatch.setattr(generate_newsletter_task, "apply_async",
                        lambda args, **kw: generate_newsletter_task.apply(args=args))

    with django_capture_on_commit_callbacks(execute=True):
        request_regeneration(newsletter=item)

    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATED and item.subject != "s"
    assert fake_anthropic.message_calls == 1


def test_a_new_draft_is_refused_while_an_economy_batch_is_still_with_the_batch_service(
    topics_in_every_category, monkeypatch
):
    from batches.review import ReviewRefused, request_regeneration

    monkeypatch.setattr(run_batch, "apply_async", lambda args, **kw: None)
    batch = running.start_batch(batch_id=running.create_batch(
        size=1, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY).pk)
    item = batch.newsletters.get()
    Newsletter.objects.filter(pk=item.pk).update(status=Newsletter.Status.FAILED, error="x")

    with pytest.raises(ReviewRefused, match="still with Anthropic's batch service"):
        request_regeneration(newsletter=item)

    assert Newsletter.objects.get(pk=item.pk).status == Newsletter.Status.FAILED


# --- followers that end ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("migration_data")
def test_waiting_for_a_batch_no_worker_takes_ends_with_one_line_and_exit_1(
    fake_anthropic, topics_in_every_category, redis_url, settings, runbatch
):
    from tests.admin.conftest import celery_broker

    with celery_broker(settings, redis_url):
        result = runbatch("--queue", "--wait", "--timeout", "1")

    assert result.returncode == 1
    assert "Stopped following batch" in result.error and "--resume" in result.error
    assert result.report == {} or result.report.get("status") == "error"
