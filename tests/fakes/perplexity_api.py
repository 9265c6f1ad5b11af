"""A loopback fake of Perplexity's Sonar chat completions API (`POST /chat/completions`).

Answers in the real shape: `chat.completion` with `citations`, `search_results` (title, url, date, last_updated,
snippet, source) and `usage.cost` (input_tokens_cost, output_tokens_cost, request_cost, total_cost). Unless an
answer is queued with `answer_next`, it invents topics for whatever the request asks about, as JSON in the message
content (the request's response_format asks for that).

    with FakePerplexityAPI() as fake:
        fake.answer_next(topics=[make_topic("USPS raises rates", sources=[1, 2])], citations=[...])
        fake.fail_next(401)
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from tests.fakes.loopback import LoopbackFake, LoopbackHandler, RecordedRequest, Reply

_TOPIC_BANK = (
    ("Sellers report carrier surcharges eating into margins", "carrier surcharges"),
    ("Marketplace fee changes push sellers to raise prices", "fee changes"),
    ("Stores test one-page checkout to lift conversion", "checkout tests"),
    ("Rising ad costs send brands back to email marketing", "ad costs"),
    ("Sellers cut slow-moving stock ahead of storage fees", "storage fees"),
    ("Loyalty programmes return as acquisition costs climb", "loyalty"),
    ("Tariff changes force a rethink of overseas suppliers", "tariffs"),
    ("New platform apps promise AI product descriptions", "AI apps"),
)


def make_topic(
    title: str, *, summary: str = "Sellers are comparing notes on this in forums this week.", sources: list[int] = ()
) -> dict[str, Any]:
    """One topic object as the source's JSON schema asks for it."""
    return {"title": title, "summary": summary, "source_indices": list(sources)}


def make_search_result(url: str, *, title: str = "", date: str | None = "2025-10-01") -> dict[str, Any]:
    return {
        "title": title or f"Discussion at {urlsplit(url).netloc}",
        "url": url,
        "date": date,
        "last_updated": date,
        "snippet": "Sellers say the change hit them this week ...",
        "source": "web",
    }


@dataclass
class _Answer:
    content: str
    citations: list[str]
    search_results: list[dict[str, Any]]
    usage: dict[str, Any] | None


@dataclass
class FakePerplexityAPI(LoopbackFake):
    """Perplexity's chat completions endpoint on 127.0.0.1 (`base_url` stands in for https://api.perplexity.ai)."""

    api_key: str = "pplx-fake-key-0123456789abcdef"
    requests: list[RecordedRequest] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)  # usage.cost.total_cost of each successful answer
    request_cost: float = 0.005

    methods: ClassVar[tuple[str, ...]] = ("POST",)
    content_type: ClassVar[str] = "application/json"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._answers: deque[_Answer] = deque()

    # --- scripting -------------------------------------------------------------------------------------------
    def answer_next(
        self,
        *,
        topics: list[dict[str, Any]] | None = None,
        citations: list[str] | None = None,
        search_results: list[dict[str, Any]] | None = None,
        content: str | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Queue the next successful answer: topics (as JSON content) or raw `content`, and its sources."""
        citations = list(citations or [])
        if search_results is None:
            search_results = [make_search_result(url) for url in citations]
        if content is None:
            content = json.dumps({"topics": topics or []})
        self._answers.append(_Answer(content, citations, search_results, usage))

    def malformed_next(self) -> None:
        self.fail_next(200, body='{"id": "3f1c", "model": "sonar", "choices": [{"message": {"content": "{\\"top')

    def unexpected_next(self) -> None:
        self.fail_next(200, json_body={"result": {"answer": "Shipping costs are up."}, "status": "complete"})

    # --- behaviour -------------------------------------------------------------------------------------------
    def _fault_body(self, status: int) -> Any:
        return _error_body(status)

    def _answer(self, handler: LoopbackHandler, request: RecordedRequest) -> Reply:
        if request.path != "/chat/completions":
            return 404, {"error": {"message": "Not found", "type": "not_found", "code": 404}}, {}
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, _error_body(401), {}
        if not isinstance(request.json, dict) or not request.json.get("messages"):
            return 400, _error_body(400), {}
        return 200, self._complete(request.json), {}

    def _complete(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self._answers.popleft() if self._answers else self._invent(request)
        prompt_chars = sum(len(m.get("content", "")) for m in request.get("messages", []))
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = max(1, len(answer.content) // 4)
        if answer.usage is not None:
            usage = answer.usage
        else:
            input_cost = round(prompt_tokens / 1_000_000, 6)
            output_cost = round(completion_tokens / 1_000_000, 6)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "search_context_size": (request.get("web_search_options") or {}).get("search_context_size", "low"),
                "cost": {
                    "input_tokens_cost": input_cost,
                    "output_tokens_cost": output_cost,
                    "request_cost": self.request_cost,
                    "total_cost": round(input_cost + output_cost + self.request_cost, 6),
                },
            }
        cost = usage.get("cost", {}).get("total_cost") if isinstance(usage.get("cost"), dict) else None
        if cost is not None:
            with self._lock:
                self.costs.append(cost)
        return {
            "id": str(uuid.uuid4()),
            "model": request.get("model", "sonar"),
            "created": int(time.time()),
            "usage": usage,
            "citations": answer.citations,
            "search_results": answer.search_results,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": answer.content},
                    "delta": {"role": "assistant", "content": ""},
                }
            ],
        }

    def _invent(self, request: dict[str, Any]) -> _Answer:
        question = next((m["content"] for m in request.get("messages", []) if m.get("role") == "user"), "")
        match = re.search(r"about (.+?)\? List up to (\d+)", question)
        subject, count = (match.group(1), int(match.group(2))) if match else ("e-commerce", 3)
        offset = len(self.requests)
        topics, citations = [], []
        for i in range(count):
            headline, slug = _TOPIC_BANK[(offset + i) % len(_TOPIC_BANK)]
            citations.append(f"https://www.example-news.com/{slug.replace(' ', '-')}-{offset}-{i}")
            citations.append(f"https://community.example-forum.com/t/{offset}{i}")
            topics.append(
                make_topic(
                    f"{headline} ({subject.split(',')[0]})",
                    summary=f"Sellers discuss {slug}. It matters because it changes their costs this quarter.",
                    sources=[len(citations) - 1, len(citations)],
                )
            )
        return _Answer(json.dumps({"topics": topics}), citations, [make_search_result(u) for u in citations], None)


def _error_body(status: int) -> dict[str, Any]:
    kinds = {
        400: ("invalid_request", "Invalid request"),
        401: ("invalid_api_key", "Invalid API key provided"),
        403: ("forbidden", "Your API key does not have access to this model"),
        429: ("rate_limit_exceeded", "Rate limit exceeded, please slow down"),
    }
    kind, message = kinds.get(status, ("internal_server_error", "Internal server error"))
    return {"error": {"message": message, "type": kind, "code": status}}

