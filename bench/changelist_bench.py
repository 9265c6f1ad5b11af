"""Issue 12 figures: the admin's topic list at 1,000,000 topics must answer in at most 150 ms on PostgreSQL and on
SQLite, with a number of queries that does not grow with the table and no count of the whole table; the ledger and
draft lists are measured the same way at 1,000,000 ledger entries and 100,000 drafts.

Each database is the benchmark's own: a temporary SQLite file, and (when BENCH_POSTGRES_URL's server answers) a
fresh PostgreSQL database it creates and drops. Tables are filled with INSERT ... SELECT over a number series
(generate_series; a recursive CTE on SQLite). Pages are requested with Django's test client as a superuser, each
repeated; the figures are the median and spread beside the target, with this process's CPU time and the load
average beside them (the machine may be shared). PostgreSQL is measured as filled (no planner statistics:
autovacuum is off for these tables, as it is on the shared server) and again after ANALYZE. The pages: the topic
list's default order, page 2 and a deep page, each filter (status, category, source, locked), a filter with a
deep page, two filters at once and a search; the desk index; the ledger and draft lists with their filters.
"""
from __future__ import annotations

import os
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


# Each title: six made-up words of three syllables, chosen by hashes of the row number. Titles then share almost
# no words, as unrelated stories do; "Bench topic number N" made every title a near-duplicate candidate of every
# other, so the list's "repeat" check compared each row with all 500 recent stories in full.
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_TITLE_HASHES = ((7919, 1), (104729, 3), (1299709, 5), (15485863, 7), (32452843, 11), (49979687, 13))


def sql_title(number: str) -> str:
    """SQL for a made-up title of six words, from the integer SQL expression `number` (both databases)."""

    def letter(alphabet: str, key: str) -> str:
        return f"substr('{alphabet}', CAST(1 + ({key}) % {len(alphabet)} AS INTEGER), 1)"

    def word(key: str) -> str:
        syllables, step = [], 1
        for _ in range(3):
            syllables += [letter(_CONSONANTS, f"{key} / {step}"), letter(_VOWELS, f"{key} / {step * 14}")]
            step *= 14 * 5
        return " || ".join(syllables)

    return " || ' ' || ".join(word(f"(({number}) * {m} + {a}) % 1000003") for m, a in _TITLE_HASHES)


def fill() -> None:
    from django.db import connection

    from batches.models import Batch, CostLedgerEntry, Newsletter
    from topics.models import Category, Topic

    categories = list(Category.objects.order_by("position").values_list("pk", flat=True))
    started = time.perf_counter()
    fill_series(Topic, count=TOPICS, expressions={
        "title": sql_title("n"),
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
    # What batches records on a topic whose draft was saved (topics.usage): the list's "used" column and the
    # stories it checks each topic against read it.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE topics_topic SET usage = 'drafted', used_at = (SELECT MIN(created_at) FROM batches_newsletter n"
            " WHERE n.topic_id = topics_topic.id), drafted_at = (SELECT MIN(created_at) FROM batches_newsletter n"
            " WHERE n.topic_id = topics_topic.id) WHERE id IN (SELECT topic_id FROM batches_newsletter"
            " WHERE status IN ('generated', 'approved', 'rejected'))"
        )
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
    print(f"  {label:<42} {spread(timings)}{verdict}, this process's CPU median {median(cpu):.0f} ms; {queries} "
          f"queries, {len(full_counts)} unbounded COUNT; load {os.getloadavg()[0]:.1f}")
    return ok


def run(database_url: str) -> int:
    setup_django(database_url=database_url)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from batches.models import Batch
    from topics.models import Category

    # The test client's host; not setup_test_environment(), whose instrumented template rendering (a copy of
    # every context, for assertions) would be measured as the page's own time.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    print(f"changelist bench on {connection.vendor}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tables = ("topics_topic", "batches_costledgerentry", "batches_newsletter", "batches_batch")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # "no statistics" means none, whatever the server's own setting
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    fill()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stats WHERE tablename = ANY(%s)", [list(tables)])
            print(f"  planner statistics on the filled tables: {cursor.fetchone()[0]} columns (none: no ANALYZE yet)")
    user = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", "bench-password-9x")
    client = Client()
    client.force_login(user)
    category = Category.objects.order_by("position").first()
    batch = Batch.objects.order_by("-pk").values_list("pk", flat=True)[0]
    from topics.models import Topic

    searched = Topic.objects.get(external_id=f"bench-{TOPICS // 8}").title.split()[0]  # a word of one title
    pages = [
        ("topic list", "/admin/topics/topic/", TARGET_MS),
        ("topic list, page 2", "/admin/topics/topic/?p=2", TARGET_MS),
        ("topic list, page 200 (rows 9,951-10,000)", "/admin/topics/topic/?p=200", TARGET_MS),
        ("topic list, status = new", "/admin/topics/topic/?status__exact=new", TARGET_MS),
        ("topic list, status = approved", "/admin/topics/topic/?status__exact=approved", TARGET_MS),
        ("topic list, status = rejected", "/admin/topics/topic/?status__exact=rejected", TARGET_MS),
        ("topic list, status = new, page 200", "/admin/topics/topic/?status__exact=new&p=200", TARGET_MS),
        ("topic list, one category", f"/admin/topics/topic/?category__id__exact={category.pk}", TARGET_MS),
        ("topic list, one category, page 200", f"/admin/topics/topic/?category__id__exact={category.pk}&p=200",
         TARGET_MS),
        ("topic list, source = reddit", "/admin/topics/topic/?source=reddit", TARGET_MS),
        ("topic list, category locked", "/admin/topics/topic/?category_locked__exact=1", TARGET_MS),
        ("topic list, new + one category", f"/admin/topics/topic/?status__exact=new&category__id__exact={category.pk}",
         TARGET_MS),
        # A search reads the table whatever the plan (no index answers "contains"): measured, no target.
        ("topic list, search (reads the table)", f"/admin/topics/topic/?q={searched}", None),
        ("desk index (what waits: 3 counts)", "/admin/", None),
        ("ledger list", "/admin/batches/costledgerentry/", None),
        ("ledger list, provider = perplexity", "/admin/batches/costledgerentry/?provider=perplexity", None),
        ("ledger list, one batch", f"/admin/batches/costledgerentry/?batch__id__exact={batch}", None),
        ("ledger list, page 100", "/admin/batches/costledgerentry/?p=100", None),
        ("draft list", "/admin/batches/newsletter/", None),
        ("draft list, drafts to review", "/admin/batches/newsletter/?status__exact=generated", None),
        ("draft list, page 100", "/admin/batches/newsletter/?p=100", None),
    ]
    from newsroom.startup import freeze_loaded_objects

    # As newsroom.wsgi does in each gunicorn worker once the app is loaded: no full collection walks it per request.
    print(f"  {freeze_loaded_objects():,} objects loaded before the first request frozen (as in newsroom.wsgi)")
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
