"""TubeLab: outlier YouTube videos (far above their channel's usual views) for e-commerce search queries.

Public REST API: `GET {base}/search/outliers?query=...` with `Authorization: Api-Key <key>`. A search costs
credits (5 at the time of writing) and the API allows 10 requests a minute per key, which a client-side limiter
keeps to; its clock and sleep are injectable so tests never wait.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from topics.sources.base import (
    BudgetRefused,
    Candidate,
    SourceError,
    SpendHold,
    SpendMeter,
    budget_refused_error,
    clip,
    json_safe,
    malformed_json_error,
    number,
    paid_request,
    parse_datetime,
    setting_list,
    unexpected_shape_error,
)

LABEL = "TubeLab"
DEFAULT_BASE_URL = "https://public-api.tubelab.net/v1"
DEFAULT_QUERIES = (
    "shopify store",
    "amazon fba",
    "ecommerce marketing",
    "dropshipping",
    "dtc brand",
    "etsy seller",
)
CREDITS_PER_SEARCH = 5
DEFAULT_USD_PER_CREDIT = "0.01"


class RateLimiter:
    """At most `max_calls` calls in any `period` seconds (a sliding window), waiting when needed.

    Thread-safe. `clock` and `sleep` default to the real monotonic clock and `time.sleep`.
    """

    def __init__(
        self,
        *,
        max_calls: int,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_calls = max_calls
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait until one more call fits in the window, record it, and return the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                while self._calls and self._calls[0] <= now - self.period:
                    self._calls.popleft()
                if len(self._calls) < self.max_calls:
                    self._calls.append(now)
                    return waited
                delay = self._calls[0] + self.period - now
                self._sleep(delay)
                waited += delay


class TubeLabSource:
    """Outlier videos for e-commerce queries: what is over-performing on YouTube right now."""

    name = "tubelab"
    paid = True

    def __init__(
        self,
        *,
        api_key: str = "",
        base_url: str = DEFAULT_BASE_URL,
        queries: Sequence[str] = DEFAULT_QUERIES,
        per_query: int = 20,
        min_outlier: float = 2.0,
        window_days: int = 30,
        language: str = "en",
        usd_per_credit: Decimal | str = DEFAULT_USD_PER_CREDIT,
        credits_per_search: int = CREDITS_PER_SEARCH,
        requests_per_minute: int = 10,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        # Each query once: a search is paid, and its ledger key is the query's.
        self.queries = list(dict.fromkeys(q.strip() for q in queries if q.strip()))
        self.per_query = per_query
        self.min_outlier = min_outlier
        self.window_days = window_days
        self.language = language
        self.usd_per_credit = Decimal(str(usd_per_credit))
        self.credits_per_search = credits_per_search
        self.timeout = timeout
        self.limiter = RateLimiter(max_calls=requests_per_minute, period=60.0, clock=clock, sleep=sleep)
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(cls, settings: Any) -> TubeLabSource:
        """Build from Django settings (TUBELAB_*), with defaults for anything unset."""
        return cls(
            api_key=getattr(settings, "TUBELAB_API_KEY", "") or "",
            base_url=getattr(settings, "TUBELAB_BASE_URL", "") or DEFAULT_BASE_URL,
            queries=setting_list(getattr(settings, "TUBELAB_QUERIES", None) or DEFAULT_QUERIES),
            per_query=int(getattr(settings, "TUBELAB_PER_QUERY", 20)),
            min_outlier=float(getattr(settings, "TUBELAB_MIN_OUTLIER", 2.0)),
            window_days=int(getattr(settings, "TUBELAB_WINDOW_DAYS", 30)),
            usd_per_credit=str(getattr(settings, "TUBELAB_USD_PER_CREDIT", "") or DEFAULT_USD_PER_CREDIT),
        )

    @property
    def usd_per_search(self) -> Decimal:
        return self.credits_per_search * self.usd_per_credit

    def is_configured(self) -> bool:
        return bool(self.api_key and self.queries)

    def describe(self) -> str:
        return (
            f"TubeLab: outlier YouTube videos (≥ {self.min_outlier:g}x their channel's average) for "
            f"{len(self.queries)} e-commerce queries ({self.credits_per_search} credits a query)"
        )

    def fetch(self, *, limit: int, meter: SpendMeter, run_token: str | None = None) -> list[Candidate]:
        """Up to `limit` outlier videos across the queries, strongest outliers first, each video once."""
        token = run_token or uuid.uuid4().hex[:12]
        published_from = (self._now() - timedelta(days=self.window_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        found: dict[str, Candidate] = {}
        headers = {"Authorization": f"Api-Key {self.api_key}", "Accept": "application/json"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout) as client:
            for query in self.queries:
                if len(found) >= limit:
                    break
                params = {
                    "query": query,
                    "size": self.per_query,
                    "sortBy": "averageViewsRatio",
                    "sortOrder": "desc",
                    "type": "video",
                    "language": self.language,
                    "publishedAtFrom": published_from,
                }
                try:
                    hold = meter.reserve(
                        provider=self.name,
                        description=f"TubeLab outlier search: {query}",
                        worst_case_usd=self.usd_per_search,
                        idempotency_key=f"discover:{self.name}:{token}:{query}",
                    )
                except BudgetRefused as exc:
                    raise budget_refused_error(label=LABEL, exc=exc, gathered=_best(found)) from exc
                try:
                    hits = self._search(client, params, hold, query=query)
                except SourceError as exc:
                    raise exc.with_partial(_best(found)) from exc
                for hit in hits:
                    candidate = self._candidate(hit, query=query)
                    if candidate is not None and candidate.external_id not in found:
                        found[candidate.external_id] = candidate
        return _best(found)[:limit]

    def _search(
        self, client: httpx.Client, params: Mapping[str, Any], hold: SpendHold, *, query: str
    ) -> list[dict[str, Any]]:
        self.limiter.acquire()
        what = f"the outlier search for {query!r}"
        response = paid_request(
            client, "GET", "/search/outliers", params=params, hold=hold, label=LABEL, base_url=self.base_url,
            key_setting="TUBELAB_API_KEY", secrets=(self.api_key,),
        )
        # A 200 means the search ran: its credits are spent whatever the body says.
        hold.settle(self.usd_per_search)
        try:
            payload = response.json()
        except ValueError as exc:
            raise malformed_json_error(label=LABEL, what=what) from exc
        hits = payload.get("hits") if isinstance(payload, dict) else None
        if not isinstance(hits, list):
            raise unexpected_shape_error(label=LABEL, what=what, problem="no hits list")
        return [h for h in hits if isinstance(h, dict)]

    def _candidate(self, hit: Mapping[str, Any], *, query: str) -> Candidate | None:
        video_id = hit.get("id")
        snippet = hit.get("snippet") if isinstance(hit.get("snippet"), dict) else {}
        statistics = hit.get("statistics") if isinstance(hit.get("statistics"), dict) else {}
        title = snippet.get("title")
        if not isinstance(video_id, str) or not video_id or not isinstance(title, str) or not title.strip():
            return None
        outlier = number(statistics.get("averageViewsRatio"))
        if outlier is None or outlier < self.min_outlier or statistics.get("isNegativeOutlier") is True:
            return None
        views = number(statistics.get("viewCount")) or 0.0
        engagement = {"views": views, "outlier": outlier}
        for key, name in (("likeCount", "likes"), ("commentCount", "comments"), ("zScore", "zscore")):
            value = number(statistics.get(key))
            if value is not None:
                engagement[name] = value
        channel = snippet.get("channelTitle") if isinstance(snippet.get("channelTitle"), str) else "a channel"
        description = snippet.get("description") if isinstance(snippet.get("description"), str) else ""
        summary = description or (
            f"YouTube video by {channel}: {views:,.0f} views, {outlier:.1f}x the channel's usual."
        )
        return Candidate(
            source=self.name,
            external_id=video_id,
            title=clip(title, 500),
            summary=clip(summary, 600),
            url=f"https://www.youtube.com/watch?v={video_id}",
            engagement=engagement,
            published_at=parse_datetime(snippet.get("publishedAt")),
            raw=json_safe({**hit, "query": query}),
        )


def _best(found: Mapping[str, Candidate]) -> list[Candidate]:
    return sorted(found.values(), key=lambda c: (-c.engagement["outlier"], -c.engagement["views"], c.external_id))
