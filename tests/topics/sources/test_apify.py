from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from tests.fakes.apify_api import FakeApifyAPI, make_tiktok_item
from tests.topics.sources.recording_meter import RecordingMeter
from topics.sources.apify import DEFAULT_ACTOR_ID, DEFAULT_BASE_URL, ApifySource
from topics.sources.base import NullMeter, SourceError

TOKEN = "apify_api_LiveSecretToken8d7f6e5c"


@pytest.fixture
def fake() -> Iterator[FakeApifyAPI]:
    with FakeApifyAPI(token=TOKEN) as server:
        yield server


def source_for(fake: FakeApifyAPI, **overrides: object) -> ApifySource:
    options: dict = {"token": TOKEN, "base_url": fake.base_url, "retry_delay": timedelta(milliseconds=1)}
    options.update(overrides)
    return ApifySource(**options)


def meter_for(fake: FakeApifyAPI, **options: object) -> RecordingMeter:
    return RecordingMeter(count_requests=lambda: len(fake.requests), **options)


def fetch_error(source: ApifySource, meter: RecordingMeter | None = None) -> SourceError:
    with pytest.raises(SourceError) as caught:
        source.fetch(limit=10, meter=meter or NullMeter())
    return caught.value


def test_it_runs_the_actor_waits_for_it_and_maps_the_dataset_items(fake: FakeApifyAPI) -> None:
    created = datetime(2025, 10, 3, 18, 30, tzinfo=UTC)
    fake.items = [
        make_tiktok_item(
            id="7301122334455667788",
            text="Packaging hack that cut our returns in half\n#shopify #smallbusiness",
            plays=900_000,
            likes=64_000,
            comments=1_100,
            shares=5_200,
            author="boxlab",
            created=created,
        )
    ]
    fake.polls_before_finish = 1

    [video] = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert video.source == "apify"
    assert video.external_id == "7301122334455667788"
    assert video.title == "Packaging hack that cut our returns in half"
    assert video.summary == "Packaging hack that cut our returns in half #shopify #smallbusiness"
    assert video.url == "https://www.tiktok.com/@boxlab/video/7301122334455667788"
    assert video.engagement == {"views": 900000.0, "likes": 64000.0, "comments": 1100.0, "shares": 5200.0}
    assert video.published_at == created
    assert video.raw["authorMeta"]["name"] == "boxlab"
    assert video.raw["_actor"] == DEFAULT_ACTOR_ID
    assert json.loads(json.dumps(video.raw)) == video.raw


def test_it_starts_the_run_with_its_input_the_charge_cap_and_the_limit(fake: FakeApifyAPI) -> None:
    source = source_for(fake, actor_input={"searchQueries": ["tiktok shop seller"]}, max_charge_usd="0.75")

    source.fetch(limit=7, meter=NullMeter())

    [start] = fake.started_runs()
    assert start.path == "/v2/actors/clockworks~tiktok-scraper/runs"
    assert start.headers["authorization"] == "Bearer ***"
    assert start.json == {"searchQueries": ["tiktok shop seller"]}
    assert start.query["maxTotalChargeUsd"] == ["0.75"]
    assert start.query["maxItems"] == ["7"]
    paths = [r.path for r in fake.requests]
    assert paths[1].startswith("/v2/actor-runs/") and paths[-1].endswith("/items")


def test_it_maps_another_actors_items_through_a_configured_field_mapping(fake: FakeApifyAPI) -> None:
    fake.items = [
        {
            "id": "1860000000000000001",
            "text": "Amazon just cut FBA fees for low-price items",
            "url": "https://x.com/sellerbob/status/1860000000000000001",
            "createdAt": "Fri Nov 24 17:49:36 +0000 2023",
            "likeCount": 320,
            "retweetCount": "41",
            "author": {"userName": "sellerbob"},
        },
        {"id": "no-title-here", "url": "https://x.com/a/status/2"},
    ]
    field_map = {
        "external_id": "id",
        "title": "text",
        "summary": "text",
        "url": "url",
        "published_at": "createdAt",
        "engagement": {"likes": "likeCount", "reposts": "retweetCount", "followers": "author.followers"},
    }
    source = source_for(fake, actor_id="apidojo/tweet-scraper", field_map=field_map)

    [post] = source.fetch(limit=10, meter=NullMeter())

    assert post.title == "Amazon just cut FBA fees for low-price items"
    assert post.engagement == {"likes": 320.0, "reposts": 41.0}
    assert post.published_at == datetime(2023, 11, 24, 17, 49, 36, tzinfo=UTC)
    assert fake.started_runs()[0].json == {}  # the TikTok default input is not sent to another actor


def test_it_reserves_the_charge_cap_before_starting_and_settles_the_runs_usage(fake: FakeApifyAPI) -> None:
    fake.usage_total_usd = 0.0427
    meter = meter_for(fake)

    source_for(fake).fetch(limit=10, meter=meter, run_token="r9")

    [hold] = meter.holds
    assert hold.requests_before == 0
    assert (hold.provider, hold.worst_case_usd) == ("apify", Decimal("0.50"))
    assert hold.idempotency_key == "discover:apify:r9:clockworks/tiktok-scraper"
    assert (hold.state, hold.actual_usd) == ("settled", Decimal("0.0427"))


def test_a_refused_budget_starts_no_run(fake: FakeApifyAPI) -> None:
    error = fetch_error(source_for(fake), meter_for(fake, refuse_after=0))

    assert error.permanent and "budget" in error.message
    assert fake.requests == []


def test_starting_a_run_is_never_retried_and_an_unknown_outcome_keeps_the_hold(fake: FakeApifyAPI) -> None:
    fake.fail_next(500, path="/v2/actors/")
    meter = meter_for(fake)

    error = fetch_error(source_for(fake, max_retries=3), meter)

    assert not error.permanent and "HTTP 500" in error.message
    assert len(fake.started_runs()) == 1
    assert meter.holds[0].state == "open"


def test_reading_the_results_is_retried(fake: FakeApifyAPI) -> None:
    fake.fail_next(503, path="/v2/datasets/")

    videos = source_for(fake, max_retries=2).fetch(limit=10, meter=NullMeter())

    assert len(videos) == 3
    assert len([r for r in fake.requests if r.path.endswith("/items")]) == 2


def test_a_failed_run_settles_its_cost_and_is_a_transient_error(fake: FakeApifyAPI) -> None:
    fake.final_status = "FAILED"
    fake.usage_total_usd = 0.011
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert not error.permanent and error.message.endswith("ended FAILED")
    assert (meter.holds[0].state, meter.holds[0].actual_usd) == ("settled", Decimal("0.011"))


def test_a_run_that_outlasts_the_wait_is_aborted_and_its_hold_kept(fake: FakeApifyAPI) -> None:
    fake.polls_before_finish = 1000
    meter = meter_for(fake)

    error = fetch_error(source_for(fake, wait_seconds=0), meter)

    assert "did not finish within 0 s and was aborted" in error.message
    assert fake.requests[-1].path.endswith("/abort")
    assert meter.holds[0].state == "open"


@pytest.mark.parametrize(
    ("status", "permanent", "hold_state"),
    [(401, True, "released"), (403, True, "released"), (402, True, "released"), (429, False, "released")],
)
def test_a_refused_start_is_classified_and_releases_the_hold(
    fake: FakeApifyAPI, status: int, permanent: bool, hold_state: str
) -> None:
    fake.fail_next(status, path="/v2/actors/")
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert error.permanent is permanent
    assert error.message.startswith("Apify: ") and f"HTTP {status}" in error.message
    assert meter.holds[0].state == hold_state


def test_a_rejected_token_names_the_setting_and_never_the_token(fake: FakeApifyAPI) -> None:
    fake.fail_next(401, json_body={"error": {"type": "token-not-valid", "message": f"Token {TOKEN} is not valid"}})

    error = fetch_error(source_for(fake))

    assert error.permanent and "APIFY_TOKEN" in error.message
    assert TOKEN not in str(error)


def test_a_missing_actor_is_a_permanent_error_naming_it(fake: FakeApifyAPI) -> None:
    fake.missing_actors.add("someone/gone-actor")

    error = fetch_error(source_for(fake, actor_id="someone/gone-actor"))

    assert error.permanent
    assert "actor 'someone/gone-actor' was not found (HTTP 404); check APIFY_ACTOR_ID" in error.message


def test_a_down_service_is_transient_and_releases_the_hold(closed_port_url: str) -> None:
    meter = RecordingMeter()

    error = fetch_error(ApifySource(token=TOKEN, base_url=closed_port_url), meter)

    assert not error.permanent
    assert error.message.startswith("Apify: cannot reach 127.0.0.1:")
    assert meter.holds[0].state == "released"


def test_malformed_json_is_transient_and_keeps_the_hold(fake: FakeApifyAPI) -> None:
    fake.malformed_next(path="/v2/actors/")
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert not error.permanent and "was not valid JSON" in error.message
    assert meter.holds[0].state == "open"


def test_an_unexpected_shape_is_permanent_and_keeps_the_hold(fake: FakeApifyAPI) -> None:
    fake.unexpected_next(path="/v2/actors/")
    meter = meter_for(fake)

    error = fetch_error(source_for(fake), meter)

    assert error.permanent and "unexpected shape" in error.message
    assert meter.holds[0].state == "open"


def test_from_settings_honours_the_base_url_override_actor_and_cap(fake: FakeApifyAPI) -> None:
    settings = SimpleNamespace(
        APIFY_TOKEN=TOKEN,
        APIFY_BASE_URL=fake.base_url,
        APIFY_ACTOR_ID="clockworks/tiktok-scraper",
        APIFY_ACTOR_INPUT={"hashtags": ["amazonseller"], "resultsPerPage": 5},
        APIFY_MAX_CHARGE_USD="0.25",
    )

    source = ApifySource.from_settings(settings)
    videos = source.fetch(limit=5, meter=NullMeter())

    assert len(videos) == 3
    assert fake.started_runs()[0].json == {"hashtags": ["amazonseller"], "resultsPerPage": 5}
    assert source.max_charge_usd == Decimal("0.25")
    default = ApifySource.from_settings(SimpleNamespace())
    assert (default.base_url, default.max_charge_usd, default.is_configured()) == (
        DEFAULT_BASE_URL,
        Decimal("0.50"),
        False,
    )
