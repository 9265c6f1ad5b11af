"""A loopback fake of the Apify API v2, covering what apify-client 3.4 calls to run an actor and read its results.

    POST /v2/actors/{actorId}/runs          start a run (input as the body; maxItems, maxTotalChargeUsd as params)
    GET  /v2/actor-runs/{runId}             the run (the client polls with waitForFinish)
    POST /v2/actor-runs/{runId}/abort       abort it
    GET  /v2/datasets/{datasetId}/items     the items, with the x-apify-pagination-* headers

Bodies are `{"data": {...}}` with the run object's real camelCase fields; errors are `{"error": {"type",
"message"}}`. Items default to TikTok-scraper shaped ones (`make_tiktok_item`).

    with FakeApifyAPI() as fake:
        fake.items = [make_tiktok_item(text="Packaging hack that cut our returns", plays=900_000)]
        fake.usage_total_usd = 0.042
"""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from tests.fakes.loopback import LoopbackFake, LoopbackHandler, RecordedRequest, Reply

_ids = itertools.count(7_300_000_000_000_000_000)


def make_tiktok_item(
    *,
    text: str = "3 Shopify apps that doubled our repeat orders #shopify #ecommerce",
    plays: int = 450_000,
    likes: int = 31_000,
    comments: int = 410,
    shares: int = 1_200,
    author: str = "dtcfounder",
    id: str | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """One dataset item as clockworks/tiktok-scraper writes it."""
    video_id = id or str(next(_ids))
    when = created or datetime.now(UTC) - timedelta(days=2)
    return {
        "id": video_id,
        "text": text,
        "textLanguage": "en",
        "createTime": int(when.timestamp()),
        "createTimeISO": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "isAd": False,
        "authorMeta": {
            "id": "6890000000000000000",
            "name": author,
            "nickName": author.title(),
            "verified": False,
            "fans": 18_400,
            "heart": 902_000,
            "video": 212,
        },
        "musicMeta": {"musicName": "original sound", "musicAuthor": author, "musicOriginal": True},
        "webVideoUrl": f"https://www.tiktok.com/@{author}/video/{video_id}",
        "videoMeta": {"height": 1024, "width": 576, "duration": 41},
        "diggCount": likes,
        "shareCount": shares,
        "playCount": plays,
        "collectCount": 2_300,
        "commentCount": comments,
        "hashtags": [{"name": "shopify"}, {"name": "ecommerce"}],
        "searchQuery": "shopify store owner",
    }


@dataclass
class FakeApifyAPI(LoopbackFake):
    """Apify's API on 127.0.0.1; `base_url` stands in for https://api.apify.com (the client appends /v2)."""

    token: str = "apify_api_FAKEtoken0123456789"
    items: list[dict[str, Any]] = field(default_factory=lambda: [make_tiktok_item() for _ in range(3)])
    final_status: str = "SUCCEEDED"
    polls_before_finish: int = 0  # polls answered RUNNING before the run reaches final_status
    usage_total_usd: float | None = 0.0731
    missing_actors: set[str] = field(default_factory=set)
    requests: list[RecordedRequest] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._polls: dict[str, int] = {}

    def malformed_next(self, *, path: str | None = None) -> None:
        self.fail_next(200, body='{"data": {"id": "HG7ML7M8z78YcAPEB", "status": "RUNN', path=path)

    def unexpected_next(self, *, path: str | None = None) -> None:
        self.fail_next(201, json_body={"data": {"runId": "x", "state": "started"}}, path=path)

    def started_runs(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/runs")]

    # --- behaviour -------------------------------------------------------------------------------------------
    def _fault_body(self, status: int) -> Any:
        return _error(status)

    def _answer(self, handler: LoopbackHandler, request: RecordedRequest) -> Reply:
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, _error(401), {}
        method, query = request.method, request.query
        parts = [unquote(p) for p in request.path.strip("/").split("/")]
        # The API answers under both /v2/acts and /v2/actors; apify-client 3.4 calls the latter.
        starts_run = len(parts) == 4 and parts[:2] in (["v2", "acts"], ["v2", "actors"]) and parts[3] == "runs"
        if method == "POST" and starts_run:
            return self._start_run(parts[2].replace("~", "/"), query, request.json)
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v2", "actor-runs"]:
            return self._get_run(parts[2])
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v2", "actor-runs"] and parts[3] == "abort":
            return self._abort_run(parts[2])
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v2", "datasets"] and parts[3] == "items":
            return self._items(parts[2], query)
        return 404, {"error": {"type": "page-not-found", "message": "Page not found"}}, {}

    def _start_run(self, actor: str, query: dict[str, list[str]], run_input: Any) -> Reply:
        if actor in self.missing_actors:
            return 404, {"error": {"type": "record-not-found", "message": "Actor was not found"}}, {}
        run_id = secrets.token_hex(9)[:17]
        max_charge = query.get("maxTotalChargeUsd", [None])[0]
        max_items = query.get("maxItems", [None])[0]
        now = datetime.now(UTC)
        run = {
            "id": run_id,
            "actId": "GdWCkxBtKWOsKjdch",
            "userId": "7sT5jcggjjA9fNcxF",
            "actorTaskId": None,
            "startedAt": now.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "finishedAt": None,
            "status": "READY",
            "statusMessage": None,
            "meta": {"origin": "API", "userAgent": "ApifyClient/3.4.0"},
            "stats": {
                "inputBodyLen": len(json.dumps(run_input)),
                "restartCount": 0,
                "resurrectCount": 0,
                "computeUnits": 0,
            },
            "options": {
                "build": "latest",
                "timeoutSecs": 3600,
                "memoryMbytes": 1024,
                "diskMbytes": 2048,
                "maxItems": int(max_items) if max_items else None,
                "maxTotalChargeUsd": float(max_charge) if max_charge else None,
            },
            "buildId": "7sT5jcggjjA9fNcxG",
            "buildNumber": "0.0.204",
            "exitCode": None,
            "defaultKeyValueStoreId": secrets.token_hex(9)[:17],
            "defaultDatasetId": secrets.token_hex(9)[:17],
            "defaultRequestQueueId": secrets.token_hex(9)[:17],
            "containerUrl": f"https://{run_id}.runs.apify.net",
            "usageTotalUsd": 0.0,
            "pricingInfo": {
                "pricingModel": "PAY_PER_EVENT",
                "apifyMarginPercentage": 0.2,
                "createdAt": "2025-01-10T09:00:00.000Z",
                "startedAt": "2025-01-10T09:00:00.000Z",
                "pricingPerEvent": {
                    "actorChargeEvents": {
                        "result": {
                            "eventTitle": "Video scraped",
                            "eventDescription": "One video in the dataset",
                            "eventPriceUsd": 0.0037,
                        }
                    }
                },
            },
        }
        with self._lock:
            self.runs[run_id] = run
            self._polls[run_id] = 0
        return 201, {"data": run}, {}

    def _get_run(self, run_id: str) -> Reply:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"error": {"type": "record-not-found", "message": "Actor run was not found"}}, {}
        with self._lock:
            self._polls[run_id] += 1
            if run["status"] in ("READY", "RUNNING"):
                if self._polls[run_id] > self.polls_before_finish:
                    run["status"] = self.final_status
                    if self.final_status not in ("READY", "RUNNING"):
                        run["finishedAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                        run["exitCode"] = 0 if self.final_status == "SUCCEEDED" else 1
                        run["usageTotalUsd"] = self.usage_total_usd
                        run["stats"]["computeUnits"] = 0.0123
                else:
                    run["status"] = "RUNNING"
        return 200, {"data": run}, {}

    def _abort_run(self, run_id: str) -> Reply:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"error": {"type": "record-not-found", "message": "Actor run was not found"}}, {}
        with self._lock:
            run["status"] = "ABORTED"
        return 200, {"data": run}, {}

    def _items(self, dataset_id: str, query: dict[str, list[str]]) -> Reply:
        if not any(r["defaultDatasetId"] == dataset_id for r in self.runs.values()):
            return 404, {"error": {"type": "record-not-found", "message": "Dataset was not found"}}, {}
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(len(self.items))])[0])
        page = self.items[offset : offset + limit]
        headers = {
            "x-apify-pagination-total": str(len(self.items)),
            "x-apify-pagination-offset": str(offset),
            "x-apify-pagination-count": str(len(page)),
            "x-apify-pagination-limit": str(limit),
            "x-apify-pagination-desc": "false",
        }
        return 200, page, headers


def _error(status: int) -> dict[str, Any]:
    kinds = {
        400: ("invalid-input", "Input is not valid"),
        401: ("user-or-token-not-found", "User was not found or authentication token is not valid"),
        402: ("not-enough-usage-to-run-paid-actor", "You have exceeded your monthly usage limit"),
        403: ("insufficient-permissions", "You do not have permission to perform this action"),
        404: ("record-not-found", "Record was not found"),
        429: ("rate-limit-exceeded", "You have exceeded the rate limit of 30 requests per second"),
    }
    kind, message = kinds.get(status, ("internal-server-error", "Internal server error"))
    return {"error": {"type": kind, "message": message}}

