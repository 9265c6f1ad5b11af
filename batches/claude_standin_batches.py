"""The Message Batches endpoints of the fake Anthropic API, plugged into its router with one hook.

Wire shapes follow the real API (a `message_batch` object, a list page with `has_more` / `first_id` / `last_id`,
results as JSON Lines of `{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}`,
each succeeded message with `usage.service_tier = "batch"`):

* ``POST /v1/messages/batches``: create; the batch spends ``processing_seconds`` `in_progress`, then `ended`.
* ``GET /v1/messages/batches/{id}``: retrieve (``not_found_after_create`` answers 404 first, as the real API can).
* ``GET /v1/messages/batches?limit=&after_id=&before_id=``: newest first.
* ``POST /v1/messages/batches/{id}/cancel``: `canceling`, then ended; the first ``finished_before_cancel``
  requests are still answered, the rest canceled.
* ``GET /v1/messages/batches/{id}/results``: JSONL, CRLF line endings, shuffled order; ``outcomes`` forces a
  request to end `errored`, `expired`, `canceled` or be `missing` from the file.

Each succeeded answer is made by the fake's own Messages machinery (usage, prompt cache, tool call), so an
economy draft looks like a `now` draft.
"""
from __future__ import annotations

import datetime
import json
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

ERRORED_LINE = {"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "messages.0.content: the request could not be processed"}}


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


@dataclass
class _MessageBatch:
    id: str
    created_at: datetime.datetime
    requests: list[tuple[str, dict[str, Any]]]
    ends_at: float  # monotonic
    cancel_initiated_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    results: list[dict[str, Any]] | None = None
    not_found_left: int = 0  # retrieves still to answer 404
    results_not_found_left: int = 0  # results downloads still to answer 404

    @property
    def expires_at(self) -> datetime.datetime:
        return self.created_at + datetime.timedelta(hours=24)


@dataclass
class FakeMessageBatches:
    """State and knobs of the batches endpoints of one FakeAnthropicServer (`server.batches`)."""

    server: Any
    processing_seconds: float = 0.3
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id -> errored|expired|canceled|missing
    not_found_after_create: int = 0  # retrieves answered 404 right after each create
    not_found_results: int = 0  # results downloads answered 404 (once ended), then served
    create_faults: list[str] = field(default_factory=list)  # FIFO: timeout|disconnect|error_500|error_429|error_400
    create_timeout_seconds: float = 30.0
    finished_before_cancel: int = 0
    results_latency: float = 0.0  # seconds before a results download answers (to kill a poller mid-download)
    seed: int = 7
    batches: dict[str, _MessageBatch] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"create": 0, "retrieve": 0, "list": 0, "cancel": 0,
                                                             "results": 0})

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.seed)

    # -- helpers for tests
    def created(self) -> list[_MessageBatch]:
        with self._lock:
            return list(self.batches.values())

    def api_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def _new_id(self) -> str:
        return "msgbatch_01" + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789")
                                       for _ in range(22))

    def _advance(self, batch: _MessageBatch) -> None:
        """End the batch once its time is up (or once canceled), making its results there and then."""
        if batch.results is not None or time.monotonic() < batch.ends_at:
            return
        results = []
        for index, (custom_id, params) in enumerate(batch.requests):
            outcome = self.outcomes.get(custom_id, "succeeded")
            if batch.cancel_initiated_at is not None and outcome == "succeeded" \
                    and index >= self.finished_before_cancel:
                outcome = "canceled"
            if outcome == "missing":
                continue
            if outcome == "succeeded":
                result = {"type": "succeeded", "message": self._answer(params)}
            elif outcome == "errored":
                result = {"type": "errored", "error": {**ERRORED_LINE, "request_id": None}}
            else:
                result = {"type": outcome}
            results.append({"custom_id": custom_id, "result": result})
        self._random.shuffle(results)  # the real API does not keep the order either
        batch.results = results
        batch.ended_at = datetime.datetime.now(datetime.UTC)
        batch.results_not_found_left = self.not_found_results

    def _answer(self, params: dict[str, Any]) -> dict[str, Any]:
        from batches.claude_standin import _random_id

        server = self.server
        usage = server._input_usage(params)
        content, stop_reason, output_tokens = server._generate(params, None)
        usage["output_tokens"] = output_tokens
        usage["service_tier"] = "batch"
        with server._lock:
            for key in server._usage_totals:
                server._usage_totals[key] += int(usage.get(key) or 0)
        return {"model": params["model"], "id": _random_id("msg_01", 22), "type": "message", "role": "assistant",
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def _as_json(self, batch: _MessageBatch) -> dict[str, Any]:
        self._advance(batch)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.results is None:
            counts["processing"] = len(batch.requests)  # the others stay 0 until the whole batch has ended
        else:
            for line in batch.results:
                counts[line["result"]["type"]] += 1
            counts["expired"] += len(batch.requests) - len(batch.results)
        status = "ended" if batch.results is not None else ("canceling" if batch.cancel_initiated_at else "in_progress")
        return {
            "id": batch.id, "type": "message_batch", "processing_status": status, "request_counts": counts,
            "ended_at": _iso(batch.ended_at), "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.expires_at), "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_initiated_at),
            "results_url": (f"{self.server.base_url}/v1/messages/batches/{batch.id}/results"
                            if batch.results is not None else None),
        }

    # -- endpoints
    def handle(self, method: str, path: str, query: str, body: Any, cancel: threading.Event):
        reply = self._handle(method, path, query, body, cancel)
        if path.endswith("/results") and self.results_latency > 0 and cancel.wait(self.results_latency):
            return None
        return reply

    def _handle(self, method: str, path: str, query: str, body: Any, cancel: threading.Event):
        from batches.claude_standin import _error_reply, _json_reply, _Reply

        parts = path.split("/")[4:]  # after /v1/messages/batches
        with self._lock:
            if method == "POST" and not parts:
                self.calls["create"] += 1
                return self._create(body, cancel)
            if method == "GET" and not parts:
                self.calls["list"] += 1
                return _json_reply(200, self._list(parse_qs(query)))
            batch = self.batches.get(parts[0]) if parts else None
            if batch is None:
                return _error_reply(404, f"message_batch {parts[0] if parts else ''} not found")
            if method == "GET" and len(parts) == 1:
                self.calls["retrieve"] += 1
                if batch.not_found_left > 0:
                    batch.not_found_left -= 1
                    return _error_reply(404, f"message_batch {batch.id} not found")
                return _json_reply(200, self._as_json(batch))
            if method == "POST" and parts[1:] == ["cancel"]:
                self.calls["cancel"] += 1
                self._advance(batch)
                if batch.results is None and batch.cancel_initiated_at is None:
                    batch.cancel_initiated_at = datetime.datetime.now(datetime.UTC)
                    batch.ends_at = min(batch.ends_at, time.monotonic() + 0.05)
                return _json_reply(200, self._as_json(batch))
            if method == "GET" and parts[1:] == ["results"]:
                self.calls["results"] += 1
                self._advance(batch)
                if batch.results is None:
                    return _error_reply(404, f"message_batch {batch.id} has no results yet")
                if batch.results_not_found_left > 0:
                    batch.results_not_found_left -= 1
                    return _error_reply(404, f"message_batch {batch.id} results not found")
                raw = "".join(json.dumps(line, ensure_ascii=False) + "\r\n" for line in batch.results).encode()
                return _Reply(200, raw, {"content-type": "application/binary", "request-id": "req_fake_results"})
        return _error_reply(404, "Not Found")

    def _create(self, body: Any, cancel: threading.Event):
        from batches.claude_standin import _error_reply, _json_reply, _RequestError, _validate_messages_body

        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error_reply(400, "requests: Field required")
        seen = set()
        for index, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 64 \
                    or not all(c.isascii() and (c.isalnum() or c in "_-") for c in custom_id):
                return _error_reply(400, f"requests.{index}.custom_id: String should match pattern "
                                         "'^[a-zA-Z0-9_-]{1,64}$'")
            if custom_id in seen:
                return _error_reply(400, f"requests.{index}.custom_id: custom_id values must be unique")
            seen.add(custom_id)
            try:
                _validate_messages_body(request.get("params") or {}, need_max_tokens=True,
                                        max_output_tokens=self.server.max_output_tokens)
            except _RequestError as err:
                return _error_reply(err.status, f"requests.{index}.params.{err.message}")
        fault = self.create_faults.pop(0) if self.create_faults else None
        if fault in ("error_500", "error_429", "error_400"):
            return _error_reply(int(fault[-3:]), "Internal server error" if fault == "error_500" else "refused")
        batch = _MessageBatch(id=self._new_id(), created_at=datetime.datetime.now(datetime.UTC),
                              requests=[(r["custom_id"], r["params"]) for r in requests],
                              ends_at=time.monotonic() + self.processing_seconds,
                              not_found_left=self.not_found_after_create)
        self.batches[batch.id] = batch
        if fault == "disconnect":
            return None  # created, but the answer never leaves
        if fault == "timeout":
            self._lock.release()
            try:
                cancel.wait(self.create_timeout_seconds)
            finally:
                self._lock.acquire()
            return None
        return _json_reply(200, self._as_json(batch))

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        newest_first = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
        limit = max(1, min(int((query.get("limit") or ["20"])[0]), 1000))
        ids = [b.id for b in newest_first]
        if query.get("after_id"):
            after = query["after_id"][0]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        elif query.get("before_id"):
            before = query["before_id"][0]
            newest_first = newest_first[:ids.index(before)][-limit:] if before in ids else []
        page = newest_first[:limit]
        return {"data": [self._as_json(b) for b in page], "has_more": len(newest_first) > limit,
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}


def batches_of(server: Any) -> FakeMessageBatches:
    """The batches state of `server`, made on first use."""
    with server._lock:
        if getattr(server, "_message_batches", None) is None:
            server._message_batches = FakeMessageBatches(server=server)
        return server._message_batches


def route(server: Any, handler: Any, method: str, path: str, query: str, body: Any, cancel: threading.Event):
    """The hook the fake's router calls for every /v1/messages/batches request."""
    from batches.claude_standin import _error_reply

    if not handler.headers.get("x-api-key") and not handler.headers.get("authorization"):
        return _error_reply(401, "x-api-key header is required")
    if not handler.headers.get("anthropic-version"):
        return _error_reply(400, "anthropic-version: header is required")
    if method == "POST" and path == "/v1/messages/batches" and not isinstance(body, dict):
        return _error_reply(400, "There was an error parsing the body")
    return batches_of(server).handle(method, path, query, body, cancel)
