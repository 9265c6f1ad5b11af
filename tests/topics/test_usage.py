"""A topic's own record of what drafting did with it."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from topics import usage
from topics.models import Topic

pytestmark = pytest.mark.django_db


def state(topic: Topic) -> tuple[str, bool, bool]:
    topic.refresh_from_db()
    return topic.usage, topic.used_at is not None, topic.drafted_at is not None


def test_a_topic_goes_from_unused_to_taken_to_drafted(make_topic):
    topic = make_topic()
    assert state(topic) == ("unused", False, False)

    usage.mark_taken(topic_ids=[topic.pk])
    assert state(topic) == ("taken", True, False)

    usage.mark_drafted(topic_id=topic.pk)
    assert state(topic) == ("drafted", True, True)


def test_taking_a_drafted_topic_again_keeps_it_drafted_and_its_first_use(make_topic):
    topic = make_topic()
    usage.mark_taken(topic_ids=[topic.pk])
    usage.mark_drafted(topic_id=topic.pk)
    first_used = Topic.objects.get(pk=topic.pk).used_at

    usage.mark_taken(topic_ids=[topic.pk])
    usage.mark_free(topic_ids=[topic.pk])

    assert state(topic) == ("drafted", True, True)
    assert topic.used_at == first_used


def test_a_topic_whose_draft_failed_is_unused_again(make_topic):
    topic = make_topic()
    usage.mark_taken(topic_ids=[topic.pk])

    usage.record_outcome(topic_id=topic.pk, drafted=False)

    assert state(topic) == ("unused", False, False)


def test_the_database_refuses_a_used_topic_without_the_time_it_was_taken(make_topic):
    topic = make_topic()

    with pytest.raises(IntegrityError), transaction.atomic():
        Topic.objects.filter(pk=topic.pk).update(usage=Topic.Usage.DRAFTED)
