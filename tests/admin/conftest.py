"""Fixtures for the editor's desk: editors and users without the permissions, CSRF-enforcing clients, the Celery
app pointed at Redis (or at a broker that is down), a real worker in a subprocess, and Debian's Chromium."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.test import Client

from tests.conftest import service_missing
from tests.support import DOWN_BROKER_URL, WorkerProcess, record_ledger_entry, service_env

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "desk-password-0f3c"
REDIS_TRANSPORT_OPTIONS = {"socket_timeout": 5, "socket_connect_timeout": 2, "max_retries": 1,
                           "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


@pytest.fixture(autouse=True)
def reference_data(migration_data) -> None:
    """Every test here starts from a migrated database, even after a transactional test flushed it."""


def _make_user(username: str, *, group: str | None = None, permissions: tuple[str, ...] = ()):
    from django.contrib.auth.models import Group, Permission, User

    user = User.objects.create_user(username, email=f"{username}@example.com", password=PASSWORD, is_staff=True,
                                    first_name=username.capitalize())
    if group:
        user.groups.add(Group.objects.get(name=group))
    for dotted in permissions:
        app_label, codename = dotted.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def editor(db):
    """A member of the Editor group that the data migration created."""
    return _make_user("editor", group="Editor")


@pytest.fixture
def viewer(db):
    """Staff who may look at everything at the desk but neither run batches nor approve drafts."""
    return _make_user("viewer", permissions=(
        "topics.view_topic", "topics.change_topic", "batches.view_batch", "batches.view_newsletter",
        "batches.view_costledgerentry", "batches.change_newsletter",
    ))


def csrf_client(user=None) -> Client:
    """A client that enforces CSRF like a browser-facing server does; logged in as `user` when given."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def csrf_token(client: Client, page: str) -> str:
    """The token a form on `page` carries: GET the page, as a browser would, and read the cookie it sets."""
    response = client.get(page)
    assert response.status_code == 200, (page, response.status_code)
    return client.cookies["csrftoken"].value


@pytest.fixture
def editor_client(editor) -> Client:
    return csrf_client(editor)


@pytest.fixture
def viewer_client(viewer) -> Client:
    return csrf_client(viewer)


@pytest.fixture
def post_form() -> Callable[..., object]:
    """POST `data` to `url` with the CSRF token of the page the form is on, as a browser would."""

    def post(client: Client, url: str, data: dict, *, page: str) -> object:
        token = csrf_token(client, page)
        return client.post(url, {**data, "csrfmiddlewaretoken": token})

    return post


DISTINCT_TITLES = {
    "shipping_logistics": "USPS ground advantage rates jump before peak season",
    "pricing_margins": "Tariff changes squeeze margins on imported homeware",
    "conversion_optimization": "One-page checkout lifts mobile conversion for apparel brands",
    "ads_marketing": "Meta Advantage+ campaigns cut acquisition cost for small stores",
    "inventory_management": "Amazon FBA capacity limits force new reorder habits",
    "customer_retention": "Klaviyo winback flows bring lapsed buyers home",
    "product_sourcing": "Factories in Vietnam lower minimum order quantities",
    "platform_tools": "Shopify Magic drafts product descriptions in bulk",
}


@pytest.fixture
def run_action() -> Callable[..., object]:
    """Choose admin action `action` for the rows `ids` on `changelist` and press Go, as the changelist form does."""

    def run(client: Client, changelist: str, action: str, ids: list[int]) -> object:
        token = csrf_token(client, changelist)
        return client.post(changelist, {"action": action, "index": 0, "_selected_action": [str(i) for i in ids],
                                        "csrfmiddlewaretoken": token})

    return run


@pytest.fixture
def category_titles() -> dict[str, str]:
    """The titles of `topics_in_every_category` (tests/conftest.py)."""
    return DISTINCT_TITLES


# --- The Celery app and its broker -------------------------------------------------------------------------------

def _reset_producer_pools(app) -> None:
    # The app and kombu's global pool groups cache connection pools by broker URL; close and forget them all
    # so the next publish dials the broker now configured.
    import kombu.pools

    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    kombu.pools.reset()


@contextmanager
def celery_broker(settings, url: str) -> Iterator[None]:
    """Point settings and the already-configured Celery app at `url`, and back afterwards."""
    from newsroom.celery import app

    saved = (app.conf.broker_url, app.conf.broker_transport_options)
    settings.CELERY_BROKER_URL = url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = REDIS_TRANSPORT_OPTIONS
    app.conf.broker_url = url
    app.conf.broker_transport_options = REDIS_TRANSPORT_OPTIONS
    _reset_producer_pools(app)
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.broker_transport_options = saved
        _reset_producer_pools(app)


@pytest.fixture
def redis_broker(redis_url, settings):
    """The Celery app publishes to the Redis test database; yields a Redis client to look at the queue."""
    import redis

    with celery_broker(settings, redis_url):
        from newsroom.celery import app

        with app.connection_for_write() as conn:
            assert conn.transport.driver_type == "redis"
        yield redis.Redis.from_url(redis_url)


@pytest.fixture
def broker_down(settings):
    """The Celery app points at a broker nobody answers: publishing fails within a second or two."""
    with celery_broker(settings, DOWN_BROKER_URL):
        yield


def queued_tasks(client) -> list[str]:
    """Names of the tasks waiting in the default queue of the Redis test database."""
    import json

    return [json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)]


# --- A real worker -----------------------------------------------------------------------------------------------

@pytest.fixture
def desk_worker(redis_broker, fake_anthropic, tmp_path) -> Iterator[WorkerProcess]:
    """A real worker on the Redis test database, this test's database and the fake Anthropic API.

    Tests using it run with `django_db(transaction=True)`: the worker sees what the test (and the live server)
    committed, and it is stopped before the test database is flushed.
    """
    env = service_env(CELERY_BROKER_URL=django_settings.CELERY_BROKER_URL,
                      ANTHROPIC_BASE_URL=fake_anthropic.base_url)
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", pool="threads", concurrency=4)
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()


# --- The browser -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (never a browser Playwright downloads)."""
    if not os.path.exists(CHROMIUM):
        service_missing(f"Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make around it are
    # ordinary synchronous calls, so Django's "you are in an async context" guard does not apply.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"],
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def desk_page(chromium, live_server):
    """A fresh browser tab (its own cookies) on the live server, 1100 px wide."""
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1100, "height": 800},
                                   accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def log_in() -> Callable[..., None]:
    def log_in(page, username: str) -> None:
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")

    return log_in


# --- Batches and drafts in a given state -------------------------------------------------------------------------

DRAFT_BODY = """## Carriers raise surcharges again

Independent sellers face **higher** peak surcharges this season.

**What to do this week:**

- Compare your three most-used shipping zones.
- Move heavy SKUs to [regional carriers](https://example.com/carriers).
"""


@pytest.fixture
def make_batch(categories, make_topic) -> Callable[..., object]:
    """A batch whose items are in the given statuses, each drafted or failed item with a settled ledger entry."""
    from decimal import Decimal

    from batches.models import Batch, CostLedgerEntry, Newsletter
    from topics import usage as topic_usage

    slugs = list(categories)
    counter = {"n": 0}

    def make(statuses: list[str], *, status: str = Batch.Status.RUNNING, budget: str = "40",
             cost: str = "0.012500", titles: list[str] | None = None, error: str = "", body: str = DRAFT_BODY,
             created_by=None):
        batch = Batch.objects.create(status=status, size=max(len(statuses), 1), budget_usd=Decimal(budget),
                                     model=django_settings.ANTHROPIC_MODEL, created_by=created_by,
                                     estimated_cost_usd=Decimal("0.5") * len(statuses))
        for i, item_status in enumerate(statuses):
            counter["n"] += 1
            title = titles[i] if titles else f"Story {counter['n']} for sellers"
            topic = make_topic(title, category=slugs[i % len(slugs)], score=50 - i)
            drafted = item_status in Newsletter.DRAFTED_STATUSES
            newsletter = Newsletter.objects.create(
                batch=batch, topic=topic, position=i, status=item_status, model=batch.model,
                subject=f"Subject of story {counter['n']}" if drafted else "",
                preview_text=f"Preview of story {counter['n']}" if drafted else "",
                body_markdown=body.strip() if drafted else "",  # as generation stores it
                error=error if item_status in (Newsletter.Status.FAILED, Newsletter.Status.SKIPPED_BUDGET) else "",
                cost_usd=Decimal(cost) if drafted else Decimal("0"),
            )
            # What batches records on the topic at each step (topics.usage).
            if item_status in Newsletter.USED_STATUSES:
                topic_usage.mark_taken(topic_ids=[topic.pk])
            if drafted:
                topic_usage.mark_drafted(topic_id=topic.pk)
            if drafted or item_status == Newsletter.Status.GENERATING:
                record_ledger_entry(
                    idempotency_key=f"test:{newsletter.pk}", batch=batch, newsletter=newsletter,
                    model=batch.model, reserved_usd=Decimal("0.05"), amount_usd=Decimal(cost) if drafted else
                    Decimal("0.05"),
                    status=CostLedgerEntry.Status.SETTLED if drafted else CostLedgerEntry.Status.RESERVED,
                )
        return batch

    return make


@pytest.fixture
def draft(make_batch):
    """One generated draft, ready for review."""
    from batches.models import Batch

    return make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
