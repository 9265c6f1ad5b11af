"""Source material figures.

1. Gathering: 8 topics that each link to a page taking 1 s to answer, on 8 Celery worker slots: from handing
   their gathering tasks to the broker until all 8 pages are stored, against one page read on its own (target: at
   most 1.5 times). Then the same as the first step of a batch of 8 (its selection and fan-out included).
2. Cost: the input cost per newsletter of a batch of 8 drafted with source material in the prompt and without
   (topics that link to nothing), prompt caching on in both.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench.caching_bench import describe
from bench.common import setup_django
from bench.demo_pages import PageServer
from bench.fresh import fresh_database, preferred_vendor
from bench.parallel_bench import REDIS_URL, TITLES, start_worker, stop_worker

ROOT = Path(__file__).resolve().parent.parent
PAGE_SECONDS = 1.0
SIZE = 8
PARAGRAPHS = [
    "Carriers and marketplaces changed their terms this month, and sellers are working out what it costs them. "
    "Ground rates rise an average of 7.8% in January, and a 1 lb label to zone 8 moves from $11.20 to $12.35.",
    "A seller shipping 1,200 parcels a month would pay about $1.4k more, and 42% of small sellers now split their "
    "volume between two carriers or more. Regional carriers say their parcel volume is up 3x since 2023.",
    "Sellers on the forums compare notes on free-shipping thresholds, packaging and which zones to route "
    "elsewhere, and several say they will revisit their prices before the spring.",
    "The change lands in the busiest quarter of the year. Stores that ship heavy or oversized goods feel it first, "
    "because the increases are steepest on the far zones and on parcels over 5 lb, where most of their volume sits.",
    "Marketplace sellers have less room to move: the platforms set their own shipping credits, and those credits "
    "have not followed the carriers' new rates. Several sellers said the gap now eats most of their margin on "
    "low-priced items, and that they are testing bundles to lift the average order value instead.",
    "Direct-to-consumer brands have more levers. Some are raising their free-shipping threshold, some are moving "
    "slow sellers to cheaper, slower services, and a few are renegotiating with their shipping software provider, "
    "which buys labels at volume rates and passes part of the discount on.",
    "Carriers, for their part, say the increases pay for weekend delivery and new sorting capacity. Analysts expect "
    "the regional carriers to keep pricing below the national ones in the cities they serve, at least until the "
    "spring, and to add residential surcharges of their own after that.",
    "For most small stores the practical question is where their own parcels go. A seller who ships mostly to "
    "nearby zones may barely notice; one who ships across the country will want to look at every product's weight "
    "and packaging before the new rates apply.",
    "Trade groups plan to publish a comparison of the carriers' new rate cards next month, and several software "
    "vendors have promised calculators that show the effect on a store's own order history.",
]


def serve_pages(server: PageServer, run: str) -> dict[str, str]:
    """One article page per category, for this run; their URLs by category slug."""
    return {
        slug: server.add_article(f"/{run}/{slug}", site="Seller Wire", title=title, paragraphs=PARAGRAPHS)
        for slug, title in TITLES.items()
    }


def fresh_topics(*, urls: dict[str, str] | None, run: str) -> list[int]:
    """Eight new approved topics, one per category, linking to `urls` (or to nothing)."""
    from topics.models import Category, Topic

    return [
        Topic.objects.create(
            title=f"{TITLES[category.slug]} ({run})", source="material-bench", external_id=f"{run}-{category.slug}",
            url=(urls or {}).get(category.slug, ""), score=50, status="approved", category=category,
            summary="Sellers compare what the change costs them.",
        ).pk
        for category in Category.objects.filter(slug__in=TITLES)[:SIZE]
    ]


def new_batch(topic_ids: list[int]):
    from batches import running

    return running.create_batch(size=len(topic_ids), budget_usd=Decimal("40"), topic_ids=topic_ids)


def one_page_seconds(url: str) -> float:
    from topics.pages import AddressPolicy, fetch_page

    started = time.perf_counter()
    fetch_page(url, policy=AddressPolicy(allow_private=True))
    return time.perf_counter() - started


def _wait_for_material(topic_ids: list[int], *, started: float) -> float:
    from topics.models import SourceDocument

    while SourceDocument.objects.filter(topic_id__in=topic_ids).count() < len(topic_ids):
        if time.perf_counter() > started + 120:
            raise RuntimeError("the material was not gathered within 120 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    failed = SourceDocument.objects.filter(topic_id__in=topic_ids, status="failed").values_list("reason", flat=True)
    if failed:
        raise RuntimeError(f"pages could not be read: {sorted(set(failed))}")
    return elapsed


def gathered_by_tasks(topic_ids: list[int]) -> float:
    """One gathering task per topic (what each draft's task does first, and the admin's "Fetch source
    material"), from handing them to the broker until every topic's page is stored."""
    from topics.tasks import gather_material_task

    started = time.perf_counter()
    for topic_id in topic_ids:
        gather_material_task.delay(topic_id)
    return _wait_for_material(topic_ids, started=started)


def gathered_in_a_batch(topic_ids: list[int]) -> float:
    """A whole batch: from handing it to the broker (selection and fan-out included) until every topic's page is
    stored; then waits for the batch to finish."""
    from batches import running
    from batches.models import Batch

    batch = new_batch(topic_ids)
    started = time.perf_counter()
    running.enqueue_batch(batch=batch)
    elapsed = _wait_for_material(topic_ids, started=started)
    while not Batch.objects.filter(pk=batch.pk, status__in=Batch.FINAL_STATUSES).exists():
        if time.perf_counter() > started + 120:
            raise RuntimeError(f"batch #{batch.pk} did not finish within 120 s")
        time.sleep(0.05)
    return elapsed


def input_cost(topic_ids: list[int], fake) -> dict:
    """Draft the topics in this process against `fake`: tokens and input cost per newsletter."""
    from django.test import override_settings

    from batches import running
    from batches.models import CostLedgerEntry
    from batches.pricing import price_for

    with override_settings(ANTHROPIC_BASE_URL=fake.base_url, ANTHROPIC_API_KEY="bench-key-not-a-secret"):
        batch = running.run_inline(batch=new_batch(topic_ids))
    assert batch.status == "done", (batch.status, batch.status_reason)
    price = price_for(batch.model)
    entries = list(CostLedgerEntry.objects.filter(batch=batch, provider="anthropic"))
    tokens = {"input": sum(e.input_tokens for e in entries), "cache write": sum(e.cache_write_tokens for e in entries),
              "cache read": sum(e.cache_read_tokens for e in entries)}
    cost = (tokens["input"] * price.input_per_mtok + tokens["cache write"] * price.cache_write_per_mtok
            + tokens["cache read"] * price.cache_read_per_mtok) / 1_000_000
    return {**{name: count // len(entries) for name, count in tokens.items()},
            "input cost": (cost / len(entries)).quantize(Decimal("0.000001")),
            "total cost": (sum(e.amount_usd for e in entries) / len(entries)).quantize(Decimal("0.000001"))}


def main() -> int:
    import redis

    sys.path.insert(0, str(ROOT))
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()
    except redis.RedisError as exc:
        print(f"material bench needs Redis at {REDIS_URL} (BENCH_REDIS_URL): {exc}")
        return 1
    with fresh_database(vendor=preferred_vendor(), purpose="material") as url:
        return measure(url)


def measure(url: str) -> int:
    from batches.claude_standin import FakeAnthropicServer

    # Claude answers in seconds: the drafting after a topic's gathering waits on it instead of taking the CPU
    # that the other slots' gathering needs (as with the real API).
    with FakeAnthropicServer(latency=2.0) as fake, PageServer(latency=PAGE_SECONDS) as slow_pages:
        os.environ.update(CELERY_BROKER_URL=REDIS_URL, ANTHROPIC_BASE_URL=fake.base_url,
                          ANTHROPIC_API_KEY="bench-key-not-a-secret", SOURCE_FETCH_ALLOW_PRIVATE="1",
                          DJANGO_DEBUG=os.environ.get("DJANGO_DEBUG", "1"))
        setup_django(database_url=url)
        from django.conf import settings

        vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"material bench on {vendor} and Redis: pages at {PAGE_SECONDS:g} s each, a batch of {SIZE}")
        run = uuid.uuid4().hex[:6]
        urls = serve_pages(slow_pages, run)
        single = min(one_page_seconds(next(iter(urls.values()))) for _ in range(2))
        worker, _ = start_worker({**os.environ, "PYTHONPATH": str(ROOT)}, concurrency=SIZE)
        try:
            warm = uuid.uuid4().hex[:6]  # every pool process has drafted once (first calls set things up)
            gathered_in_a_batch(fresh_topics(urls=serve_pages(slow_pages, warm), run=warm))
            parallel = gathered_by_tasks(fresh_topics(urls=urls, run=run))
            again = uuid.uuid4().hex[:6]
            in_batch = gathered_in_a_batch(fresh_topics(urls=serve_pages(slow_pages, again), run=again))
        finally:
            stop_worker(worker)
    with FakeAnthropicServer() as fake, PageServer() as pages:  # each batch starts with a cold prompt cache
        run = uuid.uuid4().hex[:6]
        with_material = input_cost(fresh_topics(urls=serve_pages(pages, run), run=run), fake)
    with FakeAnthropicServer() as fake:
        run = uuid.uuid4().hex[:6]
        without_material = input_cost(fresh_topics(urls=None, run=run), fake)
    print(f"  one page read on its own: {single:.2f} s")
    print(f"  material for {SIZE} topics on {SIZE} worker slots: {parallel:.2f} s "
          f"({parallel / single:.2f}x one page; target at most 1.5x)")
    print(f"  the same as the first step of a batch of {SIZE} (selection and fan-out included): {in_batch:.2f} s "
          f"({in_batch / single:.2f}x one page)")
    print(f"input cost per newsletter ({settings.ANTHROPIC_MODEL}, material up to {settings.MATERIAL_MAX_TOKENS:,} "
          "tokens a topic):")
    print(describe("with source material", with_material))
    print(describe("without source material", without_material))
    return 0 if parallel <= 1.5 * single else 1


if __name__ == "__main__":
    raise SystemExit(main())
