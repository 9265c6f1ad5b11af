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
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # Authorization masked


@dataclass
class _Fault:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeTubeLabAPI:
    """TubeLab's outliers search on 127.0.0.1; `base_url` ends in /v1 like the real one."""

    api_key: str = "tl-fake-key-9f8e7d6c5b4a"
    videos: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by query; others get invented videos
    requests_per_minute: int = 10
    clock: Callable[[], float] = time.monotonic
    requests: list[RecordedRequest] = field(default_factory=list)
    rate_limited: int = 0  # how many requests the fake refused for going over the limit
    credits_used: int = 0

    def __post_init__(self) -> None:
        self._faults: deque[_Fault] = deque()
        self._accepted: deque[float] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeTubeLabAPI:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTubeLabAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(
        self,
        status: int,
        *,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        if body is None:
            body = json.dumps(json_body if json_body is not None else {"statusCode": status, "message": "Error"})
        raw = body.encode() if isinstance(body, str) else body
        for _ in range(times):
            self._faults.append(_Fault(status, raw, dict(headers or {})))

    def malformed_next(self) -> None:
        self.fail_next(200, body='{"pagination": {"total": 40, "from": 0, "size": 20}, "hits": [{"id": "x')

    def unexpected_next(self) -> None:
        self.fail_next(200, json_body={"data": {"videos": []}, "status": "ok"})

    def _search(self, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
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


def _masked(items: Any) -> dict[str, str]:
    """Request headers with the credential replaced, keeping its scheme ("Bearer ***")."""
    return {
        name: (value.split(" ", 1)[0] + " ***" if name.lower() == "authorization" else value) for name, value in items
    }


class _Handler(BaseHTTPRequestHandler):
    api: FakeTubeLabAPI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer per request: send it now, not after a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        api = self.api
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        authorized = self.headers.get("Authorization") == f"Api-Key {api.api_key}"
        headers = _masked(self.headers.items())
        with api._lock:
            api.requests.append(RecordedRequest("GET", path, query, headers))
            fault = api._faults.popleft() if api._faults else None
        if fault is not None:
            self._send(fault.status, fault.body, fault.headers)
            return
        if not authorized:
            self._send(401, json.dumps({"statusCode": 401, "message": "Invalid API key"}).encode())
            return
        wait = api._over_limit()
        if wait is not None:
            body = {"statusCode": 429, "message": "Rate limit exceeded: 10 requests per minute"}
            self._send(429, json.dumps(body).encode(), {"Retry-After": str(max(1, round(wait)))})
            return
        if path != "/v1/search/outliers":
            self._send(404, json.dumps({"statusCode": 404, "message": "Not Found"}).encode())
            return
        status, payload, extra = api._search(query)
        self._send(status, json.dumps(payload).encode(), extra)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
