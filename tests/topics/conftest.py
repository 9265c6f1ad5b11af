"""Fixtures for the topics tests: the four discovery sources wired, through settings, to their loopback fakes."""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import prawcore.sessions
import pytest

from tests.fakes.apify_api import FakeApifyAPI, make_tiktok_item
from tests.fakes.perplexity_api import FakePerplexityAPI, make_search_result, make_topic
from tests.fakes.reddit_api import FakeRedditAPI, make_post
from tests.fakes.tubelab_api import FakeTubeLabAPI, make_video

DISCOVERY_SOURCES = ("reddit", "perplexity", "tubelab", "apify")
DISCOVERY_SECRETS = {
    "REDDIT_CLIENT_ID": "reddit-client-id-Q7x2Lm",
    "REDDIT_CLIENT_SECRET": "reddit-secret-Hk29fPz81LmQ",
    "PERPLEXITY_API_KEY": "pplx-secret-Zq8c1d9e4b7a",
    "TUBELAB_API_KEY": "tl-secret-9f8e7d6c5b4a",
    "APIFY_TOKEN": "apify_api_SECRETtoken5566",
}
# Two stories per source, none a near-duplicate of another: a clean run stores eight topics.
DISCOVERY_STORIES: dict[str, list[str]] = {
    "reddit": [
        "USPS Ground Advantage rates jump 7.8% in January",
        "Our checkout conversion rate doubled after removing upsells",
    ],
    "perplexity": [
        "Tariff changes push sellers toward new overseas suppliers",
        "Meta ads CPM climbs ahead of the holiday season",
    ],
    "tubelab": [
        "I tried Amazon FBA for 30 days with 500 dollars",
        "The loyalty program that won back our lapsed customers",
    ],
    "apify": [
        "Packaging hack that cut our returns in half",
        "Inventory forecasting spreadsheet every seller needs",
    ],
}
# One more story per source, unrelated to the ones above.
MORE_DISCOVERY_STORIES: dict[str, list[str]] = {
    "reddit": ["FedEx adds a residential surcharge for small parcels"],
    "perplexity": ["Klaviyo email flows that lifted repeat purchase rate"],
    "tubelab": ["Alibaba suppliers now demand higher minimum order quantities"],
    "apify": ["Etsy policy change on AI generated listing photos"],
}


@dataclass
class DiscoveryFakes:
    """The four fakes, started and configured as the sources' settings; `serve` decides what they answer."""

    reddit: FakeRedditAPI
    perplexity: FakePerplexityAPI
    tubelab: FakeTubeLabAPI
    apify: FakeApifyAPI
    made: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        return list(DISCOVERY_SECRETS.values())

    def fake(self, name: str):
        return getattr(self, name)

    def serve(self, stories: Mapping[str, Sequence[str]]) -> None:
        """Make every source answer with these titles from now on (Perplexity: in its next answer)."""
        # The same title is the same post, video or item (same id) every time it is served, as on the real sites.
        self.reddit.posts["shopify"] = [
            self._made("reddit", t, lambda t: make_post(subreddit="shopify", title=t, score=240, num_comments=60))
            for t in stories.get("reddit", ())
        ]
        self.tubelab.videos["shopify store"] = [
            self._made("tubelab", t, lambda t: make_video(title=t, views=300_000, ratio=6.0))
            for t in stories.get("tubelab", ())
        ]
        self.apify.items = [
            self._made("apify", t, lambda t: make_tiktok_item(text=t, plays=400_000)) for t in stories.get("apify", ())
        ]
        titles = list(stories.get("perplexity", ()))
        citations = [f"https://news.example.com/story-{_slug(title)}" for title in titles]
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        self.perplexity._answers.clear()  # these stories replace what an earlier `serve` queued
        self.perplexity.answer_next(
            topics=[make_topic(title, sources=[n + 1]) for n, title in enumerate(titles)],
            citations=citations,
            search_results=[make_search_result(url, date=today) for url in citations],
        )


    def _made(self, source: str, title: str, make: Callable[[str], dict]) -> dict:
        if (source, title) not in self.made:
            self.made[source, title] = make(title)
        return self.made[source, title]


def _slug(title: str) -> str:
    return "-".join(title.lower().split())[:60]


@pytest.fixture
def refused_url() -> str:
    """An http://127.0.0.1 URL on a port that refuses connections: a service that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def no_discovery_sources(settings, categories):
    """No discovery source configured and no monthly cap, whatever the environment says."""
    for name in DISCOVERY_SECRETS:
        setattr(settings, name, "")
    settings.MONTHLY_BUDGET_USD = ""
    return settings


@pytest.fixture
def discovery_fakes(settings, categories, monkeypatch) -> Iterator[DiscoveryFakes]:
    """All four sources configured against their loopback fakes, each serving DISCOVERY_STORIES."""
    # prawcore waits 2-4 s before retrying a failed request; the retries still happen, just without the wait.
    monkeypatch.setattr(prawcore.sessions.FiniteRetryStrategy, "_sleep_seconds", lambda self: None)
    fakes = DiscoveryFakes(
        reddit=FakeRedditAPI(
            client_id=DISCOVERY_SECRETS["REDDIT_CLIENT_ID"], client_secret=DISCOVERY_SECRETS["REDDIT_CLIENT_SECRET"]
        ).start(),
        perplexity=FakePerplexityAPI(api_key=DISCOVERY_SECRETS["PERPLEXITY_API_KEY"]).start(),
        tubelab=FakeTubeLabAPI(api_key=DISCOVERY_SECRETS["TUBELAB_API_KEY"]).start(),
        apify=FakeApifyAPI(token=DISCOVERY_SECRETS["APIFY_TOKEN"]).start(),
    )
    for name, value in DISCOVERY_SECRETS.items():
        setattr(settings, name, value)
    settings.MONTHLY_BUDGET_USD = ""
    settings.REDDIT_BASE_URL = fakes.reddit.base_url
    settings.REDDIT_SUBREDDITS = ["shopify"]
    settings.PERPLEXITY_BASE_URL = fakes.perplexity.base_url
    settings.PERPLEXITY_CATEGORIES = {"shipping_logistics": "shipping, fulfilment, carriers and logistics"}
    settings.TUBELAB_BASE_URL = fakes.tubelab.base_url
    settings.TUBELAB_QUERIES = ["shopify store"]
    settings.APIFY_BASE_URL = fakes.apify.base_url
    fakes.serve(DISCOVERY_STORIES)
    yield fakes
    for fake in (fakes.reddit, fakes.perplexity, fakes.tubelab, fakes.apify):
        fake.stop()


@pytest.fixture
def keyword_reads(db) -> Iterator[list[str]]:
    """The slug of each category whose keyword list is read (parsed) while the test runs."""
    from unittest import mock

    from topics.models import Category

    reads: list[str] = []
    original = Category.keyword_list.fget

    def counted(category):
        reads.append(category.slug)
        return original(category)

    with mock.patch.object(Category, "keyword_list", property(counted)):
        yield reads
