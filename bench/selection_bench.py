"""Issue 2 figures: selection time over a 100,000-topic pool, and query counts of selection and the topic
changelist, which must not grow with the number of topics."""
from __future__ import annotations

import random
import time

from bench.common import median, setup_django

POOL = 100_000
CHANGELIST_ROWS = 50_000


def fill(count: int) -> None:
    from django.utils import timezone

    from topics.models import Category, Topic

    categories = list(Category.objects.all())
    existing = Topic.objects.filter(source="bench").count()
    rng = random.Random(7)
    words = ("shipping tariff checkout inventory loyalty supplier shopify margin ads carrier reorder churn "
             "landing pricing factory warehouse").split()
    now = timezone.now()
    batch = []
    for n in range(existing, count):
        title = " ".join(rng.choice(words) for _ in range(8)) + f" {n}"
        batch.append(Topic(
            title=title, summary="", source="bench", external_id=f"bench-{n}", score=round(rng.uniform(0, 100), 1),
            status="approved" if n % 10 else "new", category=categories[n % len(categories)],
            published_at=now - timezone.timedelta(minutes=n),
        ))
        if len(batch) == 5000:
            Topic.objects.bulk_create(batch)
            batch = []
    Topic.objects.bulk_create(batch)


def time_selection() -> tuple[float, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from topics.selection import candidate_pool, select_diverse

    timings = []
    for _ in range(7):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            chosen = select_diverse(pool=candidate_pool(), size=8)
            timings.append((time.perf_counter() - started) * 1000)
    return median(timings), len(queries), len({t.category_id for t in chosen})


def changelist_queries() -> int:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user, _ = get_user_model().objects.get_or_create(username="bench-admin", defaults={"is_staff": True,
                                                                                       "is_superuser": True})
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/topics/topic/", secure=True)
    assert response.status_code == 200, response.status_code
    return len(queries)


def main() -> None:
    from django.conf import settings

    setup_django()
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]
    print(f"selection bench on {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
    fill(1_000)
    small_ms, small_queries, _ = time_selection()
    small_changelist = changelist_queries()
    fill(CHANGELIST_ROWS)
    changelist = changelist_queries()
    fill(POOL)
    ms, queries, categories = time_selection()
    print(f"  selection over 1,000 topics: {small_ms:.1f} ms, {small_queries} queries")
    print(f"  selection over {POOL:,} topics: {ms:.1f} ms median of 7 (target < 250 ms), {queries} queries, "
          f"{categories} distinct categories")
    print(f"  topic changelist queries: {small_changelist} with 1,000 topics, {changelist} with {CHANGELIST_ROWS:,}")


if __name__ == "__main__":
    main()
