"""The fake's Message Batches endpoints speak the real wire format: the unmodified SDK drives them end to end."""
from __future__ import annotations

import json

import anthropic
import pytest

from batches.claude_standin import FakeAnthropicServer
from batches.claude_standin_batches import batches_of

PARAMS = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}


@pytest.fixture
def server():
    with FakeAnthropicServer() as fake:
        batches_of(fake).processing_seconds = 0.2
        yield fake


@pytest.fixture
def client(server):
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=server.base_url, max_retries=0)


def requests(count: int) -> list[dict]:
    return [{"custom_id": f"req-{i}", "params": PARAMS} for i in range(count)]


def test_a_batch_stays_in_progress_then_ends_with_counts_and_a_results_url(server, client):
    created = client.messages.batches.create(requests=requests(3))
    assert created.processing_status == "in_progress" and created.request_counts.processing == 3
    assert created.results_url is None and (created.expires_at - created.created_at).total_seconds() == 86400

    batches_of(server).processing_seconds = 0
    batches_of(server).batches[created.id].ends_at = 0
    ended = client.messages.batches.retrieve(created.id)

    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 3
    assert ended.results_url.endswith(f"/v1/messages/batches/{created.id}/results")


def test_results_are_crlf_jsonl_in_shuffled_order_with_every_kind_of_line(server, client):
    api = batches_of(server)
    api.processing_seconds = 0
    api.outcomes = {"req-0": "errored", "req-1": "expired", "req-2": "canceled", "req-3": "missing"}
    created = client.messages.batches.create(requests=requests(12))

    with client.messages.batches.with_streaming_response.results(created.id) as response:
        raw = response.read()
    lines = raw.split(b"\r\n")

    assert lines[-1] == b"" and len(lines) == 12  # 11 lines (one missing), each ending in CRLF
    parsed = [json.loads(line) for line in lines[:-1]]
    ids = [p["custom_id"] for p in parsed]
    assert ids != sorted(ids, key=lambda c: int(c.split("-")[1]))
    kinds = {p["custom_id"]: p["result"]["type"] for p in parsed}
    assert (kinds["req-0"], kinds["req-1"], kinds["req-2"]) == ("errored", "expired", "canceled")
    assert "req-3" not in kinds
    succeeded = next(p for p in parsed if p["result"]["type"] == "succeeded")["result"]["message"]
    assert succeeded["usage"]["service_tier"] == "batch"


def test_the_listing_is_newest_first_and_pages_with_after_id(server, client):
    ids = [client.messages.batches.create(requests=requests(1)).id for _ in range(3)]

    page = client.messages.batches.list(limit=2)

    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # the SDK follows last_id


def test_a_retrieve_right_after_create_can_answer_404_once(server, client):
    batches_of(server).not_found_after_create = 1
    created = client.messages.batches.create(requests=requests(1))

    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(created.id)
    assert client.messages.batches.retrieve(created.id).id == created.id


def test_cancel_answers_the_requests_finished_before_and_cancels_the_rest(server, client):
    api = batches_of(server)
    api.processing_seconds = 60
    api.finished_before_cancel = 1
    created = client.messages.batches.create(requests=requests(3))

    canceling = client.messages.batches.cancel(created.id)
    assert canceling.cancel_initiated_at is not None

    api.batches[created.id].ends_at = 0
    kinds = sorted(line.result.type for line in client.messages.batches.results(created.id))
    assert kinds == ["canceled", "canceled", "succeeded"]


def test_a_custom_id_outside_the_documented_pattern_is_refused(client):
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[{"custom_id": "item 1", "params": PARAMS}])
