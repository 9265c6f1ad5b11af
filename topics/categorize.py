"""Keyword categorisation: the category whose keywords appear most often in a topic's title and summary."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from .models import FALLBACK_CATEGORY_SLUG, Category, Topic

logger = logging.getLogger("newsroom.categorize")


class KeywordTable:
    """Every category's keywords parsed once, in tie-break order, to categorise many texts in one run.

    Parsing a category's keyword text is most of the work of categorising one short text, so a run that
    categorises thousands of topics builds one table and asks it for each topic.
    """

    def __init__(self, categories: Sequence[Category]):
        ordered = sorted(categories, key=lambda c: (c.position, c.pk or 0))
        self._entries = [(category, tuple(category.keyword_list)) for category in ordered]
        self._fallback = next((c for c in ordered if c.slug == FALLBACK_CATEGORY_SLUG), None)

    def categorize(self, text: str) -> Category:
        """Each keyword that occurs (case-insensitive substring) counts once; the most matches wins, ties go to the
        category that comes first in category order, and no match at all means the fallback category."""
        haystack = text.lower()
        best: Category | None = None
        best_hits = 0
        for category, keywords in self._entries:
            hits = sum(map(haystack.__contains__, keywords))  # `keyword in haystack` for each, counted in C
            if hits > best_hits:
                best, best_hits = category, hits
        if best is not None:
            return best
        if self._fallback is None:
            self._fallback = fallback_category()
        return self._fallback


def fallback_category() -> Category:
    """The category of a text that matches no keyword: platform_tools, which the admin does not let anyone delete.
    Should it be gone all the same (removed outside the admin), the first category in order takes its place, so
    one missing row never stops a discovery run or an import."""
    found = Category.objects.filter(slug=FALLBACK_CATEGORY_SLUG).first()
    if found is None:
        found = Category.objects.order_by("position", "pk").first()
        if found is None:
            raise Category.DoesNotExist("there are no categories: run `manage.py migrate`, which creates them")
        logger.warning("the fallback category %r is missing: texts matching no keyword go to %r",
                       FALLBACK_CATEGORY_SLUG, found.slug)
    return found


def categorize_text(*, text: str, categories: Sequence[Category]) -> Category:
    """Pick the category for `text` (one text; for many, build one `KeywordTable` and ask it for each)."""
    return KeywordTable(categories).categorize(text)


def topic_text(*, title: str, summary: str) -> str:
    return f"{title}\n{summary}"


def recategorize(*, topics: Iterable[Topic], categories: Sequence[Category] | None = None) -> int:
    """Re-run categorisation on `topics`, leaving editor-chosen categories alone. Returns how many changed."""
    table = KeywordTable(list(categories if categories is not None else Category.objects.all()))
    changed = []
    for topic in topics:
        if topic.category_locked:
            continue
        category = table.categorize(topic_text(title=topic.title, summary=topic.summary))
        if topic.category_id != category.pk:
            topic.category = category
            changed.append(topic)
    Topic.objects.bulk_update(changed, ["category"], batch_size=500)
    return len(changed)
