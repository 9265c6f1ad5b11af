"""A topic's source material: the documents its drafts are written from and checked against.

Each source of a topic becomes one `SourceDocument`: the article its link points to (read by `topics.pages`),
the Reddit thread (post and best top-level comments, through PRAW), a TubeLab video's title and description or
an Apify item's text (as discovery stored them), and, when `RESEARCH_WITH_PERPLEXITY` is on, one paid Perplexity
research answer with its search results. A topic merged from several sources gets the documents of all of them.

Gathering never fails a draft: a source that cannot be read is stored as a failed document with the reason, and
the draft goes ahead with what there is. Material is reused for `MATERIAL_REUSE_DAYS`; a failure that may pass
(a timeout, a server error) is tried again on the next gathering.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .dedupe import canonical_url
from .models import SourceDocument, Topic
from .pages import AddressPolicy, PageUnreadable, fetch_page
from .sources.apify import ApifySource
from .sources.base import BudgetRefused, SourceError, SpendMeter, clip
from .sources.perplexity import PerplexitySource
from .sources.reddit import RedditSource

logger = logging.getLogger("newsroom.material")

Kind = SourceDocument.Kind
# Pages and threads are read in parallel, so a topic's gathering takes about as long as its slowest source.
MAX_FETCHES = 6
CITED_PAGES_PER_TOPIC = 3
RESEARCH_TIMEOUT_SECONDS = 45.0
THREAD_TIMEOUT_SECONDS = 10
# How long gathering can hold a draft's task, for the lease an item holds while it is drafted: pages are read in
# parallel under a 15 s deadline each while research (45 s a request) runs alongside; a Reddit thread that keeps
# timing out is the slowest, as prawcore tries each of its two requests three times.
GATHER_MAX_SECONDS = 90
# Four times what the default prompt budget can carry: enough for any budget an editor sets, and a bounded row.
MAX_STORED_CHARS = 100_000
# A document with less text than this adds nothing beyond the headline.
MIN_MATERIAL_CHARS = 200
# Ranks: the topic's own link first, then the other sources that told the story, the research answer, the
# pages a source cited, and the research's search results last.
RANK_PRIMARY, RANK_SOURCES, RANK_RESEARCH, RANK_CITED, RANK_RESULTS = 0, 10, 30, 40, 60
_REDDIT_THREAD = re.compile(r"^https?://(?:[a-z0-9-]+\.)?reddit\.com/r/[^/]+/comments/([a-z0-9]+)", re.I)
_REDD_IT = re.compile(r"^https?://redd\.it/([a-z0-9]+)", re.I)


@dataclass(frozen=True)
class Wanted:
    """One source to read: a page or thread to fetch, or text that is already known (`text` not None)."""

    kind: str
    url: str
    rank: int
    title: str = ""
    text: str | None = None
    post_id: str = ""


@dataclass(frozen=True)
class Outcome:
    """What reading one source gave: its text, or the reason it could not be read."""

    title: str = ""
    text: str = ""
    reason: str = ""
    transient: bool = False

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Material:
    """A topic's documents as a draft uses them: best first, the unreadable ones kept for the editor to see."""

    topic: Topic
    documents: tuple[SourceDocument, ...]
    fetched: int = 0  # read now rather than reused
    pending: bool = False  # some source has not been read yet (only for material looked up without fetching)

    @property
    def readable(self) -> list[SourceDocument]:
        return [d for d in self.documents if d.status == SourceDocument.Status.OK and d.text.strip()]

    @property
    def failed(self) -> list[SourceDocument]:
        return [d for d in self.documents if d.status == SourceDocument.Status.FAILED]

    @property
    def is_thin(self) -> bool:
        """Nothing readable beyond the headline."""
        return not any(len(d.text.strip()) >= MIN_MATERIAL_CHARS for d in self.readable)

    @property
    def urls(self) -> list[str]:
        return [u for u in [self.topic.url, *(d.url for d in self.documents)] if u]


def empty_material(topic: Topic) -> Material:
    return Material(topic=topic, documents=())


# --- what a topic's sources are ---------------------------------------------------------------------------------

def reddit_post_id(url: str) -> str:
    """The post id in a Reddit thread URL, or ""."""
    match = _REDDIT_THREAD.match(url or "") or _REDD_IT.match(url or "")
    return match.group(1).lower() if match else ""


def wanted_sources(topic: Topic) -> list[Wanted]:
    """Every source of the topic to read, best first, each once (by kind and canonical URL)."""
    wanted: list[Wanted] = []
    if topic.url:
        wanted.append(_link(topic.url, rank=RANK_PRIMARY))
    candidates = (topic.raw or {}).get("candidates") if isinstance(topic.raw, dict) else None
    cited: list[Wanted] = []
    for index, raw in enumerate(candidates or []):
        if isinstance(raw, dict):
            found, citations = _from_candidate(raw, rank=RANK_SOURCES + index)
            wanted += found
            cited += citations
    wanted += cited[:CITED_PAGES_PER_TOPIC]
    unique: dict[tuple[str, str], Wanted] = {}
    for item in wanted:
        unique.setdefault((item.kind, canonical_url(item.url) if item.url else ""), item)
    return sorted(unique.values(), key=lambda w: w.rank)


def _link(url: str, *, rank: int, title: str = "") -> Wanted:
    post_id = reddit_post_id(url)
    if post_id:
        return Wanted(kind=Kind.REDDIT, url=f"https://www.reddit.com/comments/{post_id}/", rank=rank, title=title,
                      post_id=post_id)
    return Wanted(kind=Kind.ARTICLE, url=url, rank=rank, title=title)


def _from_candidate(raw: dict[str, Any], *, rank: int) -> tuple[list[Wanted], list[Wanted]]:
    """The sources in one discovery candidate's raw payload (as each source stores it), and the pages it cites."""
    if "_actor" in raw:  # Apify
        title, text, url = ApifySource.from_settings(settings).item_text(raw)
        return [Wanted(kind=Kind.SOCIAL, url=url, rank=rank, title=title, text=text)], []
    if isinstance(raw.get("snippet"), dict):  # TubeLab
        snippet = raw["snippet"]
        video = str(raw.get("id") or "")
        description = snippet.get("description") if isinstance(snippet.get("description"), str) else ""
        channel = snippet.get("channelTitle") if isinstance(snippet.get("channelTitle"), str) else ""
        text = "\n\n".join(p for p in (f"YouTube video by {channel}." if channel else "", description) if p)
        url = f"https://www.youtube.com/watch?v={video}" if video else ""
        return [Wanted(kind=Kind.VIDEO, url=url, rank=rank, title=str(snippet.get("title") or ""), text=text)], []
    if raw.get("permalink") and raw.get("id"):  # Reddit
        post_id = str(raw["id"]).lower()
        found = [Wanted(kind=Kind.REDDIT, url=f"https://www.reddit.com/comments/{post_id}/", rank=rank,
                        title=str(raw.get("title") or ""), post_id=post_id)]
        link = raw.get("url") if not raw.get("is_self") else ""
        if isinstance(link, str) and link.startswith("http") and not reddit_post_id(link) and "redd" not in link:
            found.append(Wanted(kind=Kind.ARTICLE, url=link, rank=rank))
        return found, []
    citations = raw.get("citations")  # Perplexity: the pages its topic cites
    if isinstance(citations, list):
        return [], [Wanted(kind=Kind.ARTICLE, url=u, rank=RANK_CITED + i)
                    for i, u in enumerate(c for c in citations if isinstance(c, str) and c.startswith("http"))]
    return [], []


# --- reading them -----------------------------------------------------------------------------------------------

def read_source(wanted: Wanted, *, policy: AddressPolicy, reddit: RedditSource) -> Outcome:
    """Read one source; any failure comes back as an Outcome with its reason, never as an exception."""
    if wanted.text is not None:
        text = wanted.text.strip()
        return Outcome(title=wanted.title, text=text) if text else Outcome(reason="the source gave no text")
    if wanted.kind == Kind.REDDIT:
        return _read_thread(wanted, reddit=reddit)
    try:
        page = fetch_page(wanted.url, policy=policy)
    except PageUnreadable as exc:
        return Outcome(reason=exc.reason, transient=exc.transient)
    except Exception as exc:  # a bug or a parser surprise on one page must not stop the others
        logger.exception("reading %s failed unexpectedly", wanted.url)
        return Outcome(reason=f"unexpected error: {exc.__class__.__name__}", transient=True)
    return Outcome(title=page.title or wanted.title, text=page.text)


def _read_thread(wanted: Wanted, *, reddit: RedditSource) -> Outcome:
    if not reddit.is_configured():
        # Not a property of the thread: once Reddit is configured the next gathering reads it.
        return Outcome(reason="Reddit is not configured (REDDIT_CLIENT_ID, REDDIT_CLIENT_SECRET), so the thread "
                              "was not read", transient=True)
    try:
        thread = reddit.thread(post_id=wanted.post_id, comments=settings.REDDIT_COMMENTS_PER_POST)
    except SourceError as exc:
        return Outcome(reason=exc.message, transient=not exc.permanent)
    except Exception as exc:
        logger.exception("reading Reddit thread %s failed unexpectedly", wanted.post_id)
        return Outcome(reason=f"unexpected error: {exc.__class__.__name__}", transient=True)
    parts = [thread.text]
    if thread.comments:
        parts.append("Top comments:\n" + "\n".join(f"- {body} ({score} points)" for score, body in thread.comments))
    return Outcome(title=thread.title, text="\n\n".join(p for p in parts if p.strip()))


def thread_reader() -> RedditSource:
    reddit = RedditSource.from_settings(settings)
    reddit.timeout = THREAD_TIMEOUT_SECONDS  # a draft waits for it: shorter than discovery's
    return reddit


def fetch_policy() -> AddressPolicy:
    return AddressPolicy(allow_private=settings.SOURCE_FETCH_ALLOW_PRIVATE)


# --- research ---------------------------------------------------------------------------------------------------

class AlreadyReserved(Exception):
    """Raised by a meter whose ledger already holds a reservation under the key: the research of this attempt
    was asked for before (a redelivered task), and must not be bought twice."""


def research_enabled() -> bool:
    return bool(settings.RESEARCH_WITH_PERPLEXITY and settings.PERPLEXITY_API_KEY)


def research_source() -> PerplexitySource:
    source = PerplexitySource.from_settings(settings)
    source.timeout = RESEARCH_TIMEOUT_SECONDS  # a draft waits for it: shorter than discovery's
    return source


def _research(topic: Topic, *, meter: SpendMeter, key: str) -> list[tuple[Wanted, Outcome]]:
    """The research answer and its search results as (source, outcome) pairs; a failure is a failed answer."""
    answer = Wanted(kind=Kind.RESEARCH, url="", rank=RANK_RESEARCH, title=f"Research: {clip(topic.title, 200)}")
    try:
        research = research_source().research(title=topic.title, summary=topic.summary, meter=meter,
                                              idempotency_key=key)
    except BudgetRefused as exc:
        return [(answer, Outcome(reason=f"not researched: the budget refused the request ({exc})", transient=True))]
    except AlreadyReserved:
        return [(answer, Outcome(reason="not researched again: this attempt already asked for research",
                                 transient=True))]
    except SourceError as exc:
        return [(answer, Outcome(reason=exc.message, transient=not exc.permanent))]
    found = [(answer, Outcome(title=answer.title, text=research.answer) if research.answer.strip()
              else Outcome(reason="the research answer was empty"))]
    for index, result in enumerate(research.results[:10]):
        text = "\n".join(p for p in (result["title"], result["snippet"]) if p)
        found.append((Wanted(kind=Kind.SEARCH_RESULT, url=result["url"], rank=RANK_RESULTS + index,
                             title=result["title"]),
                      Outcome(title=result["title"], text=text) if result["snippet"]
                      else Outcome(reason="the search result came without a snippet")))
    return found


# --- gathering --------------------------------------------------------------------------------------------------

def _fresh_after() -> datetime.datetime:
    return timezone.now() - datetime.timedelta(days=settings.MATERIAL_REUSE_DAYS)


def _reusable(document: SourceDocument | None, *, fresh_after: datetime.datetime) -> bool:
    return (document is not None and document.fetched_at >= fresh_after
            and not (document.status == SourceDocument.Status.FAILED and document.transient))


def gather_material(
    *, topic: Topic, refresh: bool = False, meter: SpendMeter | None = None, research_key: str = ""
) -> Material:
    """Read the topic's sources that have no fresh document yet (all of them with `refresh`) and store them.

    Research is bought only with a `meter` (the cost ledger, which the batches app hands in with the batch to
    charge) and `research_key` (its idempotency key), when RESEARCH_WITH_PERPLEXITY is on.
    """
    wanted = wanted_sources(topic)
    documents = list(topic.documents.all())
    existing = {(d.kind, d.url): d for d in documents}
    fresh_after = _fresh_after()
    to_read = [w for w in wanted if refresh or not _reusable(existing.get((w.kind, w.url)), fresh_after=fresh_after)]
    fetches = [w for w in to_read if w.text is None][:MAX_FETCHES]
    known = [w for w in to_read if w.text is not None]
    policy, reddit = fetch_policy(), thread_reader()
    outcomes: list[tuple[Wanted, Outcome]] = []
    with ThreadPoolExecutor(max_workers=max(1, len(fetches)), thread_name_prefix="material") as pool:
        # The pool threads only talk to the network; every database write happens here, in the caller's thread.
        futures = [(w, pool.submit(read_source, w, policy=policy, reddit=reddit)) for w in fetches]
        outcomes += [(w, read_source(w, policy=policy, reddit=reddit)) for w in known]
        want_research = meter is not None and research_key and research_enabled() and (
            refresh or not _reusable(existing.get((Kind.RESEARCH, "")), fresh_after=fresh_after))
        if want_research:
            outcomes += _research(topic, meter=meter, key=research_key)
        outcomes += [(w, future.result()) for w, future in futures]
    for item, outcome in outcomes:
        _store(topic=topic, wanted=item, outcome=outcome)
    # With nothing read, the documents are as they were just read: no second query.
    return _material(topic, wanted=wanted, fetched=len(outcomes), documents=None if outcomes else documents)


def _store(*, topic: Topic, wanted: Wanted, outcome: Outcome) -> None:
    text = outcome.text.strip()[:MAX_STORED_CHARS] if outcome.ok else ""
    values = {
        "title": clip(outcome.title or wanted.title, 500),
        "text": text,
        "status": SourceDocument.Status.OK if outcome.ok else SourceDocument.Status.FAILED,
        "reason": outcome.reason,
        "transient": outcome.transient,
        "rank": wanted.rank,
        "content_hash": hashlib.sha256(text.encode("utf-8")).hexdigest() if text else "",
        "fetched_at": timezone.now(),
    }
    try:
        with transaction.atomic():
            SourceDocument.objects.update_or_create(topic=topic, kind=wanted.kind, url=wanted.url[:1000],
                                                    defaults=values)
    except IntegrityError:
        # A redelivered task gathering the same topic stored it first: what we read replaces it.
        SourceDocument.objects.filter(topic=topic, kind=wanted.kind, url=wanted.url[:1000]).update(**values)


def _material(topic: Topic, *, wanted: Sequence[Wanted], fetched: int = 0,
              documents: Iterable[SourceDocument] | None = None) -> Material:
    """The documents of `wanted` (and any fresh research), best first."""
    keys = {(w.kind, w.url[:1000]) for w in wanted}
    docs = list(documents if documents is not None else topic.documents.all())
    fresh_after = _fresh_after()
    chosen = [
        d for d in docs
        if (d.kind, d.url) in keys
        or (d.kind in (Kind.RESEARCH, Kind.SEARCH_RESULT) and d.fetched_at >= fresh_after)
    ]
    chosen.sort(key=lambda d: (d.rank, d.pk))
    return Material(topic=topic, documents=tuple(chosen), fetched=fetched)


def stored_material(*, topics: Sequence[Topic]) -> dict[int, Material]:
    """Each topic's fresh material as stored, fetching nothing (for estimates and pages). One query in all.

    `pending` says that a source of the topic has no fresh document yet: its material will be read when the
    topic is drafted.
    """
    fresh_after = _fresh_after()
    deferred = [t for t in topics if "raw" in t.get_deferred_fields()]
    if deferred:  # selection reads topics without their raw payload: fetch it for all of them in one query
        raws = dict(Topic.objects.filter(pk__in=[t.pk for t in deferred]).values_list("pk", "raw"))
        for topic in deferred:
            topic.raw = raws.get(topic.pk) or {}
    by_topic: dict[int, list[SourceDocument]] = {t.pk: [] for t in topics}
    for document in SourceDocument.objects.filter(topic__in=list(by_topic), fetched_at__gte=fresh_after):
        by_topic[document.topic_id].append(document)
    result = {}
    for topic in topics:
        wanted = wanted_sources(topic)
        have = {(d.kind, d.url) for d in by_topic[topic.pk]}
        material = _material(topic, wanted=wanted, documents=by_topic[topic.pk])
        pending = any((w.kind, w.url[:1000]) not in have for w in wanted)
        result[topic.pk] = Material(topic=topic, documents=material.documents, pending=pending)
    return result
