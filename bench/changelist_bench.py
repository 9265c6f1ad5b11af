"""Issue 12 figures: the admin's topic list at 1,000,000 topics must answer in at most 150 ms on PostgreSQL and on
SQLite, with a number of queries that does not grow with the table and no count of the whole table; the ledger and
draft lists are measured the same way at 1,000,000 ledger entries and 100,000 drafts.

Each database is the benchmark's own: a temporary SQLite file, and (when BENCH_POSTGRES_URL's server answers) a
fresh PostgreSQL database it creates and drops. Tables are filled with INSERT ... SELECT over a number series
(generate_series; a recursive CTE on SQLite). Pages are requested with Django's test client as a superuser, each
repeated; the figures are the median and spread beside the target. PostgreSQL is measured as filled (no planner
statistics: the shared server runs with autovacuum off) and again after ANALYZE.
"""
from __future__ import annotations

import re
import sys
import time

from bench.common import (
    fill_series,
    median,
    run_on_fresh_databases,
    setup_django,
    spread,
    sql_case,
    sql_time_ago,
)

TOPICS = 1_000_000
LEDGER_ENTRIES = 1_000_000
BATCHES = 12_500  # of 8 drafts each
TARGET_MS = 150.0
REPEATS = 15
SOURCES = ("reddit", "perplexity", "tubelab", "apify", "import")
# A COUNT over one of the large tables that no LIMIT bounds: what the lists must never run.
WHOLE_TABLE_COUNT = re.compile(
    r'COUNT\(.*FROM "(topics_topic|batches_costledgerentry|batches_newsletter)"', re.IGNORECASE | re.DOTALL
)


def fill() -> None:
    from batches.models import Batch, CostLedgerEntry, Newsletter
    from topics.models import Category, Topic

    categories = list(Category.objects.order_by("position").values_list("pk", flat=True))
    started = time.perf_counter()
    fill_series(Topic, count=TOPICS, expressions={
        "title": "'Bench topic number ' || n",
        "source": sql_case("n", [f"'{s}'" for s in SOURCES]),
        "external_id": "'bench-' || n",
        "score": "((n * 7919) % 10000) / 100.0",
        "category_id": sql_case("n", categories),
        "status": sql_case("n", ["'approved'", "'rejected'"] + ["'new'"] * 8),
        "category_locked": "(n % 1000 = 0)",
        "created_at": sql_time_ago("n"),
    })
    fill_series(Batch, count=BATCHES, expressions={
        "status": "'done'", "budget_usd": "40", "model": "'claude-sonnet-4-5'", "created_at": sql_time_ago("n * 600"),
    })
    first_batch = Batch.objects.order_by("pk").values_list("pk", flat=True)[0]
    first_topic = Topic.objects.order_by("pk").values_list("pk", flat=True)[0]
    # Eight drafts per batch, each on its own topic.
    fill_series(Newsletter, count=BATCHES * 8, expressions={
        "batch_id": f"{first_batch} + (n - 1) / 8", "topic_id": f"{first_topic} + n - 1", "position": "(n - 1) % 8",
        "status": sql_case("n", ["'generated'", "'approved'", "'rejected'", "'failed'"]),
        "subject": "'Bench draft ' || n", "created_at": sql_time_ago("n * 75"),
    })
    fill_series(CostLedgerEntry, count=LEDGER_ENTRIES, expressions={
        "idempotency_key": "'bench-' || n", "created_at": sql_time_ago("n * 5"), "status": "'settled'",
        "provider": sql_case("n", ["'anthropic'"] * 7 + ["'perplexity'", "'tubelab'", "'apify'"]),
        "model": sql_case("n", ["'claude-sonnet-4-5'"] * 7 + ["'sonar'", "''", "''"]),
        "batch_id": f"{first_batch} + n % {BATCHES}", "reserved_usd": "0.03", "amount_usd": "0.01",
    })
    print(f"  filled {TOPICS:,} topics, {BATCHES:,} batches, {BATCHES * 8:,} drafts, {LEDGER_ENTRIES:,} ledger "
          f"entries in {time.perf_counter() - started:.0f} s")


def measure(client, url: str) -> tuple[list[float], list[float], int, list[str]]:
    """Request `url` REPEATS times (after two warm-up requests): wall and this process's CPU milliseconds, the
    number of queries, and any unbounded count of a large table."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(2):
        assert client.get(url, secure=True).status_code == 200, url
    timings, cpu = [], []
    for _ in range(REPEATS):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(url, secure=True)
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
        assert response.status_code == 200, url
    with CaptureQueriesContext(connection) as queries:
        client.get(url, secure=True)
    counts = [q["sql"] for q in queries.captured_queries if WHOLE_TABLE_COUNT.search(q["sql"])]
    return timings, cpu, len(queries), [sql for sql in counts if " LIMIT " not in sql.upper()]


def report(client, label: str, url: str, *, target: float | None) -> bool:
    timings, cpu, queries, full_counts = measure(client, url)
    verdict = ""
    ok = not full_counts
    if target is not None:
        ok = ok and median(timings) <= target
        verdict = f" (target <= {target:g} ms: {'ok' if median(timings) <= target else 'MISSED'})"
    print(f"  {label:<38} {spread(timings)}{verdict}, CPU median {median(cpu):.0f} ms; {queries} queries, "
          f"{len(full_counts)} unbounded COUNT")
    return ok


def run(database_url: str) -> int:
    setup_django(database_url=database_url)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from topics.models import Category

    # The test client's host; not setup_test_environment(), whose instrumented template rendering (a copy of
    # every context, for assertions) would be measured as the page's own time.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    print(f"changelist bench on {connection.vendor}")
    fill()
    user = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", "bench-password-9x")
    client = Client()
    client.force_login(user)
    category = Category.objects.order_by("position").first()
    pages = [
        ("topic list", "/admin/topics/topic/", TARGET_MS),
        ("topic list, status = new", "/admin/topics/topic/?status__exact=new", TARGET_MS),
        ("topic list, one category", f"/admin/topics/topic/?category__id__exact={category.pk}", TARGET_MS),
        ("topic list, source = reddit", "/admin/topics/topic/?source=reddit", TARGET_MS),
        ("topic list, category locked", "/admin/topics/topic/?category_locked__exact=1", TARGET_MS),
        ("topic list, page 200", "/admin/topics/topic/?p=200", TARGET_MS),
        ("ledger list", "/admin/batches/costledgerentry/", None),
        ("ledger list, provider = perplexity", "/admin/batches/costledgerentry/?provider=perplexity", None),
        ("draft list", "/admin/batches/newsletter/", None),
        ("draft list, drafts to review", "/admin/batches/newsletter/?status__exact=generated", None),
    ]
    ok = True
    for label, url, target in pages:
        ok = report(client, label, url, target=target) and ok
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        print("  after ANALYZE (planner statistics present, as autovacuum keeps them in production):")
        for label, url, target in pages:
            ok = report(client, label, url, target=target) and ok
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--database":
        return run(sys.argv[2])
    return run_on_fresh_databases("bench.changelist_bench")


if __name__ == "__main__":
    sys.exit(main())
