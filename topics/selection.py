"""Two-pass diversity selection: one topic per category first, then the best of the rest."""
from __future__ import annotations

import datetime
from collections.abc import Sequence

from django.utils import timezone

from .dedupe import is_near_duplicate
from .models import Category, Topic, TopicQuerySet


def best_first_key(topic: Topic) -> tuple:
    published = topic.published_at.timestamp() if topic.published_at else float("-inf")
    return (-topic.score, -published, -topic.pk)


def candidate_pool(*, include_new: bool = False, topic_ids: Sequence[int] | None = None) -> TopicQuerySet:
    """Approved (optionally also unreviewed) topics no draft has used yet, optionally limited to `topic_ids`."""
    pool = Topic.objects.selectable(include_new=include_new).unused()
    if topic_ids:
        pool = pool.filter(pk__in=list(topic_ids))
    return pool


RECENTLY_USED_DAYS = 90
RECENTLY_USED_LIMIT = 500


def recently_used_titles(*, days: int = RECENTLY_USED_DAYS, limit: int = RECENTLY_USED_LIMIT) -> list[str]:
    """Titles of topics drafted recently: a story already covered must not come back from another source."""
    from batches.models import Newsletter

    since = timezone.now() - datetime.timedelta(days=days)
    return list(
        Newsletter.objects.filter(status__in=Newsletter.USED_STATUSES, created_at__gte=since)
        .order_by("-created_at")
        .values_list("topic__title", flat=True)[:limit]
    )


def select_diverse(
    *,
    pool: TopicQuerySet,
    size: int,
    categories: Sequence[Category] | None = None,
    avoid_titles: Sequence[str] | None = None,
) -> list[Topic]:
    """Choose up to `size` topics from `pool`, spreading them over the categories.

    Pass 1 takes each category's best topic, best-first, until `size` are chosen; pass 2 fills the remaining
    slots with the best remaining topics of any category. A topic that is a near-duplicate of one already
    chosen, or of a title in `avoid_titles` (by default: the stories drafted recently), is passed over.
    Ties break by score, then newest, then id.
    """
    if size <= 0:
        return []
    categories = list(categories if categories is not None else Category.objects.all())
    avoid = list(avoid_titles if avoid_titles is not None else recently_used_titles())
    # Only the head of each category can ever be chosen, so read that head per category through the
    # (category, status, score) index: the work and the number of queries do not grow with the pool.
    per_category = size * 2 + 8
    while True:
        heads = {
            category.pk: list(
                pool.filter(category=category).best_first().select_related("category")[:per_category]
            )
            for category in categories
        }
        chosen = _two_passes(heads=heads, size=size, avoid=avoid)
        truncated = any(len(head) == per_category for head in heads.values())
        if len(chosen) >= size or not truncated:
            return chosen
        # Near-duplicates used up a whole head: look deeper (rare, and still bounded by the pool's size).
        per_category *= 4


def _two_passes(*, heads: dict[int, list[Topic]], size: int, avoid: Sequence[str]) -> list[Topic]:
    chosen: list[Topic] = []
    chosen_ids: set[int] = set()

    def acceptable(topic: Topic) -> bool:
        return (
            topic.pk not in chosen_ids
            and not any(is_near_duplicate(topic.title, c.title) for c in chosen)
            and not any(is_near_duplicate(topic.title, title) for title in avoid)
        )

    leaders = sorted((head for head in heads.values() if head), key=lambda head: best_first_key(head[0]))
    for head in leaders:
        if len(chosen) >= size:
            break
        leader = next((t for t in head if acceptable(t)), None)
        if leader is not None:
            chosen.append(leader)
            chosen_ids.add(leader.pk)

    if len(chosen) < size:
        rest = sorted((t for head in heads.values() for t in head), key=best_first_key)
        for topic in rest:
            if len(chosen) >= size:
                break
            if acceptable(topic):
                chosen.append(topic)
                chosen_ids.add(topic.pk)
    return chosen


def covered_categories(topics: Sequence[Topic]) -> list[str]:
    return sorted({t.category.slug for t in topics})


__all__ = ["candidate_pool", "select_diverse", "best_first_key", "covered_categories"]
