"""Discovery: fetch candidates from every configured source, merge duplicates, score, categorise, store."""
from __future__ import annotations

import datetime
import gc
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache, partial

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, models, transaction
from django.db.models import QuerySet
from django.db.models.constants import OnConflict
from django.utils import timezone

from . import metering, scoring
from .categorize import KeywordTable, topic_text
from .dedupe import StoryMatcher, canonical_url
from .importing import stored_by_key
from .models import Category, DiscoveryRun, Topic
from .sources import Candidate, SourceError, build_sources
from .sources.base import redact

logger = logging.getLogger("newsroom.discovery")
RECENT_DAYS = 30
RECENT_LIMIT = 100_000  # stored topics a run compares titles with: the newest of the window
DISCOVERY_LOCK = 0x6E65_7773_6469_7363  # PostgreSQL advisory lock key of store_candidates ("newsdisc")
SECRET_SETTINGS = ("REDDIT_CLIENT_ID", "REDDIT_CLIENT_SECRET", "PERPLEXITY_API_KEY", "TUBELAB_API_KEY", "APIFY_TOKEN",
                   "ANTHROPIC_API_KEY")


@dataclass
class SourceReport:
    name: str
    status: str = "ok"  # ok | skipped | failed
    fetched: int = 0
    new: int = 0
    merged: int = 0
    dropped: int = 0
    error: str = ""
    detail: str = ""


@dataclass
class _Story:
    """One story in this run: a new topic to create, or a stored one (`topic_id`) to credit with more sources."""

    title: str
    candidates: list[Candidate] = field(default_factory=list)
    lead_url: str = ""  # the canonical URL of the first candidate (a new topic's)
    topic_id: int | None = None
    topic: Topic | None = None  # loaded only for a stored story a candidate may join


def _secrets() -> list[str]:
    return [value for name in SECRET_SETTINGS if (value := getattr(settings, name, ""))]


def fetch_all(*, names: Sequence[str] | None, limit: int) -> tuple[list[Candidate], dict[str, SourceReport]]:
    """Ask every source; a failing source is recorded and the others still run."""
    candidates: list[Candidate] = []
    reports: dict[str, SourceReport] = {}
    meter = metering.current_meter()
    for source in build_sources(settings, list(names) if names else None):
        report = reports[source.name] = SourceReport(name=source.name, detail=source.describe())
        if not source.is_configured():
            report.status = "skipped"
            report.detail = f"not configured; would add: {source.describe()}"
            continue
        try:
            found = source.fetch(limit=limit, meter=meter)
        except SourceError as exc:
            report.status, report.error = "failed", redact(exc.message, _secrets())
            found = exc.partial  # already fetched (maybe paid for): keep it
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: stop here (run_discovery records why) rather than ask the next source
        except Exception as exc:  # a bug or an unforeseen client error in one source must not stop the others
            logger.exception("discovery source %s crashed", source.name)
            report.status = "failed"
            report.error = redact(f"unexpected error: {exc.__class__.__name__}: {exc}", _secrets())
            found = []
        report.fetched = len(found)
        candidates.extend(found)
    return candidates, reports


def run_discovery(*, names: Sequence[str] | None = None, limit: int = 50) -> DiscoveryRun:
    """One discovery pass. Never creates the same story twice; records a summary per source."""
    run = DiscoveryRun.objects.create()
    try:
        candidates, reports = fetch_all(names=names, limit=limit)
        store_candidates(candidates=candidates, reports=reports)
    except BaseException as exc:  # a database error, a time limit, Ctrl-C: the run must not stay "running"
        said = redact(str(exc), _secrets())[:300]
        _stop(run, reason=f"Stopped by {exc.__class__.__name__}{f': {said}' if said else ''}. Nothing it found was "
                          f"stored; paid calls it made are in the ledger.")
        raise
    configured = [r for r in reports.values() if r.status != "skipped"]
    failed = [r for r in configured if r.status == "failed"]
    run.status = (
        DiscoveryRun.Status.FAILED if configured and len(failed) == len(configured)
        else DiscoveryRun.Status.PARTIAL if failed
        else DiscoveryRun.Status.DONE
    )
    run.sources = {name: asdict(report) for name, report in reports.items()}
    run.fetched = sum(r.fetched for r in reports.values())
    run.created = sum(r.new for r in reports.values())
    run.merged = sum(r.merged for r in reports.values())
    run.dropped = sum(r.dropped for r in reports.values())
    run.finished_at = timezone.now()
    run.save()
    return run


def _stop(run: DiscoveryRun, *, reason: str) -> None:
    try:
        DiscoveryRun.stop_running(reason=reason, now=timezone.now(), pk=run.pk)
    except DatabaseError:  # the database itself is what failed: the sweeper closes the run once it answers again
        logger.exception("discovery run %s could not be marked stopped", run.pk)


def abandoned_after() -> datetime.timedelta:
    """How long a run may stay "running" before it counts as abandoned: an hour, or twice the Celery task time
    limit when that is longer. A run's fetching is bounded by each source's timeouts and a Celery-run one by that
    limit, so a run still "running" by then has no process working on it (a crash, a restart, a SIGKILL)."""
    return max(datetime.timedelta(hours=1), datetime.timedelta(seconds=2 * settings.CELERY_TASK_TIME_LIMIT))


def close_abandoned_runs(*, now: datetime.datetime) -> int:
    """Close the runs nothing is working on any more as stopped, saying why (the sweeper calls this); how many."""
    given_up = abandoned_after()
    minutes = int(given_up.total_seconds() // 60)
    return DiscoveryRun.stop_running(
        now=now, started_at__lt=now - given_up,
        reason=f"Stopped without finishing: nothing had worked on it for {minutes} minutes (its process crashed or "
               f"was restarted). Its counts are unknown; topics it stored, if it got that far, are kept, and the paid "
               f"calls it made are in the ledger.")


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while (back on after, whatever happens).

    A run of 20,000 candidates allocates some hundred thousand long-lived objects (candidates, blocks, topics for
    bulk_create) and no reference cycles among them, yet the collector would walk them all again and again: a fifth
    of the run's time. Everything it allocates is still freed by reference counting meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_without_cycle_collection()
def store_candidates(*, candidates: Sequence[Candidate], reports: dict[str, SourceReport]) -> None:
    """Turn candidates into topics: exact and near duplicates merge, new stories are scored and categorised.

    One run at a time, from reading what is stored to writing what it found: a run overlapping another (the beat
    schedule's and an operator's) would not see the stories the other is about to store, and would store them a
    second time, or merge into the same stored topic and write its sources back without the other's. The lock is
    an advisory lock held to the end of the transaction on PostgreSQL; on SQLite the transaction's write lock
    (taken at BEGIN: settings' IMMEDIATE mode) is the lock. The sources are fetched before, so a slow service
    never holds it.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISCOVERY_LOCK])
        _store_candidates(candidates=candidates, reports=reports)


def _store_candidates(*, candidates: Sequence[Candidate], reports: dict[str, SourceReport]) -> None:
    now = timezone.now()
    known_keys = _existing_keys(candidates)
    urls = [canonical_url(c.url) for c in candidates]
    kept = _first_of_each_key(candidates, known_keys)
    stories = _Stories(_recent_titles(now))
    by_url = _stored_urls(urls=urls, kept=kept, stories=stories)
    matcher = StoryMatcher(stored=stories.stored_titles(), incoming=[c.title for c in candidates])
    best_stored = matcher.match_stored(i for i, keep in enumerate(kept) if keep and urls[i] not in by_url)
    _load_topics([stories[n] for n in best_stored.values()])

    for i, candidate in enumerate(candidates):
        report = reports.setdefault(candidate.source, SourceReport(name=candidate.source))
        if not kept[i]:
            report.dropped += 1  # empty, or already stored from this source
            continue
        url = urls[i]
        story = by_url.get(url) if url else None
        if story is None and (number := matcher.find(i)) is not None:
            story = stories[number]
        if story is None:
            matcher.add(i)
            story = stories.add(_Story(title=candidate.title, lead_url=url))
            report.new += 1
        elif story.topic is not None and candidate.source in (story.topic.sources or [story.topic.source]):
            report.dropped += 1  # a stored story this source already told (seen again on a later run)
            continue
        else:
            report.merged += 1
        story.candidates.append(candidate)
        if url:
            by_url.setdefault(url, story)
    _write(stories=stories.told(), now=now)


class _Stories:
    """The run's stories by number, as StoryMatcher numbers them: the stored ones first (recent window, then older
    topics sharing a URL), then the new ones. A stored story's object is made when first asked for: of a hundred
    thousand, a run joins a few."""

    def __init__(self, recent: list[tuple[int, str]]):
        self._stored = recent  # (topic id, title)
        self._made: dict[int, _Story] = {}
        self._new: list[_Story] = []

    def stored_titles(self) -> list[str]:
        return [title for _, title in self._stored]

    def position(self, topic_ids: set[int]) -> dict[int, int]:
        """{topic id: story number} for these stored topics."""
        return {pk: n for n, (pk, _) in enumerate(self._stored) if pk in topic_ids}

    def add_stored(self, topic: Topic) -> _Story:
        story = self._made[len(self._stored)] = _Story(title=topic.title, topic_id=topic.pk, topic=topic)
        self._stored.append((topic.pk, topic.title))
        return story

    def add(self, story: _Story) -> _Story:
        self._new.append(story)
        return story

    def __getitem__(self, number: int) -> _Story:
        if number >= len(self._stored):
            return self._new[number - len(self._stored)]
        if number not in self._made:
            pk, title = self._stored[number]
            self._made[number] = _Story(title=title, topic_id=pk)
        return self._made[number]

    def told(self) -> list[_Story]:
        """The stories some candidate joined: stored ones to credit, then new ones in the order they came."""
        return [s for s in self._made.values() if s.candidates] + [s for s in self._new if s.candidates]


def _first_of_each_key(candidates: Sequence[Candidate], known_keys: set[tuple[str, str]]) -> list[bool]:
    """Which candidates are stories at all: a title, not stored yet from its source, first of its id in this run."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for candidate in candidates:
        key = (candidate.source, candidate.external_id)
        keep = bool(candidate.title.strip()) and key not in known_keys and key not in seen
        if keep:
            seen.add(key)
        kept.append(keep)
    return kept


def recent_window(*, now: datetime.datetime) -> QuerySet[Topic]:
    """The stored topics a run compares new titles with: created in the last RECENT_DAYS, newest first, at most
    RECENT_LIMIT. Read through the (created_at, id) index: a range scan that stops at the limit, whatever the size
    of the table."""
    since = now - datetime.timedelta(days=RECENT_DAYS)
    return Topic.objects.filter(created_at__gte=since).order_by("-created_at", "-id")[:RECENT_LIMIT]


def _recent_titles(now: datetime.datetime) -> list[tuple[int, str]]:
    """(id, title) of the recent window, fetched as the driver's rows: for a hundred thousand of them the ORM's
    per-row iteration costs as much as the query."""
    sql, params = recent_window(now=now).values_list("id", "title").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _stored_urls(*, urls: list[str], kept: list[bool], stories: _Stories) -> dict[str, _Story]:
    """The stored story each candidate URL already belongs to (one story, however old): the newest topic with
    that canonical URL. One in the recent window is that window's story; one stored only earlier joins the run's
    stories (after the recent ones) like today's titles do.
    """
    wanted = sorted({url for url, keep in zip(urls, kept, strict=True) if keep and url})
    newest = _newest_topic_by_url(wanted)
    position = stories.position(set(newest.values())) if newest else {}
    by_url = {url: stories[position[pk]] for url, pk in newest.items() if pk in position}
    older = sorted(pk for pk in newest.values() if pk not in position)
    topics = [topic for chunk in _chunks(older) for topic in Topic.objects.filter(pk__in=chunk).only(*_STORY_FIELDS)]
    for topic in topics:
        by_url[topic.canonical_url] = stories.add_stored(topic)
    _load_topics(list(by_url.values()))
    return by_url


def _newest_topic_by_url(urls: list[str]) -> dict[str, int]:
    """{canonical URL: id of the newest topic stored with it} for those of these URLs that are stored.

    One lookup per URL through the canonical_url index, a plan that needs no statistics: "canonical_url IN (...)"
    over 500 URLs was planned as a scan of the whole table on a freshly filled PostgreSQL (40 ms a chunk with 14,000
    topics, a second per run of 20,000 candidates), and asking for the newest row in SQL (ORDER BY created_at DESC
    LIMIT 1) was planned as a walk down the created_at index. OFFSET 0 keeps PostgreSQL's subquery a subquery, run
    once per URL; SQLite always probes the index for each URL of the JSON list. The index holds only topics with
    a URL ("canonical_url > ''", which the query repeats so that both databases use it): where most stored topics
    have none, the planner's statistics count one distinct value and a full index was priced as a read of every
    row, so PostgreSQL read the whole table for each URL (16 s for 500 candidates against 400,000 topics).
    """
    if not urls:
        return {}
    table = connection.ops.quote_name(Topic._meta.db_table)
    if connection.vendor == "postgresql":
        sql = (f"SELECT k.url, t.created_at, t.id FROM json_array_elements_text(%s::json) AS k(url) CROSS JOIN "
               f"LATERAL (SELECT id, created_at FROM {table} WHERE canonical_url = k.url AND canonical_url > '' "
               f"OFFSET 0) AS t")
    else:
        sql = (f"SELECT k.value, t.created_at, t.id FROM json_each(%s) AS k JOIN {table} AS t "
               f"ON t.canonical_url = k.value AND t.canonical_url > ''")
    newest: dict[str, tuple] = {}
    with connection.cursor() as cursor:
        for chunk in _chunks(urls, 5_000):
            cursor.execute(sql, [json.dumps(chunk)])
            for url, created_at, pk in cursor.fetchall():
                if url not in newest or (created_at, pk) > newest[url]:
                    newest[url] = (created_at, pk)
    return {url: pk for url, (_, pk) in newest.items()}


_STORY_FIELDS = ("id", "title", "canonical_url", "source", "sources", "score")


def _load_topics(stories: Sequence[_Story]) -> None:
    """Load the stored topics of these stories (the ones candidates may join), in bulk."""
    missing = {s.topic_id: s for s in stories if s.topic_id is not None and s.topic is None}
    for chunk in _chunks(sorted(missing)):
        for topic in Topic.objects.filter(pk__in=chunk).only(*_STORY_FIELDS):
            missing[topic.pk].topic = topic


def _chunks(values: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _existing_keys(candidates: Sequence[Candidate]) -> set[tuple[str, str]]:
    return set(stored_by_key(list({(c.source, c.external_id) for c in candidates}), "id"))


def _story_sources(story: _Story) -> list[str]:
    sources = list(story.topic.sources or [story.topic.source]) if story.topic else []
    for c in story.candidates:
        if c.source not in sources:
            sources.append(c.source)
    return sources


def _engagement(candidate: Candidate) -> float:
    return scoring.normalised_engagement(source=candidate.source, engagement=candidate.engagement)


def _best_engagement_by_source(candidates: Sequence[Candidate]) -> dict[str, dict]:
    """What each source reported for the story: its best-engaged candidate's figures when it told it twice, the
    ones the score is worked out from."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.source not in best or _engagement(c) > _engagement(best[c.source]):
            best[c.source] = c
    return {source: c.engagement for source, c in best.items()}


def _write(*, stories: list[_Story], now: datetime.datetime) -> None:
    """Store the run's new stories and the coverage of stored ones, in store_candidates' transaction."""
    keywords = KeywordTable(list(Category.objects.all()))
    new_topics: list[dict] = []
    updated = []
    for story in stories:
        sources = _story_sources(story)
        if story.topic is not None:
            topic = story.topic
            old_count = max(1, len(topic.sources or [topic.source]))
            if len(sources) > old_count:
                topic.score = round(
                    topic.score * scoring.coverage_boost(len(sources)) / scoring.coverage_boost(old_count), 2
                )
                topic.sources = sources
                updated.append(topic)
            continue
        best = max(story.candidates, key=_engagement)
        published = [c.published_at for c in story.candidates if c.published_at]
        lead = story.candidates[0]
        summary = lead.summary or best.summary
        new_topics.append({
            "title": lead.title[:500],
            "summary": summary,
            "url": lead.url[:1000],
            "canonical_url": story.lead_url,
            "source": lead.source,
            "external_id": lead.external_id[:300],
            "sources": sources,
            "engagement": _best_engagement_by_source(story.candidates),
            "raw": {"candidates": [c.raw for c in story.candidates][:5]},
            "score": scoring.score(
                normalised=scoring.normalised_engagement(source=best.source, engagement=best.engagement),
                published_at=max(published) if published else None,
                source_count=len(sources),
                now=now,
            ),
            "category_id": keywords.categorize(topic_text(title=lead.title, summary=summary)).pk,
            "published_at": max(published) if published else None,
            "created_at": now,
            "updated_at": now,
        })
    # A discovery run racing this one may have stored the same (source, external_id) first: that row is skipped.
    insert_ignoring_conflicts(Topic, new_topics)
    _write_coverage(updated, now=now)


def _write_coverage(topics: list[Topic], *, now: datetime.datetime) -> None:
    """Stored stories more sources told: their score, sources and updated_at, one prepared UPDATE per topic run by
    executemany. bulk_update's one statement with a CASE per column over every topic spent longer building its
    expressions than the database spent updating."""
    if not topics:
        return
    quote = connection.ops.quote_name
    score, sources, updated_at = (Topic._meta.get_field(name) for name in ("score", "sources", "updated_at"))
    stamp = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {quote(Topic._meta.db_table)} SET {quote(score.column)} = %s, {quote(sources.column)} = %s, "
            f"{quote(updated_at.column)} = %s WHERE {quote(Topic._meta.pk.column)} = %s",
            [(topic.score, _json_text(topic.sources, encoder=sources.encoder), stamp, topic.pk) for topic in topics],
        )


def insert_ignoring_conflicts(model: type[models.Model], rows: Sequence[dict]) -> None:
    """Insert `rows` (field name -> value; a field left out takes its default) into `model`'s table, skipping a row
    that a unique constraint says is already there.

    What `bulk_create(ignore_conflicts=True)` does, for the many thousand topics of one discovery run without its
    per-value cost (it spent twice the database's own time building its statements): no model instance per row,
    each column's database form made by one function chosen once (JSON dumped to text, a datetime adapted by the
    backend). SQLite runs one prepared single-row statement for every row (executemany, in C); PostgreSQL takes
    the rows by COPY into a temporary table and moves them over in one INSERT ... ON CONFLICT DO NOTHING (a
    statement of many rows each with its own parameters cost more to parse than the insert itself).
    """
    if not rows:
        return
    given = set().union(*(row.keys() for row in rows))
    columns, converters = [], []
    for f in model._meta.concrete_fields:
        if f.primary_key:
            continue  # the database numbers the row
        name = f.attname if f.attname in given else f.name
        if isinstance(f, models.JSONField):
            convert = partial(_json_text, encoder=f.encoder)
        elif isinstance(f, models.DateTimeField):
            # Each distinct moment adapted once: every row of a run shares its created_at and updated_at.
            convert = cache(connection.ops.adapt_datetimefield_value)
        else:
            convert = None
        columns.append(f.column)
        converters.append((name, f.get_default(), convert))  # what the model would store when unset

    def values(row: dict) -> list:
        return [
            value if convert is None or value is None else convert(value)
            for name, default, convert in converters
            for value in (row.get(name, default),)
        ]

    quote = connection.ops.quote_name
    table, names = quote(model._meta.db_table), ", ".join(map(quote, columns))
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            insert = connection.ops.insert_statement(on_conflict=OnConflict.IGNORE)
            cursor.executemany(f"{insert} {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})",
                               map(values, rows))
            return
        cursor.execute(f"CREATE TEMPORARY TABLE newsroom_incoming ON COMMIT DROP AS "
                       f"SELECT {names} FROM {table} WITH NO DATA")
        with cursor.cursor.copy(f"COPY newsroom_incoming ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM newsroom_incoming ON CONFLICT DO NOTHING")
        cursor.execute("DROP TABLE newsroom_incoming")


def _json_text(value, *, encoder) -> str:
    return json.dumps(value, cls=encoder)


def run_as_dict(run: DiscoveryRun) -> dict:
    return {
        "run": run.pk, "status": run.status, "fetched": run.fetched, "new": run.created, "merged": run.merged,
        "dropped": run.dropped, "sources": run.sources,
    }


def summary_lines(run: DiscoveryRun) -> list[str]:
    lines = [f"Discovery {run.get_status_display().lower()}: {run.fetched} fetched, {run.created} new, "
             f"{run.merged} merged, {run.dropped} dropped."]
    for name, report in run.sources.items():
        if report["status"] == "skipped":
            lines.append(f"  {name}: skipped ({report['detail']})")
        else:
            lines.append(
                f"  {name}: {report['status']}, {report['fetched']} fetched, {report['new']} new, "
                f"{report['merged']} merged, {report['dropped']} dropped"
                + (f" — {report['error']}" if report["error"] else "")
            )
    return lines


def run_problem(run: DiscoveryRun) -> str | None:
    """Why a run must count as a failure for whoever scheduled it (exit 1), or None when it did its job."""
    if not any(report["status"] != "skipped" for report in run.sources.values()):
        return ("no discovery source is configured, so nothing was fetched: set REDDIT_CLIENT_ID and "
                "REDDIT_CLIENT_SECRET, PERPLEXITY_API_KEY, TUBELAB_API_KEY or APIFY_TOKEN "
                "(`manage.py preflight` shows what each adds)")
    if run.status == DiscoveryRun.Status.FAILED:
        return "every configured source failed"
    return None
