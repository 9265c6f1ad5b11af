"""Drafting newsletters within the budget, against the loopback Anthropic API (runbatch in this process)."""
from __future__ import annotations

import json
import time
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from datetime import timedelta
from types import SimpleNamespace

import anthropic
import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from batches import generation, ledger, running
from batches.generation import claim, generate_newsletter, reservation_tokens
from batches.models import Batch, CostLedgerEntry, ModelPrice, Newsletter
from batches.planning import topic_message
from batches.pricing import price_for, worst_case_cost
from batches.prompts import build_request
from batches.tasks import generate_newsletter_task, run_batch
from batches.claude_standin import Fault, request_input_tokens
from tests.support import record_ledger_entry

pytestmark = pytest.mark.django_db

# The fake reports this usage for every call, so each call costs exactly FIXED_COST on claude-sonnet-4-6.
FIXED_USAGE = {"input_tokens": 1000, "output_tokens": 500, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 0}
FIXED_COST = Decimal("0.0105")  # 1000 × $3 + 500 × $15 per million tokens
# Published prices per million tokens: input, output, cache write (5 min), cache read.
LIST_PRICES = {
    "claude-sonnet-4-6": (Decimal("3"), Decimal("15"), Decimal("3.75"), Decimal("0.30")),
    "claude-haiku-4-5": (Decimal("1"), Decimal("5"), Decimal("1.25"), Decimal("0.10")),
}


def worst_case_for(topic, model: str = "claude-sonnet-4-6") -> Decimal:
    """The reservation the app makes before drafting `topic`, computed the way the API counts tokens."""
    max_tokens = django_settings.ANTHROPIC_MAX_TOKENS
    request = build_request(model=model, max_tokens=max_tokens, topic_message=topic_message(topic))
    counted = reservation_tokens(request_input_tokens(request))  # with the documented safety margin
    return worst_case_cost(input_tokens=counted, max_tokens=max_tokens, price=price_for(model))


def budget_for_calls(calls: int, topics) -> Decimal:
    """A budget with room for exactly `calls` calls costing FIXED_COST each, whatever the topics' order."""
    worst = [worst_case_for(topic) for topic in topics]
    # The call after the last one must not fit: its reservation is short by FIXED_COST minus the spread.
    assert FIXED_COST > max(worst) - min(worst)
    return (calls - 1) * FIXED_COST + max(worst)


def started_batch(*, size: int = 1, budget: str = "40", model: str | None = None) -> Batch:
    batch = running.create_batch(size=size, budget_usd=Decimal(budget), model=model)
    return running.start_batch(batch_id=batch.pk)


def entries_of(newsletter: Newsletter) -> list[CostLedgerEntry]:
    return list(CostLedgerEntry.objects.filter(newsletter=newsletter).order_by("pk"))


def message_requests(fake) -> list[dict]:
    return [r for r in fake.requests if r["path"] == "/v1/messages"]


# --- the budget ----------------------------------------------------------------------------------


def test_a_batch_whose_budget_allows_three_calls_makes_exactly_three_and_stops(
    fake_anthropic, topics_in_every_category, runbatch
):
    fake_anthropic.usage_overrides = FIXED_USAGE
    budget = budget_for_calls(3, topics_in_every_category)

    result = runbatch("--budget", str(budget))

    assert (result.returncode, result.report["status"]) == (3, "budget_exhausted")
    assert fake_anthropic.message_calls == 3
    assert Counter(item["status"] for item in result.report["items"]) == {"generated": 3, "skipped_budget": 5}
    assert Decimal(result.report["spent_usd"]) == 3 * FIXED_COST


def test_a_batch_stopped_by_the_budget_never_spends_more_than_its_budget(
    fake_anthropic, topics_in_every_category, runbatch
):
    result = runbatch("--budget", "0.06")

    assert result.returncode == 3
    batch = Batch.objects.get(pk=result.report["batch"])
    assert 0 < batch.spent_usd() <= Decimal("0.06")
    assert "Stopped by the budget" in batch.status_reason


def test_a_batch_whose_ledger_is_already_at_its_budget_makes_no_call(fake_anthropic, topics_in_every_category):
    batch = running.create_batch(size=8, budget_usd=Decimal("1"))
    record_ledger_entry(
        idempotency_key="earlier-run", batch=batch, status=CostLedgerEntry.Status.SETTLED,
        reserved_usd=Decimal("1"), amount_usd=Decimal("1"),
    )

    batch = running.run_inline(batch=batch)

    assert batch.status == Batch.Status.BUDGET_EXHAUSTED
    assert fake_anthropic.message_calls == 0
    assert set(batch.newsletters.values_list("status", flat=True)) == {Newsletter.Status.SKIPPED_BUDGET}
    assert batch.spent_usd() == Decimal("1")


def test_the_monthly_cap_lets_a_batch_make_only_the_calls_it_has_room_for(
    fake_anthropic, topics_in_every_category, runbatch, settings
):
    fake_anthropic.usage_overrides = FIXED_USAGE
    ledger.settle(
        entry_id=ledger.reserve(idempotency_key="discovery", worst_case_usd=Decimal("5")).entry_id,
        actual_usd=Decimal("5"),
    )
    cap = Decimal("5") + budget_for_calls(2, topics_in_every_category)
    settings.MONTHLY_BUDGET_USD = str(cap)

    result = runbatch("--budget", "40")

    assert (result.returncode, result.report["status"]) == (3, "budget_exhausted")
    assert fake_anthropic.message_calls == 2
    assert ledger.month_spent() == Decimal("5") + 2 * FIXED_COST
    assert "Monthly cap reached" in Newsletter.objects.filter(status="skipped_budget").first().error


def test_a_month_already_at_its_cap_makes_no_call(fake_anthropic, topics_in_every_category, settings):
    settings.MONTHLY_BUDGET_USD = "2"
    ledger.reserve(idempotency_key="earlier-batch", worst_case_usd=Decimal("2"))
    batch = running.create_batch(size=8, budget_usd=Decimal("40"))

    batch = running.run_inline(batch=batch)

    assert batch.status == Batch.Status.BUDGET_EXHAUSTED
    assert fake_anthropic.message_calls == 0
    assert ledger.month_spent() == Decimal("2")


def test_a_batch_for_a_model_with_no_price_fails_without_calling_the_api(fake_anthropic, topics_in_every_category):
    batch = running.create_batch(size=2, budget_usd=Decimal("40"), model="claude-unknown-1")

    batch = running.run_inline(batch=batch)

    assert fake_anthropic.requests == []
    assert batch.status == Batch.Status.FAILED
    assert "No price is known for model 'claude-unknown-1'" in batch.status_reason


def test_an_item_whose_price_vanished_fails_without_calling_the_api(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()
    ModelPrice.objects.filter(model=newsletter.batch.model).delete()

    status = generate_newsletter(newsletter_id=newsletter.pk, token="t")

    assert status == Newsletter.Status.FAILED
    assert fake_anthropic.requests == []
    assert "No price is known" in Newsletter.objects.get(pk=newsletter.pk).error


def test_a_worker_reads_a_models_price_again_only_after_price_reuse_seconds(
    fake_anthropic, topics_in_every_category, monkeypatch
):
    first, second, third = started_batch(size=3).newsletters.order_by("position")
    assert generate_newsletter(newsletter_id=first.pk, token="t") == Newsletter.Status.GENERATED
    ModelPrice.objects.filter(model=first.batch.model).delete()

    # Within PRICE_REUSE_SECONDS the process drafts with the price it read (one query less per item) ...
    assert generate_newsletter(newsletter_id=second.pk, token="t") == Newsletter.Status.GENERATED
    # ... and once they have passed it reads the table again: no price, no call.
    monkeypatch.setattr(generation, "PRICE_REUSE_SECONDS", 0.0)
    assert generate_newsletter(newsletter_id=third.pk, token="t") == Newsletter.Status.FAILED
    assert "No price is known" in Newsletter.objects.get(pk=third.pk).error
    assert fake_anthropic.message_calls == 2


# --- no round trip before a call: the reservation's input tokens ---------------------------------


def count_requests(fake) -> list[dict]:
    return [r["json"] for r in fake.requests if r["path"] == "/v1/messages/count_tokens"]


def bound_worst_case(topic, model: str = "claude-sonnet-4-6") -> Decimal:
    """The reservation made without counting: the fixed part as the fake counts it, plus the message's bytes."""
    max_tokens = django_settings.ANTHROPIC_MAX_TOKENS
    probe = build_request(model=model, max_tokens=max_tokens, topic_message="x")
    fixed = request_input_tokens({k: v for k, v in probe.items() if k != "max_tokens"})
    bound = fixed + len(json.dumps(topic_message(topic), ensure_ascii=False).encode("utf-8"))
    return worst_case_cost(input_tokens=reservation_tokens(bound), max_tokens=max_tokens, price=price_for(model))


def test_reservations_that_fit_at_the_bound_make_no_count_tokens_call_for_their_request(
    fake_anthropic, topics_in_every_category
):
    items = list(started_batch(size=3).newsletters.order_by("position"))

    for item in items:
        assert generate_newsletter(newsletter_id=item.pk, token="t") == Newsletter.Status.GENERATED

    # One count in the process, of the fixed part with a one-character message; none for any item's request.
    assert [c["messages"] for c in count_requests(fake_anthropic)] == [[{"role": "user", "content": "x"}]]
    assert fake_anthropic.message_calls == 3
    for item in items:
        entry = CostLedgerEntry.objects.get(newsletter=item)
        assert entry.reserved_usd == bound_worst_case(item.topic) > worst_case_for(item.topic)
        assert entry.amount_usd <= entry.reserved_usd


def test_a_reservation_that_does_not_fit_at_the_bound_counts_the_request_and_reserves_the_exact_figure(
    fake_anthropic, topics_in_every_category
):
    item = started_batch().newsletters.get()
    exact, bound = worst_case_for(item.topic), bound_worst_case(item.topic)
    budget = ((exact + bound) / 2).quantize(Decimal("0.000001"))
    assert exact < budget < bound
    Batch.objects.filter(pk=item.batch_id).update(budget_usd=budget)
    fake_anthropic.enqueue(Fault(status=529))  # the retry reserves the exact figure again, without a second count

    assert generate_newsletter(newsletter_id=item.pk, token="t", sleep=lambda seconds: None) == \
        Newsletter.Status.GENERATED

    message = message_requests(fake_anthropic)[-1]["json"]
    assert [c["messages"] for c in count_requests(fake_anthropic)] == [
        [{"role": "user", "content": "x"}], message["messages"]]
    assert [(e.status, e.reserved_usd) for e in entries_of(item)] == [("released", exact), ("settled", exact)]
    batch = Batch.objects.get(pk=item.batch_id)
    assert batch.spent_usd() <= batch.budget_usd


def test_a_request_that_does_not_fit_even_counted_is_skipped_by_the_budget_without_a_call(
    fake_anthropic, topics_in_every_category
):
    item = started_batch().newsletters.get()
    Batch.objects.filter(pk=item.batch_id).update(budget_usd=worst_case_for(item.topic) - Decimal("0.000001"))

    assert generate_newsletter(newsletter_id=item.pk, token="t") == Newsletter.Status.SKIPPED_BUDGET

    assert len(count_requests(fake_anthropic)) == 2 and fake_anthropic.message_calls == 0
    assert not CostLedgerEntry.objects.exists()


@pytest.mark.parametrize("text", [
    "plain English prose about parcels, " * 200,
    "quotes \" and backslashes \\ and\nnew\nlines\t" * 50,
    "\x01\x02\x1f control characters " * 40,
    "汉字とかな、한국어 " * 120,
    "emoji 📦🚚✨ " * 150,
])
def test_the_bound_is_never_below_the_count_of_the_request(fake_anthropic, text):
    """Whatever the message holds (the fake counts JSON-escaped characters, four a token; the bound, bytes)."""
    client = anthropic.Anthropic(api_key="test", base_url=fake_anthropic.base_url, max_retries=0)
    request = build_request(model="claude-sonnet-4-6", max_tokens=2048, topic_message=text)

    bound = generation.input_tokens_bound(client=client, request=request)

    counted = client.messages.count_tokens(**{k: v for k, v in request.items() if k != "max_tokens"}).input_tokens
    assert counted <= bound <= counted + 6 * len(text.encode("utf-8"))


# --- cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(LIST_PRICES))
def test_each_charge_is_the_calls_usage_times_its_models_prices_cache_buckets_included(
    fake_anthropic, topics_in_every_category, runbatch, settings, model
):
    settings.ANTHROPIC_MODEL = model
    input_price, output_price, write_price, read_price = LIST_PRICES[model]

    result = runbatch("--size", "4")

    assert result.returncode == 0
    entries = list(CostLedgerEntry.objects.filter(batch_id=result.report["batch"]))
    assert len(entries) == 4 and {e.status for e in entries} == {"settled"} and {e.model for e in entries} == {model}
    for entry in entries:
        by_hand = (
            entry.input_tokens * input_price + entry.output_tokens * output_price
            + entry.cache_write_tokens * write_price + entry.cache_read_tokens * read_price
        ) / 1_000_000
        assert entry.amount_usd == by_hand.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        assert entry.amount_usd <= entry.reserved_usd
    billed = fake_anthropic.usage_totals
    assert sum(e.input_tokens for e in entries) == billed["input_tokens"]
    assert sum(e.output_tokens for e in entries) == billed["output_tokens"]
    assert sum(e.cache_write_tokens for e in entries) == billed["cache_creation_input_tokens"] > 0
    assert sum(e.cache_read_tokens for e in entries) == billed["cache_read_input_tokens"] > 0


def test_a_newsletters_cost_and_the_batch_spend_are_the_sum_of_their_ledger_entries(
    fake_anthropic, topics_in_every_category, runbatch
):
    result = runbatch("--size", "3")

    entries = CostLedgerEntry.objects.filter(batch_id=result.report["batch"])
    assert Decimal(result.report["spent_usd"]) == sum(e.amount_usd for e in entries)
    for item in result.report["items"]:
        newsletter = Newsletter.objects.get(batch_id=result.report["batch"], topic_id=item["topic"])
        assert Decimal(item["cost_usd"]) == newsletter.cost_usd == sum(e.amount_usd for e in entries_of(newsletter))


# --- faults --------------------------------------------------------------------------------------


def test_an_overloaded_api_is_retried_and_the_item_drafted(fake_anthropic, topics_in_every_category, runbatch):
    fake_anthropic.enqueue(Fault(status=529))

    result = runbatch("--size", "1")

    assert (result.returncode, result.report["items"][0]["status"]) == (0, "generated")
    assert [e.status for e in CostLedgerEntry.objects.order_by("pk")] == ["released", "settled"]
    assert len(message_requests(fake_anthropic)) == 2


def test_a_rate_limited_call_waits_as_long_as_retry_after_says(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()
    fake_anthropic.enqueue(Fault(status=429, retry_after=7))
    slept: list[float] = []

    status = generate_newsletter(newsletter_id=newsletter.pk, token="t", sleep=slept.append)

    assert status == Newsletter.Status.GENERATED
    assert slept == [7.0]


def test_an_api_that_stays_overloaded_fails_the_item_and_charges_nothing(
    fake_anthropic, topics_in_every_category, settings
):
    settings.ANTHROPIC_MAX_RETRIES = 2
    newsletter = started_batch().newsletters.get()
    fake_anthropic.enqueue(*[Fault(status=529)] * 3)
    slept: list[float] = []

    status = generate_newsletter(newsletter_id=newsletter.pk, token="t", sleep=slept.append)

    newsletter.refresh_from_db()
    assert status == Newsletter.Status.FAILED
    assert "Gave up after 3 attempts" in newsletter.error and "529" in newsletter.error
    assert [e.status for e in entries_of(newsletter)] == ["released"] * 3
    assert newsletter.cost_usd == 0 and len(slept) == 2


def test_a_timed_out_call_keeps_its_reservation_and_the_retry_reserves_anew(
    fake_anthropic, topics_in_every_category, runbatch, settings
):
    settings.ANTHROPIC_TIMEOUT_SECONDS = 0.5
    fake_anthropic.enqueue(Fault(kind="timeout", seconds=3))

    result = runbatch("--size", "1")

    assert (result.returncode, result.report["items"][0]["status"]) == (0, "generated")
    kept, settled = CostLedgerEntry.objects.order_by("pk")
    assert kept.status == "reserved" and kept.amount_usd == kept.reserved_usd > 0
    assert settled.status == "settled" and settled.idempotency_key != kept.idempotency_key
    assert Decimal(result.report["spent_usd"]) == kept.amount_usd + settled.amount_usd


def test_a_connection_dropped_mid_call_keeps_its_reservation(fake_anthropic, topics_in_every_category, runbatch):
    fake_anthropic.enqueue(Fault(kind="disconnect"))

    result = runbatch("--size", "1")

    assert result.returncode == 0
    assert [e.status for e in CostLedgerEntry.objects.order_by("pk")] == ["reserved", "settled"]


def test_a_call_that_never_reached_the_api_releases_its_reservation(
    fake_anthropic, topics_in_every_category, settings
):
    newsletter = started_batch().newsletters.get()
    counting = anthropic.Anthropic(api_key="test", base_url=fake_anthropic.base_url, max_retries=0)
    nothing_listening = anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1:1", max_retries=0)
    client = SimpleNamespace(messages=SimpleNamespace(
        count_tokens=counting.messages.count_tokens, create=nothing_listening.messages.create
    ))

    status = generate_newsletter(newsletter_id=newsletter.pk, token="t", client=client, sleep=lambda seconds: None)

    assert status == Newsletter.Status.FAILED
    assert [e.status for e in entries_of(newsletter)] == ["released"] * (settings.ANTHROPIC_MAX_RETRIES + 1)
    assert ledger.newsletter_spent(newsletter.pk) == 0


def test_a_bad_request_for_one_topic_fails_only_that_item_and_the_batch_ends_partial(
    fake_anthropic, topics_in_every_category, runbatch
):
    refused = topics_in_every_category[1]
    fake_anthropic.add_rule(lambda body: refused.title in json.dumps(body), Fault(status=400))

    result = runbatch("--size", "3")

    assert (result.returncode, result.report["status"]) == (4, "partial")
    statuses = {item["topic"]: item["status"] for item in result.report["items"]}
    assert statuses.pop(refused.pk) == "failed"
    assert set(statuses.values()) == {"generated"}
    failed = Newsletter.objects.get(topic=refused)
    assert "400" in failed.error and "invalid_request_error" in failed.error
    assert [e.status for e in entries_of(failed)] == ["released"]
    assert sum(refused.title in json.dumps(r["json"]) for r in message_requests(fake_anthropic)) == 1


def test_a_partial_batch_becomes_done_once_its_failed_item_is_drafted_again(
    fake_anthropic, topics_in_every_category, runbatch
):
    refused = topics_in_every_category[1]
    rule = lambda body: refused.title in json.dumps(body)  # noqa: E731
    fake_anthropic.add_rule(rule, Fault(status=400))
    batch = Batch.objects.get(pk=runbatch("--size", "3").report["batch"])
    assert batch.status == Batch.Status.PARTIAL
    fake_anthropic.reset()  # the API accepts the topic now
    failed = Newsletter.objects.get(batch=batch, topic=refused)
    Newsletter.objects.filter(pk=failed.pk).update(status=Newsletter.Status.PENDING, error="")

    generate_newsletter(newsletter_id=failed.pk, token="again")
    running.finalize_batch(batch_id=batch.pk)

    batch.refresh_from_db()
    assert (batch.status, batch.status_reason) == (Batch.Status.DONE, "Done: 3 drafted, 0 failed, 0 skipped by the budget.")


def test_an_unexpected_error_fails_the_item_and_still_lets_the_batch_close(
    fake_anthropic, topics_in_every_category, monkeypatch
):
    batch = started_batch(size=1)
    item = batch.newsletters.get()

    def explode(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("batches.generation._call_within_budget", explode)
    result = generate_newsletter_task.apply(args=[item.pk])

    item.refresh_from_db()
    batch.refresh_from_db()
    assert isinstance(result.result, RuntimeError)
    assert item.status == Newsletter.Status.FAILED and "database went away" in item.error
    assert batch.status == Batch.Status.FAILED


def test_retrying_stops_in_time_to_write_the_answer_before_the_lease_runs_out(
    fake_anthropic, topics_in_every_category, settings
):
    settings.ITEM_LEASE_SECONDS = 45
    settings.ANSWER_WRITE_RETRY_SECONDS = 10.0
    settings.ANTHROPIC_TIMEOUT_SECONDS = 10.0
    settings.ANTHROPIC_RETRY_BASE_SECONDS = 8.0
    fake_anthropic.enqueue(*[Fault(status=529) for _ in range(4)])
    batch = started_batch(size=1)
    item = batch.newsletters.get()
    slept: list[float] = []

    generate_newsletter(newsletter_id=item.pk, token="t", sleep=slept.append)

    item.refresh_from_db()
    # 30 s of the lease are for calls (45 s less 10 s to write the answer and a 5 s margin): waiting 8 s then
    # 16 s still leaves a 10 s call inside it; a third wait of 32 s would not.
    assert slept == [8.0, 16.0]
    assert item.status == Newsletter.Status.FAILED and "Gave up after 3 attempts" in item.error
    assert item.lease_expires_at is None


def test_a_malformed_draft_fails_the_item_but_its_cost_is_still_charged(
    fake_anthropic, topics_in_every_category, runbatch
):
    fake_anthropic.enqueue(Fault(kind="malformed"))

    result = runbatch("--size", "1")

    assert (result.returncode, result.report["status"]) == (4, "failed")
    newsletter = Newsletter.objects.get(batch_id=result.report["batch"])
    assert newsletter.status == Newsletter.Status.FAILED
    assert "subject is missing" in newsletter.error
    (entry,) = entries_of(newsletter)
    assert entry.status == "settled" and entry.amount_usd > 0
    assert newsletter.cost_usd == entry.amount_usd == Decimal(result.report["spent_usd"])


@pytest.mark.parametrize("reason", ["refusal", "model_context_window_exceeded", "pause_turn"])
def test_an_answer_that_stopped_before_it_finished_fails_the_item_whatever_it_carries(
    fake_anthropic, topics_in_every_category, reason
):
    # The stand-in sends a complete draft, stopped for this reason: the model did not finish what it was asked.
    item = started_batch().newsletters.get()
    fake_anthropic.enqueue(Fault(kind="stop_reason", message=reason))

    assert generate_newsletter(newsletter_id=item.pk, token="t") == Newsletter.Status.FAILED

    item.refresh_from_db()
    assert f"the answer was cut off ({reason})" in item.error and item.subject == ""
    (entry,) = entries_of(item)
    assert entry.status == "settled" and entry.amount_usd > 0  # what was answered is paid for


def test_no_call_starts_with_less_than_its_timeout_left_on_the_items_lease(
    fake_anthropic, topics_in_every_category, settings, monkeypatch
):
    settings.ANTHROPIC_TIMEOUT_SECONDS = 8.0
    settings.ANSWER_WRITE_RETRY_SECONDS = 0.0
    settings.ITEM_LEASE_SECONDS = 14  # 9 s for calls (14 less 5 s of margin): room for one 8 s call
    item = started_batch().newsletters.get()
    exact, bound = worst_case_for(item.topic), bound_worst_case(item.topic)
    Batch.objects.filter(pk=item.batch_id).update(budget_usd=((exact + bound) / 2).quantize(Decimal("0.000001")))
    # The exact count after the bound did not fit takes 7.5 s of the lease (a clock of generation's own, moved on).
    clock = SimpleNamespace(offset=0.0)
    monkeypatch.setattr(generation, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + clock.offset,
                                                            sleep=time.sleep))
    client = generation.make_client()
    count = client.messages.count_tokens

    def slow_count(**kwargs):
        if kwargs["messages"] != [{"role": "user", "content": "x"}]:  # not the probe the bound is made from
            clock.offset += 7.5
        return count(**kwargs)

    client.messages.count_tokens = slow_count

    status = generate_newsletter(newsletter_id=item.pk, token="t", client=client, sleep=lambda seconds: None)

    assert fake_anthropic.message_calls == 0  # 1.5 s left of 9: an 8 s call could outlive the lease
    assert status == Newsletter.Status.FAILED
    assert not CostLedgerEntry.objects.filter(status="reserved").exists()  # what was reserved for it, released


def test_the_answer_is_written_with_the_ledger_rows_locked_last(
    fake_anthropic, topics_in_every_category, monkeypatch
):
    """The settlement moves running totals every reservation waits on: nothing of the draft is written after it
    but the item's own row, so those rows are held for as few statements as possible."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from batches import generation as drafting

    writes: list[list[str]] = []
    original = drafting.write_answer

    def watched(record):
        with CaptureQueriesContext(connection) as captured:
            status = original(record)
        writes.append([q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]])
        return status

    monkeypatch.setattr(drafting, "write_answer", watched)
    item = started_batch().newsletters.get()

    assert generate_newsletter(newsletter_id=item.pk, token="t") == Newsletter.Status.GENERATED

    [statements] = writes
    settling = next(i for i, sql in enumerate(statements)  # SQLite's statements, or PostgreSQL's one function call
                    if sql.startswith(('UPDATE "batches_costledgerentry"', "SELECT * FROM newsroom_ledger_close")))
    before, after = statements[:settling], statements[settling + 1:]
    assert any("batches_draftflag" in sql for sql in before) and any('"topics_topic"' in sql for sql in before)
    assert not any(table in sql for sql in after for table in ("draftflag", "topics_topic", "draftversion"))
    assert after[-1].startswith('UPDATE "batches_newsletter"')
    item.refresh_from_db()
    assert item.cost_usd == ledger.newsletter_spent(item.pk) > 0
    assert item.generated_at >= CostLedgerEntry.objects.get(newsletter=item).settled_at


# --- idempotency ---------------------------------------------------------------------------------


def test_running_the_same_task_twice_drafts_once_and_charges_once(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()

    generate_newsletter_task.apply(args=[newsletter.pk], task_id="same")
    generate_newsletter_task.apply(args=[newsletter.pk], task_id="same")

    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.GENERATED and newsletter.attempts == 1
    assert fake_anthropic.message_calls == 1
    assert [e.status for e in entries_of(newsletter)] == ["settled"]
    assert Batch.objects.get(pk=newsletter.batch_id).status == Batch.Status.DONE


def test_a_redelivered_task_leaves_an_item_alone_while_its_lease_runs(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()
    # The first delivery claimed the item and is still in its (slow) call when the broker hands the message out again.
    claim(newsletter_id=newsletter.pk, token="same")

    generate_newsletter_task.apply(args=[newsletter.pk], task_id="same")

    newsletter.refresh_from_db()
    assert (newsletter.status, newsletter.attempts) == (Newsletter.Status.GENERATING, 1)
    assert fake_anthropic.requests == []


def test_a_redelivered_task_takes_back_an_item_once_its_lease_has_run_out(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()
    # The first delivery claimed the item, reserved, and died mid-call; its lease has run out since.
    claim(newsletter_id=newsletter.pk, token="same")
    ledger.reserve(idempotency_key=f"newsletter:{newsletter.pk}:attempt:1:try:0", worst_case_usd=Decimal("0.05"),
                   batch_id=newsletter.batch_id, newsletter_id=newsletter.pk)
    Newsletter.objects.filter(pk=newsletter.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    generate_newsletter_task.apply(args=[newsletter.pk], task_id="same")

    newsletter.refresh_from_db()
    assert (newsletter.status, newsletter.attempts) == (Newsletter.Status.GENERATED, 2)
    assert [e.status for e in entries_of(newsletter)] == ["reserved", "settled"]
    assert newsletter.cost_usd == ledger.newsletter_spent(newsletter.pk)


def test_another_task_cannot_take_an_item_that_is_being_drafted(fake_anthropic, topics_in_every_category):
    newsletter = started_batch().newsletters.get()
    claim(newsletter_id=newsletter.pk, token="first")

    assert generate_newsletter(newsletter_id=newsletter.pk, token="second") is None
    assert fake_anthropic.requests == []


def test_no_drafting_task_claims_an_item_of_an_economy_batch(fake_anthropic, topics_in_every_category):
    batch = running.create_batch(size=1, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY)
    item = running.start_batch(batch_id=batch.pk).newsletters.get()  # selected, not submitted yet: pending

    assert claim(newsletter_id=item.pk, token="stray") is None
    generate_newsletter_task.apply(args=[item.pk])

    item.refresh_from_db()
    assert (item.status, item.attempts, item.claim_token) == (Newsletter.Status.PENDING, 0, "")
    assert fake_anthropic.message_calls == 0 and fake_anthropic.count_tokens_calls == 0


def test_a_redelivered_batch_task_fans_out_the_items_still_waiting(
    topics_in_every_category, monkeypatch, django_capture_on_commit_callbacks
):
    batch = started_batch(size=3)  # the first delivery claimed the batch and died before fanning out
    queued: list[int] = []
    monkeypatch.setattr(generate_newsletter_task, "delay", queued.append)

    with django_capture_on_commit_callbacks(execute=True):
        run_batch.apply(args=[batch.pk])

    assert sorted(queued) == sorted(batch.newsletters.values_list("pk", flat=True))
