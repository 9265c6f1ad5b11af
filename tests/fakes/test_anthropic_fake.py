"""The fake Anthropic API, exercised through the real ``anthropic`` SDK."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import pytest

from batches.claude_standin import (
    FakeAnthropicServer,
    Fault,
    RemoteFakeAnthropic,
    estimate_tokens,
    request_input_tokens,
)

pytestmark: list[Any] = []
ClientFactory = Callable[..., anthropic.Anthropic]

MODEL = "claude-sonnet-4-6"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "maxLength": 60},
        "preview_text": {"type": "string", "maxLength": 120},
        "body_markdown": {"type": "string"},
        "key_points": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        "reading_minutes": {"type": "integer", "minimum": 2, "maximum": 8},
        "tone": {"type": "string", "enum": ["practical", "urgent"]},
        "evergreen": {"type": "boolean"},
    },
    "required": ["subject", "preview_text", "body_markdown"],
}
TOOL = {"name": "write_newsletter", "description": "Return the newsletter draft.", "input_schema": SCHEMA}
LONG_SYSTEM = "You are the editor of a newsletter for independent online sellers. " * 80  # ~5,400 chars


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as fake:
        yield fake


@pytest.fixture
def client_for() -> Iterator[ClientFactory]:
    """Factory for real SDK clients pointed at a fake (no retries unless asked); closed afterwards."""
    made: list[anthropic.Anthropic] = []

    def make(server: FakeAnthropicServer, **kwargs: Any) -> anthropic.Anthropic:
        kwargs.setdefault("max_retries", 0)
        made.append(anthropic.Anthropic(api_key="test-key", base_url=server.base_url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def draft_request(title: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": f"Write this week's issue.\nTitle: {title}\nSummary: Sellers ask."}],
        "tools": [TOOL],
        "tool_choice": {"type": "tool", "name": "write_newsletter"},
    }
    body.update(extra)
    return body


def cached_request(user_text: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 500,
        "system": [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": user_text}],
    }


def test_tool_use_input_follows_schema_and_topic(
    server: FakeAnthropicServer, client_for: ClientFactory
) -> None:
    client = client_for(server)
    raw = client.messages.with_raw_response.create(**draft_request("USPS Ground Advantage rate hike"))
    message = raw.parse()

    assert raw.headers["request-id"].startswith("req_")
    assert raw.headers["content-type"] == "application/json"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_") and block.name == "write_newsletter"
    data = block.input
    assert set(SCHEMA["required"]) <= set(data)
    assert isinstance(data["subject"], str) and 0 < len(data["subject"]) <= 60
    assert len(data["preview_text"]) <= 120
    assert "USPS Ground Advantage" in data["body_markdown"] and len(data["body_markdown"]) > 400
    assert 2 <= len(data["key_points"]) <= 4 and len(set(data["key_points"])) == len(data["key_points"])
    assert isinstance(data["reading_minutes"], int) and 2 <= data["reading_minutes"] <= 8
    assert data["tone"] in ("practical", "urgent") and data["evergreen"] is True

    other = client.messages.create(**draft_request("Shopify checkout extensibility deadline"))
    assert other.content[0].input["body_markdown"] != data["body_markdown"]


def test_usage_numbers_and_max_tokens(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    client = client_for(server)
    body = draft_request("Amazon FBA low-inventory fee")
    message = client.messages.create(**body)
    usage = message.usage
    assert usage.input_tokens == request_input_tokens(body)
    assert usage.output_tokens == estimate_tokens(json.dumps(message.content[0].input))
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    assert usage.cache_creation is not None and usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert usage.service_tier == "standard"

    short = client.messages.create(**draft_request("Amazon FBA low-inventory fee", max_tokens=40))
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 40

    text = client.messages.create(model=MODEL, max_tokens=30, messages=[{"role": "user", "content": "Hi"}])
    assert text.content[0].type == "text" and text.stop_reason == "max_tokens" and text.usage.output_tokens == 30

    server.usage_overrides = {"output_tokens": 900}
    assert client.messages.create(**body).usage.output_tokens == 900
    assert server.message_calls == 4
    assert server.usage_totals["output_tokens"] == usage.output_tokens + 40 + 30 + 900


def test_prompt_caching_write_then_read(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    client = client_for(server)
    body = cached_request("Topic: holiday returns")
    total = request_input_tokens(body)
    user_tokens = request_input_tokens({"messages": body["messages"]})
    prefix = total - user_tokens
    assert prefix >= 1024

    first = client.messages.create(**body).usage
    assert first.cache_creation_input_tokens == prefix
    assert first.cache_creation is not None and first.cache_creation.ephemeral_5m_input_tokens == prefix
    assert first.cache_read_input_tokens == 0 and first.input_tokens == user_tokens

    other = cached_request("Topic: a different user message")
    second = client.messages.create(**other).usage
    assert second.cache_read_input_tokens == prefix and second.cache_creation_input_tokens == 0
    assert second.input_tokens == request_input_tokens(other) - prefix

    server.reset()
    assert client.messages.create(**body).usage.cache_creation_input_tokens == prefix


def test_prompt_below_minimum_is_not_cached(client_for: ClientFactory) -> None:
    with FakeAnthropicServer(min_cacheable_tokens=100_000) as server:
        client = client_for(server)
        body = cached_request("Topic: holiday returns")
        for _ in range(2):
            usage = client.messages.create(**body).usage
            assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
            assert usage.input_tokens == request_input_tokens(body)


def test_count_tokens_equals_sum_of_input_buckets(
    server: FakeAnthropicServer, client_for: ClientFactory
) -> None:
    client = client_for(server)
    body = cached_request("Topic: tariff changes")
    counted = client.messages.count_tokens(model=MODEL, system=body["system"], messages=body["messages"])
    for _ in range(2):  # cache write, then cache read: the total never changes
        usage = client.messages.create(**body).usage
        total = usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
        assert counted.input_tokens == total
    assert server.count_tokens_calls == 1

    server.enqueue(Fault(status=529))  # queued /v1/messages faults never hit count_tokens
    server.enqueue_count_tokens(Fault(status=404, message="model: claude-does-not-exist"))
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model=MODEL, messages=body["messages"])
    assert client.messages.count_tokens(model=MODEL, messages=body["messages"]).input_tokens > 0
    assert server.pending_faults == 1


def test_overloaded_then_success_with_sdk_retries(
    server: FakeAnthropicServer, client_for: ClientFactory
) -> None:
    server.enqueue(Fault(status=529))
    message = client_for(server, max_retries=2).messages.create(**draft_request("Etsy fee changes"))
    assert message.stop_reason == "tool_use"
    requests = server.requests
    assert len(requests) == 2 and server.message_calls == 1
    assert [r["headers"]["x-stainless-retry-count"] for r in requests] == ["0", "1"]


def test_rate_limit_carries_retry_after(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    server.enqueue(Fault(status=429, retry_after=1))
    with pytest.raises(anthropic.RateLimitError) as caught:
        client_for(server).messages.create(**draft_request("TikTok Shop ads"))
    err = caught.value
    assert err.response.headers["retry-after"] == "1" and err.response.headers["x-should-retry"] == "true"
    assert err.body["type"] == "error" and err.body["error"]["type"] == "rate_limit_error"
    assert err.request_id == err.body["request_id"]

    server.enqueue(Fault(status=429, retry_after=1))
    started = time.monotonic()
    client_for(server, max_retries=1).messages.create(**draft_request("TikTok Shop ads"))
    assert time.monotonic() - started >= 1.0
    assert server.message_calls == 1


def test_bad_request_is_not_retried(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    server.add_rule(lambda body: "POISON" in json.dumps(body), Fault(status=400, message="poisoned prompt"))
    client = client_for(server, max_retries=2)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**draft_request("POISON pill"))
    assert caught.value.body["error"] == {"type": "invalid_request_error", "message": "poisoned prompt"}
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(server.requests) == 1

    with pytest.raises(anthropic.BadRequestError, match="max_tokens: Input should be greater than or equal to 1"):
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    assert client.messages.create(**draft_request("Clean topic")).stop_reason == "tool_use"
    assert server.message_calls == 1


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
def test_error_statuses(
    server: FakeAnthropicServer,
    client_for: ClientFactory,
    status: int,
    error_class: type[Exception],
    error_type: str,
) -> None:
    server.enqueue(Fault(status=status))
    with pytest.raises(error_class) as caught:
        client_for(server).messages.create(**draft_request("Any topic"))
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.body["error"]["type"] == error_type  # type: ignore[attr-defined]


def test_timeout_raises_api_timeout_error(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    server.enqueue(Fault(kind="timeout", seconds=5))
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        client_for(server, timeout=0.5).messages.create(**draft_request("Slow topic"))
    assert time.monotonic() - started < 3
    assert server.message_calls == 0


def test_malformed_and_text_only_faults(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    server.enqueue(Fault(kind="malformed"), Fault(kind="text_only"))
    client = client_for(server)
    broken = client.messages.create(**draft_request("Broken output")).content[0]
    assert broken.type == "tool_use"
    assert "subject" not in broken.input and not isinstance(broken.input["preview_text"], str)
    text_only = client.messages.create(**draft_request("Chatty output"))
    assert [b.type for b in text_only.content] == ["text"] and text_only.stop_reason == "end_turn"


def test_each_billed_answer_is_recorded_with_the_ids_the_client_sees(
    server: FakeAnthropicServer, client_for: ClientFactory
) -> None:
    server.enqueue(Fault(status=529))
    client = client_for(server)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**draft_request("Refused"))
    message = client.messages.create(**draft_request("Answered"))
    assert [(a["id"], a["request_id"]) for a in server.answers] == [(message.id, message._request_id)]
    assert server.answers[0]["usage"]["output_tokens"] == message.usage.output_tokens


def test_api_key_masked_and_unknown_path(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    client_for(server).messages.create(**draft_request("Masking"))
    recorded = server.requests[0]
    assert recorded["path"] == "/v1/messages" and recorded["json"]["model"] == MODEL
    # This SDK version sends the key as "Authorization: Bearer ..."; older ones used x-api-key.
    credential = recorded["headers"].get("x-api-key") or recorded["headers"]["authorization"]
    assert "****" in credential and "test-key" not in json.dumps(server.requests)

    raw = urllib.request.Request(
        server.base_url + "/v1/messages",
        data=json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode(),
        headers={"x-api-key": "sk-ant-api03-secretvalue-WXYZ", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(raw, timeout=5) as response:
        assert response.status == 200 and response.headers["content-type"] == "application/json"
    assert server.requests[-1]["headers"]["x-api-key"] == "****WXYZ"

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.base_url + "/v1/nope", timeout=5)
    assert caught.value.code == 404 and caught.value.headers["request-id"].startswith("req_")
    body = json.loads(caught.value.read())
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"


def test_an_answer_comes_latency_seconds_after_its_request_arrived(client_for: ClientFactory) -> None:
    with FakeAnthropicServer(latency=0.4) as server:
        client = client_for(server)
        started = time.monotonic()
        client.messages.create(**draft_request("Latency"))
        elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 2.0  # never early; the fake's own work runs inside the latency, not after it


def test_concurrent_calls_share_latency_and_cache(client_for: ClientFactory) -> None:
    with FakeAnthropicServer(latency=0.3) as server:
        client = client_for(server)
        body = cached_request("Topic: concurrency")
        client.messages.create(**body)  # writes the cache entry
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            usages = list(pool.map(lambda _: client.messages.create(**body).usage, range(8)))
        assert time.monotonic() - started < 1.5  # served in parallel, not 8 x 0.3 s
        assert all(u.cache_read_input_tokens and not u.cache_creation_input_tokens for u in usages)
        assert server.message_calls == 9


def test_remote_control_and_reset(server: FakeAnthropicServer, client_for: ClientFactory) -> None:
    remote = RemoteFakeAnthropic(server.base_url)
    remote.enqueue(Fault(status=529))
    with pytest.raises(anthropic.InternalServerError):
        client_for(server).messages.create(**draft_request("Remote"))
    client_for(server).messages.create(**draft_request("Remote"))
    stats = remote.stats()
    assert stats["message_calls"] == 1 and stats["requests"] == 2
    assert stats["usage_totals"]["input_tokens"] > 0
    remote.reset()
    assert server.message_calls == 0 and server.requests == []
