"""Recovery figure (issue 8): how long a batch takes to end after a whole worker is SIGKILLed in the middle of it,
with the sweeper running every SWEEP period and items leased for LEASE seconds. Target: at most the lease plus two
sweeper periods (one to notice the expired lease, one more for the retaken item's draft and the batch's close).

Everything runs on servers of its own (tests/faults/harness.py: a private PostgreSQL and Redis), never the
developer's: two real Celery workers, one of which is killed with every pool process while its drafts are in
flight, the loopback Anthropic API at LATENCY seconds a call, and the sweeper in a process of its own.
`RECOVERY_BENCH_LEASE_SECONDS` and `RECOVERY_BENCH_SWEEP_SECONDS` change the lease and the period.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEASE = int(os.environ.get("RECOVERY_BENCH_LEASE_SECONDS", "12"))
SWEEP = float(os.environ.get("RECOVERY_BENCH_SWEEP_SECONDS", "5"))
LATENCY = 1.5
# Calls time out after 2.5 s and answers are spooled after 1 s of failed writes, so the system checks accept any
# lease from 11 s (2 x 2.5 + 1 + 5).
TIMEOUT = 2.5
RUNS = 3
REDIS_PORT = 6392  # beside the fault tests' 6391, so both may run at once


def one_recovery(app, *, doomed) -> tuple[float, set[int]]:
    """Queue a batch, SIGKILL `doomed` once its drafts are in flight, and time until the batch is final."""
    already = set(app.db.batch_statuses())
    code, report, stderr = app.runbatch("--queue")
    if code:
        raise RuntimeError(f"runbatch --queue exited with {code}: {stderr}")
    in_flight = app.in_flight(1, worker=doomed)  # the doomed worker is drafting
    doomed.kill()
    killed_at = time.monotonic()
    unknown = in_flight | app.db.open_reservations()
    app.wait_until_final(timeout=LEASE + 4 * SWEEP + 60)
    elapsed = time.monotonic() - killed_at
    assert set(app.db.batch_statuses()) - already == {report["batch"]}
    return elapsed, unknown


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer
    from tests.faults.harness import App, PrivatePostgres, PrivateRedis, ServerMissing, check_invariants, migrate

    try:
        postgres, redis = PrivatePostgres().start(), PrivateRedis(port=REDIS_PORT).start()
    except ServerMissing as exc:
        print(f"recovery bench needs a PostgreSQL and a Redis installation: {exc}")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="newsroom-recovery-bench-"))
    try:
        database_url = postgres.create_database("recovery_bench")
        os.environ.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="newsroom.settings",
                          DJANGO_DEBUG=os.environ.get("DJANGO_DEBUG", "1"))
        import django

        django.setup()  # tests/support.py reads the model name and the database settings
        migrate(database_url=database_url)
        with FakeAnthropicServer(latency=LATENCY) as fake:
            app = App(database_url=database_url, broker_url=redis.url(0), api_base_url=fake.base_url,
                      workdir=workdir, settings={
                          "ITEM_LEASE_SECONDS": str(LEASE), "SWEEP_STALE_SECONDS": str(max(1, int(SWEEP))),
                          "ANTHROPIC_TIMEOUT_SECONDS": str(TIMEOUT), "ANSWER_WRITE_RETRY_SECONDS": "1",
                          "ANTHROPIC_MAX_RETRIES": "1",
                      })
            try:
                app.start_worker(concurrency=2)  # the survivor
                app.start_sweeper(period=SWEEP)
                times, unknown = [], set()
                for _ in range(RUNS):
                    elapsed, in_flight = one_recovery(app, doomed=app.start_worker(concurrency=2))
                    times.append(elapsed)
                    unknown |= in_flight
                check_invariants(database_url, answers=fake.answers, unknown=unknown, spool=app.spool_dir)
            finally:
                app.stop()
    finally:
        postgres.cleanup()
        redis.cleanup()
    target = LEASE + 2 * SWEEP
    median = statistics.median(times)
    print(f"recovery after a whole worker is SIGKILLed mid-batch (lease {LEASE:g} s, sweeper every {SWEEP:g} s, "
          f"API {LATENCY:g} s a call)")
    print(f"  median {median:.1f} s over {RUNS} runs ({', '.join(f'{t:.1f}' for t in times)}); "
          f"target at most {target:g} s (lease + two sweeper periods); invariants hold")
    return 0 if median <= target else 1


if __name__ == "__main__":
    raise SystemExit(main())
