from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import prawcore.sessions
import pytest

from tests.fakes.reddit_api import FakeRedditAPI, make_post
from topics.sources.base import NullMeter, SourceError
from topics.sources.reddit import DEFAULT_SUBREDDITS, RedditSource

SECRET = "s3cret-reddit-client-secret-value"


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # prawcore waits 2-4 s before retrying a failed request; the retries still happen, just without the wait.
    monkeypatch.setattr(prawcore.sessions.FiniteRetryStrategy, "_sleep_seconds", lambda self: None)


@pytest.fixture
def fake() -> Iterator[FakeRedditAPI]:
    with FakeRedditAPI(client_secret=SECRET) as server:
        yield server


def source_for(fake: FakeRedditAPI, **overrides: object) -> RedditSource:
    options: dict = {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "base_url": fake.base_url,
        "subreddits": ["shopify"],
        "min_score": 10,
    }
    options.update(overrides)
    return RedditSource(**options)


def fetch_error(source: RedditSource) -> SourceError:
    with pytest.raises(SourceError) as caught:
        source.fetch(limit=20, meter=NullMeter())
    return caught.value


def test_it_fetches_posts_and_normalises_them(fake: FakeRedditAPI) -> None:
    created = time.time() - 3600
    fake.posts["shopify"] = [
        make_post(
            id="1abcde",
            title="Shopify Payments held our payouts for 10 days",
            selftext="Since the update   our payouts\nare held. Anyone else?",
            score=532,
            num_comments=88,
            created_utc=created,
        )
    ]

    [post] = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert post.source == "reddit"
    assert post.external_id == "1abcde"
    assert post.title == "Shopify Payments held our payouts for 10 days"
    assert post.summary == "Since the update our payouts are held. Anyone else?"
    assert post.url.startswith("https://www.reddit.com/r/shopify/comments/1abcde/")
    assert post.engagement == {"score": 532.0, "comments": 88.0, "upvote_ratio": 0.94}
    assert post.published_at == datetime.fromtimestamp(created, tz=UTC)
    assert post.raw["subreddit"] == "shopify"
    assert post.raw["name"] == "t3_1abcde"
    assert post.raw["author"] == "seller_sam"
    assert json.loads(json.dumps(post.raw)) == post.raw


def test_it_reads_hot_and_top_of_the_week_and_counts_a_post_in_both_once(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(id="both1", score=300)]

    posts = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert [p.external_id for p in posts] == ["both1"]
    listings = fake.listing_requests()
    assert [r.path for r in listings] == ["/r/shopify/hot", "/r/shopify/top"]
    assert listings[1].query["t"] == ["week"]


def test_it_exchanges_client_credentials_for_an_app_only_token_on_the_same_base_url(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(score=50)]

    source_for(fake, subreddits=["shopify", "ecommerce"]).fetch(limit=10, meter=NullMeter())

    [token_request] = fake.token_requests()
    assert token_request.method == "POST"
    assert token_request.body == "grant_type=client_credentials"
    assert token_request.headers["Authorization"] == "Basic ***"
    assert len(fake.listing_requests()) == 4
    assert all(r.headers["Authorization"] == "bearer ***" for r in fake.listing_requests())


def test_it_follows_after_through_every_page(fake: FakeRedditAPI) -> None:
    fake.page_size = 2
    fake.posts["shopify"] = [make_post(title=f"Post {n}", score=100 + n) for n in range(5)]

    posts = source_for(fake).fetch(limit=10, meter=NullMeter())

    assert len(posts) == 5
    hot = [r for r in fake.listing_requests() if r.path.endswith("/hot")]
    assert [r.query.get("after") for r in hot] == [
        None,
        [fake.posts["shopify"][1]["name"]],
        [fake.posts["shopify"][3]["name"]],
    ]


def test_it_drops_stickied_removed_deleted_and_low_score_posts(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [
        make_post(id="keep1", score=40),
        make_post(id="sticky", score=900, stickied=True),
        make_post(id="removed", score=300, removed_by_category="moderator"),
        make_post(id="deleted", score=300, removed_by_category="deleted", author=None, selftext="[deleted]"),
        make_post(id="removedtext", score=300, selftext="[removed]"),
        make_post(id="low", score=9),
    ]

    posts = source_for(fake, min_score=10).fetch(limit=10, meter=NullMeter())

    assert [p.external_id for p in posts] == ["keep1"]


def test_it_drops_posts_with_too_few_comments_when_asked(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(id="chatty", num_comments=30), make_post(id="quiet", num_comments=2)]

    posts = source_for(fake, min_comments=5).fetch(limit=10, meter=NullMeter())

    assert [p.external_id for p in posts] == ["chatty"]


def test_it_drops_hot_posts_older_than_the_window(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(id="fresh", age_hours=30), make_post(id="stale", age_hours=24 * 9)]

    posts = source_for(fake, time_filter="week").fetch(limit=10, meter=NullMeter())

    assert [p.external_id for p in posts] == ["fresh"]


def test_it_takes_subreddits_in_turn_best_first_up_to_the_limit(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(id=f"s{n}", subreddit="shopify", score=1000 - n) for n in range(4)]
    fake.posts["ecommerce"] = [make_post(id=f"e{n}", subreddit="ecommerce", score=50 - n) for n in range(4)]

    posts = source_for(fake, subreddits=["shopify", "ecommerce"]).fetch(limit=5, meter=NullMeter())

    assert [p.external_id for p in posts] == ["s0", "e0", "s1", "e1", "s2"]


def test_the_base_url_override_serves_both_token_and_listings_and_defaults_to_reddit() -> None:
    real = RedditSource.from_settings(
        SimpleNamespace(REDDIT_CLIENT_ID="id", REDDIT_CLIENT_SECRET="x", REDDIT_BASE_URL="")
    )
    proxied = RedditSource.from_settings(SimpleNamespace(REDDIT_BASE_URL="http://proxy.local:8080/"))

    assert (real.token_url, real.api_url) == ("https://www.reddit.com", "https://oauth.reddit.com")
    assert (proxied.token_url, proxied.api_url) == ("http://proxy.local:8080", "http://proxy.local:8080")


def test_from_settings_reads_the_subreddits_window_and_minimum_score() -> None:
    settings = SimpleNamespace(
        REDDIT_CLIENT_ID="id",
        REDDIT_CLIENT_SECRET="secret",
        REDDIT_SUBREDDITS="r/AmazonSeller, shopify",
        REDDIT_TIME_FILTER="day",
        REDDIT_MIN_SCORE=25,
    )

    source = RedditSource.from_settings(settings)

    assert source.subreddits == ["AmazonSeller", "shopify"]
    assert (source.time_filter, source.min_score) == ("day", 25)
    assert source.is_configured()
    assert source.describe() == "Reddit: hot/top posts of the past day from 2 subreddits (score ≥ 25)"


def test_it_defaults_to_six_ecommerce_subreddits_and_needs_both_credentials() -> None:
    source = RedditSource.from_settings(SimpleNamespace(REDDIT_CLIENT_ID="id"))

    assert tuple(source.subreddits) == DEFAULT_SUBREDDITS
    assert not source.is_configured()


def test_a_rejected_key_is_a_permanent_error_without_the_secret(fake: FakeRedditAPI) -> None:
    error = fetch_error(source_for(fake, client_secret="wrong-" + SECRET))

    assert error.permanent
    assert "Reddit" in error.message and "HTTP 401" in error.message and "REDDIT_CLIENT_SECRET" in error.message
    assert SECRET not in str(error)


def test_a_forbidden_token_on_the_listing_is_a_permanent_error(fake: FakeRedditAPI) -> None:
    headers = {"www-authenticate": 'Bearer realm="reddit", error="invalid_token"'}
    fake.fail_next(403, headers=headers, path="/r/shopify", times=3)

    error = fetch_error(source_for(fake))

    assert error.permanent
    assert "access token was rejected" in error.message


def test_a_down_service_is_a_transient_error(closed_port_url: str) -> None:
    source = RedditSource(client_id="id", client_secret=SECRET, base_url=closed_port_url, subreddits=["shopify"])

    error = fetch_error(source)

    assert not error.permanent
    assert error.message.startswith("Reddit: cannot reach 127.0.0.1:")
    assert SECRET not in str(error)


def test_a_429_is_transient_and_carries_retry_after(fake: FakeRedditAPI) -> None:
    fake.fail_next(429, headers={"retry-after": "7"}, path="/r/shopify/hot")

    error = fetch_error(source_for(fake))

    assert not error.permanent
    assert error.retry_after == 7.0
    assert "rate-limited (HTTP 429); retry after 7 s" in error.message


def test_a_server_error_that_persists_is_transient(fake: FakeRedditAPI) -> None:
    fake.fail_next(503, path="/r/shopify/hot", times=3)  # prawcore retries twice

    error = fetch_error(source_for(fake))

    assert not error.permanent
    assert "HTTP 503" in error.message and "r/shopify/hot" in error.message


def test_malformed_json_is_a_transient_error(fake: FakeRedditAPI) -> None:
    fake.malformed_next(path="/r/shopify/hot")

    error = fetch_error(source_for(fake))

    assert not error.permanent
    assert error.message == "Reddit: the r/shopify/hot listing was not valid JSON"


def test_malformed_json_at_the_token_exchange_is_a_transient_error(fake: FakeRedditAPI) -> None:
    fake.fail_next(200, body="<html>upstream error</html>", path="/api/v1/access_token")

    error = fetch_error(source_for(fake))

    assert not error.permanent
    assert "token exchange response was not valid JSON" in error.message


def test_an_unexpected_shape_is_a_permanent_error(fake: FakeRedditAPI) -> None:
    fake.unexpected_next(path="/r/shopify/hot")

    error = fetch_error(source_for(fake))

    assert error.permanent
    assert error.message.startswith("Reddit: the r/shopify/hot response had an unexpected shape")


def test_a_missing_subreddit_is_a_permanent_error_naming_it(fake: FakeRedditAPI) -> None:
    fake.missing_subreddits.add("nosuchsub")

    error = fetch_error(source_for(fake, subreddits=["nosuchsub"]))

    assert error.permanent
    assert "r/nosuchsub/hot does not exist" in error.message


def test_a_failure_keeps_the_posts_already_gathered(fake: FakeRedditAPI) -> None:
    fake.posts["shopify"] = [make_post(id="early", score=70)]
    fake.fail_next(503, path="/r/ecommerce/hot", times=3)

    error = fetch_error(source_for(fake, subreddits=["shopify", "ecommerce"]))

    assert [p.external_id for p in error.partial] == ["early"]
