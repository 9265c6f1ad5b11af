"""Plan a batch without spending anything: pick the topics and estimate what drafting them costs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from topics.models import Topic
from topics.selection import candidate_pool, covered_categories, select_diverse

from .pricing import price_for, worst_case_cost
from .prompts import build_request, estimate_input_tokens, fence_topic


@dataclass(frozen=True)
class PlannedItem:
    topic: Topic
    estimated_cost_usd: Decimal


@dataclass(frozen=True)
class Plan:
    items: list[PlannedItem]
    model: str
    estimated_cost_usd: Decimal

    @property
    def topics(self) -> list[Topic]:
        return [item.topic for item in self.items]

    @property
    def categories(self) -> list[str]:
        return covered_categories(self.topics)


def topic_message(topic: Topic) -> str:
    return fence_topic(
        title=topic.title,
        summary=topic.summary,
        url=topic.url,
        category=topic.category.name,
        sources=list(topic.sources or [topic.source]),
    )


def estimate_topics(*, topics: Sequence[Topic], model: str, max_tokens: int, batch_api: bool = False) -> Plan:
    """Upper-bound cost of drafting `topics`, computed locally (no network call): for a preview only.
    `batch_api`: drafted as one Message Batch (economy), at the batch price."""
    price = price_for(model)
    items = []
    for topic in topics:
        request = build_request(model=model, max_tokens=max_tokens, topic_message=topic_message(topic))
        cost = worst_case_cost(input_tokens=estimate_input_tokens(request), max_tokens=max_tokens, price=price,
                               batch_api=batch_api)
        items.append(PlannedItem(topic=topic, estimated_cost_usd=cost))
    return Plan(items=items, model=model, estimated_cost_usd=sum((i.estimated_cost_usd for i in items), Decimal(0)))


def plan_batch(
    *, size: int, include_new: bool = False, topic_ids: Sequence[int] | None = None, model: str | None = None
) -> Plan:
    """Select up to `size` diverse topics and estimate the cost of drafting them."""
    # Topics an editor picked by hand are taken as meant, even a story drafted before; only automatic
    # selection from the whole pool steers clear of recently drafted stories.
    topics = select_diverse(
        pool=candidate_pool(include_new=include_new, topic_ids=topic_ids),
        size=size,
        avoid_titles=[] if topic_ids else None,
    )
    return estimate_topics(
        topics=topics, model=model or settings.ANTHROPIC_MODEL, max_tokens=settings.ANTHROPIC_MAX_TOKENS
    )
