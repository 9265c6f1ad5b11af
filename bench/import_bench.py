"""Import figures (issue 12): peak memory of a 1,000,000-row CSV import, the time of a 100,000-row import, and the
time of re-importing those 100,000 rows unchanged.

Every import runs the `import_topics` command in a process of its own, on a fresh database of its own (a temporary
SQLite file; on PostgreSQL, when BENCH_DATABASE_URL or DATABASE_URL names its server, a database created for the run
and dropped after, named after BENCH_DATABASE_PREFIX and the process id). Peak memory is that process's maximum
resident set size, read with getrusage(RUSAGE_CHILDREN) in a small wrapper process that runs nothing else, so no other
process counts. Times are the command's own wall-clock time, without Django's start-up; the CPU time of the whole
process is printed beside them, and the machine's load average with each figure, since on a shared machine the
wall-clock time also measures the neighbours. --large-runs 0 leaves out the 1,000,000-row import (minutes).

    python -m bench.import_bench [--rows-large N] [--rows N] [--runs N] [--reimports N] [--large-runs N]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.fresh import DATABASE_PREFIX, machine_load, verdict

ROOT = Path(__file__).resolve().parent.parent
PEAK_RSS_TARGET_MB = 300
REIMPORT_TARGET_S = 5.0
WORDS = ("shipping tariff checkout inventory loyalty supplier shopify margin ads carrier reorder churn landing "
         "pricing factory warehouse returns bundle upsell creator tiktok amazon fba dropship etsy email").split()
CATEGORIES = ("", "", "", "shipping_logistics", "pricing_margins", "ads_marketing", "customer_retention")


def write_csv(path: Path, rows: int) -> None:
    """A realistic import file: every field filled in, a quarter of the rows naming their category."""
    rng = random.Random(12)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "summary", "url", "source", "external_id", "score", "category", "status",
                         "published_at"])
        for n in range(rows):
            title = " ".join(rng.choice(WORDS) for _ in range(7)) + f" {n}"
            summary = " ".join(rng.choice(WORDS) for _ in range(18))
            writer.writerow([
                title, summary, f"https://news.example.com/story/{n}?utm_source=newsletter", "bench", f"bench-{n}",
                f"{rng.uniform(0, 100):.1f}", CATEGORIES[n % len(CATEGORIES)], "approved" if n % 3 else "new",
                f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:15:00+00:00",
            ])


class Database:
    """A fresh, migrated database for one run: a temporary SQLite file, or a PostgreSQL database made for it."""

    def __init__(self, *, postgres_url: str | None, workdir: Path, name: str):
        self.postgres_url, self.workdir, self.name = postgres_url, workdir, name
        if postgres_url:
            parts = urlsplit(postgres_url)
            self.pg_name = f"{DATABASE_PREFIX}_import_{os.getpid()}"
            self.admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
            self.url = urlunsplit((parts.scheme, parts.netloc, f"/{self.pg_name}", parts.query, ""))
        else:
            self.url = f"sqlite:///{workdir / f'{name}.sqlite3'}"

    def __enter__(self) -> Database:
        if self.postgres_url:
            self._admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)', f'CREATE DATABASE "{self.pg_name}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env(), check=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.postgres_url:
            self._admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.url.removeprefix('sqlite:///')}{suffix}").unlink(missing_ok=True)

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.url}


def measure(database: Database, path: Path) -> dict:
    """One import, in a wrapper process whose only child runs the command: seconds, CPU seconds and peak RSS."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.import_bench", "--measure", str(path)],
        cwd=ROOT, env=database.env(), check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure_child(path: str) -> None:
    """The wrapper: run the import in a child process, then read that child's peak RSS and CPU time."""
    result = subprocess.run([sys.executable, "-m", "bench.import_bench", "--run-import", path], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"import_topics failed ({result.returncode}): {result.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Linux reports ru_maxrss in kilobytes.
    print(json.dumps({**report, "peak_mb": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}))


def run_import(path: str) -> None:
    """The child: Django set up as manage.py does it, then the command, timed."""
    import io

    import django
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    out = io.StringIO()
    started, cpu_started = time.perf_counter(), time.process_time()
    call_command("import_topics", path, stdout=out)
    print(json.dumps({"seconds": time.perf_counter() - started, "import_cpu_seconds": time.process_time() - cpu_started,
                      "output": out.getvalue().strip()}))


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return f"{values[0]:{fmt}} (1 run)"
    return (f"median {statistics.median(values):{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}}, "
            f"{len(values)} runs)")


def postgres_url() -> str | None:
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://", "pgsql://")) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--run-import", help=argparse.SUPPRESS)
    parser.add_argument("--rows-large", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="fresh databases for the 100,000-row figures")
    parser.add_argument("--reimports", type=int, default=2, help="unchanged re-imports on each of them")
    parser.add_argument("--large-runs", type=int, default=3)
    args = parser.parse_args()
    if args.measure:
        return measure_child(args.measure)
    if args.run_import:
        return run_import(args.run_import)
    pg = postgres_url()
    print(f"import bench on {'PostgreSQL' if pg else 'SQLite'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        workdir = Path(tmp)
        small, large = workdir / "small.csv", workdir / "large.csv"
        write_csv(small, args.rows)
        imports, reimports = [], []
        for run in range(args.runs):
            with Database(postgres_url=pg, workdir=workdir, name=f"small-{run}") as database:
                first = measure(database, small)
                again = [measure(database, small) for _ in range(args.reimports)]
            for output in [first["output"]] + [r["output"] for r in again]:
                expected = f"{args.rows:,} created" if output is first["output"] else f"{args.rows:,} unchanged"
                if expected not in output:
                    sys.exit(f"unexpected import output: {output!r}, expected {expected!r}")
            imports.append(first)
            reimports += again
        print(f"  {args.rows:,}-row CSV import: {spread([r['seconds'] for r in imports], '.1f')} s; "
              f"CPU {spread([r['cpu_seconds'] for r in imports], '.1f')} s; "
              f"peak RSS {spread([r['peak_mb'] for r in imports], '.0f')} MB; {machine_load()}", flush=True)
        reimport = statistics.median(r["seconds"] for r in reimports)
        print(f"  {args.rows:,}-row unchanged re-import: {spread([r['seconds'] for r in reimports], '.2f')} s "
              f"(target <= {REIMPORT_TARGET_S:g} s: {verdict(reimport <= REIMPORT_TARGET_S)}); CPU of the import "
              f"{spread([r['import_cpu_seconds'] for r in reimports], '.2f')} s, of the process with start-up "
              f"{spread([r['cpu_seconds'] for r in reimports], '.1f')} s; peak RSS "
              f"{spread([r['peak_mb'] for r in reimports], '.0f')} MB; {machine_load()}", flush=True)
        if not args.large_runs:
            return
        write_csv(large, args.rows_large)
        larges = []
        for run in range(args.large_runs):
            with Database(postgres_url=pg, workdir=workdir, name=f"large-{run}") as database:
                larges.append(measure(database, large))
        peak = max(r["peak_mb"] for r in larges)
        print(f"  {args.rows_large:,}-row CSV import ({large.stat().st_size / 1e6:.0f} MB file): peak RSS "
              f"{spread([r['peak_mb'] for r in larges], '.0f')} MB (target <= {PEAK_RSS_TARGET_MB} MB: "
              f"{verdict(peak <= PEAK_RSS_TARGET_MB)}); time {spread([r['seconds'] for r in larges], '.0f')} s, "
              f"CPU {spread([r['cpu_seconds'] for r in larges], '.0f')} s; {machine_load()}", flush=True)


if __name__ == "__main__":
    main()
