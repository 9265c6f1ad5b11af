"""Economy figures: the cost per newsletter of a batch of 8 drafted now and as one Message Batch, on the same
topics (target: economy at most 55% of now); and what waiting for a Message Batch costs in polling (database
queries and API calls per minute) with the default backoff and beat's every-minute schedule."""
from __future__ import annotations

import datetime
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

from bench.common import setup_django
from bench.fresh import fresh_database, preferred_vendor
from bench.parallel_bench import fresh_topics

ROOT = Path(__file__).resolve().parent.parent
SIZE = 8
WAIT_MINUTES = 60
TARGET = Decimal("0.55")


def per_newsletter(batch) -> Decimal:
    from batches.models import CostLedgerEntry

    entries = list(CostLedgerEntry.objects.filter(batch=batch))
    assert {e.status for e in entries} == {"settled"}, [e.status for e in entries]
    return (sum(e.amount_usd for e in entries) / SIZE).quantize(Decimal("0.000001"))


def cost_now_and_economy(fake) -> tuple[Decimal, Decimal, str]:
    from batches import economy, running
    from batches.claude_standin_batches import batches_of
    from batches.models import Batch, Newsletter
    from topics.models import Topic

    topic_ids = fresh_topics(SIZE)
    now_batch = running.run_inline(batch=running.create_batch(size=SIZE, budget_usd=Decimal("40"),
                                                              topic_ids=topic_ids))
    assert now_batch.status == "done", now_batch.status_reason
    now_cost = per_newsletter(now_batch)
    # The same topics once more: as if never drafted (the first batch's items failed, its topics unused), and
    # from a cold prompt cache.
    Newsletter.objects.filter(batch=now_batch).update(status=Newsletter.Status.FAILED)
    Topic.objects.filter(pk__in=topic_ids).update(usage=Topic.Usage.UNUSED, used_at=None, drafted_at=None)
    fake.clear_cache()
    batches_of(fake).processing_seconds = 0
    batch = economy.submit(batch_id=running.create_batch(size=SIZE, budget_usd=Decimal("40"), topic_ids=topic_ids,
                                                         delivery=Batch.Delivery.ECONOMY).pk)
    while not batch.is_finished:
        economy.poll(batch_id=batch.pk, force=True)
        batch.refresh_from_db()
    assert batch.status == "done", batch.status_reason
    return now_cost, per_newsletter(batch), batch.model


def polling_cost(fake) -> dict[str, float]:
    """WAIT_MINUTES of beat ticks (one a minute) against a Message Batch that stays in progress, on a simulated
    clock: every due batch is polled with the default backoff; API calls and queries counted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from batches import economy, running
    from batches.claude_standin_batches import batches_of
    from batches.models import Batch

    api = batches_of(fake)
    api.processing_seconds = 10**6
    batch = economy.submit(batch_id=running.create_batch(size=SIZE, budget_usd=Decimal("40"),
                                                         topic_ids=fresh_topics(SIZE),
                                                         delivery=Batch.Delivery.ECONOMY).pk)
    start, calls_before = timezone.now(), api.api_calls()
    with CaptureQueriesContext(connection) as queries:
        for minute in range(1, WAIT_MINUTES + 1):
            now = start + datetime.timedelta(minutes=minute)
            for batch_id in economy.due_submissions(now=now):
                if batch_id == batch.pk:  # batches left in the bench database by earlier runs are not counted
                    economy.poll(batch_id=batch_id, now=now)
    calls = api.api_calls() - calls_before

    class OneWake(Exception):
        pass

    def stop(seconds: float) -> None:
        raise OneWake

    with CaptureQueriesContext(connection) as follower:
        try:  # one wake of the --wait follower while nothing is due, up to its sleep
            economy.follow(batch_id=batch.pk, on_item=lambda item: None, timeout=3600, sleep=stop)
        except OneWake:
            pass
    economy.cancel(batch_id=batch.pk)
    return {"api_calls": calls, "queries": len(queries), "follower_queries": len(follower),
            "follower_wakes_per_minute": 60 / economy.FOLLOW_WAKE_SECONDS}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_DEBUG", "1")
    with fresh_database(vendor=preferred_vendor(), purpose="economy") as url:
        setup_django(database_url=url)
        measure()


def measure() -> None:
    from django.conf import settings
    from django.test import override_settings

    from batches.claude_standin import FakeAnthropicServer

    vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    with FakeAnthropicServer() as fake, override_settings(ANTHROPIC_BASE_URL=fake.base_url,
                                                         ANTHROPIC_API_KEY="bench-key-not-a-secret"):
        started = time.perf_counter()
        now_cost, economy_cost, model = cost_now_and_economy(fake)
        polling = polling_cost(fake)
        elapsed = time.perf_counter() - started
    ratio = economy_cost / now_cost
    print(f"economy bench on {vendor} (a fresh database): a batch of {SIZE} with {model} ({elapsed:.1f} s)")
    print(f"  cost per newsletter: now ${now_cost}, economy ${economy_cost} = {ratio:.1%} of now "
          f"(target <= {TARGET:.0%}: {'met' if ratio <= TARGET else 'MISSED'})")
    print(f"  waiting {WAIT_MINUTES} min for a Message Batch (beat every minute, backoff "
          f"{settings.ECONOMY_POLL_MIN_SECONDS:g}-{settings.ECONOMY_POLL_MAX_SECONDS:g} s): "
          f"{polling['api_calls']} API calls ({polling['api_calls'] / WAIT_MINUTES:.2f}/min), "
          f"{polling['queries']} database queries ({polling['queries'] / WAIT_MINUTES:.1f}/min)")
    print(f"  a --wait follower adds about {polling['follower_queries'] * polling['follower_wakes_per_minute']:.0f} "
          f"queries/min ({polling['follower_queries']} per wake, a wake every {60 / polling['follower_wakes_per_minute']:g} s) "
          "and no API call beyond the same backoff")


if __name__ == "__main__":
    main()
