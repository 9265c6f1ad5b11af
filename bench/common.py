"""Shared set-up for benchmarks: a dedicated database (never the developer's own), migrated and ready."""
from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def setup_django(*, database_url: str | None = None) -> None:
    """Point Django at the benchmark database (BENCH_DATABASE_URL, else var/bench.sqlite3) and migrate it."""
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = database_url or os.environ.get(
        "BENCH_DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'bench.sqlite3'}"
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- fresh databases and fast filling (issue 12: every figure from a database the benchmark made itself) ---------

POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def temporary_sqlite_url(directory: str, name: str) -> str:
    """A SQLite database in `directory` (a temporary directory the benchmark removes afterwards)."""
    return f"sqlite:///{Path(directory) / name}.sqlite3"


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - any failure means: no PostgreSQL for this run
        return False


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (`prefix` plus this process id) on BENCH_POSTGRES_URL's server, dropped on
    the way out; yields its URL."""
    import psycopg

    name = f"{prefix}_{os.getpid()}"
    parts = urlsplit(POSTGRES_ADMIN_URL)
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _column_defaults(model, given: Iterable[str]) -> tuple[list[str], list]:
    """(columns, values) of `model`'s concrete fields outside `given` and the primary key, at their defaults, ready
    for the database: a column another branch adds later gets its default too."""
    from django.db import connection
    from django.utils import timezone

    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in given:
            continue
        columns.append(field.column)
        auto_now = getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
        values.append(field.get_db_prep_save(timezone.now() if auto_now else field.get_default(), connection))
    return columns, values


def fill_series(model, *, count: int, expressions: dict[str, str], chunk: int = 250_000) -> None:
    """Insert `count` rows of `model` with INSERT ... SELECT over the numbers 1..count (generate_series on
    PostgreSQL, a recursive CTE on SQLite): no Python per row. `expressions` maps columns to SQL in terms of `n`;
    every other column takes its field default."""
    from django.db import connection, transaction

    quote = connection.ops.quote_name
    columns, defaults = _column_defaults(model, expressions)
    names = ", ".join(quote(c) for c in [*expressions, *columns])
    select = ", ".join([*(sql.replace("%", "%%") for sql in expressions.values()), *(["%s"] * len(columns))])
    table = quote(model._meta.db_table)
    for start in range(1, count + 1, chunk):
        stop = min(count, start + chunk - 1)
        if connection.vendor == "postgresql":
            sql = f"INSERT INTO {table} ({names}) SELECT {select} FROM generate_series({start}::bigint, {stop}) AS s(n)"
        else:
            sql = (f"WITH RECURSIVE s(n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM s WHERE n < {stop}) "
                   f"INSERT INTO {table} ({names}) SELECT {select} FROM s")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, defaults)


def sql_case(expression: str, values: list) -> str:
    """SQL choosing values[expression % len(values)]."""
    whens = " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(values))
    return f"CASE ({expression}) % {len(values)} {whens} END"


def sql_time_ago(seconds: str) -> str:
    """SQL for the time `seconds` (an SQL expression) before now, as each database stores a datetime."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return f"now() - make_interval(secs => {seconds})"
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({seconds}) || ' seconds')"


def insert_rows(model, *, columns: Sequence[str], rows: Iterable[Sequence], chunk: int = 5_000) -> None:
    """executemany of plain rows (values the driver takes as they are) for `columns`; other columns at defaults."""
    from django.db import connection, transaction

    quote = connection.ops.quote_name
    others, defaults = _column_defaults(model, columns)
    names = ", ".join(quote(c) for c in [*columns, *others])
    marks = ", ".join(["%s"] * (len(columns) + len(others)))
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({names}) VALUES ({marks})"
    pending: list = []
    for row in rows:
        pending.append((*row, *defaults))
        if len(pending) == chunk:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, pending)
            pending = []
    if pending:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, pending)


def spread(values: list[float], unit: str = "ms") -> str:
    """"median X (min A – max B, n runs)"."""
    return f"median {median(values):.1f} {unit} (min {min(values):.1f} – max {max(values):.1f}, {len(values)} runs)"


def fitted_slope(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1 is linear growth, 2 quadratic."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def n_log_n_slope(smallest: float, largest: float) -> float:
    """The log-log slope of n log n between two sizes: growth at or under it is at most n log n."""
    return math.log((largest * math.log(largest)) / (smallest * math.log(smallest))) / math.log(largest / smallest)


def run_on_fresh_databases(module: str, *, sqlite_flag: str = "--database", postgres_flag: str = "--database") -> int:
    """Run `python -m module FLAG URL` on a temporary SQLite file, then on a fresh PostgreSQL database (named
    BENCH_DATABASE_PREFIX, the benchmark and the process id; created and dropped) when BENCH_POSTGRES_URL's server
    answers; 1 when either run failed."""
    import subprocess
    import tempfile

    failures = 0
    with tempfile.TemporaryDirectory(prefix="newsroom-bench-") as directory:
        url = temporary_sqlite_url(directory, module.rsplit(".", 1)[-1])
        failures += subprocess.run([sys.executable, "-m", module, sqlite_flag, url], cwd=ROOT, check=False).returncode
    if postgres_reachable():
        prefix = os.environ.get("BENCH_DATABASE_PREFIX", "newsroom_bench")
        with fresh_postgres_database(f"{prefix}_{module.rsplit('.', 1)[-1]}") as url:
            failures += subprocess.run([sys.executable, "-m", module, postgres_flag, url], cwd=ROOT,
                                       check=False).returncode
    else:
        print(f"{module}: no PostgreSQL at BENCH_POSTGRES_URL; measured on SQLite only")
    return 1 if failures else 0
