"""Keyword categorisation: the category whose keywords appear most often in a topic's title and summary."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from .models import FALLBACK_CATEGORY_SLUG, Category, Topic


def categorize_text(*, text: str, categories: Sequence[Category]) -> Category:
    """Pick the category for `text`.

    Each keyword that occurs (case-insensitive substring) counts once; the most matches wins, ties go to the
    category that comes first in category order, and no match at all means the fallback category.
    """
    haystack = text.lower()
    best: Category | None = None
    best_hits = 0
    fallback: Category | None = None
    for category in sorted(categories, key=lambda c: (c.position, c.pk or 0)):
        if category.slug == FALLBACK_CATEGORY_SLUG:
            fallback = category
        hits = sum(1 for keyword in category.keyword_list if keyword in haystack)
        if hits > best_hits:
            best, best_hits = category, hits
    if best is not None:
        return best
    if fallback is None:
        fallback = Category.objects.get(slug=FALLBACK_CATEGORY_SLUG)
    return fallback


def topic_text(*, title: str, summary: str) -> str:
    return f"{title}\n{summary}"


def recategorize(*, topics: Iterable[Topic], categories: Sequence[Category] | None = None) -> int:
    """Re-run categorisation on `topics`, leaving editor-chosen categories alone. Returns how many changed."""
    categories = list(categories if categories is not None else Category.objects.all())
    changed = []
    for topic in topics:
        if topic.category_locked:
            continue
        category = categorize_text(text=topic_text(title=topic.title, summary=topic.summary), categories=categories)
        if topic.category_id != category.pk:
            topic.category = category
            changed.append(topic)
    Topic.objects.bulk_update(changed, ["category"], batch_size=500)
    return len(changed)
