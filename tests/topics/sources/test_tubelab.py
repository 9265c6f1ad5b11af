from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db.models import Sum

from batches.metering import LedgerMeter
from batches.models import CostLedgerEntry
from tests.fakes.tubelab_api import FakeTubeLabAPI, make_video
from tests.topics.sources.recording_meter import RecordingMeter
from topics.material import AlreadyReserved
from topics.sources.base import NullMeter, SourceError
from topics.sources.tubelab import DEFAULT_BASE_URL, RateLimiter, TubeLabSource

KEY = "tl-live-7Hq2secret-key-0b9a"


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeTubeLabAPI]:
    with FakeTubeLabAPI(api_key=KEY, clock=clock) as server:
        yield server


def source_for(fake: FakeTubeLabAPI, clock: FakeClock, **overrides: object) -> TubeLabSource:
    options: dict = {
        "api_key": KEY,
        "base_url": fake.base_url,
        "queries": ["amazon fba"],
        "clock": clock,
        "sleep": clock.sleep,
    }
    options.update(overrides)
    return TubeLabSource(**options)


def fetch_error(source: TubeLabSource, meter: RecordingMeter | None = None, *, limit: int = 10) -> SourceError:
    with pytest.raises(SourceError) as caught:
        source.fetch(limit=limit, meter=meter or NullMeter())
    return caught.value


def test_it_fetches_outlier_videos_and_normalises_them(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    fake.videos["amazon fba"] = [
        make_video(
            id="dQw4w9WgXcQ",
            title="I tried Amazon FBA for 30 days",
            channel="Seller Diaries",
            views="480000",  # YouTube sends counts as strings; TubeLab may too
            ratio=12.5,
            likes=21_000,
            comments=1_400,
            published_at="2025-10-01T16:00:05Z",
        )
    ]

    [video] = source_for(fake, clock).fetch(limit=10, meter=NullMeter())

    assert video.source == "tubelab"
    assert video.external_id == "dQw4w9WgXcQ"
    assert video.title == "I tried Amazon FBA for 30 days"
    assert video.url == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    assert video.engagement == {"views": 480000.0, "outlier": 12.5, "likes": 21000.0, "comments": 1400.0, "zscore": 4.2}
    assert video.published_at == datetime(2025, 10, 1, 16, 0, 5, tzinfo=UTC)
    assert "Seller Diaries" in video.summary and "12.5x" in video.summary
    assert video.raw["query"] == "amazon fba"
    assert video.raw["statistics"]["viewCount"] == "480000"
    assert json.loads(json.dumps(video.raw)) == video.raw


def test_it_sends_the_api_key_header_and_an_outlier_search(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    source_for(fake, clock, per_query=15).fetch(limit=10, meter=NullMeter())

    [request] = fake.requests
    assert request.path == "/v1/search/outliers"
    assert request.headers["Authorization"] == "Api-Key ***"
    assert request.query["query"] == ["amazon fba"]
    assert request.query["size"] == ["15"]
    assert request.query["sortBy"] == ["averageViewsRatio"]
    assert request.query["type"] == ["video"]
    assert "publishedAtFrom" in request.query


def test_it_drops_weak_and_negative_outliers_and_counts_a_video_once(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    shared = make_video(id="sharedvideo", ratio=6.0)
    fake.videos["amazon fba"] = [shared, make_video(id="weak", ratio=1.4), make_video(id="neg", ratio=3, negative=True)]
    fake.videos["shopify store"] = [shared, make_video(id="strong", ratio=20.0)]

    videos = source_for(fake, clock, queries=["amazon fba", "shopify store"], min_outlier=2.0).fetch(
        limit=10, meter=NullMeter()
    )

    assert [v.external_id for v in videos] == ["strong", "sharedvideo"]


def test_it_keeps_to_ten_requests_a_minute_without_really_sleeping(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    queries = [f"ecommerce query {n}" for n in range(12)]
    started = time.monotonic()

    source_for(fake, clock, queries=queries).fetch(limit=1000, meter=NullMeter())

    assert len(fake.requests) == 12
    assert fake.rate_limited == 0
    assert sum(clock.sleeps) == pytest.approx(60.0)
    assert time.monotonic() - started < 5


def test_the_rate_limiter_waits_until_the_oldest_call_leaves_the_window(clock: FakeClock) -> None:
    limiter = RateLimiter(max_calls=2, period=60.0, clock=clock, sleep=clock.sleep)

    waits = [limiter.acquire(), limiter.acquire()]
    clock.now += 15
    waits.append(limiter.acquire())

    assert waits == [0.0, 0.0, 45.0]


def test_it_reserves_the_credits_before_each_search_and_settles_them(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    meter = RecordingMeter(count_requests=lambda: len(fake.requests))

    source_for(fake, clock, queries=["amazon fba", "etsy seller"], usd_per_credit="0.02").fetch(
        limit=100, meter=meter, run_token="r1"
    )

    assert [h.requests_before for h in meter.holds] == [0, 1]
    assert [h.idempotency_key for h in meter.holds] == [
        "discover:tubelab:r1:amazon fba",
        "discover:tubelab:r1:etsy seller",
    ]
    assert all(h.worst_case_usd == Decimal("0.10") for h in meter.holds)  # 5 credits x $0.02
    assert [(h.state, h.actual_usd) for h in meter.holds] == [("settled", Decimal("0.10"))] * 2


@pytest.mark.django_db
def test_a_query_given_twice_is_searched_once_and_its_cost_is_on_the_ledger(fake: FakeTubeLabAPI,
                                                                           clock: FakeClock) -> None:
    source = source_for(fake, clock, queries=["shopify store", "amazon fba", " shopify store"])

    source.fetch(limit=100, meter=LedgerMeter())

    assert [r.query["query"] for r in fake.requests] == [["shopify store"], ["amazon fba"]]
    recorded = CostLedgerEntry.objects.aggregate(total=Sum("amount_usd"))["total"]
    assert recorded == len(fake.requests) * source.usd_per_search
    assert set(CostLedgerEntry.objects.values_list("status", flat=True)) == {"settled"}


@pytest.mark.django_db
def test_a_search_whose_key_is_already_on_the_ledger_is_not_made(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    source = source_for(fake, clock, queries=["amazon fba"])
    source.fetch(limit=100, meter=LedgerMeter(), run_token="r1")

    with pytest.raises(AlreadyReserved):
        source.fetch(limit=100, meter=LedgerMeter(), run_token="r1")

    assert len(fake.requests) == 1
    assert CostLedgerEntry.objects.get().amount_usd == source.usd_per_search


def test_a_refused_budget_stops_before_the_search(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    meter = RecordingMeter(refuse_after=1)

    error = fetch_error(source_for(fake, clock, queries=["amazon fba", "etsy seller"]), meter)

    assert error.permanent and "budget" in error.message
    assert len(fake.requests) == 1
    assert len(error.partial) == 3


@pytest.mark.parametrize(
    ("status", "permanent", "hold_state"),
    [(401, True, "released"), (403, True, "released"), (503, False, "released"), (500, False, "open")],
)
def test_an_error_status_is_classified_and_releases_only_what_certainly_cost_nothing(
    fake: FakeTubeLabAPI, clock: FakeClock, status: int, permanent: bool, hold_state: str
) -> None:
    fake.fail_next(status, json_body={"statusCode": status, "message": f"Invalid API key {KEY}"})
    meter = RecordingMeter()

    error = fetch_error(source_for(fake, clock), meter)

    assert error.permanent is permanent
    assert error.message.startswith("TubeLab: ") and f"HTTP {status}" in error.message
    assert KEY not in str(error)
    assert meter.holds[0].state == hold_state


def test_a_rejected_key_is_permanent_and_names_the_setting(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    error = fetch_error(source_for(fake, clock, api_key="tl-wrong-key-123456"))

    assert error.permanent
    assert "TUBELAB_API_KEY" in error.message and "tl-wrong-key-123456" not in error.message


def test_a_429_is_transient_and_carries_retry_after(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    fake.fail_next(429, headers={"Retry-After": "30"})

    error = fetch_error(source_for(fake, clock))

    assert not error.permanent
    assert error.retry_after == 30.0


def test_a_down_service_is_transient(closed_port_url: str, clock: FakeClock) -> None:
    meter = RecordingMeter()
    source = TubeLabSource(api_key=KEY, base_url=closed_port_url + "/v1", clock=clock, sleep=clock.sleep)

    error = fetch_error(source, meter)

    assert not error.permanent
    assert error.message.startswith("TubeLab: cannot reach 127.0.0.1:")
    assert meter.holds[0].state == "released"


def test_malformed_json_is_transient_but_the_search_was_paid_for(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    fake.malformed_next()
    meter = RecordingMeter()

    error = fetch_error(source_for(fake, clock), meter)

    assert not error.permanent
    assert error.message == "TubeLab: the outlier search for 'amazon fba' was not valid JSON"
    assert meter.holds[0].state == "settled"


def test_an_unexpected_shape_is_permanent(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    fake.unexpected_next()

    error = fetch_error(source_for(fake, clock))

    assert error.permanent
    assert error.message == "TubeLab: the outlier search for 'amazon fba' had an unexpected shape (no hits list)"


def test_from_settings_honours_the_base_url_override_and_price(fake: FakeTubeLabAPI) -> None:
    settings = SimpleNamespace(
        TUBELAB_API_KEY=KEY,
        TUBELAB_BASE_URL=fake.base_url,
        TUBELAB_QUERIES="tiktok shop",
        TUBELAB_USD_PER_CREDIT="0.03",
    )

    source = TubeLabSource.from_settings(settings)
    videos = source.fetch(limit=5, meter=NullMeter())

    assert len(videos) == 3 and fake.requests[0].query["query"] == ["tiktok shop"]
    assert source.usd_per_search == Decimal("0.15")
    default = TubeLabSource.from_settings(SimpleNamespace())
    assert (default.base_url, default.is_configured()) == (DEFAULT_BASE_URL, False)


def test_the_fake_would_refuse_an_eleventh_request_in_a_minute(fake: FakeTubeLabAPI, clock: FakeClock) -> None:
    queries = [f"ecommerce query {n}" for n in range(11)]
    source = source_for(fake, clock, queries=queries, requests_per_minute=100)  # a limiter that is too generous

    error = fetch_error(source, limit=1000)

    assert fake.rate_limited == 1
    assert not error.permanent and error.retry_after == 60.0
