"""Parallel drafting (issue 12): batches of 8, 32 and 64 items on 16 Celery worker slots against the loopback fake
of the Anthropic API answering in 2 s a call, each beside its ideal, ceil(items / slots) x 2 s (target: 64 items
within 1.15 x the ideal). A real worker (prefork, 16 processes), a real broker (Redis, BENCH_REDIS_URL) and a
database this run creates and drops (PostgreSQL at BENCH_POSTGRES_URL, else SQLite). Where the time beyond the
ideal goes is printed from the items' own timestamps.
"""
from __future__ import annotations

import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from bench.common import setup_django
from bench.fresh import fresh_database, machine_load, postgres_reachable, spread, verdict

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 2.0
SLOTS = 16
SIZES = (8, 32, 64)
REPEATS = 3
TARGET = 1.15  # for 64 items on 16 slots
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TITLES = {
    "shipping_logistics": "USPS raises Ground Advantage rates for small parcels",
    "pricing_margins": "How to hold margins when a supplier raises prices",
    "conversion_optimization": "One-page checkout lifted conversion for an apparel brand",
    "ads_marketing": "Meta shopping campaigns get cheaper before the holidays",
    "inventory_management": "Reorder points to revisit before Black Friday stockouts",
    "customer_retention": "Loyalty programmes that bring second orders",
    "product_sourcing": "Vetting factories in Vietnam without flying there",
    "platform_tools": "Shopify Flow adds scheduled triggers for automations",
}
WORDS = ("carrier parcel warehouse pallet freight courier label tariff duty margin discount bundle coupon checkout "
         "cart funnel landing upsell headline creative audience retargeting budget influencer affiliate reorder "
         "stockout forecast backorder supplier factory sample prototype packaging loyalty referral subscription "
         "review survey winback churn onboarding webhook dashboard plugin integration automation invoice refund "
         "chargeback returns pricing wholesale marketplace storefront catalog photography video newsletter "
         "seasonal holiday spring summer autumn winter premium budget eco recycled handmade vintage organic "
         "kids pets fitness kitchen garden beauty jewelry apparel footwear outdoor travel office gaming").split()


def distinct_titles(count: int, seed: str) -> list[str]:
    """`count` titles no two of which selection would take for one story (it drafts only one of those)."""
    from topics.dedupe import is_near_duplicate

    rng = random.Random(seed)
    titles: list[str] = []
    while len(titles) < count:
        title = " ".join(rng.sample(WORDS, 5)).capitalize()
        if not any(is_near_duplicate(title, other) for other in titles):
            titles.append(title)
    return titles


def fresh_topics(count: int) -> list[int]:
    """`count` new approved topics spread over the categories, never drafted before (each call makes its own)."""
    from topics.models import Category, Topic

    run = uuid.uuid4().hex[:6]
    categories = list(Category.objects.all())
    named = [TITLES.get(c.slug, c.name) for c in categories]
    titles = [f"{t} ({run})" for t in named] if count <= len(named) else distinct_titles(count, run)
    return [
        Topic.objects.create(
            title=title, source="parallel-bench", external_id=f"{run}-{n}", score=50, status="approved",
            category=categories[n % len(categories)],
        ).pk
        for n, title in zip(range(count), titles)
    ]


def new_batch(size: int):
    from batches import running

    return running.create_batch(size=size, budget_usd=Decimal("40"), topic_ids=fresh_topics(size))


@dataclass(frozen=True)
class Run:
    items: int
    seconds: float
    start_lag: float  # from handing the batch to the broker to the first item claimed
    item_overhead: float  # median, per item: claim to draft saved, less the call's own LATENCY
    slowest_item: float  # the same for the slowest item: a slot's items run one after another, so tails add up
    # ... and its parts, from the item's ledger entry: claim to the reservation's start (loading the item, its
    # material, the price); the reservation's start to its settlement, less LATENCY (the reservation, the call's
    # HTTP, the answer's checks, the draft's rows); the settlement to the draft saved (the item's row, the commit).
    before_call: float
    around_call: float
    after_call: float
    end_lag: float  # from the last draft saved to the batch closed
    count_tokens: int
    messages: int

    @property
    def ideal(self) -> float:
        return math.ceil(self.items / SLOTS) * LATENCY


def timed_on_workers(size: int, fake) -> Run:
    """From handing the batch to the broker until it is closed with every draft in the database (its finished_at,
    on the same clock as the hand-over)."""
    from django.utils import timezone

    from batches import running
    from batches.models import Batch, CostLedgerEntry

    batch = new_batch(size)
    counted, called = fake.count_tokens_calls, fake.message_calls
    handed_at = timezone.now()
    started = time.perf_counter()
    running.enqueue_batch(batch=batch)
    deadline = started + math.ceil(size / SLOTS) * LATENCY * 3 + 60
    # The time is read from the batch (closed at finished_at), so the polling can be slow and cheap: a query every
    # 20 ms took a tenth of a core from the workers.
    while not Batch.objects.filter(pk=batch.pk, status__in=Batch.FINAL_STATUSES).exists():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"batch #{batch.pk} of {size} did not finish on the workers in time")
        time.sleep(0.25)
    batch.refresh_from_db()
    elapsed = (batch.finished_at - handed_at).total_seconds()
    if batch.status != Batch.Status.DONE:
        raise RuntimeError(f"batch #{batch.pk} ended {batch.status}: {batch.status_reason}")
    items = list(batch.newsletters.values_list("claimed_at", "generated_at"))
    entries = list(CostLedgerEntry.objects.filter(batch=batch).values_list(
        "newsletter__claimed_at", "created_at", "settled_at", "newsletter__generated_at"))
    return Run(
        items=len(items), seconds=elapsed,
        start_lag=(min(c for c, _ in items) - handed_at).total_seconds(),
        item_overhead=statistics.median((g - c).total_seconds() - LATENCY for c, g in items),
        slowest_item=max((g - c).total_seconds() - LATENCY for c, g in items),
        before_call=statistics.median((r - c).total_seconds() for c, r, _, _ in entries),
        around_call=statistics.median((s - r).total_seconds() - LATENCY for _, r, s, _ in entries),
        after_call=statistics.median((g - s).total_seconds() for _, _, s, g in entries),
        end_lag=(batch.finished_at - max(g for _, g in items)).total_seconds(),
        count_tokens=fake.count_tokens_calls - counted, messages=fake.message_calls - called,
    )


def start_worker(env: dict[str, str], concurrency: int) -> tuple[subprocess.Popen, Path]:
    log_path = ROOT / "var" / "parallel-bench-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "newsroom", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--without-heartbeat", "--without-gossip", "--without-mingle",
             "-Q", "celery", "--loglevel", "INFO", "-n", f"parallel-bench-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while " ready." not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            raise RuntimeError(f"the celery worker did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    return worker, log_path


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


def report(runs: dict[int, list[Run]], warm_up: Run) -> bool:
    """Print the figures; True when drafting was lean (one call per item and no count_tokens round trip: the
    requests' fixed part is counted once per worker process, in the warm-up)."""
    print(f"  {'items':>5}  {'ideal':>6}  {'measured':>22}  {'x ideal':>18}  target")
    for size in SIZES:
        rows = runs[size]
        ratios = [r.seconds / r.ideal for r in rows]
        target = "—"
        if size == 64:
            target = f"≤ {TARGET:.2f}x: {verdict(statistics.median(ratios) <= TARGET)}"
        print(f"  {size:>5}  {rows[0].ideal:>5.0f}s  {spread([r.seconds for r in rows], '{:.2f} s'.format):>22}  "
              f"{spread(ratios, '{:.2f}x'.format):>18}  {target}")
    print("  where the time beyond the ideal goes, median (min–max) over the runs:")
    for size in SIZES:
        rows = runs[size]

        def seconds(values: list[float]) -> str:
            return spread(values, "{:.2f} s".format)

        print(f"    {size:>2} items: {seconds([r.start_lag for r in rows])} from hand-over to the first claim "
              f"(run_batch: selection, items, fan-out); {seconds([r.end_lag for r in rows])} from the last draft "
              f"to the batch closed; per item, {seconds([r.item_overhead for r in rows])} beyond the call "
              f"(the slowest item {seconds([r.slowest_item for r in rows])}): "
              f"{seconds([r.before_call for r in rows])} claim to reservation (item, material, price), "
              f"{seconds([r.around_call for r in rows])} reservation to settlement less the call, "
              f"{seconds([r.after_call for r in rows])} settlement to draft saved")
    calls = [(r.items, r.count_tokens, r.messages) for rows in runs.values() for r in rows]
    counts = warm_up.count_tokens + sum(c[1] for c in calls)
    lean = all(called == items for items, _, called in calls + [(warm_up.items, 0, warm_up.messages)]) \
        and counts <= SLOTS
    print(f"  lean drafting: {sum(c[2] for c in calls)} messages calls for {sum(c[0] for c in calls)} items and "
          f"{sum(c[1] for c in calls)} count_tokens, after {warm_up.count_tokens} in the warm-up's {warm_up.items} "
          f"(target: one call per item and no count before it, only one count per worker process of the "
          f"requests' fixed part, {SLOTS} in all): {verdict(lean)}")
    return lean


def main() -> int:
    import redis

    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()  # the bench's own Redis database
    except redis.RedisError as exc:
        print(f"parallel bench needs Redis at {REDIS_URL} (BENCH_REDIS_URL): {exc}")
        return 1
    vendor = "postgresql" if postgres_reachable() is None else "sqlite"
    with FakeAnthropicServer(latency=LATENCY) as fake, fresh_database(vendor=vendor, purpose="parallel") as url:
        os.environ.update(
            CELERY_BROKER_URL=REDIS_URL, ANTHROPIC_BASE_URL=fake.base_url,
            ANTHROPIC_API_KEY="bench-key-not-a-secret", DJANGO_DEBUG="0",
        )
        started = time.perf_counter()
        setup_django(database_url=url)
        print(f"parallel bench on {vendor} (a fresh database, migrated in {time.perf_counter() - started:.0f} s) "
              f"and Redis ({REDIS_URL}); fake API at {LATENCY:g} s a call; {SLOTS} worker slots (one prefork worker); "
              f"median (min–max) of {REPEATS} runs; {machine_load()}")
        worker, _ = start_worker({**os.environ, "PYTHONPATH": str(ROOT)}, concurrency=SLOTS)
        try:
            # warm-up: every pool process has its connection, its SDK client and its count of the fixed part
            warm_up = timed_on_workers(SLOTS, fake)
            runs: dict[int, list[Run]] = {size: [] for size in SIZES}
            for _ in range(REPEATS):
                for size in SIZES:
                    runs[size].append(timed_on_workers(size, fake))
        finally:
            stop_worker(worker)
        lean = report(runs, warm_up)
        print(f"  parallel bench took {time.perf_counter() - started:.0f} s; {machine_load()}")
    return 0 if lean else 1  # a missed timing target is printed; only a wrong outcome fails the bench


if __name__ == "__main__":
    raise SystemExit(main())
