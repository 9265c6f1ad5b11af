"""Perplexity: asks the Sonar search API what independent e-commerce sellers are discussing now, per category.

Each answer is requested as JSON (response_format json_schema) listing topics with the numbers of the sources that
back them; every topic keeps its citations (URLs, and the matching `search_results` entries) in `raw`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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
    malformed_json_error,
    paid_request,
    parse_datetime,
    setting_list,
    unexpected_shape_error,
    usd,
)

log = logging.getLogger(__name__)

LABEL = "Perplexity"
DEFAULT_BASE_URL = "https://api.perplexity.ai"
DEFAULT_MODEL = "sonar"
# Perplexity's published prices: USD per million input and output tokens, and the search fee per request by
# search_context_size (https://docs.perplexity.ai/getting-started/pricing). Models with other fees (deep
# research bills citations and searches too) are left out on purpose: without a price there is no call.
PRICES: dict[str, tuple[str, str, dict[str, str]]] = {
    "sonar": ("1", "1", {"low": "0.005", "medium": "0.008", "high": "0.012"}),
    "sonar-pro": ("3", "15", {"low": "0.006", "medium": "0.010", "high": "0.014"}),
    "sonar-reasoning": ("1", "5", {"low": "0.005", "medium": "0.008", "high": "0.012"}),
    "sonar-reasoning-pro": ("2", "8", {"low": "0.006", "medium": "0.010", "high": "0.014"}),
}
# The newsletter's eight beats, phrased for a search question (slug → what to ask about).
DEFAULT_CATEGORIES: dict[str, str] = {
    "shipping_logistics": "shipping, fulfilment, carriers and logistics",
    "pricing_margins": "pricing, marketplace fees, tariffs and margins",
    "conversion_optimization": "store conversion rates, checkout and product pages",
    "ads_marketing": "advertising and marketing (Meta, Google, TikTok ads, SEO, email)",
    "inventory_management": "inventory, stock levels and forecasting",
    "customer_retention": "customer retention, loyalty, subscriptions and reviews",
    "product_sourcing": "product sourcing, suppliers and manufacturing",
    "platform_tools": "e-commerce platforms, apps and tools (Shopify, Amazon Seller Central, Etsy, WooCommerce)",
}
SYSTEM_PROMPT = (
    "You are a researcher for a weekly newsletter read by independent online sellers: Shopify store owners, "
    "Amazon sellers and small direct-to-consumer brands. Find what they are discussing right now in forums, "
    "communities and trade news. Answer only with JSON that matches the given schema."
)
USER_PROMPT = (
    "What are independent e-commerce sellers discussing right now about {subject}? List up to {count} distinct, "
    "specific, current topics from the past {recency}. For each topic give a headline-style title, a two-sentence "
    "summary of what sellers are saying and why it matters to them, and source_indices: the numbers of the search "
    "results (as in your [1], [2] citations) that support it."
)
TOPICS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topics": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "summary": {"type": "string"},
                    "source_indices": {"type": "array", "items": {"type": "integer"}},
                    "source_urls": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["title", "summary", "source_indices"],
            },
        }
    },
    "required": ["topics"],
}
RESEARCH_SYSTEM_PROMPT = (
    "You are a fact-checking researcher for a newsletter read by independent online sellers. Search the web and "
    "answer in plain prose: what happened, the key figures (amounts, percentages, counts, dates) and who reported "
    "them. Cite every fact with its [n]. Say so when sources disagree or when a figure could not be confirmed."
)
RESEARCH_PROMPT = (
    "Research this story for this week's issue.\n\nHeadline: {title}\n\nWhat we know so far: {summary}\n\n"
    "What happened, the figures that matter to a small seller, who is affected and what sellers are doing about it."
)


@dataclass(frozen=True)
class Research:
    """A research answer (with its [n] citations) and the search results it cites, in order."""

    answer: str
    results: list[dict[str, Any]]


# A token is ~4 characters of English; counting 3 keeps the input estimate on the safe side.
_CHARS_PER_TOKEN_ESTIMATE = 3
_MESSAGE_OVERHEAD_TOKENS = 50
_MILLION = Decimal(1_000_000)


class PerplexitySource:
    """Current seller-discussion topics per category from Perplexity Sonar, each with its citations."""

    name = "perplexity"
    paid = True

    def __init__(
        self,
        *,
        api_key: str = "",
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        categories: Mapping[str, str] | None = None,
        topics_per_category: int = 5,
        recency: str = "week",
        max_tokens: int = 1500,
        usd_per_million_input: Decimal | str | None = None,
        usd_per_million_output: Decimal | str | None = None,
        usd_per_request: Decimal | str | None = None,
        search_context_size: str = "low",
        timeout: float = 90.0,
    ) -> None:
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or DEFAULT_MODEL
        self.categories = dict(categories if categories is not None else DEFAULT_CATEGORIES)
        self.topics_per_category = topics_per_category
        self.recency = recency
        self.max_tokens = max_tokens
        # Prices come from PRICES for the model unless given; the request fee depends on search_context_size.
        listed = PRICES.get(self.model)
        given = (usd_per_million_input, usd_per_million_output, usd_per_request)
        self.priced = listed is not None or all(v not in (None, "") for v in given)
        fallback = (listed[0], listed[1], listed[2][search_context_size]) if listed else ("0", "0", "0")
        self.usd_per_million_input, self.usd_per_million_output, self.usd_per_request = (
            Decimal(str(value if value not in (None, "") else default)) for value, default in zip(given, fallback)
        )
        self.search_context_size = search_context_size
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Any) -> PerplexitySource:
        """Build from Django settings (PERPLEXITY_*), with defaults for anything unset."""
        categories = getattr(settings, "PERPLEXITY_CATEGORIES", None) or DEFAULT_CATEGORIES
        if not isinstance(categories, Mapping):
            # A list of slugs: ask about the known ones in our words, and about others by their slug.
            categories = {c: DEFAULT_CATEGORIES.get(c, c.replace("_", " ")) for c in setting_list(categories)}
        return cls(
            api_key=getattr(settings, "PERPLEXITY_API_KEY", "") or "",
            base_url=getattr(settings, "PERPLEXITY_BASE_URL", "") or DEFAULT_BASE_URL,
            model=getattr(settings, "PERPLEXITY_MODEL", "") or DEFAULT_MODEL,
            categories=categories,
            topics_per_category=int(getattr(settings, "PERPLEXITY_TOPICS_PER_CATEGORY", 5)),
            recency=getattr(settings, "PERPLEXITY_RECENCY", "") or "week",
            max_tokens=int(getattr(settings, "PERPLEXITY_MAX_TOKENS", 1500)),
            usd_per_million_input=getattr(settings, "PERPLEXITY_USD_PER_MILLION_INPUT", None),
            usd_per_million_output=getattr(settings, "PERPLEXITY_USD_PER_MILLION_OUTPUT", None),
            usd_per_request=getattr(settings, "PERPLEXITY_USD_PER_REQUEST", None),
        )

    def is_configured(self) -> bool:
        return bool(self.api_key and self.categories)

    def describe(self) -> str:
        return (
            f"Perplexity: cited topics sellers are discussing now, one {self.model} search per category "
            f"({len(self.categories)} categories)"
        )

    def fetch(self, *, limit: int, meter: SpendMeter, run_token: str | None = None) -> list[Candidate]:
        """Up to `limit` topics, asking one question per category and spreading the limit over the categories.

        A refused budget or a fault stops the fetch with a SourceError whose `partial` holds the topics already
        paid for.
        """
        token = run_token or uuid.uuid4().hex[:12]
        per_category = max(1, min(self.topics_per_category, math.ceil(limit / max(1, len(self.categories)))))
        gathered: list[Candidate] = []
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        if not self.priced:
            # No price, no call: the reservation before each call must be a true upper bound of its cost.
            raise SourceError(
                f"{LABEL}: no price is known for model {self.model!r}; set PERPLEXITY_USD_PER_MILLION_INPUT, "
                "PERPLEXITY_USD_PER_MILLION_OUTPUT and PERPLEXITY_USD_PER_REQUEST to price it",
                permanent=True,
            )
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout) as client:
            for slug, subject in self.categories.items():
                if len(gathered) >= limit:
                    break
                body = self._body(subject, per_category)
                try:
                    hold = meter.reserve(
                        provider=self.name,
                        description=f"Perplexity {self.model}: discovery topics for {slug}",
                        worst_case_usd=self.worst_case_usd(body),
                        idempotency_key=f"discover:{self.name}:{token}:{slug}",
                    )
                except BudgetRefused as exc:
                    raise budget_refused_error(label=LABEL, exc=exc, gathered=gathered) from exc
                try:
                    answer = self._call(client, body, hold, slug=slug)
                except SourceError as exc:
                    raise exc.with_partial(gathered) from exc
                gathered.extend(self._candidates(answer, slug=slug)[:per_category])
        return gathered[:limit]

    def worst_case_usd(self, body: Mapping[str, Any]) -> Decimal:
        """The most one call can cost: estimated input tokens, plus max_tokens of output, plus the request fee."""
        chars = sum(len(m["content"]) for m in body["messages"]) + len(json.dumps(body.get("response_format", "")))
        input_tokens = chars // _CHARS_PER_TOKEN_ESTIMATE + _MESSAGE_OVERHEAD_TOKENS
        return (
            Decimal(input_tokens) * self.usd_per_million_input / _MILLION
            + Decimal(body["max_tokens"]) * self.usd_per_million_output / _MILLION
            + self.usd_per_request
        )

    def research(self, *, title: str, summary: str, meter: SpendMeter, idempotency_key: str) -> Research:
        """One research request about a story: the cited answer and the search results behind it.

        Paid: reserved on `meter` before the call and settled after it, like a discovery search. Raises
        BudgetRefused when the meter refuses, SourceError when the call fails.
        """
        if not self.priced:
            raise SourceError(f"{LABEL}: no price is known for model {self.model!r}, so no research is bought",
                              permanent=True)
        body = self.research_body(title=title, summary=summary)
        hold = meter.reserve(provider=self.name, description=clip(f"Perplexity {self.model}: research for {title}", 300),
                             worst_case_usd=self.worst_case_usd(body), idempotency_key=idempotency_key)
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout) as client:
            answer = self._call(client, body, hold, slug="research")
        content = re.sub(r"<think>.*?</think>", "", answer["choices"][0]["message"]["content"], flags=re.S).strip()
        results = [
            {"title": str(r.get("title") or ""), "url": r["url"], "snippet": str(r.get("snippet") or ""),
             "date": r.get("date")}
            for r in answer.get("search_results") or [] if isinstance(r, dict) and isinstance(r.get("url"), str)
        ]
        if not results:
            results = [{"title": "", "url": url, "snippet": "", "date": None}
                       for url in answer.get("citations") or [] if isinstance(url, str)]
        return Research(answer=content, results=results)

    def research_body(self, *, title: str, summary: str) -> dict[str, Any]:
        """The request body of one research request about a story."""
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": RESEARCH_SYSTEM_PROMPT},
                {"role": "user", "content": RESEARCH_PROMPT.format(title=title.strip(), summary=summary.strip())},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0.2,
            "web_search_options": {"search_context_size": self.search_context_size},
        }

    def _body(self, subject: str, count: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_PROMPT.format(subject=subject, count=count, recency=self.recency)},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0.2,
            "search_recency_filter": self.recency,
            "web_search_options": {"search_context_size": self.search_context_size},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ecommerce_topics", "schema": TOPICS_SCHEMA},
            },
        }

    def _call(self, client: httpx.Client, body: dict[str, Any], hold: SpendHold, *, slug: str) -> dict[str, Any]:
        """POST one chat completion and settle its hold; the hold stays open when the cost is unknown."""
        response = paid_request(
            client, "POST", "/chat/completions", json=body, hold=hold, label=LABEL, base_url=self.base_url,
            key_setting="PERPLEXITY_API_KEY", secrets=(self.api_key,),
        )
        try:
            answer = response.json()
        except ValueError as exc:
            raise malformed_json_error(label=LABEL, what=f"the answer for {slug}") from exc
        if not isinstance(answer, dict):
            raise unexpected_shape_error(label=LABEL, what=f"the answer for {slug}", problem="not a JSON object")
        cost = self._actual_cost(answer)
        if cost is not None:
            hold.settle(cost)
        choices = answer.get("choices")
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            raise unexpected_shape_error(label=LABEL, what=f"the answer for {slug}", problem="no choices")
        message = choices[0].get("message")
        if not (isinstance(message, dict) and isinstance(message.get("content"), str)):
            raise unexpected_shape_error(label=LABEL, what=f"the answer for {slug}", problem="no message content")
        return answer

    def _actual_cost(self, answer: Mapping[str, Any]) -> Decimal | None:
        """usage.cost.total_cost as reported, else priced from the token counts, else None (unknown)."""
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return None
        cost = usage.get("cost")
        if isinstance(cost, dict) and usd(cost.get("total_cost")) is not None:
            return usd(cost.get("total_cost"))
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return (
                Decimal(prompt) * self.usd_per_million_input / _MILLION
                + Decimal(completion) * self.usd_per_million_output / _MILLION
                + self.usd_per_request
            )
        return None

    def _candidates(self, answer: Mapping[str, Any], *, slug: str) -> list[Candidate]:
        content = answer["choices"][0]["message"]["content"]
        topics = _topics_from_content(content)
        if topics is None:
            # The call worked and was paid; the model just did not keep to the schema this time.
            log.warning("Perplexity: the answer for %s did not hold the topics JSON we asked for; skipped", slug)
            return []
        search_results = [r for r in answer.get("search_results") or [] if isinstance(r, dict)]
        citations = [c for c in answer.get("citations") or [] if isinstance(c, str)]
        if not citations:
            citations = [r["url"] for r in search_results if isinstance(r.get("url"), str)]
        results_by_url = {r.get("url"): r for r in search_results}
        candidates = []
        for topic in topics:
            title = topic.get("title")
            if not isinstance(title, str) or not title.strip():
                continue
            cited = _cited_urls(topic, citations)
            cited_results = [results_by_url[u] for u in cited if u in results_by_url]
            dates = [d for d in (parse_datetime(r.get("date")) for r in cited_results) if d is not None]
            summary = topic.get("summary") if isinstance(topic.get("summary"), str) else ""
            candidates.append(
                Candidate(
                    source=self.name,
                    external_id=_external_id(title),
                    title=clip(title, 500),
                    summary=clip(summary, 1000),
                    url=cited[0] if cited else "",
                    engagement={"citations": float(len(cited))},
                    published_at=max(dates) if dates else None,
                    raw={
                        "category": slug,
                        "title": title,
                        "summary": summary,
                        "citations": cited,
                        "search_results": cited_results,
                        "response_id": answer.get("id"),
                        "model": answer.get("model"),
                        "created": answer.get("created"),
                    },
                )
            )
        return candidates


def _topics_from_content(content: str) -> list[dict[str, Any]] | None:
    """The `topics` list from the model's JSON answer (tolerating a Markdown fence or leading prose)."""
    text = re.sub(r"<think>.*?</think>", "", content, flags=re.S).strip()
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        return None
    try:
        parsed = json.loads(text[start : end + 1])
    except ValueError:
        return None
    topics = parsed.get("topics") if isinstance(parsed, dict) else None
    if not isinstance(topics, list):
        return None
    return [t for t in topics if isinstance(t, dict)]


def _cited_urls(topic: Mapping[str, Any], citations: list[str]) -> list[str]:
    """The URLs a topic cites, by 1-based index into `citations` (as in [1]) and by URL, in order, once each."""
    urls: list[str] = []
    for index in topic.get("source_indices") or []:
        if isinstance(index, int) and not isinstance(index, bool) and 1 <= index <= len(citations):
            urls.append(citations[index - 1])
    for url in topic.get("source_urls") or []:
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            urls.append(url)
    return list(dict.fromkeys(urls))


def _external_id(title: str) -> str:
    # Perplexity topics have no id of their own; the same headline on a later run is the same topic.
    normalised = " ".join(re.findall(r"[a-z0-9]+", title.lower()))
    return "pplx-" + hashlib.sha256(normalised.encode()).hexdigest()[:16]
