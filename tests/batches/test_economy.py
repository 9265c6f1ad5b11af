"""Economy batches: one Message Batch per batch at the batch price, inside the same hard budget (batches/economy.py),
against the loopback fake's Message Batches endpoints through the real SDK."""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from batches import economy, launching, ledger, running
from batches.generation import make_client, reservation_tokens
from batches.models import Batch, CostLedgerEntry, EconomyRequest, EconomySubmission, Newsletter
from batches.pricing import Usage, cost_of, price_for, worst_case_cost
from batches.sweeper import sweep
from batches.claude_standin import request_input_tokens
from batches.claude_standin_batches import batches_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(fake_anthropic, settings):
    """The fake's Message Batches side, with polls allowed back to back."""
    settings.ECONOMY_POLL_MIN_SECONDS = 0
    settings.ECONOMY_POLL_MAX_SECONDS = 0
    settings.ECONOMY_ABSENT_AFTER_SECONDS = 3600
    batches = batches_of(fake_anthropic)
    batches.processing_seconds = 0
    return batches


def economy_batch(*, size: int = 8, budget: str = "40") -> Batch:
    return running.create_batch(size=size, budget_usd=Decimal(budget), delivery=Batch.Delivery.ECONOMY)


def submitted(*, size: int = 8, budget: str = "40") -> Batch:
    return economy.submit(batch_id=economy_batch(size=size, budget=budget).pk)


def poll_to_the_end(batch: Batch, *, limit: int = 20) -> Batch:
    for _ in range(limit):
        economy.poll(batch_id=batch.pk, force=True)
        batch.refresh_from_db()
        if batch.is_finished:
            return batch
    pytest.fail(f"batch #{batch.pk} did not end after {limit} polls ({batch.status})")


def settled_per_item(batch: Batch) -> Counter:
    return Counter(CostLedgerEntry.objects.filter(batch=batch, status="settled").values_list("newsletter_id", flat=True))


def test_a_submitted_economy_batch_is_one_message_batch_with_a_request_per_item(api, topics_in_every_category):
    batch = submitted()

    assert batch.status == Batch.Status.SUBMITTED
    [sent] = api.created()
    assert api.calls["create"] == 1
    custom_ids = [custom_id for custom_id, _ in sent.requests]
    assert len(custom_ids) == 8 and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", c) for c in custom_ids)
    items = {economy.custom_id_for(n.pk): n for n in batch.newsletters.all()}
    assert set(custom_ids) == set(items)
    for _, params in sent.requests:
        assert params["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    submission = batch.economy
    assert submission.anthropic_batch_id == sent.id and submission.state == "submitted"
    assert set(EconomyRequest.objects.values_list("state", flat=True)) == {"submitted"}


def test_every_request_is_reserved_at_its_worst_case_batch_price_before_the_batch_is_created(
    api, topics_in_every_category
):
    batch = submitted()

    price = price_for(batch.model)
    max_tokens = django_settings.ANTHROPIC_MAX_TOKENS
    _, params = api.created()[0].requests[0]
    counted = reservation_tokens(request_input_tokens({k: v for k, v in params.items() if k != "max_tokens"}))
    expected = (Decimal(counted) * price.cache_write_1h_per_mtok + max_tokens * price.output_per_mtok) \
        / 1_000_000 * (1 - price.batch_discount)
    first = EconomyRequest.objects.get(custom_id=api.created()[0].requests[0][0])
    assert first.entry.reserved_usd == worst_case_cost(input_tokens=counted, max_tokens=max_tokens, price=price,
                                                       batch_api=True)
    assert abs(first.entry.reserved_usd - expected) < Decimal("0.000001")
    assert first.entry.idempotency_key == f"economy:{batch.pk}:{first.custom_id}"
    assert CostLedgerEntry.objects.filter(batch=batch, status="reserved").count() == 8


def test_an_ended_batch_is_collected_and_each_line_settled_once_at_the_batch_price(api, topics_in_every_category):
    batch = poll_to_the_end(submitted())

    assert batch.status == Batch.Status.DONE
    assert set(batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.GENERATED}
    assert all(count == 1 for count in settled_per_item(batch).values()) and len(settled_per_item(batch)) == 8
    price = price_for(batch.model)
    for entry in CostLedgerEntry.objects.filter(batch=batch):
        usage = Usage(input_tokens=entry.input_tokens, output_tokens=entry.output_tokens,
                      cache_read_tokens=entry.cache_read_tokens, cache_write_1h_tokens=entry.cache_write_tokens)
        assert entry.amount_usd == cost_of(usage=usage, price=price, batch_api=True)
        assert entry.amount_usd < entry.reserved_usd
    assert ledger.batch_spent(batch.pk) == sum(e.amount_usd for e in CostLedgerEntry.objects.filter(batch=batch))
    assert ledger.reconcile() == []


def test_polling_an_ended_batch_again_settles_nothing_twice(api, topics_in_every_category):
    batch = poll_to_the_end(submitted())
    before = list(CostLedgerEntry.objects.filter(batch=batch).values_list("pk", "amount_usd", "status"))

    submission = batch.economy
    economy.collect(submission_id=submission.pk, client=make_client())

    assert list(CostLedgerEntry.objects.filter(batch=batch).values_list("pk", "amount_usd", "status")) == before


def test_errored_expired_canceled_and_missing_lines_are_released_and_their_items_fail(api, topics_in_every_category):
    batch = economy_batch()
    running.start_batch(batch_id=batch.pk)
    ids = [economy.custom_id_for(n.pk) for n in batch.newsletters.order_by("position")]
    api.outcomes = {ids[0]: "errored", ids[1]: "expired", ids[2]: "canceled", ids[3]: "missing"}
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.PENDING)  # let submit select as usual
    batch = poll_to_the_end(economy.submit(batch_id=batch.pk))

    assert batch.status == Batch.Status.PARTIAL
    rows = {r.custom_id: r for r in EconomyRequest.objects.select_related("entry", "newsletter")}
    for custom_id, state in zip(ids[:4], ["errored", "expired", "canceled", "missing"]):
        row = rows[custom_id]
        assert row.state == state
        assert row.entry.status == "released" and row.entry.amount_usd == 0
        assert row.newsletter.status == Newsletter.Status.FAILED and "Resume the batch" in row.newsletter.error
    assert "invalid_request_error" in rows[ids[0]].newsletter.error
    assert {rows[c].state for c in ids[4:]} == {"succeeded"}
    assert ledger.reconcile() == []


def test_a_404_right_after_creation_is_retried_and_does_not_end_the_batch(api, topics_in_every_category):
    api.not_found_after_create = 2
    batch = submitted()

    assert economy.poll(batch_id=batch.pk, force=True) == "not_found"
    batch.refresh_from_db()
    assert batch.status == Batch.Status.SUBMITTED
    assert CostLedgerEntry.objects.filter(batch=batch, status="reserved").count() == 8
    assert poll_to_the_end(batch).status == Batch.Status.DONE


def test_a_404_on_the_results_after_the_end_is_retried(api, topics_in_every_category):
    api.not_found_results = 1
    batch = submitted()

    assert economy.poll(batch_id=batch.pk, force=True) == "not_found"
    assert poll_to_the_end(batch).status == Batch.Status.DONE
    assert len(settled_per_item(batch)) == 8


NOT_FOUND_FOR_EVER = 10**6


def reserved_total(batch: Batch) -> Decimal:
    return sum(CostLedgerEntry.objects.filter(batch=batch, status="reserved").values_list("amount_usd", flat=True),
               Decimal(0))


@pytest.fixture
def gone_after_an_hour(settings):
    settings.ECONOMY_GONE_AFTER_SECONDS = 3600


def poll_at(batch: Batch, start, **later: int) -> str:
    """One poll as if `later` (timedelta's keywords) had passed since `start`."""
    return economy.poll(batch_id=batch.pk, force=True, now=start + timedelta(**later))


@pytest.mark.parametrize("lost", ["the batch", "its results"])
def test_a_404_that_lasts_past_the_bound_gives_the_batch_up_and_keeps_every_reservation_as_spent(
    api, topics_in_every_category, gone_after_an_hour, lost
):
    if lost == "the batch":
        api.not_found_after_create = NOT_FOUND_FOR_EVER
    else:
        api.not_found_results = NOT_FOUND_FOR_EVER  # it ended, but its results cannot be had
    batch = submitted()
    held = reserved_total(batch)
    start = timezone.now()

    assert poll_at(batch, start) == "not_found"
    assert poll_at(batch, start, minutes=59) == "not_found"
    batch.refresh_from_db()
    assert batch.status == Batch.Status.SUBMITTED and reserved_total(batch) == held

    assert poll_at(batch, start, minutes=61) == "gone"

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FAILED
    assert "no longer knows the Message Batch" in batch.status_reason
    assert "reservations stay in the ledger as spent" in batch.status_reason
    assert batch.economy.state == EconomySubmission.State.GONE
    assert set(EconomyRequest.objects.values_list("state", flat=True)) == {EconomyRequest.State.UNKNOWN}
    # Nothing released, nothing settled: the requests may have been billed, so their worst cases stay counted.
    assert not settled_per_item(batch)
    assert CostLedgerEntry.objects.filter(batch=batch).exclude(status="reserved").count() == 0
    assert reserved_total(batch) == held == batch.spent_usd()
    for item in batch.newsletters.all():
        assert item.status == Newsletter.Status.FAILED
        assert "may still have been processed and billed" in item.error
        assert item.cost_usd > 0  # its kept reservation
    assert ledger.reconcile() == []
    # Given up for good: the periodic poll no longer asks about it, and there is nothing left to cancel.
    retrieves = api.calls["retrieve"]
    assert batch.pk not in economy.due_submissions(now=start + timedelta(days=2))
    assert economy.poll(batch_id=batch.pk, force=True) == EconomySubmission.State.GONE
    assert api.calls["retrieve"] == retrieves
    with pytest.raises(economy.NotCancelable):
        economy.cancel(batch_id=batch.pk)


def test_any_answer_between_two_404s_starts_the_bound_again(api, topics_in_every_category, gone_after_an_hour):
    api.processing_seconds = 86400
    api.not_found_after_create = 1
    batch = submitted()
    start = timezone.now()

    assert poll_at(batch, start) == "not_found"
    assert poll_at(batch, start, minutes=50) == "in_progress"
    assert EconomySubmission.objects.get(batch=batch).not_found_since is None
    [made] = api.created()
    made.not_found_left = NOT_FOUND_FOR_EVER

    assert poll_at(batch, start, hours=2) == "not_found"
    assert poll_at(batch, start, hours=2, minutes=59) == "not_found"
    assert poll_at(batch, start, hours=3, minutes=1) == "gone"


def test_a_create_that_timed_out_keeps_its_reservations_and_is_found_by_listing_never_sent_twice(
    api, topics_in_every_category, settings
):
    settings.ANTHROPIC_TIMEOUT_SECONDS = 0.5
    api.create_faults = ["timeout"]
    api.create_timeout_seconds = 2
    batch = submitted()

    submission = batch.economy
    assert submission.state == "creating" and submission.anthropic_batch_id is None
    assert CostLedgerEntry.objects.filter(batch=batch, status="reserved").count() == 8
    assert economy.poll(batch_id=batch.pk, force=True) == "found"
    assert api.calls["create"] == 1
    submission.refresh_from_db()
    assert submission.anthropic_batch_id == api.created()[0].id
    assert poll_to_the_end(batch).status == Batch.Status.DONE
    assert api.calls["create"] == 1 and len(settled_per_item(batch)) == 8


def test_a_create_whose_outcome_is_unknown_and_that_is_provably_absent_is_sent_again_once(
    api, topics_in_every_category, settings
):
    api.create_faults = ["error_500"]  # answered 500: outcome unknown, and in fact never created
    batch = submitted()
    assert batch.economy.state == "creating"
    assert economy.poll(batch_id=batch.pk, force=True) == "not_yet"  # too early to call it absent
    assert api.calls["create"] == 1

    settings.ECONOMY_ABSENT_AFTER_SECONDS = 0
    assert economy.poll(batch_id=batch.pk, force=True) == "absent"

    assert api.calls["create"] == 2 and len(api.created()) == 1
    assert poll_to_the_end(batch).status == Batch.Status.DONE
    assert len(settled_per_item(batch)) == 8


def test_a_create_refused_outright_releases_every_reservation_and_fails_the_items(api, topics_in_every_category):
    api.create_faults = ["error_400"]
    batch = submitted()

    assert batch.status == Batch.Status.FAILED
    assert set(CostLedgerEntry.objects.filter(batch=batch).values_list("status", flat=True)) == {"released"}
    assert ledger.batch_spent(batch.pk) == 0
    assert set(batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.FAILED}


def test_a_budget_that_fits_only_some_requests_submits_only_those(api, topics_in_every_category):
    probe = submitted(size=1)  # drafts one topic: seven are left
    worst = CostLedgerEntry.objects.get(batch=probe).reserved_usd
    poll_to_the_end(probe)

    batch = submitted(budget=str(worst * Decimal("3.5")))

    [_, sent] = api.created()
    assert len(sent.requests) == 3
    statuses = Counter(batch.newsletters.values_list("status", flat=True))
    assert statuses[Newsletter.Status.SKIPPED_BUDGET] == 4
    sent_ids = {c for c, _ in sent.requests}
    skipped = batch.newsletters.filter(status=Newsletter.Status.SKIPPED_BUDGET)
    assert not sent_ids & {economy.custom_id_for(n.pk) for n in skipped}
    batch = poll_to_the_end(batch)
    assert batch.status == Batch.Status.BUDGET_EXHAUSTED
    assert ledger.batch_spent(batch.pk) <= batch.budget_usd


def test_cancel_settles_requests_already_answered_and_releases_the_rest(api, topics_in_every_category):
    api.processing_seconds = 60
    api.finished_before_cancel = 3
    batch = submitted()

    economy.cancel(batch_id=batch.pk)
    batch = poll_to_the_end(batch)

    assert api.calls["cancel"] == 1
    states = Counter(EconomyRequest.objects.values_list("state", flat=True))
    assert states == {"succeeded": 3, "canceled": 5}
    assert Counter(CostLedgerEntry.objects.filter(batch=batch).values_list("status", flat=True)) == {
        "settled": 3, "released": 5}
    assert batch.status == Batch.Status.PARTIAL


def test_a_finished_batch_cannot_be_canceled(api, topics_in_every_category):
    batch = poll_to_the_end(submitted())

    with pytest.raises(economy.NotCancelable, match="already ended"):
        economy.cancel(batch_id=batch.pk)


def test_a_cancel_while_an_item_is_being_reserved_leaves_no_reservation_open(api, topics_in_every_category,
                                                                             monkeypatch):
    batch = economy_batch(size=3)
    gather = economy.gather_for_newsletter
    gathered = []

    def gather_while_the_editor_cancels(*, newsletter):
        gathered.append(newsletter.pk)
        if len(gathered) == 2:
            economy.cancel(batch_id=batch.pk)
        return gather(newsletter=newsletter)

    monkeypatch.setattr(economy, "gather_for_newsletter", gather_while_the_editor_cancels)
    batch = economy.submit(batch_id=batch.pk)

    assert api.calls.get("create", 0) == 0
    assert list(CostLedgerEntry.objects.filter(batch=batch, status="reserved")) == []
    assert ledger.batch_spent(batch.pk) == 0
    assert list(EconomyRequest.objects.values_list("state", flat=True)) == ["not_sent"]
    assert batch.status == Batch.Status.FAILED
    assert set(batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.FAILED}
    assert economy.progress(batch_id=batch.pk).state == EconomySubmission.State.NOT_CREATED


def test_a_reservation_another_run_recorded_is_kept_when_this_run_finds_the_item_taken(api, topics_in_every_category,
                                                                                      monkeypatch):
    batch = economy_batch(size=1)
    submission = EconomySubmission.objects.create(batch=batch)
    gather = economy.gather_for_newsletter

    def gather_while_another_run_records_the_item(*, newsletter):
        monkeypatch.setattr(economy, "gather_for_newsletter", gather)
        economy._reserve_all(submission=submission, client=make_client(), sleep=lambda s: None)
        return gather(newsletter=newsletter)

    running.start_batch(batch_id=batch.pk)
    monkeypatch.setattr(economy, "gather_for_newsletter", gather_while_another_run_records_the_item)
    economy._reserve_all(submission=submission, client=make_client(), sleep=lambda s: None)

    [request] = EconomyRequest.objects.all()
    assert request.state == "reserved" and request.entry.status == "reserved"
    assert CostLedgerEntry.objects.count() == 1


def test_a_poller_killed_while_settling_is_finished_by_the_next_poll_with_one_settlement_per_line(
    api, topics_in_every_category, monkeypatch
):
    batch = submitted()
    real = economy.settle_line
    calls = {"n": 0}

    def dies_after_three(**kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise SystemExit("worker killed")  # what a SIGKILL leaves: three lines done, the rest untouched
        return real(**kwargs)

    monkeypatch.setattr(economy, "settle_line", dies_after_three)
    with pytest.raises(SystemExit):
        economy.poll(batch_id=batch.pk, force=True)
    assert len(settled_per_item(batch)) + CostLedgerEntry.objects.filter(batch=batch, status="released").count() == 3
    monkeypatch.setattr(economy, "settle_line", real)

    batch = poll_to_the_end(batch)

    assert batch.status == Batch.Status.DONE
    assert sorted(settled_per_item(batch).values()) == [1] * 8
    assert ledger.reconcile() == []


def test_the_sweeper_never_publishes_an_economy_item_as_a_now_item(api, topics_in_every_category, settings,
                                                                    monkeypatch):
    settings.SWEEP_STALE_SECONDS = 0
    published = []
    monkeypatch.setattr("batches.sweeper._publish_item", lambda pk, report: published.append(pk))
    batch = economy_batch()
    running.start_batch(batch_id=batch.pk)  # selected, not yet reserved: items pending in a running batch

    sweep()
    submitted_batch = economy.submit(batch_id=batch.pk)
    sweep()

    assert published == []
    assert submitted_batch.status == Batch.Status.SUBMITTED
    assert set(submitted_batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.GENERATING}
    assert api.server.message_calls == 0


def test_a_stray_drafting_task_for_an_economy_item_does_not_draft_it_now(api, topics_in_every_category):
    from batches.tasks import generate_newsletter_task

    batch = submitted()
    item = batch.newsletters.first()

    generate_newsletter_task.apply(args=[item.pk])

    assert api.server.message_calls == 0
    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATING


def test_an_economy_batch_with_open_requests_cannot_be_resumed(api, topics_in_every_category):
    batch = submitted()

    with pytest.raises(running.NotResumable):
        running.resume_batch(batch=batch)
    assert "being drafted right now" in launching.why_not_resumable(batch)


def test_a_failed_economy_item_can_be_resumed_now(api, topics_in_every_category):
    batch = economy_batch()
    running.start_batch(batch_id=batch.pk)
    first = batch.newsletters.order_by("position").first()
    api.outcomes = {economy.custom_id_for(first.pk): "expired"}
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.PENDING)
    batch = poll_to_the_end(economy.submit(batch_id=batch.pk))
    assert batch.status == Batch.Status.PARTIAL

    batch = running.run_inline(batch=running.resume_batch(batch=batch))

    assert batch.status == Batch.Status.DONE and batch.delivery == Batch.Delivery.NOW
    assert api.server.message_calls == 1  # only the expired item, drafted now
    assert settled_per_item(batch)[first.pk] == 1


def test_runbatch_economy_returns_with_the_batch_submitted(api, topics_in_every_category, runbatch):
    result = runbatch("--economy")

    assert result.returncode == 0, result.error
    assert result.report["status"] == "submitted"
    assert {item["status"] for item in result.report["items"]} == {"generating"}
    assert Decimal(result.report["spent_usd"]) > 0  # the reservations


def test_runbatch_economy_wait_follows_the_batch_to_the_end_in_process(api, topics_in_every_category, runbatch):
    result = runbatch("--economy", "--wait")

    assert result.returncode == 0, result.error
    assert result.report["status"] == "done"
    assert [item["status"] for item in result.report["items"]] == ["generated"] * 8
    assert api.server.message_calls == 0  # not one call through the Messages API


def test_runbatch_economy_wait_exits_3_when_the_budget_skipped_requests(api, topics_in_every_category, runbatch):
    result = runbatch("--economy", "--wait", "--budget", "0.05")

    assert result.returncode == 3
    assert result.report["status"] == "budget_exhausted"
    assert Decimal(result.report["spent_usd"]) <= Decimal("0.05")


def test_runbatch_cancel_cancels_an_economy_batch_and_refuses_anything_else(api, topics_in_every_category, runbatch):
    api.processing_seconds = 60
    batch_id = runbatch("--economy").report["batch"]

    assert runbatch("--cancel", str(batch_id)).returncode == 0
    assert api.calls["cancel"] == 1
    refused = runbatch("--cancel", "999999")
    assert refused.returncode == 1 and "no batch" in refused.error


def test_batch_delivery_economy_makes_economy_the_default(api, topics_in_every_category, runbatch, settings):
    settings.BATCH_DELIVERY = "economy"

    assert runbatch().report["status"] == "submitted"
    now = runbatch("--now", "--size", "1")  # every topic is taken by the economy batch: nothing left to select
    assert Batch.objects.get(pk=now.report["batch"]).delivery == Batch.Delivery.NOW


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("migration_data")  # a transactional test starts from a flushed database: seed it again
def test_economy_and_now_batches_racing_on_one_monthly_cap_never_cross_it(
    fake_anthropic, topics_in_every_category, make_topic, settings, migration_data
):
    if connection.vendor == "sqlite":
        pytest.skip("threads racing on one SQLite file serialise anyway; the race runs on PostgreSQL")
    settings.ECONOMY_POLL_MIN_SECONDS = settings.ECONOMY_POLL_MAX_SECONDS = 0
    batches_of(fake_anthropic).processing_seconds = 0
    for title in ("Etsy raises its transaction fee", "Amazon FBA storage surcharge returns in April",
                  "TikTok Shop cuts seller commissions for new stores", "Walmart Marketplace opens to EU sellers",
                  "Klaviyo changes SMS pricing tiers", "Faire drops its minimum order for retailers",
                  "Google Merchant Center adds loyalty annotations", "Temu courts US warehouse partners"):
        make_topic(title, category="platform_tools", score=5)  # a second batch of distinct stories
    settings.MONTHLY_BUDGET_USD = "0.12"
    errors = []

    def run(delivery):
        try:
            batch = running.create_batch(size=8, budget_usd=Decimal("40"), delivery=delivery)
            if delivery == Batch.Delivery.ECONOMY:
                poll_to_the_end(economy.submit(batch_id=batch.pk))
            else:
                running.run_inline(batch=batch)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(d,)) for d in (Batch.Delivery.ECONOMY, Batch.Delivery.NOW)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert ledger.month_spent() <= Decimal("0.12")
    # Eight economy requests reserve about $0.13 up front, so the cap must have refused some work.
    assert Newsletter.objects.filter(status=Newsletter.Status.SKIPPED_BUDGET).exists(), [
        (b.delivery, b.status, b.status_reason) for b in Batch.objects.all()]
    assert CostLedgerEntry.objects.filter(status="settled").count() >= 1
    assert ledger.reconcile() == []


def test_a_lost_create_is_told_apart_from_a_lookalike_batch_by_its_custom_ids(api, topics_in_every_category,
                                                                             settings, monkeypatch):
    settings.ANTHROPIC_TIMEOUT_SECONDS = 0.5
    api.create_faults = ["timeout"]
    api.create_timeout_seconds = 2
    batch = submitted()
    # Someone else's batch of the same size, created in the same minute, past the first page of the listing.
    decoy = make_client().messages.batches.create(requests=[
        {"custom_id": f"other-{i}", "params": {"model": batch.model, "max_tokens": 16,
                                               "messages": [{"role": "user", "content": "hi"}]}} for i in range(8)])
    monkeypatch.setattr(economy, "LIST_PAGE", 1)

    assert economy.poll(batch_id=batch.pk, force=True) == "found"

    submission = EconomySubmission.objects.get(batch=batch)
    assert submission.anthropic_batch_id != decoy.id
    assert submission.anthropic_batch_id == api.created()[0].id
    assert api.calls["list"] >= 2 and api.calls["create"] == 2  # ours once, the decoy once


def test_each_request_carries_its_topics_source_material_as_a_draft_made_now_would(api, topics_in_every_category):
    from django.utils import timezone

    from topics.models import SourceDocument

    topic = topics_in_every_category[0]
    type(topic).objects.filter(pk=topic.pk).update(url="https://example.com/usps")  # read already: reused, not fetched
    body = "Carriers raised ground rates by 7.8% for parcels under one pound, effective January 18. " * 6
    SourceDocument.objects.create(topic=topic, kind=SourceDocument.Kind.ARTICLE, url="https://example.com/usps",
                                  title="USPS rates", text=body, status=SourceDocument.Status.OK,
                                  fetched_at=timezone.now())

    batch = submitted(size=1)
    poll_to_the_end(batch)

    (created,) = api.batches.values()
    (_, params), = created.requests
    assert "https://example.com/usps" in json.dumps(params) and "7.8%" in json.dumps(params)
    item = batch.newsletters.get()
    assert any(source["url"] == "https://example.com/usps" for source in item.sources or [])
