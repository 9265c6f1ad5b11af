"""Gathering a topic's source material (topics/material.py): what its sources are, reading them, keeping what failed
with its reason, reuse, Reddit threads, and research charged to the batch."""
from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from batches.models import Batch, CostLedgerEntry, Newsletter
from tests.fakes.perplexity_api import FakePerplexityAPI, make_search_result
from tests.fakes.reddit_api import FakeRedditAPI, make_comment, make_post
from topics.discovery import run_discovery
from batches.grounding import gather_for_newsletter
from topics.material import Kind, gather_material, reddit_post_id, stored_material, wanted_sources
from topics.models import SourceDocument, Topic

pytestmark = pytest.mark.django_db

USPS = "/news/usps-ground-advantage-2027"
TARIFFS = "/news/tariffs-homeware"


def documents(topic: Topic) -> dict[str, SourceDocument]:
    return {d.url: d for d in SourceDocument.objects.filter(topic=topic)}


@pytest.fixture
def reddit(settings):
    fake = FakeRedditAPI().start()
    settings.REDDIT_CLIENT_ID, settings.REDDIT_CLIENT_SECRET = fake.client_id, fake.client_secret
    settings.REDDIT_BASE_URL = fake.base_url
    yield fake
    fake.stop()


@pytest.fixture
def no_reddit(settings):
    settings.REDDIT_CLIENT_ID = settings.REDDIT_CLIENT_SECRET = ""


def item_for(topic: Topic, *, budget: str = "40") -> Newsletter:
    batch = Batch.objects.create(budget_usd=Decimal(budget), model="claude-sonnet-4-6", status=Batch.Status.RUNNING)
    return Newsletter.objects.create(batch=batch, topic=topic, status=Newsletter.Status.GENERATING, attempts=1)


# --- what a topic's sources are ----------------------------------------------------------------------------------

def test_a_reddit_thread_link_is_read_as_a_thread_not_as_a_page():
    assert reddit_post_id("https://www.reddit.com/r/shopify/comments/1qm4tj7/switched_to_a_3pl/") == "1qm4tj7"
    assert reddit_post_id("https://old.reddit.com/r/ecommerce/comments/AbC12/x") == "abc12"
    assert reddit_post_id("https://redd.it/1qz8wkd") == "1qz8wkd"
    assert reddit_post_id("https://www.reddit.com/r/shopify/") == ""


def test_a_topic_merged_from_several_sources_wants_every_one_of_them_best_first(make_topic):
    topic = make_topic("USPS rates", url="https://news.example.com/usps?utm_source=x", raw={"candidates": [
        {"id": "1qz8wkd", "permalink": "/r/ecommerce/comments/1qz8wkd/usps/", "is_self": False,
         "url": "https://carrier-news.example.com/usps-2027", "title": "USPS up 7.8%"},
        {"id": "Vx3kQp9LmT2", "snippet": {"title": "USPS 2027 rates explained", "channelTitle": "Ship Smarter",
                                          "description": "Every 2027 USPS change, zone by zone."}},
        {"id": "7301", "text": "USPS just raised rates again #shipping", "webVideoUrl": "https://tiktok.example/7301",
         "_actor": "clockworks/tiktok-scraper"},
        {"category": "shipping_logistics", "citations": ["https://news.example.com/usps",
                                                         "https://postal-wire.example.com/2027", "ftp://x.example/"]},
    ]})

    wanted = wanted_sources(topic)

    assert [(w.kind, w.url) for w in wanted] == [
        (Kind.ARTICLE, "https://news.example.com/usps?utm_source=x"),
        (Kind.REDDIT, "https://www.reddit.com/comments/1qz8wkd/"),
        (Kind.ARTICLE, "https://carrier-news.example.com/usps-2027"),
        (Kind.VIDEO, "https://www.youtube.com/watch?v=Vx3kQp9LmT2"),
        (Kind.SOCIAL, "https://tiktok.example/7301"),
        (Kind.ARTICLE, "https://postal-wire.example.com/2027"),  # the first citation is the topic's own link
    ]
    video = next(w for w in wanted if w.kind == Kind.VIDEO)
    assert (video.title, video.text) == ("USPS 2027 rates explained",
                                         "YouTube video by Ship Smarter.\n\nEvery 2027 USPS change, zone by zone.")
    assert next(w for w in wanted if w.kind == Kind.SOCIAL).text == "USPS just raised rates again #shipping"


def test_a_story_discovery_merged_from_reddit_and_youtube_gets_the_documents_of_both(discovery_fakes):
    title = "USPS Ground Advantage rates jump 7.8% in January"
    discovery_fakes.serve({"reddit": [title], "tubelab": [title + " (explained)"]})
    run_discovery()
    topic = Topic.objects.get()
    assert sorted(topic.sources) == ["reddit", "tubelab"]
    post = discovery_fakes.reddit.posts["shopify"][0]
    discovery_fakes.reddit.comments[post["id"]] = [make_comment(post_id=post["id"], body="Zone 8 is the killer.")]

    material = gather_material(topic=topic)

    kinds = sorted(d.kind for d in material.documents)
    assert kinds == [Kind.REDDIT, Kind.VIDEO]
    assert all(d.status == SourceDocument.Status.OK for d in material.documents)
    assert "Zone 8 is the killer." in next(d for d in material.documents if d.kind == Kind.REDDIT).text


# --- reading and storing ---------------------------------------------------------------------------------------

def test_a_readable_page_is_stored_with_its_text_title_and_hash(web_pages, make_topic):
    topic = make_topic("USPS rates", url=web_pages.url(USPS))

    material = gather_material(topic=topic)

    document = material.documents[0]
    assert (document.kind, document.status, document.reason) == (Kind.ARTICLE, SourceDocument.Status.OK, "")
    assert document.title == "USPS Ground Advantage rises 7.8% in January"
    assert "$11.20 to $12.35" in document.text and "Related stories" not in document.text
    assert len(document.content_hash) == 64
    assert material.readable == [document] and not material.is_thin


@pytest.mark.parametrize("path, reason", [
    ("/status/403", "the site refused access (HTTP 403)"),
    ("/status/404", "the page does not exist (HTTP 404)"),
    ("/too-large", "the page is larger than 2 MB"),
    ("/not-html", "not a web page or plain text (application/pdf)"),
    ("/loop/a", "a redirect loop: the page redirects back to an address it already went through"),
    ("/bomb", "the page is larger than 2 MB"),
])
def test_a_page_that_cannot_be_read_is_stored_as_failed_with_its_reason(web_pages, make_topic, path, reason):
    topic = make_topic("A story", url=web_pages.url(path))

    material = gather_material(topic=topic)

    document = documents(topic)[web_pages.url(path)]
    assert (document.status, document.reason, document.text) == (SourceDocument.Status.FAILED, reason, "")
    assert material.failed == [document] and material.is_thin


def test_a_redirect_into_a_private_address_is_refused_unless_private_fetching_is_allowed(
    web_pages, make_topic, settings
):
    settings.SOURCE_FETCH_ALLOW_PRIVATE = False
    topic = make_topic("A story", url=web_pages.url(USPS))

    gather_material(topic=topic)

    document = documents(topic)[web_pages.url(USPS)]
    assert document.status == SourceDocument.Status.FAILED
    assert document.reason == "refused to fetch 127.0.0.1: it points to a loopback address (127.0.0.1)"
    assert web_pages.requests_for(USPS) == 0


def test_one_failing_source_does_not_keep_the_others_from_being_read(web_pages, make_topic):
    topic = make_topic("Tariffs", url=web_pages.url("/status/404"), raw={"candidates": [
        {"citations": [web_pages.url(TARIFFS), web_pages.url("/not-html")]}]})

    material = gather_material(topic=topic)

    by_url = {d.url: d for d in material.documents}
    assert by_url[web_pages.url(TARIFFS)].status == SourceDocument.Status.OK
    assert by_url[web_pages.url("/status/404")].reason == "the page does not exist (HTTP 404)"
    assert by_url[web_pages.url("/not-html")].reason == "not a web page or plain text (application/pdf)"
    assert [d.url for d in material.readable] == [web_pages.url(TARIFFS)]


# --- reuse -------------------------------------------------------------------------------------------------------

def test_fresh_material_is_reused_instead_of_fetched_again(web_pages, make_topic):
    topic = make_topic("USPS rates", url=web_pages.url(USPS))
    gather_material(topic=topic)

    again = gather_material(topic=topic)

    assert web_pages.requests_for(USPS) == 1
    assert again.fetched == 0 and again.readable[0].text


def test_material_older_than_the_reuse_window_is_fetched_again(web_pages, make_topic, settings):
    settings.MATERIAL_REUSE_DAYS = 3
    topic = make_topic("USPS rates", url=web_pages.url(USPS))
    gather_material(topic=topic)
    SourceDocument.objects.update(fetched_at=timezone.now() - datetime.timedelta(days=4))

    gather_material(topic=topic)

    assert web_pages.requests_for(USPS) == 2


def test_a_failure_that_may_pass_is_tried_again_and_one_that_will_not_is_reused(web_pages, make_topic):
    passing = make_topic("Server trouble", url=web_pages.url("/status/500"))
    lasting = make_topic("Gone", url=web_pages.url("/status/404"))
    for topic in (passing, lasting):
        gather_material(topic=topic)
        gather_material(topic=topic)

    assert web_pages.requests_for("/status/500") == 2
    assert web_pages.requests_for("/status/404") == 1


def test_refreshing_fetches_fresh_material_again(web_pages, make_topic):
    topic = make_topic("USPS rates", url=web_pages.url(USPS))
    gather_material(topic=topic)

    gather_material(topic=topic, refresh=True)

    assert web_pages.requests_for(USPS) == 2
    assert SourceDocument.objects.filter(topic=topic).count() == 1


def test_stored_material_says_which_topics_have_sources_not_fetched_yet(web_pages, make_topic):
    fetched = make_topic("Fetched", url=web_pages.url(USPS))
    waiting = make_topic("Waiting", url=web_pages.url(TARIFFS))
    bare = make_topic("No link at all")
    gather_material(topic=fetched)

    materials = stored_material(topics=[fetched, waiting, bare])

    assert (materials[fetched.pk].pending, len(materials[fetched.pk].readable)) == (False, 1)
    assert (materials[waiting.pk].pending, materials[waiting.pk].documents) == (True, ())
    assert (materials[bare.pk].pending, materials[bare.pk].is_thin) == (False, True)
    assert web_pages.requests_for(TARIFFS) == 0


# --- Reddit threads ----------------------------------------------------------------------------------------------

def test_a_reddit_thread_brings_its_post_and_its_best_top_level_comments(reddit, make_topic, settings):
    settings.REDDIT_COMMENTS_PER_POST = 3
    post = make_post(subreddit="ecommerce", title="USPS Ground Advantage going up 7.8%",
                     selftext="Our average label is $8.40; at 7.8% that is about $0.66 more per parcel.")
    reddit.posts["ecommerce"] = [post]
    pid = post["id"]
    reddit.comments[pid] = [
        make_comment(post_id=pid, body="Moved zones 5-8 to a regional carrier, saved 18%.", score=210),
        make_comment(post_id=pid, body="Pirate Ship still shows the old rates until January.", score=95),
        make_comment(post_id=pid, body="[removed]", score=400),
        make_comment(post_id=pid, body="Please read the rules.", score=500, author="AutoModerator", stickied=True,
                     distinguished="moderator"),
        make_comment(post_id=pid, body="We raised free shipping from $50 to $65.", score=60),
        make_comment(post_id=pid, body="Low-score reply nobody read.", score=2),
    ]
    topic = make_topic("USPS up 7.8%", url=f"https://www.reddit.com{post['permalink']}")

    material = gather_material(topic=topic)

    thread = material.documents[0]
    assert (thread.kind, thread.status, thread.title) == (Kind.REDDIT, "ok", "USPS Ground Advantage going up 7.8%")
    assert thread.text == (
        "Our average label is $8.40; at 7.8% that is about $0.66 more per parcel.\n\n"
        "Top comments:\n"
        "- Moved zones 5-8 to a regional carrier, saved 18%. (210 points)\n"
        "- Pirate Ship still shows the old rates until January. (95 points)\n"
        "- We raised free shipping from $50 to $65. (60 points)"
    )
    request = reddit.thread_requests()[0]
    assert request.path == f"/comments/{pid}/" and request.query["sort"] == ["top"]


def test_a_thread_that_no_longer_exists_is_stored_as_failed(reddit, make_topic):
    topic = make_topic("Gone thread", url="https://www.reddit.com/r/shopify/comments/zzz999/gone/")

    gather_material(topic=topic)

    document = SourceDocument.objects.get(topic=topic)
    assert document.status == SourceDocument.Status.FAILED
    assert document.reason == "Reddit: the thread zzz999 does not exist or was removed (HTTP 404)"


def test_a_thread_is_not_read_while_reddit_is_not_configured_and_is_tried_again_later(no_reddit, make_topic):
    topic = make_topic("A thread", url="https://www.reddit.com/r/shopify/comments/abc123/a_thread/")

    gather_material(topic=topic)

    document = SourceDocument.objects.get(topic=topic)
    assert document.status == SourceDocument.Status.FAILED and document.transient
    assert "Reddit is not configured" in document.reason


# --- research ----------------------------------------------------------------------------------------------------

@pytest.fixture
def perplexity(settings):
    fake = FakePerplexityAPI().start()
    settings.PERPLEXITY_API_KEY = fake.api_key
    settings.PERPLEXITY_BASE_URL = fake.base_url
    settings.RESEARCH_WITH_PERPLEXITY = True
    settings.MONTHLY_BUDGET_USD = ""
    yield fake
    fake.stop()


def answer_research(fake: FakePerplexityAPI) -> None:
    citations = ["https://postal-wire.example.com/2027-rates", "https://carrier-news.example.com/usps"]
    fake.answer_next(
        content="USPS Ground Advantage rises an average 7.8% on January 19 [1]. Zones 5-8 rise most [2].",
        citations=citations,
        search_results=[make_search_result(u, title=f"Source {i}") for i, u in enumerate(citations, start=1)],
    )


def test_research_is_stored_as_documents_and_charged_to_the_batch(perplexity, make_topic):
    answer_research(perplexity)
    newsletter = item_for(make_topic("USPS rates rise 7.8%", summary="Ground Advantage up in January."))

    material = gather_for_newsletter(newsletter=newsletter)

    research = next(d for d in material.documents if d.kind == Kind.RESEARCH)
    assert research.text.startswith("USPS Ground Advantage rises an average 7.8%")
    results = [d for d in material.documents if d.kind == Kind.SEARCH_RESULT]
    assert [d.url for d in results] == ["https://postal-wire.example.com/2027-rates",
                                        "https://carrier-news.example.com/usps"]
    entry = CostLedgerEntry.objects.get(provider="perplexity")
    assert (entry.batch_id, entry.newsletter_id, entry.status) == (newsletter.batch_id, newsletter.pk, "settled")
    assert entry.amount_usd == Decimal(str(perplexity.costs[0])) and entry.amount_usd <= entry.reserved_usd
    assert "Headline: USPS rates rise 7.8%" in perplexity.requests[0].json["messages"][1]["content"]


def test_research_is_reused_by_a_later_draft_of_the_same_topic(perplexity, make_topic):
    answer_research(perplexity)
    topic = make_topic("USPS rates rise 7.8%")
    gather_for_newsletter(newsletter=item_for(topic))

    gather_for_newsletter(newsletter=item_for(topic))

    assert len(perplexity.requests) == 1 and CostLedgerEntry.objects.count() == 1


def test_research_the_batch_budget_cannot_afford_is_not_bought_and_the_draft_goes_ahead(perplexity, make_topic):
    newsletter = item_for(make_topic("USPS rates rise 7.8%"), budget="0.000100")

    material = gather_for_newsletter(newsletter=newsletter)

    assert perplexity.requests == [] and not CostLedgerEntry.objects.exists()
    research = SourceDocument.objects.get(kind=Kind.RESEARCH)
    assert research.status == SourceDocument.Status.FAILED and research.transient
    assert research.reason.startswith("not researched: the budget refused the request (Batch budget reached")
    assert material.failed == [research]


def test_research_is_not_bought_when_it_is_switched_off(perplexity, make_topic, settings):
    settings.RESEARCH_WITH_PERPLEXITY = False

    gather_for_newsletter(newsletter=item_for(make_topic("USPS rates rise 7.8%")))

    assert perplexity.requests == [] and not SourceDocument.objects.exists()


def test_a_failing_research_call_is_recorded_and_its_cost_accounted(perplexity, make_topic):
    perplexity.fail_next(401)

    gather_for_newsletter(newsletter=item_for(make_topic("USPS rates rise 7.8%")))

    research = SourceDocument.objects.get(kind=Kind.RESEARCH)
    assert research.status == "failed" and "the API key was rejected (HTTP 401)" in research.reason
    assert CostLedgerEntry.objects.get().status == CostLedgerEntry.Status.RELEASED  # a refusal costs nothing


def test_gathering_for_a_draft_never_raises_whatever_goes_wrong(web_pages, make_topic, monkeypatch):
    topic = make_topic("USPS rates", url=web_pages.url(USPS))
    gather_material(topic=topic)

    def broken(**kwargs):
        raise RuntimeError("a bug in gathering")

    monkeypatch.setattr("batches.grounding.gather_material", broken)
    material = gather_for_newsletter(newsletter=item_for(topic))

    assert [d.url for d in material.readable] == [web_pages.url(USPS)]  # what was stored before


def test_the_load_more_stub_of_a_long_thread_costs_no_extra_request(reddit, make_topic, settings):
    settings.REDDIT_COMMENTS_PER_POST = 2
    post = make_post(subreddit="shopify", title="Long thread about fees")
    reddit.posts["shopify"] = [post]
    reddit.comments[post["id"]] = [make_comment(post_id=post["id"], body=f"Comment {n}", score=n) for n in range(30)]
    topic = make_topic("Fees", url=f"https://www.reddit.com{post['permalink']}")

    gather_material(topic=topic)

    assert len(reddit.thread_requests()) == 1
    assert SourceDocument.objects.get(topic=topic).text.endswith("- Comment 29 (29 points)\n- Comment 28 (28 points)")
