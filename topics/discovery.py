"""Discovery: fetch candidates from every configured source, merge duplicates, score, categorise, store."""
from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rapidfuzz import fuzz, process

from . import scoring
from .categorize import categorize_text, topic_text
from .dedupe import NEAR_DUPLICATE_THRESHOLD, canonical_url, is_near_duplicate, normalize_title
from .models import Category, DiscoveryRun, Topic
from .sources import BudgetRefused, Candidate, SourceError, build_sources
from .sources.base import SpendHold, SpendMeter, redact

logger = logging.getLogger("newsroom.discovery")
RECENT_DAYS = 30
RECENT_LIMIT = 20_000
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


class NoLedger:
    """The meter used until an app that keeps the money plugs its own in: every paid call is refused."""

    def reserve(self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str) -> SpendHold:
        raise BudgetRefused("no cost ledger is installed, so no paid call can be recorded")


# Paid discovery calls go through the cost ledger like drafts do, under the monthly cap when one is set. The ledger
# belongs to the batches app, which plugs it in when it starts (batches.apps), so topics never imports batches.
_meter_factory: Callable[[], SpendMeter] = NoLedger


def use_meter(factory: Callable[[], SpendMeter]) -> None:
    """Meter every later discovery run's paid calls with `factory()`."""
    global _meter_factory
    _meter_factory = factory


@dataclass
class _Story:
    """One story in this run: a new topic to create, or an existing one to credit with more sources."""

    title: str
    candidates: list[Candidate] = field(default_factory=list)
    topic: Topic | None = None


def _secrets() -> list[str]:
    return [value for name in SECRET_SETTINGS if (value := getattr(settings, name, ""))]


def fetch_all(*, names: Sequence[str] | None, limit: int) -> tuple[list[Candidate], dict[str, SourceReport]]:
    """Ask every source; a failing source is recorded and the others still run."""
    candidates: list[Candidate] = []
    reports: dict[str, SourceReport] = {}
    meter = _meter_factory()
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
    candidates, reports = fetch_all(names=names, limit=limit)
    store_candidates(candidates=candidates, reports=reports)
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


def store_candidates(*, candidates: Sequence[Candidate], reports: dict[str, SourceReport]) -> None:
    """Turn candidates into topics: exact and near duplicates merge, new stories are scored and categorised."""
    now = timezone.now()
    known_keys = _existing_keys(candidates)
    recent = list(
        Topic.objects.filter(created_at__gte=now - datetime.timedelta(days=RECENT_DAYS))
        .only("id", "title", "canonical_url", "source", "sources", "score")
        .order_by("-id")[:RECENT_LIMIT]
    )
    by_url: dict[str, _Story] = {}
    stories: list[_Story] = []
    for topic in recent + _older_topics_with_urls(candidates, recent):
        story = _Story(title=topic.title, topic=topic)
        stories.append(story)
        if topic.canonical_url:
            by_url.setdefault(topic.canonical_url, story)
    norms = [normalize_title(s.title) for s in stories]
    seen_keys: set[tuple[str, str]] = set()

    for candidate in candidates:
        report = reports.setdefault(candidate.source, SourceReport(name=candidate.source))
        key = (candidate.source, candidate.external_id)
        if not candidate.title.strip() or key in known_keys or key in seen_keys:
            report.dropped += 1  # empty, or already stored from this source
            continue
        seen_keys.add(key)
        url = canonical_url(candidate.url)
        story = by_url.get(url) if url else None
        if story is None:
            story = _near_duplicate(candidate.title, stories=stories, norms=norms)
        if story is None:
            story = _Story(title=candidate.title)
            stories.append(story)
            norms.append(normalize_title(candidate.title))
            report.new += 1
        elif story.topic is not None and candidate.source in (story.topic.sources or [story.topic.source]):
            report.dropped += 1  # a stored story this source already told (seen again on a later run)
            continue
        else:
            report.merged += 1
        story.candidates.append(candidate)
        if url:
            by_url.setdefault(url, story)
    _write(stories=[s for s in stories if s.candidates], now=now)


def _older_topics_with_urls(candidates: Sequence[Candidate], recent: list[Topic]) -> list[Topic]:
    """Stored topics outside the recent window that share a canonical URL with a candidate (one story, however old)."""
    known = {t.canonical_url for t in recent if t.canonical_url}
    urls = sorted({url for c in candidates if (url := canonical_url(c.url)) and url not in known})
    found: list[Topic] = []
    for start in range(0, len(urls), 500):
        found.extend(
            Topic.objects.filter(canonical_url__in=urls[start : start + 500])
            .only("id", "title", "canonical_url", "sources", "score", "source")
            .order_by("-id")
        )
    return found


def _existing_keys(candidates: Sequence[Candidate]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    by_source: dict[str, list[str]] = {}
    for c in candidates:
        by_source.setdefault(c.source, []).append(c.external_id)
    for source, ids in by_source.items():
        for start in range(0, len(ids), 500):
            keys.update(
                Topic.objects.filter(source=source, external_id__in=ids[start : start + 500]).values_list(
                    "source", "external_id"
                )
            )
    return keys


def _near_duplicate(title: str, *, stories: list[_Story], norms: list[str]) -> _Story | None:
    if not norms:
        return None
    # rapidfuzz scans every known title in C; is_near_duplicate then applies the full rule to the best matches.
    norm = normalize_title(title)
    match = process.extractOne(norm, norms, scorer=fuzz.token_set_ratio, score_cutoff=NEAR_DUPLICATE_THRESHOLD)
    if match is None:
        return None
    if is_near_duplicate(title, stories[match[2]].title):
        return stories[match[2]]
    # The best token-set match can be a short title the full rule compares whole and rejects ("FBA capacity" is a
    # subset of every FBA-capacity headline); a real near-duplicate may be further down the list.
    for _, _, index in process.extract(
        norm, norms, scorer=fuzz.token_set_ratio, score_cutoff=NEAR_DUPLICATE_THRESHOLD, limit=None
    ):
        if is_near_duplicate(title, stories[index].title):
            return stories[index]
    return None


def _story_sources(story: _Story) -> list[str]:
    sources = list(story.topic.sources or [story.topic.source]) if story.topic else []
    for c in story.candidates:
        if c.source not in sources:
            sources.append(c.source)
    return sources


@transaction.atomic
def _write(*, stories: list[_Story], now: datetime.datetime) -> None:
    categories = list(Category.objects.all())
    new_topics, updated = [], []
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
        best = max(
            story.candidates,
            key=lambda c: scoring.normalised_engagement(source=c.source, engagement=c.engagement),
        )
        published = [c.published_at for c in story.candidates if c.published_at]
        lead = story.candidates[0]
        summary = lead.summary or best.summary
        new_topics.append(
            Topic(
                title=lead.title[:500],
                summary=summary,
                url=lead.url[:1000],
                canonical_url=canonical_url(lead.url)[:1000],
                source=lead.source,
                external_id=lead.external_id[:300],
                sources=sources,
                engagement={c.source: c.engagement for c in story.candidates},
                raw={"candidates": [c.raw for c in story.candidates][:5]},
                score=scoring.score(
                    normalised=scoring.normalised_engagement(source=best.source, engagement=best.engagement),
                    published_at=max(published) if published else None,
                    source_count=len(sources),
                    now=now,
                ),
                category=categorize_text(text=topic_text(title=lead.title, summary=summary), categories=categories),
                status=Topic.Status.NEW,
                published_at=max(published) if published else None,
                created_at=now,
            )
        )
    # ignore_conflicts: a discovery run racing this one may have stored the same (source, external_id) first.
    Topic.objects.bulk_create(new_topics, batch_size=500, ignore_conflicts=True)
    Topic.objects.bulk_update(updated, ["score", "sources"], batch_size=500)


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
