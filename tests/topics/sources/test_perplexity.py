from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from tests.fakes.perplexity_api import FakePerplexityAPI, make_search_result, make_topic
from tests.topics.sources.recording_meter import RecordingMeter
from topics.sources.base import NullMeter, SourceError
from topics.sources.perplexity import DEFAULT_BASE_URL, DEFAULT_CATEGORIES, PerplexitySource

KEY = "pplx-Zq8secret-key-4c1d9e"
ONE_CATEGORY = {"shipping_logistics": "shipping and logistics"}


@pytest.fixture
def fake() -> Iterator[FakePerplexityAPI]:
    with FakePerplexityAPI(api_key=KEY) as server:
        yield server


def source_for(fake: FakePerplexityAPI, **overrides: object) -> PerplexitySource:
    options: dict = {"api_key": KEY, "base_url": fake.base_url, "categories": ONE_CATEGORY}
    options.update(overrides)
    return PerplexitySource(**options)


def meter_for(fake: FakePerplexityAPI, **options: object) -> RecordingMeter:
    return RecordingMeter(count_requests=lambda: len(fake.requests), **options)


def fetch_error(source: PerplexitySource, meter: RecordingMeter | None = None) -> SourceError:
    with pytest.raises(SourceError) as caught:
        source.fetch(limit=10, meter=meter or NullMeter())
    return caught.value


def test_it_turns_an_answer_into_topics_that_keep_their_citations(fake: FakePerplexityAPI) -> None:
    citations = ["https://news.example.com/usps-2026", "https://forum.example.com/t/1", "https://blog.example.com/x"]
    fake.answer_next(
        topics=[
            make_topic("USPS raises Ground Advantage rates", summary="Sellers brace for it.", sources=[1, 3]),
            make_topic("UPS drops surcharges for small shippers", sources=[2]),
        ],
        citations=citations,
        search_results=[
            make_search_result(citations[0], title="USPS rates", date="2025-09-28"),
            make_search_result(citations[1], date=None),
            make_search_result(citations[2], date="2025-10-02"),
        ],
    )

    first, second = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert first.source == "perplexity"
    assert first.title == "USPS raises Ground Advantage rates"
    assert first.summary == "Sellers brace for it."
    assert first.url == "https://news.example.com/usps-2026"
    assert first.engagement == {"citations": 2.0}
    assert first.published_at == datetime(2025, 10, 2, tzinfo=UTC)
    assert first.raw["citations"] == [citations[0], citations[2]]
    assert [r["url"] for r in first.raw["search_results"]] == [citations[0], citations[2]]
    assert first.raw["category"] == "shipping_logistics"
    assert json.loads(json.dumps(first.raw)) == first.raw
    assert second.raw["citations"] == [citations[1]]
    assert second.published_at is None


def test_the_same_headline_gets_the_same_external_id_on_a_later_run(fake: FakePerplexityAPI) -> None:
    fake.answer_next(topics=[make_topic("Amazon FBA fees go up in January")])
    fake.answer_next(topics=[make_topic("Amazon FBA fees go up in January!")])

    [first] = source_for(fake).fetch(limit=10, meter=NullMeter())
    [again] = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert first.external_id == again.external_id
    assert first.external_id.startswith("pplx-")


def test_it_asks_sonar_for_json_topics_once_per_category(fake: FakePerplexityAPI) -> None:
    source_for(fake, categories=DEFAULT_CATEGORIES).fetch(limit=40, meter=NullMeter())

    assert len(fake.requests) == 8
    request = fake.requests[0]
    assert request.path == "/chat/completions"
    assert request.headers["Authorization"] == "Bearer ***"
    body = request.json
    assert body["model"] == "sonar"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["topics"]
    assert "shipping, fulfilment" in body["messages"][1]["content"]
    assert "List up to 5" in body["messages"][1]["content"]


def test_it_spreads_the_limit_over_the_categories(fake: FakePerplexityAPI) -> None:
    topics = source_for(fake, categories=DEFAULT_CATEGORIES).fetch(limit=4, meter=NullMeter())

    assert len(topics) == 4
    assert len(fake.requests) == 4
    assert all("List up to 1 " in r.json["messages"][1]["content"] for r in fake.requests)
    assert [t.raw["category"] for t in topics] == list(DEFAULT_CATEGORIES)[:4]


def test_it_reserves_before_each_call_and_settles_with_the_reported_cost(fake: FakePerplexityAPI) -> None:
    meter = meter_for(fake)
    categories = dict(list(DEFAULT_CATEGORIES.items())[:2])

    source_for(fake, categories=categories).fetch(limit=10, meter=meter, run_token="run42")

    assert [h.requests_before for h in meter.holds] == [0, 1]
    assert [h.idempotency_key for h in meter.holds] == [
        "discover:perplexity:run42:shipping_logistics",
        "discover:perplexity:run42:pricing_margins",
    ]
    assert all(h.provider == "perplexity" and h.state == "settled" for h in meter.holds)
    assert [h.actual_usd for h in meter.holds] == [Decimal(str(cost)) for cost in fake.costs]
    assert all(h.actual_usd <= h.worst_case_usd for h in meter.holds)


def test_the_worst_case_counts_max_tokens_of_output_and_the_request_fee(fake: FakePerplexityAPI) -> None:
    meter = meter_for(fake)

    source_for(fake, max_tokens=2000).fetch(limit=10, meter=meter)

    # $1/M output tokens x 2000 + $5 per 1000 requests, plus the input estimate.
    assert meter.holds[0].worst_case_usd > Decimal("0.002") + Decimal("0.005")
    assert meter.holds[0].worst_case_usd < Decimal("0.01")


def test_it_prices_the_tokens_when_the_answer_has_no_cost(fake: FakePerplexityAPI) -> None:
    fake.answer_next(topics=[make_topic("A topic")], usage={"prompt_tokens": 1000, "completion_tokens": 500})
    meter = meter_for(fake)

    source_for(fake).fetch(limit=10, meter=meter)

    assert meter.holds[0].actual_usd == Decimal("0.0065")


def test_it_skips_an_answer_that_is_not_the_json_it_asked_for(fake: FakePerplexityAPI) -> None:
    fake.answer_next(
        content="Here is what sellers discuss: shipping is expensive [1].", citations=["https://a.example"]
    )
    meter = meter_for(fake)
    categories = dict(list(DEFAULT_CATEGORIES.items())[:2])

    topics = source_for(fake, categories=categories).fetch(limit=10, meter=meter)

    assert {t.raw["category"] for t in topics} == {"pricing_margins"}
    assert [h.state for h in meter.holds] == ["settled", "settled"]


def test_it_reads_json_wrapped_in_a_markdown_fence(fake: FakePerplexityAPI) -> None:
    fake.answer_next(content='```json\n{"topics": [{"title": "Fenced", "summary": "", "source_indices": []}]}\n```')

    [topic] = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert topic.title == "Fenced"
    assert topic.url == ""


def test_a_refused_budget_stops_with_a_permanent_error_keeping_what_was_paid_for(fake: FakePerplexityAPI) -> None:
    meter = meter_for(fake, refuse_after=2)

    error = fetch_error(source_for(fake, categories=DEFAULT_CATEGORIES), meter)

    assert error.permanent
    assert "budget" in error.message
    assert len(fake.requests) == 2
    assert {t.raw["category"] for t in error.partial} == {"shipping_logistics", "pricing_margins"}


@pytest.mark.parametrize(
    ("status", "permanent", "hold_state"),
    [
        (401, True, "released"),
        (403, True, "released"),
        (400, True, "released"),
        (503, False, "released"),
        (500, False, "open"),  # the work may have been done: the reservation stays
    ],
)
def test_an_error_status_is_classified_and_releases_only_what_certainly_cost_nothing(
    fake: FakePerplexityAPI, status: int, permanent: bool, hold_state: str
) -> None:
    fake.fail_next(status)
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert error.permanent is permanent
    assert f"HTTP {status}" in error.message and error.message.startswith("Perplexity: ")
    assert meter.holds[0].state == hold_state


def test_a_rejected_key_names_the_setting_and_never_the_key(fake: FakePerplexityAPI) -> None:
    fake.fail_next(401, json_body={"error": {"message": f"Invalid API key: {KEY}", "type": "invalid_api_key"}})

    error = fetch_error(source_for(fake))

    assert "PERPLEXITY_API_KEY" in error.message
    assert KEY not in str(error)


def test_a_429_is_transient_carries_retry_after_and_releases_the_hold(fake: FakePerplexityAPI) -> None:
    fake.fail_next(429, headers={"Retry-After": "12"})
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert not error.permanent
    assert error.retry_after == 12.0
    assert "rate-limited (HTTP 429); retry after 12 s" in error.message
    assert meter.holds[0].state == "released"


def test_a_down_service_is_transient_and_releases_the_hold(closed_port_url: str) -> None:
    meter = RecordingMeter()
    source = PerplexitySource(api_key=KEY, base_url=closed_port_url, categories=ONE_CATEGORY)

    error = fetch_error(source, meter)

    assert not error.permanent
    assert error.message.startswith("Perplexity: cannot reach 127.0.0.1:")
    assert meter.holds[0].state == "released"


def test_malformed_json_is_transient_and_keeps_the_hold(fake: FakePerplexityAPI) -> None:
    fake.malformed_next()
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert not error.permanent
    assert error.message == "Perplexity: the answer for shipping_logistics was not valid JSON"
    assert meter.holds[0].state == "open"


def test_an_unexpected_shape_is_permanent(fake: FakePerplexityAPI) -> None:
    fake.unexpected_next()

    error = fetch_error(source_for(fake))

    assert error.permanent
    assert error.message == "Perplexity: the answer for shipping_logistics had an unexpected shape (no choices)"


def test_from_settings_honours_the_base_url_override_and_defaults(fake: FakePerplexityAPI) -> None:
    settings = SimpleNamespace(
        PERPLEXITY_API_KEY=KEY, PERPLEXITY_BASE_URL=fake.base_url, PERPLEXITY_CATEGORIES=["ads_marketing"]
    )

    source = PerplexitySource.from_settings(settings)
    topics = source.fetch(limit=2, meter=NullMeter())

    assert len(topics) == 2 and len(fake.requests) == 1
    assert source.categories == {"ads_marketing": DEFAULT_CATEGORIES["ads_marketing"]}
    default = PerplexitySource.from_settings(SimpleNamespace())
    assert (default.base_url, default.model, default.is_configured()) == (DEFAULT_BASE_URL, "sonar", False)


def test_a_model_without_a_price_makes_no_call(fake: FakePerplexityAPI) -> None:
    error = fetch_error(source_for(fake, model="sonar-deep-research"))

    assert error.permanent
    assert "no price" in error.message and "sonar-deep-research" in error.message
    assert fake.requests == []


def test_a_dearer_model_reserves_at_its_own_price(fake: FakePerplexityAPI) -> None:
    body = source_for(fake)._body("shipping", 3)

    sonar = source_for(fake, model="sonar").worst_case_usd(body)
    pro = source_for(fake, model="sonar-pro").worst_case_usd(body)

    # sonar-pro output costs 15 times sonar's, and its request fee is higher: its reservation must be too.
    assert pro > sonar
    assert pro >= Decimal(body["max_tokens"]) * Decimal("15") / Decimal(1_000_000) + Decimal("0.006")


def test_configured_prices_let_an_unlisted_model_run(fake: FakePerplexityAPI) -> None:
    source = source_for(
        fake, model="sonar-next", usd_per_million_input="2", usd_per_million_output="9", usd_per_request="0.01"
    )

    assert source.priced
    assert (source.usd_per_million_input, source.usd_per_million_output, source.usd_per_request) == (
        Decimal("2"), Decimal("9"), Decimal("0.01")
    )
