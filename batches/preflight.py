"""Ready checks before a live run; shared by `manage.py preflight` and the admin's system status page."""
from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

OK, WARNING, ERROR = "ok", "warning", "error"

OPTIONAL_KEYS = [
    ("REDDIT_CLIENT_ID", ("REDDIT_CLIENT_ID", "REDDIT_CLIENT_SECRET"),
     "discovery from Reddit (hot and top posts of e-commerce subreddits)"),
    ("PERPLEXITY_API_KEY", ("PERPLEXITY_API_KEY",),
     "discovery through Perplexity search (what sellers discuss now, with citations)"),
    ("TUBELAB_API_KEY", ("TUBELAB_API_KEY",), "discovery of outlier YouTube videos through TubeLab"),
    ("APIFY_TOKEN", ("APIFY_TOKEN",), "discovery through an Apify scraper actor (e.g. TikTok or X search)"),
]


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def mask(secret: str) -> str:
    """Never the secret itself: at most its last four characters, and only when it is long enough."""
    return f"set (…{secret[-4:]})" if len(secret) >= 12 else "set"


START_WORKER = "`make serve` (web, worker and beat), or `.venv/bin/celery -A newsroom worker --loglevel INFO`"
DRAFT_FOR_REAL = "set ANTHROPIC_API_KEY (in .env or the environment) and restart `make serve`"


def standin_url() -> str:
    return f"http://127.0.0.1:{settings.STANDIN_PORT}"


def standin_answers(*, timeout: float = 0.5) -> bool:
    """Whether something listens on the stand-in's port: a TCP connect, nothing is sent."""
    try:
        with socket.create_connection(("127.0.0.1", settings.STANDIN_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def check_anthropic_key() -> Check:
    """Can drafting authenticate? A key is set, or the local stand-in for Claude is in use (and answering)."""
    if settings.CLAUDE_STANDIN:
        if not standin_answers():
            return Check("ANTHROPIC_API_KEY", ERROR, f"the local stand-in for Claude is configured but does not "
                         f"answer at {standin_url()}: start it with `make serve` (or `python -m "
                         f"batches.claude_standin --port {settings.STANDIN_PORT}`), or {DRAFT_FOR_REAL}")
        return Check("ANTHROPIC_API_KEY", WARNING, f"not in use: drafts come from the local stand-in at "
                     f"{standin_url()} (placeholder text, not Claude; costs are make-believe). To draft for real, "
                     f"{DRAFT_FOR_REAL}")
    key = settings.ANTHROPIC_API_KEY
    if not key:
        return Check("ANTHROPIC_API_KEY", ERROR, "not set: required to draft newsletters with Claude (every item "
                     f"would fail). {DRAFT_FOR_REAL[0].upper()}{DRAFT_FOR_REAL[1:]}, or run `make serve` without a "
                     "key to try the desk with the local stand-in")
    return Check("ANTHROPIC_API_KEY", OK, mask(key))


@dataclass(frozen=True)
class WorkerStatus:
    alive: bool
    detail: str


WORKER_CACHE_SECONDS = 10


def _ping_timeout(broker_url: str) -> float:
    # kombu's filesystem transport polls its folders once a second, so a worker there answers within a second
    # or so; over Redis an idle worker answers in milliseconds.
    return 1.5 if broker_url.startswith("filesystem://") else 1.0


def worker_status(*, fresh: bool = False) -> WorkerStatus:
    """Does a Celery worker answer a ping? Cached for a few seconds: the desk's pages and polling ask often,
    and a ping that nobody answers costs its whole timeout."""
    url = settings.CELERY_BROKER_URL
    key = f"newsroom:worker-status:{url}"
    cached = None if fresh else cache.get(key)
    if cached is not None:
        return WorkerStatus(*cached)
    from newsroom.celery import app

    try:
        with app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            replies = app.control.ping(timeout=_ping_timeout(url), limit=1, connection=conn)
    except Exception as exc:  # kombu raises transport-specific errors; any of them means "no worker reachable"
        status = WorkerStatus(False, f"no worker can be reached: the broker is unreachable ({exc.__class__.__name__})")
    else:
        names = sorted(name for reply in replies for name in reply)
        status = (WorkerStatus(True, f"{', '.join(names)} answered") if names else
                  WorkerStatus(False, f"no worker answered: a confirmed batch waits until one starts. Start one "
                               f"with {START_WORKER}"))
    cache.set(key, (status.alive, status.detail), WORKER_CACHE_SECONDS)
    return status


def check_worker() -> Check:
    status = worker_status()
    return Check("worker", OK if status.alive else WARNING, status.detail)


def check_optional_keys() -> list[Check]:
    checks = []
    for name, variables, enables in OPTIONAL_KEYS:
        values = [getattr(settings, v, "") for v in variables]
        if all(values):
            checks.append(Check(name, OK, f"{mask(values[0])}: enables {enables}"))
        else:
            missing = ", ".join(v for v, value in zip(variables, values) if not value)
            checks.append(Check(name, WARNING, f"{missing} not set: skipped; setting it enables {enables}"))
    return checks


def check_database() -> tuple[Check, bool]:
    vendor = connection.vendor
    try:
        connection.ensure_connection()
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        return Check("database", ERROR, f"{vendor} database unreachable: {exc.__class__.__name__}: {exc}"), False
    if pending:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:5])
        return Check("database", ERROR, f"{len(pending)} migration(s) not applied ({names}): run `manage.py migrate`"), False
    return Check("database", OK, f"{vendor} reachable, migrations applied"), True


def check_categories() -> Check:
    from topics.models import Category

    count = Category.objects.count()
    if count == 0:
        return Check("categories", ERROR, "no categories: run `manage.py migrate` to seed them")
    return Check("categories", OK, f"{count} categories")


def check_price() -> Check:
    from .pricing import PriceMissing, price_for

    model = settings.ANTHROPIC_MODEL
    try:
        price = price_for(model)
    except PriceMissing as exc:
        return Check("price", ERROR, str(exc))
    return Check(
        "price", OK,
        f"{model}: ${price.input_per_mtok.normalize():f} in / ${price.output_per_mtok.normalize():f} out per MTok "
        f"(from {price.effective_date})",
    )


def check_broker() -> Check:
    from newsroom.celery import app

    url = settings.CELERY_BROKER_URL
    scheme = url.split("://", 1)[0]
    try:
        # The URL from settings, not the one the Celery app read when it first loaded its configuration: the
        # check reports on the broker the settings name now (the same one, outside tests that override them).
        with app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:  # kombu raises transport-specific errors; any of them means "unreachable"
        return Check("broker", WARNING, f"{scheme} broker unreachable ({exc.__class__.__name__}); "
                     "in-process runs still work, --queue and the admin's Run batch do not")
    return Check("broker", OK, f"{scheme} broker reachable")


def check_budget() -> Check:
    from .ledger import month_spent, monthly_cap

    try:
        per_batch = Decimal(settings.BATCH_BUDGET_USD)
    except (InvalidOperation, TypeError):
        return Check("budget", ERROR, f"BATCH_BUDGET_USD={settings.BATCH_BUDGET_USD!r} is not a number")
    if per_batch <= 0:
        return Check("budget", ERROR, f"BATCH_BUDGET_USD must be above 0, got {per_batch}")
    cap = monthly_cap()
    if cap is None:
        return Check("budget", OK, f"${per_batch} per batch; no monthly cap")
    remaining = cap - month_spent()
    if remaining <= 0:
        return Check("budget", ERROR, f"monthly cap ${cap} used up (${cap - remaining} spent this month)")
    return Check("budget", OK, f"${per_batch} per batch; ${remaining} of the ${cap} monthly cap left")


def run_checks(*, worker: bool = False) -> list[Check]:
    """Every check; with `worker`, also whether a Celery worker answers (the desk asks: it queues its batches)."""
    checks = [check_anthropic_key(), *check_optional_keys()]
    database, usable = check_database()
    checks.append(database)
    if usable:
        checks += [check_categories(), check_price(), check_budget()]
    broker = check_broker()
    checks.append(broker)
    if worker:
        checks.append(check_worker() if broker.status == OK else
                      Check("worker", WARNING, "not asked: the broker is unreachable, so no worker can take a batch"))
    return checks


def is_ready(checks: list[Check]) -> bool:
    return not any(c.status == ERROR for c in checks)
