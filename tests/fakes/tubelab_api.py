"""A loopback fake of TubeLab's public API: `GET /v1/search/outliers` (5 credits a search, 10 requests a minute).

No recording of TubeLab exists, so the shape follows its published client types: `{"pagination": {"total",
"from", "size"}, "hits": [{"id", "kind", "snippet": {...}, "statistics": {...}}]}`. Auth is
`Authorization: Api-Key <key>`. The fake enforces the rate limit itself (429 with retry-after) on a clock that a
test may share with the client's limiter, so honouring the limit can be checked without waiting.

    with FakeTubeLabAPI(clock=fake_clock) as fake:
        fake.videos["amazon fba"] = [make_video(title="I tried FBA for 30 days", views=480_000, ratio=12.5)]
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from tests.fakes.loopback import LoopbackFake, LoopbackHandler, RecordedRequest, Reply

_ids = itertools.count(1)


def make_video(
    *,
    title: str = "How I fixed my Shopify store's conversion rate",
    channel: str = "Store Growth Lab",
    views: int | str = 250_000,
    ratio: float = 8.5,
    z_score: float = 4.2,
    likes: int = 9_100,
    comments: int = 640,
    id: str | None = None,
    published_at: str | None = None,
    age_days: float = 5.0,
    negative: bool = False,
) -> dict[str, Any]:
    """One outlier hit. `views` may be a string, as YouTube's own API sends counts."""
    video_id = id or hashlib.sha1(f"{title}{next(_ids)}".encode()).hexdigest()[:11]
    published = published_at or (datetime.now(UTC) - timedelta(days=age_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": video_id,
        "kind": "video",
        "snippet": {
            "channelId": "UC" + hashlib.sha1(channel.encode()).hexdigest()[:22],
            "channelTitle": channel,
            "channelHandle": "@" + channel.lower().replace(" ", ""),
            "channelSubscribers": 42_000,
            "title": title,
            "publishedAt": published,
            "language": "en",
            "thumbnails": {
                "default": {"url": f"https://i.ytimg.com/vi/{video_id}/default.jpg", "width": 120, "height": 90},
                "medium": {"url": f"https://i.ytimg.com/vi/{video_id}/mqdefault.jpg", "width": 320, "height": 180},
                "high": {"url": f"https://i.ytimg.com/vi/{video_id}/hqdefault.jpg", "width": 480, "height": 360},
            },
            "duration": 734,
            "monetization": {"rpmEstimationFrom": 4.1, "rpmEstimationTo": 9.3},
        },
        "statistics": {
            "commentCount": comments,
            "likeCount": likes,
            "viewCount": views,
            "zScore": z_score,
            "averageViewsRatio": ratio,
            "isPositiveOutlier": not negative,
            "isNegativeOutlier": negative,
        },
        "classification": {"isFaceless": False, "quality": "positive"},
    }


@dataclass
class FakeTubeLabAPI(LoopbackFake):
    """TubeLab's outliers search on 127.0.0.1; `base_url` ends in /v1 like the real one."""

    api_key: str = "tl-fake-key-9f8e7d6c5b4a"
    videos: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by query; others get invented videos
    requests_per_minute: int = 10
    clock: Callable[[], float] = time.monotonic
    requests: list[RecordedRequest] = field(default_factory=list)
    rate_limited: int = 0  # how many requests the fake refused for going over the limit
    credits_used: int = 0

    methods: ClassVar[tuple[str, ...]] = ("GET",)
    url_prefix: ClassVar[str] = "/v1"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._accepted: deque[float] = deque()

    def malformed_next(self) -> None:
        self.fail_next(200, body='{"pagination": {"total": 40, "from": 0, "size": 20}, "hits": [{"id": "x')

    def unexpected_next(self) -> None:
        self.fail_next(200, json_body={"data": {"videos": []}, "status": "ok"})

    def _fault_body(self, status: int) -> Any:
        return {"statusCode": status, "message": "Error"}

    def _answer(self, handler: LoopbackHandler, request: RecordedRequest) -> Reply:
        if handler.headers.get("Authorization") != f"Api-Key {self.api_key}":
            return 401, {"statusCode": 401, "message": "Invalid API key"}, {}
        wait = self._over_limit()
        if wait is not None:
            body = {"statusCode": 429, "message": "Rate limit exceeded: 10 requests per minute"}
            return 429, body, {"Retry-After": str(max(1, round(wait)))}
        if request.path != "/v1/search/outliers":
            return 404, {"statusCode": 404, "message": "Not Found"}, {}
        return self._search(request.query)

    def _search(self, query: dict[str, list[str]]) -> Reply:
        text = query.get("query", [""])[0]
        size = int(query.get("size", ["20"])[0])
        start = int(query.get("from", ["0"])[0])
        hits = self.videos.get(text)
        if hits is None:
            hits = [
                make_video(title=f"{text.title()}: what nobody tells you ({n})", ratio=9.0 - n, id=_video_id(text, n))
                for n in range(3)
            ]
        page = hits[start : start + size]
        with self._lock:
            self.credits_used += 5
        return 200, {"pagination": {"total": len(hits), "from": start, "size": size}, "hits": page}, {}

    def _over_limit(self) -> float | None:
        """Seconds until the next request would be allowed, when this one breaks the limit; else None."""
        with self._lock:
            now = self.clock()
            while self._accepted and self._accepted[0] <= now - 60.0:
                self._accepted.popleft()
            if len(self._accepted) >= self.requests_per_minute:
                self.rate_limited += 1
                return self._accepted[0] + 60.0 - now
            self._accepted.append(now)
            return None


def _video_id(query: str, n: int) -> str:
    return hashlib.sha1(f"{query}:{n}".encode()).hexdigest()[:11]

