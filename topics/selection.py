"""Two-pass diversity selection: one topic per category first, then the best of the rest.

Selection reads only topics: what drafting did with a topic is recorded on the topic itself (topics.usage).
"""
from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone
from rapidfuzz import fuzz, process

from .dedupe import NEAR_DUPLICATE_THRESHOLD, is_near_duplicate, normalize_title
from .models import Category, Topic, TopicQuerySet

RECENTLY_USED_DAYS = 90
RECENTLY_USED_LIMIT = 500
# The most topics an editor can hand-pick as a batch's candidates.
MAX_POOL_IDS = 1000
# Drafted topics counted for "left out: already drafted"; past this the count reads "at least".
DRAFTED_COUNT_LIMIT = 10_000

LEFT_OUT_REASONS = {
    "already_drafted": "already drafted",
    "recent_repeat": "repeat of a recent story",
    "near_duplicate": "near-duplicate of a chosen topic",
    "not_approved": "not approved",
}


def best_first_key(topic: Topic | Head) -> tuple:
    published = topic.published_at.timestamp() if topic.published_at else float("-inf")
    return (-topic.score, -published, -topic.pk)


def selectable_statuses(*, include_new: bool) -> list[str]:
    return [Topic.Status.APPROVED, Topic.Status.NEW] if include_new else [Topic.Status.APPROVED]


def candidate_pool(*, include_new: bool = False, topic_ids: Sequence[int] | None = None) -> TopicQuerySet:
    """Approved (optionally also unreviewed) topics no draft has used yet, optionally limited to `topic_ids`."""
    pool = Topic.objects.selectable(include_new=include_new).unused()
    if topic_ids:
        pool = pool.filter(pk__in=list(topic_ids))
    return pool


def union_all(querysets: Sequence[QuerySet]) -> list[tuple]:
    """The rows of every queryset (each a values_list, possibly ordered and sliced), in no particular order.

    Where the database allows ORDER BY and LIMIT in the arms of a compound statement (PostgreSQL), one UNION ALL
    query: one round trip instead of one per queryset, which on a busy machine is most of the time. Elsewhere
    (SQLite, in the same process: a query costs no round trip) one query each. Each arm is planned as it would be
    alone, so each still reads its own index.
    """
    if not querysets:
        return []
    if len(querysets) > 1 and connections[querysets[0].db].features.supports_slicing_ordering_in_compound:
        return list(querysets[0].union(*querysets[1:], all=True))
    return [row for queryset in querysets for row in queryset]


def recently_used(*, days: int = RECENTLY_USED_DAYS, limit: int = RECENTLY_USED_LIMIT) -> list[tuple[int, str]]:
    """(id, title) of the topics drafted recently, newest first: a story already covered must not come back from
    another source."""
    since = timezone.now() - datetime.timedelta(days=days)
    # One arm per used state, each through that state's own partial index (see Topic.Meta.indexes).
    rows = union_all([
        Topic.objects.filter(usage=usage, used_at__gte=since).order_by("-used_at")
        .values_list("used_at", "pk", "title")[:limit]
        for usage in Topic.USED_USAGES
    ])
    newest_first = sorted(rows, key=lambda row: (row[0], row[1]), reverse=True)[:limit]
    return [(pk, title) for _, pk, title in newest_first]


def recently_used_titles(*, days: int = RECENTLY_USED_DAYS, limit: int = RECENTLY_USED_LIMIT) -> list[str]:
    """Titles of the topics drafted recently (recently_used)."""
    return [title for _, title in recently_used(days=days, limit=limit)]


@dataclass(frozen=True)
class LeftOut:
    """How many candidates selection left out, by reason.

    `already_drafted` and `not_approved` count candidates that could not be chosen at all: hand-picked topics
    that are not approved or that a draft has used, or (automatic selection) approved topics a draft has used.
    `recent_repeat` and `near_duplicate` count topics passed over while choosing: each ranked above the last
    topic chosen (or the batch could not be filled) and was skipped because it repeats a story drafted in the
    last RECENTLY_USED_DAYS days, or tells the same story as a topic already chosen.
    """

    already_drafted: int = 0
    recent_repeat: int = 0
    near_duplicate: int = 0
    not_approved: int = 0

    @property
    def total(self) -> int:
        return self.already_drafted + self.recent_repeat + self.near_duplicate + self.not_approved

    def reasons(self) -> list[tuple[str, str, int]]:
        """(key, label, count) of each reason that left something out, in a fixed order."""
        return [(key, label, getattr(self, key)) for key, label in LEFT_OUT_REASONS.items() if getattr(self, key)]

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in LEFT_OUT_REASONS}

    def describe(self) -> str:
        """One line for people: "3 left out: 2 already drafted, 1 repeat of a recent story"."""
        if not self.total:
            return "No candidate was left out."
        return f"{self.total} left out: " + ", ".join(f"{count} {label}" for _, label, count in self.reasons())


@dataclass(frozen=True)
class Selection:
    topics: list[Topic]
    left_out: LeftOut = field(default_factory=LeftOut)


def select_topics(
    *,
    size: int,
    include_new: bool = False,
    topic_ids: Sequence[int] | None = None,
    categories: Sequence[Category] | None = None,
    avoid_titles: Sequence[str] | None = None,
) -> Selection:
    """Choose up to `size` topics, spreading them over the categories, and say what was left out and why.

    Candidates: approved (with `include_new`, also unreviewed) topics that no draft has used, limited to
    `topic_ids` when an editor picked them. Pass 1 ranks the categories by their best topic that may still be
    chosen and takes one topic from each, best first, until `size` are chosen; pass 2 fills the remaining slots
    with the best remaining topics of any category. A topic that is a near-duplicate of one already chosen, or of
    a title in `avoid_titles` (by default the stories drafted recently; none for hand-picked topics, which are
    taken as meant), may not be chosen. Ties break by score, then newest, then id.
    """
    if size <= 0:
        return Selection(topics=[])
    categories = list(categories if categories is not None else Category.objects.all())
    avoid = list(avoid_titles if avoid_titles is not None else ([] if topic_ids else recently_used_titles()))
    statuses = selectable_statuses(include_new=include_new)
    # Only the head of each category can ever be chosen. Each head is read per (category, status) through the
    # partial index topic_selection_head, whose columns are exactly these filters and this order: the database
    # reads `per_category` rows and stops, whatever the size of the pool and whatever its planner statistics.
    # All the heads are one query where the database allows it (union_all), and each row is only what choosing
    # needs; the topics chosen are read whole afterwards.
    per_category = size * 2 + 8
    recent = RecentStories(avoid)
    while True:
        rows = union_all([
            _head(category=category, status=status, topic_ids=topic_ids)[:per_category]
            for category in categories for status in statuses
        ])
        per_part = Counter((row.category_id, row.status) for row in rows)
        truncated = any(n == per_category for n in per_part.values())
        heads: dict[int, list[Head]] = {category.pk: [] for category in categories}
        for row in rows:
            heads[row.category_id].append(row)
        heads = {pk: sorted(head, key=best_first_key)[:per_category] for pk, head in heads.items()}
        chooser = _Chooser(avoid=recent)
        chosen = chooser.two_passes(heads=heads, size=size)
        if len(chosen) >= size or not truncated:
            break
        # Near-duplicates used up a whole head: look deeper (rare, and still bounded by the pool's size).
        per_category *= 4
    passed_over = chooser.passed_over(full=len(chosen) >= size)
    return Selection(
        topics=_whole_topics(chosen, categories=categories),
        left_out=LeftOut(
            recent_repeat=passed_over.count(_REPEAT),
            near_duplicate=passed_over.count(_NEAR_DUPLICATE),
            **_unavailable_counts(statuses=statuses, topic_ids=topic_ids),
        ),
    )


class Head(NamedTuple):
    """A topic of a category's head, as far as choosing needs it (best_first_key, the title)."""

    category_id: int
    status: str
    pk: int
    title: str
    score: float
    published_at: datetime.datetime | None


def _head(*, category: Category, status: str, topic_ids: Sequence[int] | None) -> QuerySet:
    # Exactly the columns and the condition of the topic_selection_head index and nothing more: a redundant
    # "status IN (...)" beside "status = %s" is enough for SQLite to pick a worse index.
    head = Topic.objects.filter(category=category, status=status, usage=Topic.Usage.UNUSED)
    if topic_ids:
        head = head.filter(pk__in=list(topic_ids))
    return head.best_first().values_list(*Head._fields, named=True)


def _whole_topics(chosen: Sequence[Head], *, categories: Sequence[Category]) -> list[Topic]:
    """The chosen topics as Topic objects, in the order chosen, with their categories (one query by key)."""
    if not chosen:
        return []
    # Not what a source sent (raw, engagement): never needed to choose or draft.
    found = Topic.objects.defer("raw", "engagement").in_bulk([head.pk for head in chosen])
    by_pk = {category.pk: category for category in categories}
    topics = [found[head.pk] for head in chosen if head.pk in found]
    for topic in topics:
        topic.category = by_pk[topic.category_id]  # no join: the categories are at hand
    return topics


_REPEAT, _NEAR_DUPLICATE = "recent_repeat", "near_duplicate"


class RecentStories:
    """Titles a chosen topic must not repeat, checked the way is_near_duplicate decides, but fast.

    is_near_duplicate calls two titles one story only when their normalised forms score at least
    NEAR_DUPLICATE_THRESHOLD on rapidfuzz's token_set_ratio or token_sort_ratio, so only the recent titles that
    could reach it (`candidates`) get the exact check: the same answer as comparing with each title in turn, at a
    fraction of the cost with 500 of them.
    """

    def __init__(self, titles: Sequence[str]):
        self.titles = list(titles)
        self.normalized = [normalize_title(title) for title in self.titles]
        words = [normalized.split() for normalized in self.normalized]
        self._sorted_words = [" ".join(sorted(title_words)) for title_words in words]
        self._distinct_words = [" ".join(sorted(set(title_words))) for title_words in words]
        self._holding: dict[str, list[int]] = {}  # word -> the titles that hold it
        for index, title_words in enumerate(words):
            for word in set(title_words):
                self._holding.setdefault(word, []).append(index)

    def candidates(self, normalized: str) -> list[int]:
        """The recent titles whose normalised form may score NEAR_DUPLICATE_THRESHOLD with `normalized` on
        token_set_ratio or token_sort_ratio (all of them, perhaps a few more), in order.

        token_sort_ratio is rapidfuzz's ratio of the words sorted; token_set_ratio, for two titles without a word
        in common, is the ratio of their distinct words sorted. So: two passes of the plain ratio (the fastest
        scorer, in C) over every recent title, and token_set_ratio itself only over the titles that share a word
        (all of them at worst: as slow as scoring every title with both, never slower).
        """
        words = normalized.split()
        cutoff = NEAR_DUPLICATE_THRESHOLD - 1  # a point below: a few more candidates, never one fewer
        sharing: set[int] = set()
        for word in set(words):
            sharing.update(self._holding.get(word, ()))
        shared = sorted(sharing)
        found = {shared[at] for _, _, at in process.extract(
            normalized, [self.normalized[index] for index in shared], scorer=fuzz.token_set_ratio, processor=None,
            score_cutoff=cutoff, limit=None)}
        for query, choices in ((" ".join(sorted(words)), self._sorted_words),
                               (" ".join(sorted(set(words))), self._distinct_words)):
            found.update(index for _, _, index in process.extract(
                query, choices, scorer=fuzz.ratio, processor=None, score_cutoff=cutoff, limit=None))
        return sorted(found)

    def repeated(self, title: str, *, skip: Collection[int] = ()) -> int | None:
        """The index of the first recent title (outside `skip`) that `title` tells the same story as, or None."""
        normalized = normalize_title(title)
        if not normalized or not self.titles:
            return None
        return next((index for index in self.candidates(normalized)
                     if index not in skip and is_near_duplicate(title, self.titles[index])), None)

    def repeated_by(self, title: str) -> bool:
        return self.repeated(title) is not None


class _Chooser:
    """The two passes over the category heads, remembering each topic passed over and why."""

    def __init__(self, *, avoid: RecentStories):
        self.avoid = avoid
        self.chosen: list[Head] = []
        self.chosen_ids: set[int] = set()
        self.repeats: dict[int, bool] = {}
        self.skipped: dict[int, tuple[tuple, str]] = {}  # pk -> (rank key, reason)

    def repeats_recent_story(self, topic: Head) -> bool:
        if topic.pk not in self.repeats:
            self.repeats[topic.pk] = self.avoid.repeated_by(topic.title)
        return self.repeats[topic.pk]

    def eligible(self, topic: Head) -> bool:
        if topic.pk in self.chosen_ids:
            return False
        if self.repeats_recent_story(topic):
            reason = _REPEAT
        elif any(is_near_duplicate(topic.title, other.title) for other in self.chosen):
            reason = _NEAR_DUPLICATE
        else:
            return True
        self.skipped.setdefault(topic.pk, (best_first_key(topic), reason))
        return False

    def take(self, topic: Head) -> None:
        self.chosen.append(topic)
        self.chosen_ids.add(topic.pk)

    def two_passes(self, *, heads: dict[int, list[Head]], size: int) -> list[Head]:
        # Pass 1: every round, each category not yet represented offers its best topic that may still be chosen
        # (a choice can make another category's offer a near-duplicate, so offers are looked at again each
        # round); the best offer wins. A category's offer only ever moves down its head.
        offer = {category: 0 for category, head in heads.items() if head}
        while len(self.chosen) < size and offer:
            best: tuple[int, Head] | None = None
            for category in list(offer):
                head, at = heads[category], offer[category]
                while at < len(head) and not self.eligible(head[at]):
                    at += 1
                if at == len(head):
                    del offer[category]
                    continue
                offer[category] = at
                if best is None or best_first_key(head[at]) < best_first_key(best[1]):
                    best = (category, head[at])
            if best is None:
                break
            self.take(best[1])
            del offer[best[0]]

        # Pass 2: the best remaining topics of any category.
        if len(self.chosen) < size:
            for topic in sorted((t for head in heads.values() for t in head), key=best_first_key):
                if len(self.chosen) >= size:
                    break
                if self.eligible(topic):
                    self.take(topic)
        return self.chosen

    def passed_over(self, *, full: bool) -> list[str]:
        """Reasons of the topics skipped that ranked above the last one chosen (all of them when not full)."""
        last = max((best_first_key(t) for t in self.chosen), default=None)
        return [reason for key, reason in self.skipped.values() if not full or last is None or key < last]


def _unavailable_counts(*, statuses: Sequence[str], topic_ids: Sequence[int] | None) -> dict[str, int]:
    """Candidates that could not be chosen at all: not approved, or already used by a draft."""
    if topic_ids:
        picked = list(Topic.objects.filter(pk__in=list(topic_ids)).values_list("status", "usage"))
        return {
            "not_approved": sum(1 for status, _ in picked if status not in statuses),
            "already_drafted": sum(
                1 for status, usage in picked if status in statuses and usage != Topic.Usage.UNUSED
            ),
        }
    # Counted here from the partial indexes of used topics (a few per batch), not by the database with a status
    # filter, which without statistics could walk the status index over the whole pool instead.
    used = union_all([Topic.objects.filter(usage=usage).order_by().values_list("status")[:DRAFTED_COUNT_LIMIT]
                      for usage in Topic.USED_USAGES])
    return {"already_drafted": sum(1 for (status,) in used if status in statuses), "not_approved": 0}


def covered_categories(topics: Sequence[Topic]) -> list[str]:
    return sorted({t.category.slug for t in topics})


__all__ = [
    "LeftOut",
    "MAX_POOL_IDS",
    "Selection",
    "best_first_key",
    "candidate_pool",
    "covered_categories",
    "recently_used",
    "recently_used_titles",
    "select_topics",
]
