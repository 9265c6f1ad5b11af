"""Budget figures: what a reservation and its settlement cost per call, alone and with 16 workers contending,
and how often 16 concurrent workers pushed a small budget over (the answer must be 0)."""
from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

from bench.common import median, percentile, setup_django

BENCH_DATABASE = "newsroom_bench"
SERIAL_CALLS = 400
WORKERS = 16
ROUNDS = 20
SMALL_BUDGET = Decimal("0.50")
WORST_CASE = Decimal("0.031")
ACTUAL = Decimal("0.004")


def bench_database_url() -> str | None:
    """BENCH_DATABASE_URL; else, when DATABASE_URL is PostgreSQL, a dedicated `newsroom_bench` database on that
    server (created if missing), so a benchmark never writes to the developer's own data; else None (SQLite)."""
    if os.environ.get("BENCH_DATABASE_URL"):
        return os.environ["BENCH_DATABASE_URL"]
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://", "pgsql://")):
        return None
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    return urlunsplit((parts.scheme, parts.netloc, f"/{BENCH_DATABASE}", parts.query, ""))


def reserve_and_settle(batch_id: int, worst_case: Decimal, actual: Decimal) -> float | None:
    """One paid call's ledger work; its duration in milliseconds, or None when the budget refused it."""
    from batches import ledger

    started = time.perf_counter()
    try:
        reservation = ledger.reserve(idempotency_key=f"bench:{uuid.uuid4().hex}", worst_case_usd=worst_case,
                                     batch_id=batch_id, description="budget bench")
    except ledger.BudgetExhausted:
        return None
    ledger.settle(entry_id=reservation.entry_id, actual_usd=actual)
    return (time.perf_counter() - started) * 1000


def serial_timings() -> list[float]:
    from batches.models import Batch

    batch = Batch.objects.create(budget_usd=Decimal("1000000"), model="claude-sonnet-4-6")
    return [reserve_and_settle(batch.pk, WORST_CASE, ACTUAL) for _ in range(SERIAL_CALLS)]


def contended_round() -> tuple[list[float], Decimal, Decimal]:
    """16 workers spend one small budget until it refuses them; returns their timings, the spend and budget."""
    from django.db import connection

    from batches import ledger
    from batches.models import Batch

    batch = Batch.objects.create(budget_usd=SMALL_BUDGET, model="claude-sonnet-4-6")
    start = threading.Barrier(WORKERS)

    def work(number: int) -> list[float]:
        timings: list[float] = []
        try:
            start.wait(timeout=30)
            while (took := reserve_and_settle(batch.pk, WORST_CASE, ACTUAL)) is not None:
                timings.append(took)
            return timings
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        timings = [t for per_worker in pool.map(work, range(WORKERS)) for t in per_worker]
    return timings, ledger.batch_spent(batch.pk), batch.budget_usd


def main() -> None:
    from django.conf import settings

    setup_django(database_url=bench_database_url())
    vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"budget bench on {vendor} ({settings.DATABASES['default']['NAME']})")
    serial = serial_timings()
    print(f"  reserve + settle, one worker: median {median(serial):.2f} ms, p99 {percentile(serial, 0.99):.2f} ms "
          f"per call ({SERIAL_CALLS} calls)")
    contended: list[float] = []
    overspent = 0
    for _ in range(ROUNDS):
        timings, spent, budget = contended_round()
        contended += timings
        overspent += spent > budget
    print(f"  reserve + settle, {WORKERS} workers on one ${SMALL_BUDGET} budget: median {median(contended):.2f} ms, "
          f"p99 {percentile(contended, 0.99):.2f} ms per call ({len(contended)} calls in {ROUNDS} rounds)")
    print(f"  overspend: {overspent} of {ROUNDS} rounds ended above the budget (must be 0)")


if __name__ == "__main__":
    main()
