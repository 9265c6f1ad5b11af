"""Fault injection for the recovery tests (issue 8): private PostgreSQL and Redis servers that a test may stop,
restart and kill, the app run against them in real processes, and the invariants every scenario must end with.

Faults only ever hit servers started here, on ports of their own, never the shared services. A plain module, so
test files and benchmarks may import from it; the pytest fixtures around it are in tests/faults/conftest.py.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tests.support import BASE_DIR, SUBPROCESS_SECONDS, WorkerProcess, manage, manage_in_background, service_env

PG_PORT = int(os.environ.get("FAULTS_PG_PORT", "54329"))
REDIS_PORT = int(os.environ.get("FAULTS_REDIS_PORT", "6391"))
SERVER_START_SECONDS = 30
SAMPLE_TOPICS = BASE_DIR / "topics" / "sample_data" / "sample_topics.json"
# As in batches.models; spelled out so that the checks read the database as it is, not through the code under test.
FINAL_BATCH_STATUSES = ("done", "partial", "budget_exhausted", "failed")
OPEN_ITEM_STATUSES = ("pending", "generating")
DRAFTED_ITEM_STATUSES = ("generated", "approved", "rejected")
RECEIVED_TASK = re.compile(r"Task batches\.generate_newsletter\[([0-9a-f-]+)\] received")
# Private servers are made under this prefix with the pid of the process that owns them, so a later run can stop
# the servers of a run that was SIGKILLed before its atexit handlers ran (see reap_orphans).
TEMP_PREFIX = "newsroom-faults-"


class ServerMissing(Exception):
    """A server binary (initdb, pg_ctl, redis-server) is not installed."""


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    """`preferred` when nothing listens there (the port this checkout's tests were given), else any free port,
    so that two test runs on one machine never fault each other's servers. 0 asks for any free port."""
    if preferred and port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def reap_orphans() -> None:
    """Stop the private servers of earlier runs whose owning process is gone, and remove their directories."""
    for root in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue  # a run in progress (perhaps another checkout's): its servers are its own business
        for pid_file in (root / "data" / "postmaster.pid", root / "redis.pid"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        shutil.rmtree(root, ignore_errors=True)


def _private_dir(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-"))
    (root / "owner.pid").write_text(str(os.getpid()))
    return root


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL server binaries on the machine (Debian keeps them off PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                        if p.parent.name.isdigit() else 0)
    for directory in reversed(candidates):
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise ServerMissing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temporary directory, on 127.0.0.1:`port`, trust authentication.

    Tuned for tests, not durability (fsync off): a `stop("immediate")` is a crash the server recovers from on
    the next start, with every committed row kept, as the OS itself did not crash.
    """

    def __init__(self, *, port: int = PG_PORT):
        self.bin_dir = postgres_bin_dir()
        self.port = pick_port(port)
        self.root = _private_dir("pg")
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._cleaned = False
        atexit.register(self.cleanup)
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")  # initdb and the server refuse to run as root
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False)
        if result.returncode:
            raise RuntimeError(f"{tool} exited with {result.returncode}: {result.stderr.strip()}\n"
                               f"server log:\n{_tail(self.log_path)}")
        return result

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def start(self) -> PrivatePostgres:
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.root}",
            # fsync off only skips flushing to disk: the WAL still reaches the OS at each commit, so a crash of
            # the server (not of the machine) keeps every committed row. synchronous_commit must stay on for that.
            "-c fsync=off", "-c full_page_writes=off", "-c max_connections=200",
            "-c shared_buffers=32MB",
        ])
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", str(SERVER_START_SECONDS), "-o", options, timeout=SERVER_START_SECONDS + 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects every client and shuts down cleanly; `immediate` is a crash (no checkpoint)."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", timeout=40)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    @contextlib.contextmanager
    def down_for(self, seconds: float, mode: str = "fast") -> Iterator[None]:
        """Stop the server; the body runs while it is down; it starts again `seconds` after it stopped."""
        self.stop(mode)
        back_at = time.monotonic() + seconds
        try:
            yield
        finally:
            time.sleep(max(0.0, back_at - time.monotonic()))
            self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database `name` (a copy of `template`, which nobody may be connected to); returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Stop the server whatever state it is in and remove the cluster. Safe to call twice."""
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(Exception):
            self.stop("immediate")
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # pg_ctl could not stop it: take it down by its pid file
            _wait_gone(pid, 5)
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A `redis-server` on 127.0.0.1:`port` with no persistence: a restart loses every message it held, as a
    real Redis restart without persistence does."""

    def __init__(self, *, port: int = REDIS_PORT):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ServerMissing("redis-server is not installed")
        self.port = pick_port(port)
        self.root = _private_dir("redis")
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        self._cleaned = False
        atexit.register(self.cleanup)

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        (self.root / "redis.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """Kill the server: whatever it held (queued and unacknowledged messages) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5, socket_connect_timeout=2)

    def queued_messages(self, queue: str = "celery", db: int = 0) -> int:
        """Messages waiting in a Celery queue (not those a worker has taken and not yet acknowledged)."""
        return int(self.client(db).llen(queue))

    def redeliver_unacknowledged(self, *, visibility_timeout: float, db: int = 0) -> int:
        """Hand out again every message taken but not yet acknowledged for longer than `visibility_timeout`, as
        kombu's Redis transport does when a consumer with that visibility timeout starts (it is kombu's own code
        doing it here). Returns how many messages went back in the queue."""
        from kombu import Connection

        # The index scores each unacknowledged message with the time it was taken.
        due = self.client(db).zcount("unacked_index", "-inf", time.time() - visibility_timeout)
        with Connection(self.url(db), transport_options={"visibility_timeout": visibility_timeout}) as connection:
            connection.default_channel.qos.restore_visible(num=1000)
        return int(due)

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Database:
    """Reads from the app's database, one fresh connection per call, so a restarted server is no concern."""

    def __init__(self, url: str):
        self.url = url

    def rows(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, tuple(params)).fetchall()

    def value(self, sql: str, params: Iterable[object] = ()) -> object:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def open_reservations(self) -> set[int]:
        """Ledger entries reserved and not yet settled or released: the calls in flight, or of unknown outcome."""
        return {pk for (pk,) in self.rows("SELECT id FROM batches_costledgerentry WHERE status = 'reserved'")}

    def batch_statuses(self) -> dict[int, str]:
        return dict(self.rows("SELECT id, status FROM batches_batch"))

    def item_statuses(self) -> Counter:
        return Counter(dict(self.rows("SELECT status, count(*) FROM batches_newsletter GROUP BY status")))

    def all_batches_final(self) -> bool:
        statuses = self.batch_statuses()
        return bool(statuses) and all(s in FINAL_BATCH_STATUSES for s in statuses.values())


@dataclass
class App:
    """The app run in real processes against one database and one broker: `manage.py` commands, Celery workers.

    `settings` are environment variables for every process started (lease, timeouts...); each call can add more.
    Answers are spooled under `workdir`, so no two tests share a spool.
    """

    database_url: str
    broker_url: str
    api_base_url: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    background: list[subprocess.Popen] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return Database(self.database_url)

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    def env(self, **overrides: str) -> dict[str, str]:
        return service_env(
            DATABASE_URL=self.database_url, CELERY_BROKER_URL=self.broker_url, ANTHROPIC_BASE_URL=self.api_base_url,
            ANSWER_SPOOL_DIR=str(self.spool_dir), **{**self.settings, **overrides},
        )

    def manage(self, *args: str, timeout: float = SUBPROCESS_SECONDS, **env: str) -> subprocess.CompletedProcess:
        """Run `manage.py ARGS` to its end (killed, failing the test, past `timeout`)."""
        return manage(*args, env=self.env(**env), timeout=timeout)

    def manage_in_background(self, *args: str, **env: str) -> subprocess.Popen:
        """Start `manage.py ARGS`; killed with its process group when the test ends, if still running."""
        process = manage_in_background(*args, env=self.env(**env))
        self.background.append(process)
        return process

    def runbatch(self, *args: str, timeout: float = SUBPROCESS_SECONDS, **env: str) -> tuple[int, dict, str]:
        """`manage.py runbatch --json ARGS`: exit code, its JSON report and its stderr."""
        result = self.manage("runbatch", "--json", *args, timeout=timeout, **env)
        return result.returncode, _json_or_empty(result.stdout), result.stderr

    def follow_batch(self, *args: str, timeout: float = 120, **env: str) -> subprocess.Popen:
        """`runbatch --queue --wait --timeout T --json ARGS` in the background: a batch queued and followed."""
        return self.manage_in_background("runbatch", "--queue", "--wait", "--timeout", str(timeout), "--json",
                                         *args, **env)

    @staticmethod
    def outcome(process: subprocess.Popen, *, timeout: float) -> tuple[int, dict, str]:
        """Exit code, JSON report and stderr of a background command; killed, failing, after `timeout`."""
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{' '.join(process.args[1:])} still running after {timeout} s\n{stderr}") from None
        return process.returncode, _json_or_empty(stdout), stderr

    def in_flight(self, count: int, *, worker: WorkerProcess | None = None, timeout: float = 60) -> set[int]:
        """Wait until at least `count` calls of unfinished batches are in flight (reserved, not yet settled), made
        by `worker` if given (by the tasks its log says it received); returns their ledger entry ids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.db.rows(
                "SELECT e.id, n.claim_token FROM batches_costledgerentry e "
                "JOIN batches_batch b ON b.id = e.batch_id JOIN batches_newsletter n ON n.id = e.newsletter_id "
                "WHERE e.status = 'reserved' AND NOT b.status = ANY(%s)", [list(FINAL_BATCH_STATUSES)]
            )
            if worker is not None:
                received = set(RECEIVED_TASK.findall(worker.log))
                rows = [row for row in rows if row[1] in received]
            if len(rows) >= count:
                return {pk for pk, _token in rows}
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} calls in flight after {timeout} s\n{self.logs()}")

    def sweep(self, **env: str) -> dict:
        """`manage.py sweep --json` once; the report it printed."""
        result = self.manage("sweep", "--json", **env)
        if result.returncode:
            raise AssertionError(f"manage.py sweep exited with {result.returncode}:\n{result.stderr}")
        return _json_or_empty(result.stdout)

    def start_worker(self, *, concurrency: int = 2, **env: str) -> WorkerProcess:
        """A real prefork Celery worker on this app's broker and database, ready to take tasks."""
        worker = WorkerProcess(env=self.env(**env), concurrency=concurrency, pool="prefork",
                               log_path=self.workdir / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return worker.wait_ready()

    def start_sweeper(self, *, period: float = 1.0, **env: str) -> subprocess.Popen:
        """The sweeper every `period` seconds in a process of its own (tests/faults/sweeper_loop.py), standing in
        for beat's schedule; stopped when the test ends. Its reports go to sweeper.log."""
        with open(self.workdir / "sweeper.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.sweeper_loop", str(period)], cwd=BASE_DIR,
                env=self.env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.background.append(process)
        return process

    def sweep_reports(self) -> list[dict]:
        """What the sweeper process reported so far, one dict per round."""
        path = self.workdir / "sweeper.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_until_final(self, *, timeout: float) -> None:
        """Wait until every batch has reached an end state; fail with what is stuck, and the logs, if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the database may be down a moment longer
                if self.db.all_batches_final():
                    return
            time.sleep(0.25)
        raise AssertionError(
            f"batches not final after {timeout} s: {self.db.batch_statuses()}; items "
            f"{dict(self.db.item_statuses())}\n{self.logs()}"
        )

    def logs(self) -> str:
        """Every worker's log and the sweeper's, for a failure message."""
        logs = [(w.log_path.name, w.log) for w in self.workers]
        sweeper = self.workdir / "sweeper.log"
        if sweeper.exists():
            logs.append((sweeper.name, sweeper.read_text(errors="replace")))
        return "\n".join(f"--- {name}\n{text[-6000:]}" for name, text in logs)

    def stop(self) -> None:
        """Kill every worker and background command (the test is over: nothing of theirs needs to finish)."""
        for worker in self.workers:
            worker.kill()
        for process in self.background:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _json_or_empty(text: str) -> dict:
    """The one JSON object a `--json` command printed ({} when it printed nothing)."""
    text = text.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        raise AssertionError(f"the command printed something other than one JSON object:\n{text}") from None


def migrate(*, database_url: str, topics: Path | None = SAMPLE_TOPICS) -> None:
    """Migrate a fresh database with `manage.py migrate` in a subprocess, then import `topics` into it."""
    env = service_env(DATABASE_URL=database_url)
    steps = [("migrate", "--noinput", "-v", "0")] + ([("import_topics", str(topics))] if topics else [])
    for args in steps:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True,
                                text=True, timeout=SUBPROCESS_SECONDS, check=False)
        if result.returncode:
            raise RuntimeError(f"manage.py {args[0]} exited with {result.returncode}:\n{result.stderr}")


@dataclass(frozen=True)
class Outcome:
    """What a scenario ended with, once the invariants held."""

    batches: dict[int, str]
    items: Counter
    settled: int
    open_reservations: set[int]
    spent_by_batch: dict[int, Decimal]


def check_invariants(
    database_url: str,
    *,
    answers: Iterable[Mapping[str, object]] | None = None,
    unknown: int | Collection[int] = 0,
    spool: Path | None = None,
) -> Outcome:
    """Assert what must hold after any fault, once recovery is done; every broken invariant is listed.

    - every batch is final, and so is every item;
    - each drafted item has its draft, exactly one settled charge, and a cost equal to its ledger total;
    - one settled charge per answered call: `answers` are the API's billed answers (the fake's `answers`);
      no charge is for an answer the API never gave, no answer is charged twice, and an answer left unsettled
      has an open reservation standing for it;
    - no open reservation except for calls whose outcome is truly unknown: `unknown` is either the ids of the
      entries allowed to stay open (those in flight when a worker was killed), or how many may;
    - each batch's ledger total is within its budget, and its running total (row plus tallies) agrees with it;
    - nothing is left in the answer `spool` (every answer spooled during an outage has been replayed).
    """
    db = Database(database_url)
    problems: list[str] = []
    batches = db.batch_statuses()
    for pk, status in sorted(batches.items()):
        if status not in FINAL_BATCH_STATUSES:
            problems.append(f"batch {pk} is still {status!r}")
    items = db.rows("SELECT id, batch_id, status, body_markdown, generated_at, cost_usd FROM batches_newsletter")
    entries = db.rows(
        "SELECT id, batch_id, newsletter_id, status, amount_usd, request_id FROM batches_costledgerentry"
    )
    settled_by_item = Counter(e[2] for e in entries if e[3] == "settled")
    spent_by_item: dict[int, Decimal] = {}
    for _pk, _batch, item, _status, amount, _rid in entries:
        spent_by_item[item] = spent_by_item.get(item, Decimal(0)) + amount
    for pk, batch, status, body, generated_at, cost in items:
        if status in OPEN_ITEM_STATUSES:
            problems.append(f"item {pk} of batch {batch} is still {status!r}")
        if status in DRAFTED_ITEM_STATUSES:
            if not body or generated_at is None:
                problems.append(f"item {pk} is {status!r} without a draft")
            if settled_by_item[pk] != 1:
                problems.append(f"item {pk} has {settled_by_item[pk]} settled charges, not 1")
        if cost != spent_by_item.get(pk, Decimal(0)):
            problems.append(f"item {pk} shows a cost of {cost} but its ledger entries total "
                            f"{spent_by_item.get(pk, Decimal(0))}")

    open_entries = {e[0] for e in entries if e[3] == "reserved"}
    if isinstance(unknown, int):
        if len(open_entries) > unknown:
            problems.append(f"{len(open_entries)} reservations left open ({sorted(open_entries)}), "
                            f"at most {unknown} of unknown outcome expected")
    elif open_entries - set(unknown):
        problems.append(f"reservations {sorted(open_entries - set(unknown))} left open, though their calls' "
                        f"outcome is known (only {sorted(unknown)} were in flight at the fault)")

    settled_ids = [e[5] for e in entries if e[3] == "settled" and e[2] is not None]
    if answers is not None:
        answers = list(answers)
        answered = {str(a["request_id"]) for a in answers} | {str(a["id"]) for a in answers}
        charged_twice = [rid for rid, n in Counter(settled_ids).items() if n > 1]
        if charged_twice:
            problems.append(f"answers charged more than once: {charged_twice}")
        never_answered = [rid for rid in settled_ids if rid not in answered]
        if never_answered:
            problems.append(f"charges for answers the API never gave: {never_answered}")
        unsettled = [a for a in answers if str(a["request_id"]) not in settled_ids and str(a["id"]) not in settled_ids]
        if len(unsettled) > len(open_entries):
            problems.append(f"{len(unsettled)} answered calls have no settled charge and only {len(open_entries)} "
                            f"reservations stand for them: paid answers were lost")

    spent_by_batch: dict[int, Decimal] = {}
    for pk, total, budget in db.rows(
        "SELECT b.id, COALESCE(SUM(e.amount_usd), 0), b.budget_usd FROM batches_batch b "
        "LEFT JOIN batches_costledgerentry e ON e.batch_id = b.id GROUP BY b.id, b.budget_usd"
    ):
        spent_by_batch[pk] = total
        if total > budget:
            problems.append(f"batch {pk} spent {total}, over its budget of {budget}")
    for pk, kept in db.rows(  # the running total a reservation reads: the batch's row plus its tallies (issue 12)
        "SELECT b.id, b.ledger_total_usd + COALESCE((SELECT SUM(t.total_usd) FROM batches_ledgertally t "
        "WHERE t.scope = 'batch:' || b.id), 0) FROM batches_batch b"
    ):
        if Decimal(str(kept)).quantize(Decimal("0.000001")) != spent_by_batch[pk]:
            problems.append(f"batch {pk}'s running total is {kept} but its ledger entries total {spent_by_batch[pk]}")

    left_in_spool = sorted(str(f.relative_to(spool)) for f in spool.rglob("*") if f.is_file()) if spool else []
    if left_in_spool:
        problems.append(f"answers left in the spool, never replayed: {left_in_spool}")

    if problems:
        raise AssertionError("invariants broken after recovery:\n- " + "\n- ".join(problems))
    return Outcome(batches=batches, items=db.item_statuses(), settled=len(settled_ids),
                   open_reservations=open_entries, spent_by_batch=spent_by_batch)
