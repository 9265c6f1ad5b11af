"""What drafting did with a topic, recorded on the topic itself.

The batches app calls these whenever one of its items changes hands (queued, drafted, failed, put back), so that
selection can read only topics and topics never needs to know what a newsletter is. Each function is one
conditional UPDATE: calling it twice, or for a topic in another state, changes nothing it should not.
`topic_ids` may be ids or a one-column queryset of them (then it runs as a subquery).
"""
from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Topic


def mark_taken(*, topic_ids: Iterable[int] | QuerySet) -> None:
    """A batch queued a draft of these topics: selection leaves them, and stories like them, alone from now on."""
    Topic.objects.filter(pk__in=topic_ids, usage=Topic.Usage.UNUSED).update(
        usage=Topic.Usage.TAKEN, used_at=timezone.now()
    )


def mark_drafted(*, topic_id: int) -> None:
    """A draft of this topic was saved."""
    now = timezone.now()
    Topic.objects.filter(pk=topic_id).update(
        usage=Topic.Usage.DRAFTED, drafted_at=now, used_at=Coalesce("used_at", now)
    )


def mark_free(*, topic_ids: Iterable[int] | QuerySet) -> None:
    """Drafting these topics failed, was skipped or was called off: a topic with no draft is offered again.

    A topic that already has a draft stays drafted (a failed second draft does not make the first one vanish).
    """
    Topic.objects.filter(pk__in=topic_ids, usage=Topic.Usage.TAKEN).update(
        usage=Topic.Usage.UNUSED, used_at=None
    )


def record_outcome(*, topic_id: int, drafted: bool) -> None:
    """An item of this topic finished: drafted, or not (failed or skipped)."""
    if drafted:
        mark_drafted(topic_id=topic_id)
    else:
        mark_free(topic_ids=[topic_id])
