"""Selection time against the size of the pool (issue 12 item 4): at most 50 ms at 1,000,000 topics on PostgreSQL,
with fresh planner statistics and with none.

Every figure is measured in a database made for it and thrown away afterwards (bench.fresh): a SQLite file in a
temporary directory under var/, and a PostgreSQL database named BENCH_DATABASE_PREFIX, the point and the process
id, created on the server of BENCH_POSTGRES_URL and dropped at the end. PostgreSQL's autovacuum is turned off for
the topic table, so "no statistics" means none, whatever the server's own setting. Each size runs in its own
process, so nothing is cached from a bigger run. Beside each wall time: this process's CPU time, and the load
average (the machine may be shared).

Each pool holds approved (90%) and unreviewed topics in the eight categories, and 500 stories drafted in the last
90 days that selection must steer clear of (the most it reads). Each figure is the median of REPEATS selections
after one warm-up, with the fastest and slowest beside it.

    python -m bench.selection_bench                 # the curve: 1,000 / 100,000 / 1,000,000 topics
    python -m bench.selection_bench --sizes 1000    # one point
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

from bench.common import ROOT
from bench.fresh import postgres_reachable

SIZES = (1_000, 100_000, 1_000_000)
REPEATS = 15
TARGET_MS = 50.0
RECENTLY_DRAFTED = 500
CHUNK = 10_000


# --- one point, in a process of its own -------------------------------------------------------------------------

def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    """Made-up words: headlines built from them share almost nothing, as unrelated stories do."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def fill(count: int) -> None:
    """`count` topics, inserted as plain rows (insert_rows: no model object per row)."""
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from bench.common import insert_rows
    from topics.models import Category, Topic

    categories = list(Category.objects.values_list("pk", flat=True))
    rng = random.Random(7)
    words = vocabulary(rng)
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value

    def rows():
        for n in range(count):
            drafted = n < RECENTLY_DRAFTED
            used = adapt(now - timedelta(hours=n)) if drafted else None
            yield (" ".join(rng.sample(words, 7)), "bench", f"bench-{n}", round(rng.uniform(0, 100), 1),
                   "approved" if n % 10 else "new", categories[n % len(categories)],
                   adapt(now - timedelta(minutes=n)), "drafted" if drafted else "unused", used, used)

    insert_rows(Topic, rows=rows(), chunk=CHUNK, columns=[
        "title", "source", "external_id", "score", "status", "category_id", "published_at", "usage", "used_at",
        "drafted_at",
    ])


def time_selection(*, include_new: bool) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from topics.selection import select_topics

    connection.queries_log.clear()  # a full log (the fill) would hide what is captured
    select_topics(size=8, include_new=include_new)  # warm-up
    timings, cpu = [], []
    for _ in range(REPEATS):
        with CaptureQueriesContext(connection) as queries:
            started, started_cpu = time.perf_counter(), time.process_time()
            selection = select_topics(size=8, include_new=include_new)
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
    timings.sort()
    return {
        "median_ms": timings[len(timings) // 2], "min_ms": timings[0], "max_ms": timings[-1],
        "cpu_ms": sorted(cpu)[len(cpu) // 2],
        "queries": len(queries), "categories": len({t.category_id for t in selection.topics}),
        "chosen": len(selection.topics), "left_out": selection.left_out.total,
    }


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure_point(*, vendor: str, size: int) -> dict:
    """Make a database, fill it with `size` topics, time selection without and with statistics, drop it."""
    from bench.fresh import fresh_database

    # A stopped run still drops its database: SIGTERM unwinds through fresh_database's `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with fresh_database(vendor="postgresql" if vendor == "postgres" else "sqlite", purpose=f"selection_{size}") as url:
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
        sys.path.insert(0, str(ROOT))
        import django
        from django.core.management import call_command
        from django.db import connection

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        if vendor == "postgres":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE topics_topic SET (autovacuum_enabled = false)")
        started = time.perf_counter()
        fill(size)
        fill_seconds = time.perf_counter() - started
        result = {"vendor": vendor, "size": size, "fill_s": fill_seconds}
        result["none"] = time_selection(include_new=False)
        result["none_new"] = time_selection(include_new=True)
        analyze()
        result["fresh"] = time_selection(include_new=False)
        result["fresh_new"] = time_selection(include_new=True)
        connection.close()
        return result


# --- the curve ---------------------------------------------------------------------------------------------------

def figure(row: dict) -> str:
    verdict = "ok" if row["median_ms"] <= TARGET_MS else "OVER"
    return (f"{row['median_ms']:7.1f} ms median (spread {row['min_ms']:.1f}-{row['max_ms']:.1f}), "
            f"target <= {TARGET_MS:.0f} ms: {verdict}; this process's CPU {row['cpu_ms']:.1f} ms; "
            f"{row['queries']} queries, {row['chosen']} chosen "
            f"from {row['categories']} categories, {row['left_out']} left out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--vendors", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--point", nargs=2, metavar=("VENDOR", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure_point(vendor=args.point[0], size=int(args.point[1]))))
        return 0

    vendors = list(args.vendors)
    unreachable = postgres_reachable() if "postgres" in vendors else None
    if unreachable:
        print(f"PostgreSQL skipped: no server at BENCH_POSTGRES_URL ({unreachable})")
        vendors.remove("postgres")
    print(f"selection of 8 topics, median of {REPEATS} after a warm-up; {RECENTLY_DRAFTED} recently drafted stories "
          f"to avoid; each point in a fresh database; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    failed = 0
    for vendor in vendors:
        for size in args.sizes:
            run = subprocess.run([sys.executable, "-m", "bench.selection_bench", "--point", vendor, str(size)],
                                 cwd=ROOT, capture_output=True, text=True)
            if run.returncode:
                print(f"{vendor} {size:>9,} topics: failed\n{run.stderr[-2000:]}")
                failed += 1
                continue
            row = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{vendor:<8} {size:>9,} topics (filled in {row['fill_s']:.0f} s; load average now "
                  f"{os.getloadavg()[0]:.1f})")
            for key, label in (("none", "no statistics"), ("fresh", "fresh ANALYZE"),
                               ("none_new", "no statistics, --include-new"),
                               ("fresh_new", "fresh ANALYZE, --include-new")):
                print(f"    {label:<30} {figure(row[key])}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
