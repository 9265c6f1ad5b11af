"""Plan a batch without spending anything: pick the topics and estimate what drafting them costs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.conf import settings

from topics.material import Material, research_enabled, research_source, stored_material
from topics.models import SourceDocument, Topic
from topics.selection import LeftOut, covered_categories, select_topics

from .pricing import price_for, to_money_up, worst_case_cost
from .prompts import build_request, estimate_input_tokens, fence_sources, fence_topic, number_sources


@dataclass(frozen=True)
class PlannedItem:
    topic: Topic
    estimated_cost_usd: Decimal
    material_pending: bool = False  # its material is not fetched yet: estimated at the MATERIAL_MAX_TOKENS cap


@dataclass(frozen=True)
class Plan:
    items: list[PlannedItem]
    model: str
    estimated_cost_usd: Decimal
    # Candidates selection left out, by reason (a plan of given topics, as on resume, leaves nothing out).
    left_out: LeftOut = field(default_factory=LeftOut)

    @property
    def material_pending(self) -> int:
        """How many topics' material is estimated rather than counted (not fetched yet)."""
        return sum(1 for item in self.items if item.material_pending)

    @property
    def topics(self) -> list[Topic]:
        return [item.topic for item in self.items]

    @property
    def categories(self) -> list[str]:
        return covered_categories(self.topics)


def topic_message(topic: Topic, material: Material | None = None) -> str:
    """The user message of a draft: the topic, then its numbered sources (none without material)."""
    sources = number_sources(documents=material.readable if material else [],
                             max_tokens=settings.MATERIAL_MAX_TOKENS)
    return fence_topic(
        title=topic.title,
        summary=topic.summary,
        url=topic.url,
        category=topic.category.name,
        sources=list(topic.sources or [topic.source]),
    ) + "\n\n" + fence_sources(sources)


def estimate_topics(*, topics: Sequence[Topic], model: str, max_tokens: int, batch_api: bool = False) -> Plan:
    """Upper-bound cost of drafting `topics`, computed locally (no network call): for a preview only.

    Material already fetched is counted as the prompt will carry it; a topic whose material is not fetched yet is
    counted at the full MATERIAL_MAX_TOKENS, and, with research on, at the research request's worst case too.
    `batch_api`: drafted as one Message Batch (economy), at the batch price.
    """
    price = price_for(model)
    materials = stored_material(topics=topics)
    research = research_enabled()
    items = []
    for topic in topics:
        material = materials[topic.pk]
        request = build_request(model=model, max_tokens=max_tokens, topic_message=topic_message(topic, material))
        input_tokens = estimate_input_tokens(request)
        if material.pending:
            input_tokens += settings.MATERIAL_MAX_TOKENS
        cost = worst_case_cost(input_tokens=input_tokens, max_tokens=max_tokens, price=price,
                               batch_api=batch_api)
        if research and not any(d.kind == SourceDocument.Kind.RESEARCH for d in material.documents):
            cost = to_money_up(cost + research_worst_case(topic))
        items.append(PlannedItem(topic=topic, estimated_cost_usd=cost, material_pending=material.pending))
    return Plan(items=items, model=model, estimated_cost_usd=sum((i.estimated_cost_usd for i in items), Decimal(0)))


def research_worst_case(topic: Topic) -> Decimal:
    """The most the topic's research request can cost (what it will reserve), or 0 when it cannot be priced."""
    source = research_source()
    if not source.priced:
        return Decimal(0)
    return source.worst_case_usd(source.research_body(title=topic.title, summary=topic.summary))


def plan_batch(
    *, size: int, include_new: bool = False, topic_ids: Sequence[int] | None = None, model: str | None = None
) -> Plan:
    """Select up to `size` diverse topics and estimate the cost of drafting them."""
    selection = select_topics(size=size, include_new=include_new, topic_ids=topic_ids)
    plan = estimate_topics(
        topics=selection.topics, model=model or settings.ANTHROPIC_MODEL, max_tokens=settings.ANTHROPIC_MAX_TOKENS
    )
    return replace(plan, left_out=selection.left_out)
