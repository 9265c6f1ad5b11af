"""A database made for one benchmark run and removed after it, and figures as a median with their spread.

A figure measured on a database an earlier run left behind measures that run's leftovers, so every benchmark
here starts from an empty database of its own: a new PostgreSQL database on BENCH_POSTGRES_URL's server (named
BENCH_DATABASE_PREFIX, the benchmark's purpose and the process id), or a SQLite file in a temporary directory.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from bench.common import ROOT

POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_PREFIX = os.environ.get("BENCH_DATABASE_PREFIX", "newsroom_bench")


def postgres_reachable() -> str | None:
    """None when BENCH_POSTGRES_URL's server answers, else why not (one line)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def preferred_vendor() -> str:
    """PostgreSQL (production's database) when BENCH_POSTGRES_URL's server answers, else SQLite."""
    return "postgresql" if postgres_reachable() is None else "sqlite"


@contextmanager
def fresh_database(*, vendor: str, purpose: str, copy_of: str | None = None) -> Iterator[str]:
    """A new database for `purpose` ("postgresql" or "sqlite"), empty or a copy of the database at `copy_of`
    (which nobody may be connected to), removed on the way out; yields its URL."""
    if vendor == "sqlite":
        import sqlite3

        (ROOT / "var").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{purpose}-", dir=ROOT / "var") as folder:
            path = f"{folder}/{purpose}.sqlite3"
            if copy_of:
                with sqlite3.connect(urlsplit(copy_of).path) as source, sqlite3.connect(path) as target:
                    source.backup(target)
            yield f"sqlite:///{path}"
        return
    import psycopg

    name = f"{DATABASE_PREFIX}_{purpose}_{os.getpid()}"
    parts = urlsplit(POSTGRES_ADMIN_URL)
    template = f' TEMPLATE "{urlsplit(copy_of).path.lstrip("/")}"' if copy_of else ""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield urlunsplit(("postgres", parts.netloc, f"/{name}", parts.query, ""))
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()  # ours; WITH (FORCE) below ends any that a killed worker left behind
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spread(values: Sequence[float], show: Callable[[float], str] = "{:.1f}".format) -> str:
    """'median (min–max)' of repeated measurements of one figure."""
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


def verdict(met: bool) -> str:
    return "meets" if met else "MISSES"


def machine_load() -> str:
    """How busy the machine is, to read the figures by: timings on a shared 2-core machine move with its load."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min: {five:.1f}) on {os.cpu_count()} cores"


@contextmanager
def connected_to(url: str) -> Iterator[None]:
    """Point Django's default connection at another database of the same kind (a copy made by fresh_database)
    for the duration: it reconnects on the next query, and back again afterwards."""
    from django.db import connection

    name = urlsplit(url).path if url.startswith("sqlite") else urlsplit(url).path.lstrip("/")
    saved = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = saved
