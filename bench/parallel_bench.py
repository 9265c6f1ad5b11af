"""Parallel figures: a batch of 8 on 8 Celery worker slots against an API taking 2 s a call finishes in about the
time of one call (target: at most 1.5 times), where drafting in one process takes eight calls' time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench.budget_bench import bench_database_url
from bench.common import setup_django

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 2.0
SIZE = 8
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


def fresh_topics(count: int) -> list[int]:
    """`count` new approved topics, one per category, never drafted before (each run makes its own)."""
    from topics.models import Category, Topic

    run = uuid.uuid4().hex[:6]
    categories = list(Category.objects.all())
    return [
        Topic.objects.create(
            title=f"{TITLES.get(category.slug, category.name)} ({run})", source="parallel-bench",
            external_id=f"{run}-{n}", score=50, status="approved", category=category,
        ).pk
        for n, category in zip(range(count), categories * (count // len(categories) + 1))
    ]


def new_batch(size: int):
    from batches import running

    return running.create_batch(size=size, budget_usd=Decimal("40"), topic_ids=fresh_topics(size))


def timed_inline(size: int) -> float:
    from batches import running

    batch = new_batch(size)
    started = time.perf_counter()
    batch = running.run_inline(batch=batch)
    elapsed = time.perf_counter() - started
    assert batch.status == "done", (batch.status, batch.status_reason)
    return elapsed


def timed_on_workers(size: int) -> float:
    """From handing the batch to the broker until its last draft is in the database."""
    from batches import running
    from batches.models import Batch

    batch = new_batch(size)
    started = time.perf_counter()
    running.enqueue_batch(batch=batch)
    deadline = started + 120
    while not Batch.objects.filter(pk=batch.pk, status__in=Batch.FINAL_STATUSES).exists():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"batch #{batch.pk} did not finish on the workers within 120 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    batch.refresh_from_db()
    assert batch.status == "done", (batch.status, batch.status_reason)
    return elapsed


def start_worker(env: dict[str, str], concurrency: int) -> tuple[subprocess.Popen, Path]:
    log_path = ROOT / "var" / "parallel-bench-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "newsroom", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--without-heartbeat", "--without-gossip", "--without-mingle",
             "-Q", "celery", "--loglevel", "INFO", "-n", f"parallel-bench-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
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


def main() -> int:
    import redis

    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()
    except redis.RedisError as exc:
        print(f"parallel bench needs Redis at {REDIS_URL} (BENCH_REDIS_URL): {exc}")
        return 1
    with FakeAnthropicServer(latency=LATENCY) as fake:
        os.environ.update(
            CELERY_BROKER_URL=REDIS_URL, ANTHROPIC_BASE_URL=fake.base_url,
            ANTHROPIC_API_KEY="bench-key-not-a-secret", DJANGO_DEBUG=os.environ.get("DJANGO_DEBUG", "1"),
        )
        setup_django(database_url=bench_database_url())
        from django.conf import settings

        vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"parallel bench on {vendor} and Redis, fake API at {LATENCY:g} s a call")
        single = timed_inline(1)
        sequential = timed_inline(SIZE)
        worker, _ = start_worker({**os.environ, "PYTHONPATH": str(ROOT)}, concurrency=SIZE)
        try:
            timed_on_workers(1)  # warm-up: every pool process has loaded the app; not counted
            parallel = timed_on_workers(SIZE)
        finally:
            stop_worker(worker)
    print(f"  single call (batch of 1, in-process): {single:.2f} s")
    print(f"  batch of {SIZE}, sequential in-process: {sequential:.2f} s")
    print(f"  batch of {SIZE}, {SIZE} worker slots: {parallel:.2f} s "
          f"({parallel / single:.2f}x a single call; target at most 1.5x)")
    print(f"  speed-up sequential/parallel: {sequential / parallel:.1f}x")
    return 0 if parallel <= 1.5 * single else 1


if __name__ == "__main__":
    raise SystemExit(main())
