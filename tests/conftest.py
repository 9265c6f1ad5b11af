"""Shared fixtures: real services (skip on a laptop without them, fail in CI under REQUIRE_SERVICES=1)."""
from __future__ import annotations

import importlib
import os
import socket
from urllib.parse import urlsplit

import pytest

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def test_redis_url() -> str:
    """TEST_REDIS_URL, read when a test needs it (the settings have loaded .env by then), else db 15."""
    return os.environ.get("TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)


def service_missing(message: str) -> None:
    """A missing service skips the test on a laptop, and fails it in CI (REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {message}", pytrace=False)
    pytest.skip(message)


def port_open(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    """Each test starts with an empty cache: the desk caches a worker ping for a few seconds, and one test's live
    worker must not answer for the next test's empty broker."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def fresh_drafting_process() -> None:
    """Each test drafts as a freshly started worker process does: the requests' fixed part not counted yet (the
    count is kept per process and endpoint, and a later test's fake may get an earlier one's port), and no price
    kept from an earlier test's database."""
    from batches import generation

    generation._fixed_counts.clear()
    generation._prices.clear()


@pytest.fixture
def redis_url() -> str:
    """The Redis database for tests (TEST_REDIS_URL), emptied before and after use."""
    url = test_redis_url()
    if not port_open(url):
        service_missing(f"Redis at {url}")
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def fake_anthropic(settings):
    """The loopback Anthropic API, wired in as ANTHROPIC_BASE_URL with a test key."""
    from batches.claude_standin import FakeAnthropicServer

    server = FakeAnthropicServer().start()
    settings.ANTHROPIC_BASE_URL = server.base_url
    settings.ANTHROPIC_API_KEY = "sk-ant-test-0000000000000000wxyz"
    settings.ANTHROPIC_RETRY_BASE_SECONDS = 0.01
    settings.ANTHROPIC_TIMEOUT_SECONDS = 5.0
    yield server
    server.stop()


@pytest.fixture
def migration_data(db) -> None:
    """Categories, prices and the Editor group, as the data migrations left them.

    A transactional test ends by flushing the database, which removes what the data migrations wrote; put back
    whatever is missing, so that the next test (and any worker or command it starts) sees a migrated database.
    """
    from django.apps import apps
    from django.contrib.auth.models import Group

    from batches.models import ModelPrice
    from topics.models import Category

    for model, seeding in ((Category, "topics.migrations.0002_seed_categories"),
                           (ModelPrice, "batches.migrations.0002_seed_prices")):
        if not model.objects.exists():
            importlib.import_module(seeding).seed(apps, None)
    if not Group.objects.filter(name="Editor").exists():
        importlib.import_module("batches.migrations.0003_editor_group").add_editor_group(apps)
        importlib.import_module("batches.migrations.0008_editor_group_topics").add_topic_permissions(apps)


@pytest.fixture
def categories(db):
    from topics.models import Category

    return {c.slug: c for c in Category.objects.all()}


@pytest.fixture
def make_topic(categories):
    """Create a topic; `category` is a slug (default: categorised by keywords)."""
    from topics.categorize import categorize_text
    from topics.models import Topic

    counter = {"n": 0}

    def make(title: str = "", *, category: str | None = None, score: float = 10, status: str = "approved",
             summary: str = "", source: str = "import", published_at=None, **extra) -> Topic:
        counter["n"] += 1
        title = title or f"Topic number {counter['n']}"
        cat = categories[category] if category else categorize_text(
            text=f"{title}\n{summary}", categories=list(categories.values())
        )
        return Topic.objects.create(
            title=title, summary=summary, source=source, external_id=extra.pop("external_id", f"t{counter['n']}"),
            score=score, status=status, category=cat, published_at=published_at, **extra,
        )

    return make


@pytest.fixture
def topics_in_every_category(categories, make_topic, category_titles) -> list:
    """One approved topic in each of the eight categories, best-scored first, titled by the suite's
    `category_titles` fixture (a title per category slug, no two alike)."""
    return [make_topic(category_titles[slug], category=slug, score=100 - i) for i, slug in enumerate(categories)]


@pytest.fixture
def web_pages(settings):
    """The loopback web server of article and hostile pages (tests/fakes/web_pages.py); fetching from loopback is
    allowed, as SOURCE_FETCH_ALLOW_PRIVATE=1 does for tests and the demo."""
    from tests.fakes.web_pages import WebPages

    settings.SOURCE_FETCH_ALLOW_PRIVATE = True
    with WebPages() as pages:
        yield pages
