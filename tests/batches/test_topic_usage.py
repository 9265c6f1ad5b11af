"""Batches record on each topic what drafting did with it (topics.usage), so selection can read only topics."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from batches import running
from batches.models import Batch, Newsletter
from batches.claude_standin import Fault
from topics.models import Topic
from topics.selection import select_topics

pytestmark = pytest.mark.django_db


def usage_of(topic: Topic) -> str:
    topic.refresh_from_db()
    return topic.usage


def test_starting_a_batch_takes_its_topics_so_the_next_selection_passes_them_by(topics_in_every_category):
    batch = running.start_batch(batch_id=running.create_batch(size=3, budget_usd=Decimal("40")).pk)
    picked = list(batch.newsletters.values_list("topic_id", flat=True))

    assert set(Topic.objects.filter(usage=Topic.Usage.TAKEN).values_list("pk", flat=True)) == set(picked)
    assert not set(picked) & {t.pk for t in select_topics(size=8).topics}


def test_a_saved_draft_marks_its_topic_drafted_and_a_failed_one_frees_it(
    fake_anthropic, topics_in_every_category, runbatch
):
    refused = topics_in_every_category[1]
    fake_anthropic.add_rule(lambda body: refused.title in json.dumps(body), Fault(status=400))

    runbatch("--size", "2")

    drafted = topics_in_every_category[0]
    assert usage_of(drafted) == Topic.Usage.DRAFTED
    assert drafted.drafted_at is not None and drafted.used_at <= drafted.drafted_at
    assert (usage_of(refused), refused.used_at) == (Topic.Usage.UNUSED, None)
    assert refused.pk in {t.pk for t in select_topics(size=8).topics}


def test_a_failed_second_draft_keeps_the_topic_drafted(fake_anthropic, topics_in_every_category, runbatch):
    from batches.generation import generate_newsletter

    batch = Batch.objects.get(pk=runbatch("--size", "1").report["batch"])
    item = batch.newsletters.get()
    Newsletter.objects.filter(pk=item.pk).update(status=Newsletter.Status.PENDING)
    fake_anthropic.enqueue(Fault(status=400))

    generate_newsletter(newsletter_id=item.pk, token="again")

    assert Newsletter.objects.get(pk=item.pk).status == Newsletter.Status.FAILED
    assert usage_of(item.topic) == Topic.Usage.DRAFTED


def test_resuming_a_batch_takes_the_topics_of_its_failed_items_again(
    fake_anthropic, topics_in_every_category, runbatch
):
    refused = topics_in_every_category[0]
    fake_anthropic.add_rule(lambda body: refused.title in json.dumps(body), Fault(status=400))
    batch = Batch.objects.get(pk=runbatch("--size", "1").report["batch"])
    assert usage_of(refused) == Topic.Usage.UNUSED

    running.resume_batch(batch=batch)

    assert usage_of(refused) == Topic.Usage.TAKEN
    assert refused.pk not in {t.pk for t in select_topics(size=8).topics}
