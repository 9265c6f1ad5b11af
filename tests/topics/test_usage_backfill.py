"""Migration 0008: topics used before topics recorded their own usage get it from their newsletters."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("topics", "0007_selection_index")]
AFTER = [("topics", "0008_backfill_usage")]


@pytest.fixture
def executor(migration_data):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_backfill_gives_each_used_topic_the_state_its_newsletters_gave_it(executor):
    executor.loader.build_graph()
    apps = executor.loader.project_state(list(executor.loader.applied_migrations)).apps
    Topic, Category = apps.get_model("topics", "Topic"), apps.get_model("topics", "Category")
    Batch, Newsletter = apps.get_model("batches", "Batch"), apps.get_model("batches", "Newsletter")
    category = Category.objects.first()
    created, generated = datetime(2026, 11, 2, 9, tzinfo=UTC), datetime(2026, 11, 2, 9, 5, tzinfo=UTC)

    def topic_with(*statuses: str):
        topic = Topic.objects.create(title=f"story {Topic.objects.count()}", external_id=str(Topic.objects.count()),
                                     category=category, status="approved")
        for status in statuses:
            other = Batch.objects.create(budget_usd=Decimal("40"), model="claude-sonnet-4-6")
            Newsletter.objects.create(batch=other, topic=topic, status=status, created_at=created,
                                      generated_at=generated if status in ("generated", "approved") else None)
        return topic.pk

    drafted, approved_after_failure, pending, failed, fresh = (
        topic_with("generated"), topic_with("failed", "approved"), topic_with("pending"), topic_with("failed"),
        topic_with(),
    )

    executor.loader.build_graph()
    executor.migrate(AFTER)

    from topics.models import Topic as CurrentTopic

    rows = {t.pk: (t.usage, t.used_at, t.drafted_at) for t in CurrentTopic.objects.all()}
    assert rows[drafted] == ("drafted", created, generated)
    assert rows[approved_after_failure] == ("drafted", created, generated)
    assert rows[pending] == ("taken", created, None)
    assert rows[failed] == rows[fresh] == ("unused", None, None)
