"""Ledger figures (issue 12), each from a database this run creates and drops:

* reserve + settle throughput with 1 to 32 worker processes (each its own connection, all on one batch) beside
  the floor measured in the same run, interleaved with it: a bare SELECT ... FOR UPDATE + UPDATE + COMMIT on one
  row, through the driver directly, with the same worker counts (target: at least half the floor);
* the monthly cap on against off, in the same runs (target: the cap costs at most 20%);
* the per-call latency of reserve + settle at an empty ledger and at 100,000 entries (target: flat);
* the invariant: 32 workers over 20 rounds on a small budget, and on a small monthly cap, never overspend, and
  `reconcile` agrees with every running total afterwards.

PostgreSQL first (when BENCH_POSTGRES_URL answers), then SQLite, each in a process of its own, since Django is set
up once a process. `--profile` prints a cProfile of single-worker reserve + settle instead.
"""
from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from bench.common import ROOT, percentile, setup_django
from bench.fresh import connected_to, fresh_database, machine_load, postgres_reachable, spread, verdict

WORKER_COUNTS = {"postgresql": (1, 2, 4, 8, 16, 32), "sqlite": (1, 4)}
REPEATS = 5
TRIAL_SECONDS = 1.0
LATENCY_ROUNDS = 8
LATENCY_CALLS = 20
LEDGER_SIZE = 100_000
INVARIANT_WORKERS = 32
INVARIANT_ROUNDS = {"postgresql": 20, "sqlite": 5}  # SQLite takes one writer at a time: fewer rounds, same check
CAP_ROUNDS = {"postgresql": 5, "sqlite": 2}
SMALL_BUDGET = Decimal("0.50")
WORST_CASE = Decimal("0.031")
ACTUAL = Decimal("0.004")
LARGE_BUDGET = Decimal("100000")
FLOOR_TARGET = 0.50
CAP_COST_TARGET = 0.20
FLAT_TARGET = 1.20  # "flat": the figure at 100,000 entries within 20% of the empty ledger's

Op = Callable[[], bool]  # one unit of work; False means "refused, stop"


# --- the floor: the least a serialised budget update can cost on this database -------------------------------


class Bare:
    """A connection through the driver directly, no Django: psycopg for PostgreSQL; sqlite3 for SQLite, with the
    project's settings (WAL, synchronous=NORMAL, a 30 s busy timeout, the write lock taken at BEGIN)."""

    def __init__(self, url: str, vendor: str):
        self.vendor = vendor
        if vendor == "postgresql":
            import psycopg

            self.conn = psycopg.connect(url)  # a transaction opens with the first statement
        else:
            import sqlite3

            self.conn = sqlite3.connect(urlsplit(url).path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def transaction(self, *statements: str) -> None:
        if self.vendor == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")  # SQLite has no FOR UPDATE: the write lock at BEGIN is its lock
        for statement in statements:
            cursor = self.conn.execute(statement.replace(" FOR UPDATE", "") if self.vendor == "sqlite" else statement)
            if statement.startswith("SELECT"):
                cursor.fetchone()
        if self.vendor == "sqlite":
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()


LOCK_ROW = "SELECT total FROM bench_floor WHERE id = 1 FOR UPDATE"
MOVE_ROW = "UPDATE bench_floor SET total = total + 0.000001 WHERE id = 1"


def floor_table(url: str, vendor: str) -> None:
    bare = Bare(url, vendor)
    bare.transaction("CREATE TABLE bench_floor (id integer PRIMARY KEY, total numeric(14, 6) NOT NULL)",
                     "INSERT INTO bench_floor VALUES (1, 0)")
    bare.close()


# --- the ledger --------------------------------------------------------------------------------------------


def new_batch(budget: Decimal) -> int:
    from batches.models import Batch

    return Batch.objects.create(budget_usd=budget, model="claude-sonnet-4-6").pk


def reserve_and_settle(batch_id: int | None, *, worst_case: Decimal = WORST_CASE, actual: Decimal = ACTUAL,
                       settle: bool = True) -> bool:
    """One paid call's ledger work: reserve, then settle. False when the budget refused the reservation."""
    from batches import ledger

    try:
        reservation = ledger.reserve(idempotency_key=f"bench:{uuid.uuid4().hex}", worst_case_usd=worst_case,
                                     batch_id=batch_id, description="budget bench")
    except ledger.BudgetExhausted:
        return False
    if settle:
        ledger.settle(entry_id=reservation.entry_id, actual_usd=actual)
    return True


def monthly_cap(value: Decimal | None):
    from django.test.utils import override_settings

    return override_settings(MONTHLY_BUDGET_USD="" if value is None else str(value))


# --- worker processes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


@dataclass(frozen=True)
class Job:
    """What every worker does in one trial: `kind` "floor", or "ledger" on `batch_ids` (worker n takes batch
    n mod len) under the monthly `cap`, settling every call, or two in three when `leave_open`."""

    kind: str
    seconds: float
    batch_ids: tuple[int | None, ...] = ()
    cap: Decimal | None = None
    worst_case: Decimal = WORST_CASE
    leave_open: bool = False


def _operation(job: Job, number: int, floor: Bare) -> Op:
    if job.kind == "floor":
        return lambda: floor.transaction(LOCK_ROW, MOVE_ROW) or True
    batch_id, calls = job.batch_ids[number % len(job.batch_ids)], iter(range(10**9))
    return lambda: reserve_and_settle(batch_id, worst_case=job.worst_case,
                                      settle=not job.leave_open or next(calls) % 3 != 2)


def _serve(number: int, url: str, vendor: str, jobs, results, ready) -> None:
    """A worker process: one job after another until None, each started together with the other workers."""
    from django.db import connections

    floor = Bare(url, vendor)
    while (job := jobs.get()) is not None:
        try:
            op = _operation(job, number, floor)
            with monthly_cap(job.cap):
                op()  # warm: every code path loaded before the clock starts
                ready.wait(timeout=120)
                calls, deadline = 0, time.perf_counter() + job.seconds
                while time.perf_counter() < deadline:
                    calls += 1
                    if not op():
                        break
        except BaseException:
            ready.abort()  # the parent and the other workers stop waiting for this one
            raise
        results.put((calls, time.perf_counter()))
    floor.close()
    connections.close_all()


class Workers:
    """`count` forked worker processes, each with its own connections (the parent's are closed before the fork,
    so none is shared), that run trials together: a trial starts in all of them at once."""

    def __init__(self, count: int, url: str, vendor: str):
        from django.db import connections

        context = multiprocessing.get_context("fork")
        self.ready, self.results = context.Barrier(count + 1), context.Queue()
        self.jobs = [context.Queue() for _ in range(count)]
        connections.close_all()
        self.processes = [context.Process(target=_serve, args=(n, url, vendor, jobs, self.results, self.ready),
                                          daemon=True) for n, jobs in enumerate(self.jobs)]
        for process in self.processes:
            process.start()

    def run(self, job: Job) -> Trial:
        for jobs in self.jobs:
            jobs.put(job)
        self.ready.wait(timeout=120)
        started = time.perf_counter()
        outcomes = [self.results.get(timeout=job.seconds + 120) for _ in self.jobs]
        return Trial(ops=sum(o[0] for o in outcomes), seconds=max(o[1] for o in outcomes) - started)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for process in self.processes:
            process.join(timeout=30)
        if not any(exc) and any(process.exitcode for process in self.processes):
            raise RuntimeError(f"a worker process failed (exit codes {[p.exitcode for p in self.processes]})")


# --- the figures -------------------------------------------------------------------------------------------


def percent(value: float) -> str:
    return f"{value:.0%}"


def throughput(url: str, vendor: str) -> None:
    """Floor, ledger without and with the monthly cap, interleaved at each worker count, REPEATS times."""
    batch_id = new_batch(LARGE_BUDGET)
    print(f"  reserve + settle throughput, one batch, worker processes each with its own connection; "
          f"median (min–max) of {REPEATS} interleaved runs of {TRIAL_SECONDS:g} s each")
    print(f"  {'workers':>7}  {'floor ops/s':>16}  {'reserve+settle/s':>16}  {'of the floor':>15}  "
          f"{'with monthly cap/s':>18}  {'the cap costs':>16}")
    ratios_all, costs_all = [], []
    for workers in WORKER_COUNTS[vendor]:
        floor, plain, capped = [], [], []
        jobs = [(Job("floor", TRIAL_SECONDS), floor), (Job("ledger", TRIAL_SECONDS, (batch_id,)), plain),
                (Job("ledger", TRIAL_SECONDS, (batch_id,), cap=Decimal("99999999")), capped)]
        with Workers(workers, url, vendor) as pool:
            for repeat in range(REPEATS):
                for job, into in jobs[repeat % 3:] + jobs[:repeat % 3]:  # rotated: no kind always goes first
                    into.append(pool.run(job).rate)
        ratios = [p / f for p, f in zip(plain, floor, strict=True)]
        costs = [1 - c / p for c, p in zip(capped, plain, strict=True)]
        ratios_all.append(statistics.median(ratios))
        costs_all.append(statistics.median(costs))
        print(f"  {workers:>7}  {spread(floor, '{:.0f}'.format):>16}  {spread(plain, '{:.0f}'.format):>16}  "
              f"{spread(ratios, percent):>15}  {spread(capped, '{:.0f}'.format):>18}  {spread(costs, percent):>16}")
    measured = (f"reserve + settle against the floor: {percent(min(ratios_all))}–{percent(max(ratios_all))} "
                f"over 1–{WORKER_COUNTS[vendor][-1]} workers")
    if vendor == "postgresql":
        print(f"  {measured} (target ≥ {FLOOR_TARGET:.0%}): {verdict(min(ratios_all) >= FLOOR_TARGET)}")
    else:
        print(f"  {measured} (no target: SQLite's floor is a few microseconds of C with no commit to wait for, "
              f"so this measures Python against none)")
    print(f"  the monthly cap costs {percent(min(costs_all))}–{percent(max(costs_all))} "
          f"(target ≤ {CAP_COST_TARGET:.0%}): {verdict(max(costs_all) <= CAP_COST_TARGET)}")


def latency_round(url: str, vendor: str, batch_id: int) -> tuple[list[float], list[float]]:
    """LATENCY_CALLS floor transactions, then as many reserve + settle calls, one process: their times (ms)."""
    bare = Bare(url, vendor)
    reserve_and_settle(batch_id)  # warm: the connection was just opened
    floor_ms, ledger_ms = [], []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        bare.transaction(LOCK_ROW, MOVE_ROW)
        floor_ms.append((time.perf_counter() - started) * 1000)
    bare.close()
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        reserve_and_settle(batch_id)
        ledger_ms.append((time.perf_counter() - started) * 1000)
    return floor_ms, ledger_ms


def fill_ledger(batch_id: int, count: int) -> None:
    """`count` settled entries this month on the measured batch (what a ledger that sums would have to read),
    written by one INSERT ... SELECT over a number series, then the running totals set from them the way an
    operator would after a bulk load: reconcile --fix."""
    from django.db import connection, transaction
    from django.utils import timezone

    from batches import ledger
    from batches.models import CostLedgerEntry

    now = timezone.now()
    model = CostLedgerEntry(idempotency_key="", created_at=now, settled_at=now, batch_id=batch_id,
                            description="bench fill", status=CostLedgerEntry.Status.SETTLED,
                            reserved_usd=WORST_CASE, amount_usd=ACTUAL)
    fields = [f for f in CostLedgerEntry._meta.concrete_fields if not f.primary_key and f.name != "idempotency_key"]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in [CostLedgerEntry._meta.get_field("idempotency_key"), *fields])
    values = [f.get_db_prep_save(getattr(model, f.attname), connection) for f in fields]
    select = ", ".join(["'fill:' || n", *["%s"] * len(fields)])
    table = quote(CostLedgerEntry._meta.db_table)
    if connection.vendor == "postgresql":
        sql = f"INSERT INTO {table} ({columns}) SELECT {select} FROM generate_series(1, %s) AS s(n)"
    else:
        sql = (f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < %s) "
               f"INSERT INTO {table} ({columns}) SELECT {select} FROM s")
    params = [*values, count] if connection.vendor == "postgresql" else [count, *values]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    ledger.reconcile(fix=True)


def latency(url: str, vendor: str) -> None:
    """Reserve + settle on the run's database (an empty ledger) and on a copy of it holding LEDGER_SIZE more
    entries, alternating between the two every LATENCY_CALLS calls, so the machine's load drifting meanwhile
    favours neither; each round's figure is a median, and the two ledgers are compared round by round."""
    from django.db import connections

    from batches.models import CostLedgerEntry

    batch_id = new_batch(LARGE_BUDGET)
    connections.close_all()
    rounds: dict[str, list[tuple[list[float], list[float]]]] = {"empty": [], "full": []}
    with fresh_database(vendor=vendor, purpose="budget_full", copy_of=url) as full_url:
        with connected_to(full_url):
            started = time.perf_counter()
            fill_ledger(batch_id, LEDGER_SIZE)
            filled_in = time.perf_counter() - started
        for _ in range(LATENCY_ROUNDS):
            rounds["empty"].append(latency_round(url, vendor, batch_id))
            with connected_to(full_url):
                rounds["full"].append(latency_round(full_url, vendor, batch_id))
        with connected_to(full_url):
            sizes = {"full": CostLedgerEntry.objects.count()}
    sizes["empty"] = CostLedgerEntry.objects.count()
    print(f"  per-call latency, one process, median (min–max) over {LATENCY_ROUNDS} rounds of {LATENCY_CALLS} calls "
          f"alternating between the two ledgers (the floor measured just before each round):")
    medians = {key: [statistics.median(ledger_ms) for _, ledger_ms in rows] for key, rows in rounds.items()}
    for key, label in (("empty", f"an empty ledger (≤ {sizes['empty']:,} entries)"),
                       ("full", f"{sizes['full']:,} entries ({LEDGER_SIZE:,} added in {filled_in:.0f} s)")):
        every_call = [t for _, ledger_ms in rounds[key] for t in ledger_ms]
        floors = [statistics.median(floor_ms) for floor_ms, _ in rounds[key]]
        print(f"    at {label}: reserve + settle {spread(medians[key], '{:.2f} ms'.format)}, "
              f"p99 {percentile(every_call, 0.99):.2f} ms; floor {spread(floors, '{:.2f} ms'.format)}")
    ratios = [f / e for f, e in zip(medians["full"], medians["empty"], strict=True)]
    print(f"    {sizes['full']:,} entries against empty, round by round: {spread(ratios, '{:.2f}x'.format)} "
          f"(target: flat, ≤ {FLAT_TARGET:.2f}x): {verdict(statistics.median(ratios) <= FLAT_TARGET)}")


def invariant(url: str, vendor: str) -> bool:
    """32 workers empty a small budget until it refuses them, round after round; then the monthly cap likewise.
    Two calls in three are settled below their reservation, the third is left open (an unknown outcome).
    True when no budget was crossed (and each was filled) and reconcile finds every running total right."""
    from django.db.models import Sum

    from batches import ledger
    from batches.models import CostLedgerEntry

    def spent_by_entries(**where) -> Decimal:
        return CostLedgerEntry.objects.filter(**where).aggregate(t=Sum("amount_usd"))["t"] or Decimal("0")

    started = time.perf_counter()
    over, month_over, calls = 0, 0, 0
    rounds = [(new_batch(SMALL_BUDGET), WORST_CASE + Decimal(n) / 1000) for n in range(INVARIANT_ROUNDS[vendor])]
    with Workers(INVARIANT_WORKERS, url, vendor) as pool:
        for batch_id, worst in rounds:
            calls += pool.run(Job("ledger", 60, (batch_id,), worst_case=worst, leave_open=True)).ops
            spent = spent_by_entries(batch_id=batch_id)
            over += spent > SMALL_BUDGET or SMALL_BUDGET - spent >= worst  # over, or stopped before it was full
        for _ in range(CAP_ROUNDS[vendor]):
            cap = ledger.month_spent() + Decimal("0.40")
            batch_ids = (*[new_batch(LARGE_BUDGET) for _ in range(INVARIANT_WORKERS // 4)], None)
            calls += pool.run(Job("ledger", 60, batch_ids, cap=cap, leave_open=True)).ops
            month = spent_by_entries()
            month_over += month > cap or cap - month >= WORST_CASE
    drifts = ledger.reconcile()
    print(f"  invariant, {INVARIANT_WORKERS} worker processes: {over} of {INVARIANT_ROUNDS[vendor]} rounds on a "
          f"${SMALL_BUDGET} batch budget and {month_over} of {CAP_ROUNDS[vendor]} on a $0.40 monthly cap ended over "
          f"(or short of) their budget (target 0): {verdict(over == month_over == 0)}; reconcile found "
          f"{len(drifts)} drifted totals (target 0): {verdict(not drifts)} "
          f"[{calls:,} calls in {time.perf_counter() - started:.0f} s]")
    return over == month_over == 0 and not drifts


def commit_cost(url: str, vendor: str) -> str:
    """What a one-row update costs with its commit and without (PostgreSQL's commit waits for the WAL flush)."""
    bare = Bare(url, vendor)
    whole, bare_update = [], []
    for _ in range(50):
        started = time.perf_counter()
        bare.transaction(MOVE_ROW)
        whole.append((time.perf_counter() - started) * 1000)
    if vendor == "postgresql":
        for _ in range(50):
            started = time.perf_counter()
            bare.conn.execute(MOVE_ROW)
            bare_update.append((time.perf_counter() - started) * 1000)
            bare.conn.rollback()
    bare.close()
    return (f"one-row update + commit {statistics.median(whole):.2f} ms"
            + (f", the update alone {statistics.median(bare_update):.2f} ms" if bare_update else ""))


def run_on(vendor: str) -> None:
    with fresh_database(vendor=vendor, purpose="budget") as url:
        started = time.perf_counter()
        os.environ["DJANGO_DEBUG"] = "0"  # as the workers run in production: no query log kept per statement
        setup_django(database_url=url)
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        print(f"budget bench on {vendor}, fresh database {name} (migrated in {time.perf_counter() - started:.0f} s); "
              f"{machine_load()}")
        floor_table(url, vendor)
        latency(url, vendor)
        throughput(url, vendor)
        print(f"  (on this server: {commit_cost(url, vendor)})")
        held = invariant(url, vendor)
        print(f"  budget bench on {vendor} took {time.perf_counter() - started:.0f} s; {machine_load()}", flush=True)
    if not held:
        raise SystemExit(1)  # a missed timing is printed; only a broken invariant fails the bench


def profile(vendor: str, calls: int = 400) -> None:
    """cProfile of `calls` single-worker reserve + settle calls, by this process's CPU time: the wall time a
    call takes beyond its CPU is waiting on the database."""
    with fresh_database(vendor=vendor, purpose="budget_profile") as url:
        os.environ["DJANGO_DEBUG"] = "0"
        setup_django(database_url=url)
        batch_id = new_batch(LARGE_BUDGET)
        reserve_and_settle(batch_id)
        profiler = cProfile.Profile(time.process_time)
        wall, cpu = time.perf_counter(), time.process_time()
        profiler.enable()
        for _ in range(calls):
            reserve_and_settle(batch_id)
        profiler.disable()
        wall, cpu = (time.perf_counter() - wall) * 1000 / calls, (time.process_time() - cpu) * 1000 / calls
        print(f"profile of {calls} reserve + settle calls on {vendor}, under cProfile: {wall:.2f} ms a call, "
              f"{cpu:.2f} ms of it CPU in this process; {machine_load()}")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(os.environ.get("BENCH_PROFILE_SORT", "cumulative")).print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--on", choices=["postgresql", "sqlite"], help="run on one database only, in this process")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of reserve + settle instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.on or "postgresql")
        return 0
    if args.on:
        run_on(args.on)
        return 0
    vendors = ["postgresql", "sqlite"]
    if (why := postgres_reachable()) is not None:
        print(f"budget bench: PostgreSQL at BENCH_POSTGRES_URL is not reachable ({why}); SQLite figures only")
        vendors.remove("postgresql")
    failed = 0
    for vendor in vendors:
        failed += subprocess.run([sys.executable, "-m", "bench.budget_bench", "--on", vendor], cwd=ROOT).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
