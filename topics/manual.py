"""Topics an editor adds by hand at the desk: a URL and a title, categorised like any other unless chosen."""
from __future__ import annotations

from django.utils import timezone

from .categorize import categorize_text, topic_text
from .dedupe import canonical_url
from .importing import derive_external_id
from .models import Category, Topic

SOURCE = "manual"


def known_topic(*, url: str, title: str) -> Topic | None:
    """The topic that already tells this story (same canonical URL, or the same hand-added URL or title)."""
    canonical = canonical_url(url) if url else ""
    if canonical:
        # "> ''" as the partial index on canonical_url says, so that SQLite reads it.
        found = Topic.objects.filter(canonical_url=canonical, canonical_url__gt="").order_by("pk").first()
        if found is not None:
            return found
    return Topic.objects.filter(source=SOURCE, external_id=derive_external_id(url=url, title=title)).first()


def prepare_manual_topic(*, topic: Topic, user, category_chosen: bool) -> Topic:
    """Fill in what a hand-added topic needs before it is saved: its source, identity, category and review."""
    topic.source = SOURCE
    topic.sources = [SOURCE]
    topic.external_id = derive_external_id(url=topic.url, title=topic.title)
    topic.canonical_url = canonical_url(topic.url) if topic.url else ""
    if category_chosen:
        topic.category_locked = True  # an editor's choice, never undone by re-categorisation
    else:
        topic.category = categorize_text(text=topic_text(title=topic.title, summary=topic.summary),
                                         categories=list(Category.objects.all()))
    if topic.status != Topic.Status.NEW:
        topic.reviewed_by, topic.reviewed_at = user, timezone.now()
    return topic
