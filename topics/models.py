from __future__ import annotations

import datetime

from django.conf import settings
from django.db import models
from django.db.models import F, OrderBy, Q
from django.db.models.functions import Lower
from django.utils import timezone

from newsroom.formatting import desk_time

FALLBACK_CATEGORY_SLUG = "platform_tools"


class Category(models.Model):
    """One of the e-commerce beats a newsletter can cover; its keywords drive categorisation."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    keywords = models.TextField(
        blank=True,
        help_text="One keyword or phrase per line (or comma-separated). Matched case-insensitively "
        "as a substring of a topic's title and summary.",
    )
    position = models.PositiveSmallIntegerField(default=0, help_text="Order used to break ties.")

    class Meta:
        ordering = ["position", "id"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    @property
    def keyword_list(self) -> list[str]:
        parts = self.keywords.replace(",", "\n").splitlines()
        return [p.strip().lower() for p in parts if p.strip()]


class PortableIndex(models.Index):
    """An index that may order a column DESC NULLS LAST on every database.

    PostgreSQL needs the NULLS LAST written out to serve `ORDER BY ... DESC NULLS LAST`; SQLite refuses it in
    an index ("unsupported use of NULLS LAST") but already keeps NULLs last in a DESC column, so there the
    clause is dropped and the same index serves the same ORDER BY.
    """

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor == "sqlite" and self.expressions:
            index = self.clone()
            index.expressions = tuple(
                OrderBy(e.expression, descending=True)
                if isinstance(e, OrderBy) and e.descending and e.nulls_last else e
                for e in self.expressions
            )
            return super(PortableIndex, index).create_sql(model, schema_editor, using=using, **kwargs)
        return super().create_sql(model, schema_editor, using=using, **kwargs)


class TopicQuerySet(models.QuerySet):
    def approved(self) -> TopicQuerySet:
        return self.filter(status=Topic.Status.APPROVED)

    def selectable(self, *, include_new: bool = False) -> TopicQuerySet:
        statuses = [Topic.Status.APPROVED, Topic.Status.NEW] if include_new else [Topic.Status.APPROVED]
        return self.filter(status__in=statuses)

    def unused(self) -> TopicQuerySet:
        """Topics no draft has used yet: none is queued, being drafted or drafted from them."""
        return self.filter(usage=Topic.Usage.UNUSED)

    def best_first(self) -> TopicQuerySet:
        # The one deterministic order every selection uses: score, then newest, then id.
        return self.order_by("-score", F("published_at").desc(nulls_last=True), "-id")


class Topic(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    class Usage(models.TextChoices):
        UNUSED = "unused", "Not used"
        TAKEN = "taken", "Being drafted"
        DRAFTED = "drafted", "Drafted"

    USED_USAGES = (Usage.TAKEN, Usage.DRAFTED)

    title = models.CharField(max_length=500)
    summary = models.TextField(blank=True)
    url = models.URLField(max_length=1000, blank=True)
    canonical_url = models.CharField(max_length=1000, blank=True)
    source = models.CharField(max_length=40, default="import")
    external_id = models.CharField(max_length=300)
    sources = models.JSONField(default=list, blank=True, help_text="Every source that covered this story.")
    engagement = models.JSONField(default=dict, blank=True)
    raw = models.JSONField(default=dict, blank=True)
    score = models.FloatField(default=0)
    # No index of its own: every index below that starts with the category serves a lookup by category.
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="topics", db_index=False)
    category_locked = models.BooleanField(
        default=False, help_text="Set when an editor chose the category; re-categorisation leaves it alone."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # What drafting did with the topic, kept here by the batches app (topics.usage) so that selection reads
    # only topics: a topic is taken while a draft of it is queued or being written, drafted once one was saved.
    usage = models.CharField(max_length=10, choices=Usage.choices, default=Usage.UNUSED, editable=False)
    used_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When a batch took it for drafting (empty while unused)."
    )
    drafted_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="When its last draft was saved.")
    import_hash = models.CharField(
        max_length=32, blank=True, default="", editable=False,
        help_text="Hash of the fields last imported from a file; an unchanged row is skipped on re-import.",
    )

    objects = TopicQuerySet.as_manager()

    class Meta:
        ordering = ["-score", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["source", "external_id"], name="topic_unique_source_external_id"),
            models.CheckConstraint(condition=Q(score__gte=0), name="topic_score_not_negative"),
            models.CheckConstraint(
                condition=Q(status__in=["new", "approved", "rejected"]), name="topic_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(usage="unused", used_at__isnull=True)
                | Q(usage__in=["taken", "drafted"], used_at__isnull=False),
                name="topic_usage_valid",
            ),
        ]
        indexes = [
            # Selection's per-category head, in exactly its order and only over unused topics, so that the
            # planner has nothing to estimate: equality on (category, status), then the rows already in
            # order, stopping at the LIMIT -- fast with fresh statistics, stale ones or none at all.
            PortableIndex(
                "category", "status", F("score").desc(), F("published_at").desc(nulls_last=True), F("id").desc(),
                name="topic_selection_head", condition=Q(usage="unused"),
            ),
            # Recently used stories and the count of drafted candidates, one index per used state: each holds only
            # the few used topics, and a query for one state (usage = %s) matches its condition on both databases
            # with or without statistics (SQLite does not match "usage IN (%s, %s)" to a partial index, and
            # PostgreSQL without statistics guesses "used_at IS NOT NULL" true for nearly every row).
            models.Index(fields=["-used_at"], name="topic_taken_at", condition=Q(usage="taken")),
            models.Index(fields=["-used_at"], name="topic_drafted_at", condition=Q(usage="drafted")),
            # The admin's topic list, at a million topics: its default order, and that order within each of its
            # filters, read from an index that stops after one page instead of sorting the table.
            models.Index(fields=["-score", "-id"], name="topic_list_order"),
            models.Index(fields=["category", "-score", "-id"], name="topic_list_category"),
            models.Index(fields=["status", "-score", "-id"], name="topic_list_status"),
            # On lower(source), not source: SQLite's planner, without statistics, would take a (source, score)
            # index for discovery's and import's (source, external_id IN ...) lookups and scan every topic of the
            # source instead of using the unique (source, external_id) index.
            models.Index(Lower("source"), F("score").desc(), F("id").desc(), name="topic_list_source"),
            models.Index(fields=["-score", "-id"], name="topic_list_locked", condition=Q(category_locked=True)),
            # Discovery compares new titles with the recent window: a range scan, newest first, bounded.
            models.Index(fields=["created_at", "id"], name="topic_created_id"),
            # Discovery's and manual entry's "which topic has this URL?", over the topics that have one. Partial, so
            # that a planner whose statistics say nearly every topic has the same (blank) URL still prices a probe
            # as cheap: with a full index it read the whole table for each URL. A query must say
            # "canonical_url > ''" as the condition does for SQLite to use it.
            models.Index(fields=["canonical_url"], name="topic_canonical_url", condition=Q(canonical_url__gt="")),
        ]

    def __str__(self) -> str:
        return self.title

    def review(self, *, status: str, user=None) -> None:
        self.status = status
        self.reviewed_by = user
        self.reviewed_at = timezone.now()
        self.save(update_fields=["status", "reviewed_by", "reviewed_at", "updated_at"])

    def override_category(self, category: Category) -> None:
        """An editor's choice of category; locked so automatic categorisation never undoes it."""
        self.category = category
        self.category_locked = True
        self.save(update_fields=["category", "category_locked", "updated_at"])


class DiscoveryRun(models.Model):
    """One discovery pass over the sources, with what each source brought (shown in the admin)."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        PARTIAL = "partial", "Some sources failed"
        FAILED = "failed", "Every source failed"
        STOPPED = "stopped", "Stopped before finishing"

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    sources = models.JSONField(default=dict, help_text="Per source: status, fetched, new, merged, dropped, error.")
    fetched = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    merged = models.PositiveIntegerField(default=0)
    dropped = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="Why the run stopped before it finished, when it did.")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"Discovery {desk_time(self.started_at)} ({self.get_status_display()})"

    @classmethod
    def stop_running(cls, *, reason: str, now: datetime.datetime, **conditions) -> int:
        """Close the runs matching `conditions` that are still running as stopped with `reason`; how many."""
        return cls.objects.filter(status=cls.Status.RUNNING, **conditions).update(
            status=cls.Status.STOPPED, finished_at=now, error=reason)



class SourceDocumentQuerySet(models.QuerySet):
    def fresh(self, *, days: int, now=None) -> SourceDocumentQuerySet:
        """Documents fetched within the last `days` days: reused instead of fetched again."""
        return self.filter(fetched_at__gte=(now or timezone.now()) - datetime.timedelta(days=days))

    def readable(self) -> SourceDocumentQuerySet:
        return self.filter(status=SourceDocument.Status.OK)


class SourceDocument(models.Model):
    """One piece of a topic's source material: an article's text, a Reddit thread, a video description, research.

    A draft is written from these and checked against them. A source that could not be read is kept too, with
    the reason, so the editor sees what is missing and why.
    """

    class Kind(models.TextChoices):
        ARTICLE = "article", "Article"
        REDDIT = "reddit", "Reddit thread"
        VIDEO = "video", "Video"
        SOCIAL = "social", "Social post"
        RESEARCH = "research", "Research answer"
        SEARCH_RESULT = "search_result", "Search result"

    class Status(models.TextChoices):
        OK = "ok", "Read"
        FAILED = "failed", "Could not be read"

    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="documents")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    url = models.CharField(max_length=1000, blank=True, help_text="Where the material came from (blank for research).")
    title = models.CharField(max_length=500, blank=True)
    text = models.TextField(blank=True, help_text="The plain text a draft may use.")
    status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.TextField(blank=True, help_text="Why it could not be read, in plain words.")
    transient = models.BooleanField(
        default=False, help_text="The failure may pass (a timeout, a server error): the next gathering tries again."
    )
    rank = models.PositiveSmallIntegerField(default=0, help_text="Best sources first: lower is better.")
    content_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the text.")
    fetched_at = models.DateTimeField(default=timezone.now)

    objects = SourceDocumentQuerySet.as_manager()

    class Meta:
        ordering = ["topic_id", "rank", "id"]
        constraints = [
            # One document per source of a topic: fetching again updates it, and a redelivered task that
            # gathers the same material at the same time cannot store it twice.
            models.UniqueConstraint(fields=["topic", "kind", "url"], name="document_unique_topic_kind_url"),
            models.CheckConstraint(condition=Q(status__in=["ok", "failed"]), name="document_status_valid"),
            models.CheckConstraint(condition=Q(status="failed") | Q(reason=""), name="document_reason_only_on_failure"),
        ]

    def __str__(self) -> str:
        return self.title or self.url or self.get_kind_display()
