"""The dry run's estimate and source material (batches/planning.py): material already fetched is counted as the
prompt will carry it; material not fetched yet is estimated at its cap, and the dry run says so."""
from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from batches.planning import estimate_topics, research_worst_case
from batches.pricing import price_for, worst_case_cost
from topics.material import gather_material

pytestmark = pytest.mark.django_db
USPS = "/news/usps-ground-advantage-2027"
MODEL = "claude-sonnet-4-6"


def estimate(topics, **options):
    return estimate_topics(topics=topics, model=MODEL, max_tokens=2048, **options)


@pytest.fixture
def linked_topic(web_pages, make_topic):
    return make_topic("USPS rates rise", category="shipping_logistics", url=web_pages.url(USPS))


def test_a_topic_without_sources_is_estimated_from_its_prompt_alone(make_topic):
    plan = estimate([make_topic("No link at all", category="shipping_logistics")])

    assert plan.material_pending == 0 and not plan.items[0].material_pending


def test_material_not_fetched_yet_is_estimated_at_the_material_cap(linked_topic, make_topic, settings):
    bare = make_topic("No link at all", category="pricing_margins")
    settings.MATERIAL_MAX_TOKENS = 6000
    with_cap = estimate([linked_topic, bare])
    settings.MATERIAL_MAX_TOKENS = 1000
    smaller_cap = estimate([linked_topic, bare])

    assert with_cap.material_pending == 1 and with_cap.items[0].material_pending
    # 5,000 tokens fewer, at the dearest input rate, for the one topic not fetched yet.
    five_thousand = worst_case_cost(input_tokens=5000, max_tokens=0, price=price_for(MODEL))
    assert with_cap.items[0].estimated_cost_usd - smaller_cap.items[0].estimated_cost_usd == five_thousand
    assert with_cap.items[1].estimated_cost_usd == smaller_cap.items[1].estimated_cost_usd


def test_material_already_fetched_is_counted_as_the_prompt_will_carry_it(linked_topic, web_pages):
    before = estimate([linked_topic])
    gather_material(topic=linked_topic)
    after = estimate([linked_topic])

    assert after.material_pending == 0
    bare_prompt = estimate([linked_topic.__class__(title=linked_topic.title, category=linked_topic.category)])
    assert bare_prompt.estimated_cost_usd < after.estimated_cost_usd < before.estimated_cost_usd
    assert web_pages.requests_for(USPS) == 1  # planning itself fetched nothing


def test_the_estimate_counts_research_while_the_topic_has_none(linked_topic, settings):
    settings.PERPLEXITY_API_KEY = "pplx-test-key"
    without = estimate([linked_topic])
    settings.RESEARCH_WITH_PERPLEXITY = True
    with_research = estimate([linked_topic])

    research = research_worst_case(linked_topic)
    assert research > Decimal("0.005")  # the request fee alone
    assert with_research.estimated_cost_usd - without.estimated_cost_usd == research


def test_the_dry_run_says_when_it_estimates_material_not_fetched_yet(linked_topic, settings):
    settings.MATERIAL_MAX_TOKENS = 6000
    out = io.StringIO()
    call_command("runbatch", "--dry-run", "--size", "1", stdout=out)

    assert ("Source material: not fetched yet for 1 of the 1 topics; the estimate counts the full 6,000 tokens of "
            "material for each of them.") in out.getvalue()


def test_the_dry_run_says_fetched_material_is_counted(linked_topic):
    gather_material(topic=linked_topic)
    out = io.StringIO()
    call_command("runbatch", "--dry-run", "--size", "1", stdout=out)

    assert "Source material: what is already fetched for these topics is counted in the estimate." in out.getvalue()


def test_dry_run_json_items_carry_empty_sources_and_flags(linked_topic):
    out = io.StringIO()
    call_command("runbatch", "--dry-run", "--json", "--size", "1", stdout=out)

    item = json.loads(out.getvalue())["items"][0]
    assert (item["sources"], item["flags"]) == ([], [])
