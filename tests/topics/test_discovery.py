from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from batches.ledger import month_spent
from batches.models import Batch, CostLedgerEntry
from bench.discovery_bench import discover, make_candidates
from tests.topics.conftest import (
    DISCOVERY_SOURCES,
    DISCOVERY_STORIES,
    MORE_DISCOVERY_STORIES,
    DiscoveryFakes,
)
from topics import scoring
from topics.discovery import SourceReport, run_discovery, store_candidates
from topics.models import Category, DiscoveryRun, Topic
from topics.sources import Candidate, build_sources
from tests.support import record_ledger_entry

NOW = timezone.now()
_ids = itertools.count(1)


def candidate(
    title: str,
    *,
    source: str = "reddit",
    external_id: str | None = None,
    url: str = "",
    summary: str = "",
    engagement: dict[str, float] | None = None,
    published_at: datetime | None = None,
) -> Candidate:
    return Candidate(
        source=source,
        external_id=external_id or f"{source}-{next(_ids)}",
        title=title,
        summary=summary,
        url=url,
        engagement=engagement if engagement is not None else {"score": 300.0, "comments": 40.0},
        published_at=published_at or NOW - timedelta(hours=2),
        raw={"title": title},
    )


def store(*candidates: Candidate) -> dict[str, SourceReport]:
    reports: dict[str, SourceReport] = {}
    store_candidates(candidates=list(candidates), reports=reports)
    return reports


def topic_titled(title: str) -> Topic:
    return Topic.objects.get(title=title)


# --- normalisation and de-duplication ----------------------------------------------------------------------


def test_a_new_story_is_stored_as_a_new_topic_with_its_source(categories) -> None:
    store(candidate("USPS raises Ground Advantage rates by 7.8%", external_id="abc123", url="https://usps.example/r"))

    topic = topic_titled("USPS raises Ground Advantage rates by 7.8%")
    assert (topic.source, topic.external_id, topic.sources) == ("reddit", "abc123", ["reddit"])
    assert topic.status == Topic.Status.NEW
    assert topic.url == "https://usps.example/r"


def test_tracking_parameters_are_dropped_from_the_stored_canonical_url(categories) -> None:
    url = "https://www.News.example.com/usps-rates/?utm_source=reddit&utm_medium=social&fbclid=xyz&page=2#comments"

    store(candidate("USPS raises Ground Advantage rates by 7.8%", url=url))

    topic = topic_titled("USPS raises Ground Advantage rates by 7.8%")
    assert topic.canonical_url == "https://news.example.com/usps-rates?page=2"
    assert topic.url == url


def test_a_candidate_seen_twice_in_one_run_is_stored_once(categories) -> None:
    first = candidate("USPS raises Ground Advantage rates by 7.8%", external_id="t3_1")

    reports = store(first, first)

    assert Topic.objects.count() == 1
    assert (reports["reddit"].new, reports["reddit"].dropped) == (1, 1)


def test_a_candidate_already_stored_from_its_source_is_dropped_on_a_later_run(categories) -> None:
    post = candidate("USPS raises Ground Advantage rates by 7.8%", external_id="t3_1")
    store(post)

    reports = store(post)

    assert Topic.objects.count() == 1
    assert (reports["reddit"].new, reports["reddit"].merged, reports["reddit"].dropped) == (0, 0, 1)


def test_two_sources_linking_the_same_url_make_one_topic_recording_both(categories) -> None:
    reports = store(
        candidate("USPS raises Ground Advantage rates by 7.8%", url="https://news.example.com/usps?utm_source=x"),
        candidate("Parcel price change announced", source="apify", url="http://www.news.example.com/usps/"),
    )

    [topic] = Topic.objects.all()
    assert topic.sources == ["reddit", "apify"]
    assert reports["apify"].merged == 1


def test_near_duplicate_titles_from_two_sources_make_one_topic_recording_both(categories) -> None:
    reports = store(
        candidate("USPS Ground Advantage rates going up 7.8% in January"),
        candidate("USPS Ground Advantage rates going up 7.8% in Jan - how are you handling it?", source="perplexity"),
    )

    [topic] = Topic.objects.all()
    assert topic.title == "USPS Ground Advantage rates going up 7.8% in January"
    assert topic.sources == ["reddit", "perplexity"]
    assert (reports["reddit"].new, reports["perplexity"].merged) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_store_a_story_both_told_once_with_both_sources(migration_data) -> None:
    """The beat's run and an operator's overlap: the second waits for the first to store what it found, then
    merges into it, instead of storing the same story again from what it read before the first wrote."""
    from topics import discovery

    first_read, let_first_write = threading.Event(), threading.Event()
    write = discovery._write

    def paused_write(**kwargs) -> None:
        if threading.current_thread().name == "first run":
            first_read.set()
            assert let_first_write.wait(timeout=30)
        write(**kwargs)

    def run(title: str, source: str) -> None:
        try:
            store(candidate(title, source=source))
        finally:
            connection.close()

    runs = [threading.Thread(target=run, name="first run",
                             args=("USPS Ground Advantage rates going up 7.8% in January", "reddit")),
            threading.Thread(target=run, name="second run",
                             args=("USPS Ground Advantage rates going up 7.8% in Jan - thoughts?", "perplexity"))]
    with mock.patch.object(discovery, "_write", paused_write):
        runs[0].start()
        assert first_read.wait(timeout=30)  # the first run has read what is stored and matched its candidates
        runs[1].start()
        runs[1].join(timeout=1.5)
        second_waited = runs[1].is_alive()
        let_first_write.set()
        for thread in runs:
            thread.join(timeout=60)

    assert second_waited
    [topic] = Topic.objects.all()
    assert topic.sources == ["reddit", "perplexity"]


def test_different_stories_stay_separate_topics(categories) -> None:
    store(
        candidate("USPS announces 2027 Ground Advantage rate increase of 7.8%"),
        candidate("UPS peak season surcharges now hit residential delivery", source="tubelab"),
        candidate("Etsy policy update: AI-generated listing images now require disclosure", source="apify"),
    )

    assert Topic.objects.count() == 3


def test_the_same_external_id_from_two_sources_names_two_different_items(categories) -> None:
    store(
        candidate("USPS raises Ground Advantage rates by 7.8%", external_id="42"),
        candidate("Klaviyo email flows that lifted repeat purchase rate", source="apify", external_id="42"),
    )

    assert Topic.objects.count() == 2


def test_a_candidate_without_a_title_is_dropped(categories) -> None:
    reports = store(candidate("   "))

    assert Topic.objects.count() == 0
    assert reports["reddit"].dropped == 1


def test_a_near_duplicate_in_a_later_run_is_merged_into_the_stored_topic(categories) -> None:
    store(candidate("Meta ads CPM spiked 40% this week before Black Friday"))

    reports = store(candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="apify"))

    [topic] = Topic.objects.all()
    assert topic.sources == ["reddit", "apify"]
    assert reports["apify"].merged == 1


def test_a_url_already_stored_on_an_older_topic_is_merged_rather_than_stored_again(make_topic) -> None:
    old = make_topic(
        "USPS raises Ground Advantage rates by 7.8%", source="reddit", sources=["reddit"],
        canonical_url="https://news.example.com/usps-rates", status="approved",
    )
    Topic.objects.filter(pk=old.pk).update(created_at=NOW - timedelta(days=90))

    store(candidate("Carriers reprice parcels", source="perplexity", url="https://news.example.com/usps-rates?ref=x"))

    assert list(Topic.objects.values_list("pk", flat=True)) == [old.pk]
    assert Topic.objects.get(pk=old.pk).sources == ["reddit", "perplexity"]


def test_a_near_duplicate_is_found_even_when_a_short_title_matches_it_more_closely(categories) -> None:
    # Against "FBA capacity" every title mentioning FBA capacity scores a perfect token-set match, yet short
    # titles are compared whole: the story that really is the same must still be found.
    store(
        candidate("Amazon cuts FBA capacity limits for Q1, sellers scramble"),
        candidate("FBA capacity", source="apify"),
    )

    store(candidate("Amazon slashes FBA capacity limits for Q1", source="tubelab"))

    assert Topic.objects.count() == 2
    assert topic_titled("Amazon cuts FBA capacity limits for Q1, sellers scramble").sources == ["reddit", "tubelab"]


def test_a_stored_topic_told_again_by_a_source_it_already_records_counts_as_dropped(categories) -> None:
    store(
        candidate("USPS Ground Advantage rates going up 7.8% in January"),
        candidate("USPS Ground Advantage rates going up 7.8% in January - thoughts?", source="apify", external_id="a1"),
    )

    reports = store(
        candidate("USPS Ground Advantage rates going up 7.8% in January - thoughts?", source="apify", external_id="a1")
    )

    assert (reports["apify"].new, reports["apify"].merged, reports["apify"].dropped) == (0, 0, 1)


# --- scores ------------------------------------------------------------------------------------------------


def test_a_stored_score_follows_the_documented_formula(categories) -> None:
    published = NOW - timedelta(hours=30)

    store(candidate("USPS raises Ground Advantage rates by 7.8%", engagement={"score": 800, "comments": 100},
                    published_at=published))

    expected = scoring.score(
        normalised=scoring.normalised_engagement(source="reddit", engagement={"score": 800, "comments": 100}),
        published_at=published, source_count=1,
    )
    assert topic_titled("USPS raises Ground Advantage rates by 7.8%").score == pytest.approx(expected, abs=0.02)


def test_coverage_by_a_second_source_raises_the_stored_score(categories) -> None:
    published = NOW - timedelta(hours=5)
    store(
        candidate("USPS Ground Advantage rates going up 7.8% in January", published_at=published),
        candidate("USPS Ground Advantage rates going up 7.8% in January - thoughts?", source="apify",
                  engagement={"likes": 1}, published_at=published),
        candidate("Klaviyo email flows that lifted repeat purchase rate", published_at=published),
    )

    covered = topic_titled("USPS Ground Advantage rates going up 7.8% in January").score
    alone = topic_titled("Klaviyo email flows that lifted repeat purchase rate").score
    assert covered == pytest.approx(alone * scoring.coverage_boost(2), abs=0.02)


def test_the_score_uses_the_best_engagement_among_the_sources_that_told_the_story(categories) -> None:
    published = NOW - timedelta(hours=5)
    store(
        candidate("Meta ads CPM spiked 40% this week before Black Friday", engagement={"score": 12},
                  published_at=published),
        candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="tubelab",
                  engagement={"views": 2_000_000, "outlier": 3}, published_at=published),
    )

    expected = scoring.score(normalised=1.0, published_at=published, source_count=2)
    assert Topic.objects.get().score == pytest.approx(expected, abs=0.02)


def test_the_topic_keeps_the_engagement_each_source_reported(categories) -> None:
    store(
        candidate("Meta ads CPM spiked 40% this week before Black Friday", engagement={"score": 12, "comments": 3}),
        candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="tubelab",
                  engagement={"views": 90_000, "outlier": 3}),
    )

    assert Topic.objects.get().engagement == {
        "reddit": {"score": 12, "comments": 3}, "tubelab": {"views": 90_000, "outlier": 3},
    }


def test_stories_told_in_other_scripts_are_matched_by_their_words(categories) -> None:
    russian = "Почта России поднимает тарифы на доставку посылок"
    store(candidate(russian, url="https://a.example/1"),
          candidate(russian, source="tubelab", url="https://b.example/2"),
          candidate("Shopify повышает комиссии для продавцов", url="https://a.example/3"),
          candidate("Shopify 如何提高转化率", source="tubelab", url="https://b.example/4"))

    assert {title: sources for title, sources in Topic.objects.values_list("title", "sources")} == {
        "Shopify 如何提高转化率": ["tubelab"], "Shopify повышает комиссии для продавцов": ["reddit"],
        russian: ["reddit", "tubelab"],
    }


def test_a_topic_keeps_the_engagement_its_score_was_computed_from_when_a_source_tells_it_twice(categories) -> None:
    title = "USPS Ground Advantage rates jump 7.8% in January"
    store(candidate(title, url="https://r.example/1", engagement={"score": 5000.0, "comments": 900.0}),
          candidate(title, url="https://r.example/2", engagement={"score": 3.0, "comments": 0.0}))

    topic = Topic.objects.get()
    assert topic.engagement == {"reddit": {"score": 5000.0, "comments": 900.0}}
    assert topic.score == pytest.approx(scoring.score(normalised=scoring.normalised_engagement(
        source="reddit", engagement={"score": 5000.0, "comments": 900.0}), published_at=NOW - timedelta(hours=2),
        source_count=1), abs=0.02)


def test_a_url_that_does_not_parse_loses_nothing_of_the_run(discovery_fakes: DiscoveryFakes) -> None:
    discovery_fakes.apify.items[0]["webVideoUrl"] = "https://www.tiktok.com:99999/@dtcfounder/video/1"

    run_discovery()

    assert DiscoveryRun.objects.get().status == DiscoveryRun.Status.DONE
    assert Topic.objects.filter(url="https://www.tiktok.com:99999/@dtcfounder/video/1").count() == 1
    assert set(Topic.objects.values_list("source", flat=True)) == set(DISCOVERY_SOURCES)


def test_merging_a_new_source_into_a_stored_topic_raises_its_score_by_the_coverage_boost(make_topic) -> None:
    topic = make_topic("Meta ads CPM spiked 40% this week before Black Friday", source="reddit", sources=["reddit"],
                       score=40)

    before = topic.updated_at

    store(candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="apify"))

    topic.refresh_from_db()
    assert topic.score == pytest.approx(40 * scoring.coverage_boost(2) / scoring.coverage_boost(1))
    assert topic.sources == ["reddit", "apify"]  # a JSON list, as the model writes it
    assert topic.updated_at > before


# --- categorisation and editor choices ---------------------------------------------------------------------


def test_a_new_topic_is_categorised_by_the_category_keywords(categories) -> None:
    store(
        candidate("USPS raises parcel shipping rates for small sellers"),
        candidate("Our checkout conversion rate doubled after removing upsells", source="apify"),
    )

    assert topic_titled("USPS raises parcel shipping rates for small sellers").category.slug == "shipping_logistics"
    assert topic_titled("Our checkout conversion rate doubled after removing upsells").category.slug == (
        "conversion_optimization"
    )


def test_a_new_topic_that_matches_no_keyword_falls_back_to_platform_tools(categories) -> None:
    store(candidate("Founders compare notes on hiring a first employee"))

    assert topic_titled("Founders compare notes on hiring a first employee").category.slug == "platform_tools"


def test_a_new_topic_is_categorised_with_keywords_an_editor_added(categories) -> None:
    Category.objects.filter(slug="customer_retention").update(keywords="hiring\nfirst employee")

    store(candidate("Founders compare notes on hiring a first employee"))

    assert topic_titled("Founders compare notes on hiring a first employee").category.slug == "customer_retention"


def test_merging_into_a_topic_never_changes_the_category_an_editor_chose(make_topic, categories) -> None:
    topic = make_topic("Meta ads CPM spiked 40% this week before Black Friday", source="reddit", sources=["reddit"])
    topic.override_category(categories["pricing_margins"])

    store(candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="apify",
                    summary="Advertising costs, ROAS and campaign budgets: the Meta ads picture."))

    topic.refresh_from_db()
    assert (topic.category.slug, topic.category_locked) == ("pricing_margins", True)


@pytest.mark.parametrize("status", ["approved", "rejected"])
def test_merging_into_a_topic_keeps_the_editors_review(make_topic, status: str) -> None:
    topic = make_topic("Meta ads CPM spiked 40% this week before Black Friday", source="reddit", sources=["reddit"],
                       status=status)

    store(candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="apify"))

    topic.refresh_from_db()
    assert topic.status == status
    assert topic.sources == ["reddit", "apify"]


def test_merging_into_a_topic_keeps_its_title_summary_and_url(make_topic) -> None:
    topic = make_topic("Meta ads CPM spiked 40% this week before Black Friday", source="reddit", sources=["reddit"],
                       summary="Edited by an editor.", url="https://www.reddit.com/r/ppc/comments/1")

    store(candidate("Meta ads CPMs spike 40% ahead of Black Friday, advertisers report", source="apify",
                    summary="Something else.", url="https://www.tiktok.com/@ads/video/9"))

    topic.refresh_from_db()
    assert (topic.title, topic.summary, topic.url) == (
        "Meta ads CPM spiked 40% this week before Black Friday", "Edited by an editor.",
        "https://www.reddit.com/r/ppc/comments/1",
    )


# --- runs against the four services -------------------------------------------------------------------------


def all_titles(stories: dict[str, list[str]]) -> set[str]:
    return {title for titles in stories.values() for title in titles}


def test_a_run_stores_every_sources_stories(discovery_fakes: DiscoveryFakes) -> None:
    run_discovery()

    assert set(Topic.objects.values_list("title", flat=True)) == all_titles(DISCOVERY_STORIES)
    assert {t.source: t.sources for t in Topic.objects.all()} == {name: [name] for name in DISCOVERY_SOURCES}


def test_a_run_records_what_each_source_fetched_and_added(discovery_fakes: DiscoveryFakes) -> None:
    run = run_discovery()

    run.refresh_from_db()
    assert run.status == DiscoveryRun.Status.DONE
    assert run.finished_at is not None
    assert (run.fetched, run.created, run.merged, run.dropped) == (8, 8, 0, 0)
    for name in DISCOVERY_SOURCES:
        report = run.sources[name]
        assert (report["status"], report["fetched"], report["new"], report["error"]) == ("ok", 2, 2, "")


def test_a_second_identical_run_creates_no_topics(discovery_fakes: DiscoveryFakes) -> None:
    run_discovery()
    before = sorted(Topic.objects.values_list("pk", "title", "score"))
    discovery_fakes.serve(DISCOVERY_STORIES)

    again = run_discovery()

    assert sorted(Topic.objects.values_list("pk", "title", "score")) == before
    assert (again.created, again.merged, again.dropped) == (0, 0, 8)


def test_a_story_told_by_two_services_becomes_one_topic_recording_both(discovery_fakes: DiscoveryFakes) -> None:
    discovery_fakes.serve({
        "reddit": ["USPS Ground Advantage rates going up 7.8% in January"],
        "perplexity": ["USPS Ground Advantage rates going up 7.8% in Jan - what it means for small shippers"],
    })

    run = run_discovery(names=["reddit", "perplexity"])

    [topic] = Topic.objects.all()
    assert topic.sources == ["reddit", "perplexity"]
    assert (run.sources["perplexity"]["merged"], run.created) == (1, 1)


def test_a_run_asks_each_source_for_at_most_the_limit(discovery_fakes: DiscoveryFakes) -> None:
    run = run_discovery(limit=1)

    assert [run.sources[name]["fetched"] for name in DISCOVERY_SOURCES] == [1, 1, 1, 1]
    assert Topic.objects.count() == 4


def test_a_run_asks_only_the_named_sources(discovery_fakes: DiscoveryFakes) -> None:
    run = run_discovery(names=["tubelab"])

    assert list(run.sources) == ["tubelab"]
    assert (discovery_fakes.reddit.requests, discovery_fakes.perplexity.requests, discovery_fakes.apify.requests) == (
        [], [], []
    )


def test_unconfigured_sources_are_reported_skipped_with_what_they_would_add(no_discovery_sources) -> None:
    run = run_discovery()

    for source in build_sources(no_discovery_sources):
        report = run.sources[source.name]
        assert report["status"] == "skipped"
        assert report["detail"] == f"not configured; would add: {source.describe()}"
    assert run.fetched == 0


def test_a_configured_source_runs_next_to_unconfigured_ones(discovery_fakes: DiscoveryFakes, settings) -> None:
    settings.PERPLEXITY_API_KEY = ""
    settings.APIFY_TOKEN = ""

    run = run_discovery()

    assert {name: r["status"] for name, r in run.sources.items()} == {
        "reddit": "ok", "perplexity": "skipped", "tubelab": "ok", "apify": "skipped",
    }
    assert run.status == DiscoveryRun.Status.DONE


def test_a_run_where_every_configured_source_fails_is_recorded_failed(discovery_fakes: DiscoveryFakes) -> None:
    for name in ("perplexity", "tubelab", "apify"):
        discovery_fakes.fake(name).fail_next(500)
    discovery_fakes.reddit.fail_next(500, path="/r/", times=10)

    run = run_discovery()

    assert run.status == DiscoveryRun.Status.FAILED
    assert {r["status"] for r in run.sources.values()} == {"failed"}


class InterruptedSource:
    """A configured source whose fetch is interrupted, as Ctrl-C on `manage.py discover` would."""

    name = "reddit"

    def __init__(self, error: BaseException):
        self.error = error

    def is_configured(self) -> bool:
        return True

    def describe(self) -> str:
        return "interrupted"

    def fetch(self, *, limit: int, meter) -> list[Candidate]:
        raise self.error


def test_a_run_interrupted_midway_is_recorded_stopped_with_why_and_the_interruption_goes_on(
    categories, settings
) -> None:
    settings.PERPLEXITY_API_KEY = "pplx-secret-value"
    interruption = KeyboardInterrupt("stopped while asking with key pplx-secret-value")

    with mock.patch("topics.discovery.build_sources", lambda settings, names=None: [InterruptedSource(interruption)]):
        with pytest.raises(KeyboardInterrupt):
            run_discovery()

    [run] = DiscoveryRun.objects.all()
    assert run.status == DiscoveryRun.Status.STOPPED and run.finished_at is not None
    assert run.error.startswith("Stopped by KeyboardInterrupt: stopped while asking with key ***.")
    assert "pplx-secret-value" not in run.error
    assert Topic.objects.count() == 0


def test_the_tasks_soft_time_limit_stops_the_run_before_the_next_source(categories) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    class NextSource(InterruptedSource):
        name = "apify"
        fetch = mock.Mock(return_value=[])

    sources = [InterruptedSource(SoftTimeLimitExceeded("SoftTimeLimitExceeded()")), NextSource(None)]
    with mock.patch("topics.discovery.build_sources", lambda settings, names=None: sources):
        with pytest.raises(SoftTimeLimitExceeded):
            run_discovery()

    NextSource.fetch.assert_not_called()
    run = DiscoveryRun.objects.get()
    assert run.status == DiscoveryRun.Status.STOPPED
    assert run.error.startswith("Stopped by SoftTimeLimitExceeded")


def test_an_interruption_without_a_message_is_named_alone(categories) -> None:
    with mock.patch("topics.discovery.build_sources", lambda settings, names=None: [InterruptedSource(SystemExit())]):
        with pytest.raises(SystemExit):
            run_discovery()

    assert DiscoveryRun.objects.get().error.startswith("Stopped by SystemExit. Nothing it found was stored")


def test_the_sweeper_closes_a_run_a_crash_left_running_and_leaves_a_recent_one(categories) -> None:
    from batches.sweeper import sweep
    from topics.discovery import abandoned_after

    now = timezone.now()
    abandoned = DiscoveryRun.objects.create(started_at=now - abandoned_after() - timedelta(minutes=1))
    working = DiscoveryRun.objects.create(started_at=now - abandoned_after() + timedelta(minutes=5))
    finished = DiscoveryRun.objects.create(started_at=now - timedelta(days=2), status=DiscoveryRun.Status.DONE)

    assert sweep(now=now).closed_discovery_runs == 1
    assert sweep(now=now).closed_discovery_runs == 0

    abandoned.refresh_from_db(), working.refresh_from_db(), finished.refresh_from_db()
    assert abandoned.status == DiscoveryRun.Status.STOPPED and abandoned.finished_at == now
    assert "nothing had worked on it for 60 minutes" in abandoned.error
    assert working.status == DiscoveryRun.Status.RUNNING and working.error == ""
    assert finished.status == DiscoveryRun.Status.DONE and finished.error == ""


def test_a_run_the_sweeper_gave_up_on_that_then_finishes_is_done_without_the_sweepers_reason(categories) -> None:
    from topics.discovery import abandoned_after, close_abandoned_runs

    class SlowSource(InterruptedSource):
        """Still fetching when the sweeper's bound passes (a source slower than its timeouts promise)."""

        def fetch(self, *, limit: int, meter) -> list[Candidate]:
            assert close_abandoned_runs(now=timezone.now() + abandoned_after() + timedelta(minutes=1)) == 1
            return [candidate("Etsy cuts seller fees for handmade shops")]

    with mock.patch("topics.discovery.build_sources", lambda settings, names=None: [SlowSource(None)]):
        run = run_discovery()

    run.refresh_from_db()
    assert run.status == DiscoveryRun.Status.DONE and run.created == 1
    assert run.error == ""


def test_a_run_is_given_up_only_after_twice_a_longer_celery_time_limit(settings) -> None:
    from topics.discovery import abandoned_after

    settings.CELERY_TASK_TIME_LIMIT = 600
    assert abandoned_after() == timedelta(hours=1)
    settings.CELERY_TASK_TIME_LIMIT = 2400
    assert abandoned_after() == timedelta(minutes=80)


def test_the_discovery_runs_page_shows_why_a_run_stopped(admin_client) -> None:
    DiscoveryRun.objects.create(status=DiscoveryRun.Status.STOPPED,
                                error="Stopped by OperationalError: <b>disk I/O error</b>.")

    page = admin_client.get("/admin/topics/discoveryrun/").content.decode()

    assert "Stopped by OperationalError: &lt;b&gt;disk I/O error&lt;/b&gt;." in page
    assert "Stopped before finishing" in page


# --- cost ---------------------------------------------------------------------------------------------------


def ledger(provider: str) -> list[CostLedgerEntry]:
    return list(CostLedgerEntry.objects.filter(provider=provider).order_by("pk"))


def test_perplexity_calls_are_settled_in_the_ledger_at_the_cost_the_api_reported(
    discovery_fakes: DiscoveryFakes, settings
) -> None:
    settings.PERPLEXITY_CATEGORIES = {"shipping_logistics": "shipping", "pricing_margins": "pricing and fees"}

    run_discovery(names=["perplexity"])

    entries = ledger("perplexity")
    assert len(entries) == len(discovery_fakes.perplexity.requests) == 2
    assert [e.status for e in entries] == [CostLedgerEntry.Status.SETTLED] * 2
    assert [e.amount_usd for e in entries] == [
        Decimal(str(cost)).quantize(Decimal("0.000001")) for cost in discovery_fakes.perplexity.costs
    ]


def test_tubelab_searches_are_settled_in_the_ledger_at_their_credit_price(
    discovery_fakes: DiscoveryFakes, settings
) -> None:
    settings.TUBELAB_QUERIES = ["shopify store", "amazon fba"]
    settings.TUBELAB_USD_PER_CREDIT = "0.02"

    run_discovery(names=["tubelab"])

    entries = ledger("tubelab")
    assert discovery_fakes.tubelab.credits_used == 10
    assert [(e.status, e.amount_usd) for e in entries] == [(CostLedgerEntry.Status.SETTLED, Decimal("0.10"))] * 2


def test_an_apify_run_is_settled_in_the_ledger_at_its_reported_usage(discovery_fakes: DiscoveryFakes) -> None:
    discovery_fakes.apify.usage_total_usd = 0.0421

    run_discovery(names=["apify"])

    [entry] = ledger("apify")
    assert (entry.status, entry.amount_usd, entry.reserved_usd) == (
        CostLedgerEntry.Status.SETTLED, Decimal("0.042100"), Decimal("0.500000"),
    )


def test_reddit_is_free_and_writes_no_ledger_entry(discovery_fakes: DiscoveryFakes) -> None:
    run_discovery(names=["reddit"])

    assert CostLedgerEntry.objects.count() == 0


def use_up_the_month(settings, *, cap: str, spent: str) -> None:
    settings.MONTHLY_BUDGET_USD = cap
    record_ledger_entry(
        idempotency_key="earlier-drafts", provider="anthropic", status=CostLedgerEntry.Status.SETTLED,
        reserved_usd=Decimal(spent), amount_usd=Decimal(spent),
    )


@pytest.mark.parametrize("name", ["perplexity", "tubelab", "apify"])
def test_a_used_up_monthly_cap_stops_a_paid_source_before_any_call(
    discovery_fakes: DiscoveryFakes, settings, name: str
) -> None:
    use_up_the_month(settings, cap="5", spent="5")

    run = run_discovery(names=[name])

    assert discovery_fakes.fake(name).requests == []
    assert run.sources[name]["status"] == "failed"
    assert "budget refused" in run.sources[name]["error"]
    assert "Monthly cap reached" in run.sources[name]["error"]
    assert month_spent() == Decimal("5")


def test_a_used_up_monthly_cap_leaves_the_free_source_running(discovery_fakes: DiscoveryFakes, settings) -> None:
    use_up_the_month(settings, cap="5", spent="5")

    run = run_discovery()

    assert run.sources["reddit"]["status"] == "ok"
    assert set(Topic.objects.values_list("source", flat=True)) == {"reddit"}
    assert run.status == DiscoveryRun.Status.PARTIAL


def test_a_paid_source_stopped_by_the_monthly_cap_keeps_the_topics_it_already_paid_for(
    discovery_fakes: DiscoveryFakes, settings
) -> None:
    settings.PERPLEXITY_CATEGORIES = {"shipping_logistics": "shipping", "pricing_margins": "pricing and fees"}
    use_up_the_month(settings, cap="1.00", spent="0.99")  # room for one Perplexity call, not two

    run = run_discovery(names=["perplexity"])

    assert len(discovery_fakes.perplexity.requests) == 1
    assert run.sources["perplexity"]["status"] == "failed"
    assert set(Topic.objects.values_list("title", flat=True)) == set(DISCOVERY_STORIES["perplexity"])
    assert month_spent() <= Decimal("1.00")


# --- commands, the task and the schedule ---------------------------------------------------------------------


def command(name: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def test_discover_json_prints_the_run_summary(discovery_fakes: DiscoveryFakes) -> None:
    code, out = command("discover", "--json")

    report = json.loads(out)
    assert code == 0
    assert set(report) == {"run", "status", "fetched", "new", "merged", "dropped", "sources"}
    assert (report["status"], report["fetched"], report["new"], report["merged"], report["dropped"]) == (
        "done", 8, 8, 0, 0
    )
    assert report["run"] == DiscoveryRun.objects.get().pk
    assert list(report["sources"]) == list(DISCOVERY_SOURCES)
    assert set(report["sources"]["reddit"]) == {"name", "status", "fetched", "new", "merged", "dropped", "error",
                                                "detail"}


def test_discover_source_runs_only_the_named_sources(discovery_fakes: DiscoveryFakes) -> None:
    code, out = command("discover", "--json", "--source", "reddit", "--source", "apify")

    assert code == 0
    assert list(json.loads(out)["sources"]) == ["reddit", "apify"]
    assert set(Topic.objects.values_list("source", flat=True)) == {"reddit", "apify"}


def test_discover_limit_bounds_what_each_source_fetches(discovery_fakes: DiscoveryFakes) -> None:
    code, out = command("discover", "--json", "--limit", "1")

    assert code == 0
    assert {name: r["fetched"] for name, r in json.loads(out)["sources"].items()} == dict.fromkeys(
        DISCOVERY_SOURCES, 1
    )


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_discover_refuses_a_limit_out_of_range(no_discovery_sources, limit: str) -> None:
    code, out = command("discover", "--limit", limit)

    assert code == 1
    assert "--limit must be between 1 and 1000" in out
    assert DiscoveryRun.objects.count() == 0


def test_discover_refuses_an_unknown_source(no_discovery_sources) -> None:
    with pytest.raises(CommandError, match="invalid choice: 'twitter'"):
        call_command("discover", "--source", "twitter", stdout=io.StringIO())


def test_discover_prints_a_line_per_source_with_the_skipped_ones_and_what_they_would_add(
    discovery_fakes: DiscoveryFakes, settings
) -> None:
    settings.APIFY_TOKEN = ""

    code, out = command("discover")

    assert code == 0
    assert out.splitlines()[0] == "Discovery done: 6 fetched, 6 new, 0 merged, 0 dropped."
    assert "  reddit: ok, 2 fetched, 2 new, 0 merged, 0 dropped" in out
    assert "  apify: skipped (not configured; would add: Apify: items scraped by the" in out


def test_discover_prints_why_a_source_failed(discovery_fakes: DiscoveryFakes) -> None:
    discovery_fakes.tubelab.fail_next(429, headers={"Retry-After": "30"})

    code, out = command("discover")

    assert code == 0
    assert "Discovery some sources failed:" in out
    assert "  tubelab: failed, 0 fetched, 0 new, 0 merged, 0 dropped — TubeLab: rate-limited (HTTP 429)" in out


def test_discover_exits_1_when_every_configured_source_fails(discovery_fakes: DiscoveryFakes, settings) -> None:
    for name in ("REDDIT_CLIENT_ID", "TUBELAB_API_KEY", "APIFY_TOKEN"):
        setattr(settings, name, "")
    settings.PERPLEXITY_API_KEY = "pplx-wrong-key-00000000"

    code, out = command("discover")

    assert code == 1
    assert "every configured source failed" in out


def test_discover_exits_1_with_a_clear_line_when_no_source_is_configured(no_discovery_sources) -> None:
    code, out = command("discover")

    assert code == 1
    assert "no discovery source is configured" in out and "PERPLEXITY_API_KEY" in out


def test_discover_json_prints_one_object_and_exits_1_when_no_source_is_configured(no_discovery_sources) -> None:
    code, out = command("discover", "--json")

    assert code == 1
    assert {report["status"] for report in json.loads(out.splitlines()[0])["sources"].values()} == {"skipped"}


def test_runbatch_discover_only_exits_1_when_no_source_is_configured(no_discovery_sources) -> None:
    code, out = command("runbatch", "--discover-only")

    assert code == 1
    assert "no discovery source is configured" in out


def test_runbatch_discover_only_runs_discovery_and_starts_no_batch(discovery_fakes: DiscoveryFakes) -> None:
    code, out = command("runbatch", "--discover-only", "--json")

    report = json.loads(out)
    assert code == 0
    assert (report["status"], report["new"]) == ("done", 8)
    assert Topic.objects.count() == 8
    assert Batch.objects.count() == 0


def test_runbatch_discover_only_exits_1_when_every_configured_source_fails(no_discovery_sources, refused_url) -> None:
    no_discovery_sources.PERPLEXITY_API_KEY = "pplx-some-key-00000000"
    no_discovery_sources.PERPLEXITY_BASE_URL = refused_url

    code, out = command("runbatch", "--discover-only")

    assert code == 1
    assert "discovery failed: every configured source failed" in out


def test_the_discover_topics_task_runs_discovery_and_returns_the_run_id(discovery_fakes: DiscoveryFakes) -> None:
    from topics.tasks import discover_topics

    run_id = discover_topics.apply(kwargs={"limit": 1}).get()

    run = DiscoveryRun.objects.get(pk=run_id)
    assert (run.status, run.fetched) == (DiscoveryRun.Status.DONE, 4)


def test_the_beat_schedule_runs_the_discover_topics_task(db) -> None:
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import ModelEntry

    from newsroom.celery import app
    from topics.tasks import discover_topics

    tasks = list(PeriodicTask.objects.filter(task=discover_topics.name, enabled=True))

    assert len(tasks) == 1
    assert tasks[0].task in app.tasks
    entry = ModelEntry(tasks[0], app=app)
    assert entry.schedule.remaining_estimate(timezone.now()) <= timedelta(days=7)


# --- faults -------------------------------------------------------------------------------------------------

FAULTS = ("down", "rate_limited", "malformed_json", "unexpected_shape", "rejected_key")
REASONS = {
    "down": "cannot reach 127.0.0.1",
    "rate_limited": "rate-limited (HTTP 429)",
    "malformed_json": "was not valid JSON",
    "unexpected_shape": "had an unexpected shape",
    "rejected_key": "rejected",
}
BASE_URL_SETTINGS = {
    "reddit": "REDDIT_BASE_URL", "perplexity": "PERPLEXITY_BASE_URL", "tubelab": "TUBELAB_BASE_URL",
    "apify": "APIFY_BASE_URL",
}
KEY_SETTINGS = {
    "reddit": "REDDIT_CLIENT_SECRET", "perplexity": "PERPLEXITY_API_KEY", "tubelab": "TUBELAB_API_KEY",
    "apify": "APIFY_TOKEN",
}
WRONG_KEYS = {
    "reddit": "reddit-wrong-secret-7Yq3", "perplexity": "pplx-wrong-key-4Rt8", "tubelab": "tl-wrong-key-2Wx6",
    "apify": "apify_api_WRONGtoken9Kz1",
}
FAULT_CASES = [pytest.param(name, fault, id=f"{name}-{fault}") for name in DISCOVERY_SOURCES for fault in FAULTS]


def inject(fault: str, name: str, *, fakes: DiscoveryFakes, settings, refused_url: str) -> None:
    fake = fakes.fake(name)
    where = {"path": "/r/"} if name == "reddit" else {}  # Reddit: let the token exchange through
    if fault == "down":
        setattr(settings, BASE_URL_SETTINGS[name], refused_url)
    elif fault == "rate_limited":
        fake.fail_next(429, headers={"Retry-After": "30"}, **where)
    elif fault == "malformed_json":
        fake.malformed_next(**where)
    elif fault == "unexpected_shape":
        fake.unexpected_next(**where)
    else:
        setattr(settings, KEY_SETTINGS[name], WRONG_KEYS[name])


@pytest.fixture
def failing_run(discovery_fakes, settings, refused_url, caplog) -> Callable[[str, str], DiscoveryRun]:
    """A discovery run of all four sources, with one fault injected in one of them; logs captured from DEBUG."""

    def run(name: str, fault: str) -> DiscoveryRun:
        caplog.set_level(logging.DEBUG)
        inject(fault, name, fakes=discovery_fakes, settings=settings, refused_url=refused_url)
        return run_discovery()

    return run


@pytest.mark.parametrize(("name", "fault"), FAULT_CASES)
def test_a_source_that_fails_is_recorded_failed_with_the_reason(failing_run, name: str, fault: str) -> None:
    run = failing_run(name, fault)

    report = run.sources[name]
    assert report["status"] == "failed"
    assert REASONS[fault] in report["error"]
    assert run.status == DiscoveryRun.Status.PARTIAL


@pytest.mark.parametrize(("name", "fault"), FAULT_CASES)
def test_the_other_sources_still_run_when_one_fails(failing_run, make_topic, name: str, fault: str) -> None:
    stored = make_topic("Founders compare notes on hiring a first employee", source="import")

    run = failing_run(name, fault)

    others = [other for other in DISCOVERY_SOURCES if other != name]
    assert {other: run.sources[other]["status"] for other in others} == dict.fromkeys(others, "ok")
    expected = {title for other in others for title in DISCOVERY_STORIES[other]} | {stored.title}
    assert sorted(Topic.objects.values_list("title", flat=True)) == sorted(expected)


@pytest.mark.parametrize(("name", "fault"), FAULT_CASES)
def test_no_secret_appears_in_the_run_summary_or_the_logs_when_a_source_fails(
    failing_run, caplog, discovery_fakes: DiscoveryFakes, name: str, fault: str
) -> None:
    run = failing_run(name, fault)

    summary = json.dumps(run.sources)
    logs = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    for secret in [*discovery_fakes.secrets, WRONG_KEYS[name]]:
        assert secret not in summary
        assert secret not in logs


@pytest.mark.parametrize("name", DISCOVERY_SOURCES)
def test_topics_stored_before_a_source_fails_are_neither_lost_nor_duplicated(
    discovery_fakes: DiscoveryFakes, settings, refused_url, name: str
) -> None:
    run_discovery()
    before = {t.pk: (t.title, t.sources, t.score, t.category_id, t.status) for t in Topic.objects.all()}
    discovery_fakes.serve({s: DISCOVERY_STORIES[s] + MORE_DISCOVERY_STORIES[s] for s in DISCOVERY_SOURCES})
    inject("malformed_json", name, fakes=discovery_fakes, settings=settings, refused_url=refused_url)

    run = run_discovery()

    after = {t.pk: (t.title, t.sources, t.score, t.category_id, t.status) for t in Topic.objects.all()}
    assert {pk: after[pk] for pk in before} == before
    new_titles = sorted(after[pk][0] for pk in set(after) - set(before))
    assert new_titles == sorted(MORE_DISCOVERY_STORIES[s][0] for s in DISCOVERY_SOURCES if s != name)
    assert run.sources[name]["status"] == "failed"


@pytest.mark.parametrize("name", DISCOVERY_SOURCES)
def test_the_admin_shows_why_a_source_failed_without_its_key(failing_run, admin_client, name: str) -> None:
    run = failing_run(name, "rejected_key")

    page = admin_client.get(f"/admin/topics/discoveryrun/{run.pk}/change/", secure=True).content.decode()

    assert "rejected" in page
    assert WRONG_KEYS[name] not in page


# --- at scale -----------------------------------------------------------------------------------------------


def test_near_duplicates_among_300_candidates_are_merged_recording_both_sources(categories) -> None:
    candidates, stories = make_candidates(300, near_duplicate_share=0.3, seed=5)

    run = discover(candidates)

    assert (run.created, run.merged, Topic.objects.count()) == (stories, 90, stories)
    assert sorted(len(sources) for sources in Topic.objects.values_list("sources", flat=True)) == (
        [1] * (stories - 90) + [2] * 90
    )


def test_a_second_identical_run_of_300_candidates_creates_no_topics(categories) -> None:
    candidates, stories = make_candidates(300, near_duplicate_share=0.3, seed=5)
    discover(candidates)
    before = sorted(Topic.objects.values_list("pk", "sources", "score"))

    again = discover(candidates)

    assert sorted(Topic.objects.values_list("pk", "sources", "score")) == before
    assert (again.created, again.merged, again.dropped) == (0, 0, 300)



# --- at scale: the work per candidate (issue 12) ---------------------------------------------------------------


def test_each_candidates_url_is_canonicalised_once(categories) -> None:
    from topics import discovery

    candidates, stories = make_candidates(20, near_duplicate_share=0.3, seed=9)

    with mock.patch.object(discovery, "canonical_url", wraps=discovery.canonical_url) as canonicalise:
        store(*candidates)

    assert canonicalise.call_count == 20
    assert Topic.objects.count() == stories
    assert not Topic.objects.filter(canonical_url__contains="utm_").exists()


def test_a_run_reads_each_categorys_keywords_once(categories, keyword_reads) -> None:
    store(*make_candidates(30, near_duplicate_share=0, seed=9)[0])

    assert Topic.objects.count() == 30
    assert sorted(keyword_reads) == sorted(categories)


def test_the_recent_window_is_read_through_the_created_at_index(db) -> None:
    from django.db import connection

    from topics.discovery import recent_window

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # a tiny table: make the planner show whether the index can serve
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
    plan = recent_window(now=NOW).explain()

    assert "topic_created_id" in plan


@pytest.mark.parametrize("statistics", ["none", "most URLs blank"])
def test_the_lookups_of_stored_keys_and_urls_go_through_their_indexes_whatever_the_statistics(categories,
                                                                                             statistics) -> None:
    # A freshly filled table has no planner statistics (the development server runs with autovacuum off): the
    # lookups "is this candidate stored already?" (by source and id) and "which topic has this URL?" must still be
    # index probes, never a read of the whole table (a second per run of 20,000 candidates with "IN (...)"). And
    # with statistics that say nearly every stored URL is blank, a full index on the URL was priced as reading
    # every row, so PostgreSQL read the table once per URL (16 s for 500 candidates against 400,000 topics).
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.topics.test_importing import plan

    first, _ = make_candidates(3000, near_duplicate_share=0, seed=21)
    if statistics == "most URLs blank":
        first = [dataclasses.replace(c, url="") if n >= 10 else c for n, c in enumerate(first)]
    store(*first)
    if statistics != "none":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE topics_topic")  # only this table: its figures outlive the test
    later, _ = make_candidates(600, near_duplicate_share=0, seed=22)
    later = [dataclasses.replace(c, url=first[n % 10].url) if n < 300 else c for n, c in enumerate(later)]

    with CaptureQueriesContext(connection) as queries:
        store(*later)

    lookups = {column: [q["sql"] for q in queries if q["sql"].startswith("SELECT")
                         and (f"{column} = " in q["sql"] or f"{column} IN (" in q["sql"])]
               for column in ("external_id", "canonical_url")}
    assert all(lookups.values()), lookups
    for sql in lookups["external_id"] + lookups["canonical_url"]:
        shown = plan(sql)
        if connection.vendor == "postgresql":
            assert "Seq Scan on topics_topic" not in shown and "Rows Removed" not in shown, shown
            assert "Index" in shown, shown
        else:
            assert "SCAN t " not in shown + " " and "USING" in shown and "INDEX" in shown, shown


def test_a_url_stored_on_several_older_topics_joins_the_newest_of_them(make_topic) -> None:
    url = "https://news.example.com/usps-rates"
    newer = make_topic("USPS raises Ground Advantage rates by 7.8%", source="reddit", sources=["reddit"],
                       canonical_url=url)
    older = make_topic("Parcel carriers reprice for the holidays", source="apify", sources=["apify"],
                       canonical_url=url)  # the higher id, but stored earlier
    Topic.objects.filter(pk=newer.pk).update(created_at=NOW - timedelta(days=40))
    Topic.objects.filter(pk=older.pk).update(created_at=NOW - timedelta(days=90))

    store(candidate("Carriers change parcel prices", source="perplexity", url=url + "?utm_source=x"))

    assert Topic.objects.count() == 2
    assert Topic.objects.get(pk=newer.pk).sources == ["reddit", "perplexity"]
    assert Topic.objects.get(pk=older.pk).sources == ["apify"]


def test_inserting_rows_skips_one_already_stored_and_stores_the_rest_exactly(categories) -> None:
    from topics.discovery import insert_ignoring_conflicts

    stored = Topic.objects.create(title="Stored first", source="reddit", external_id="t3_1",
                                  category=categories["pricing_margins"])
    published = datetime(2026, 11, 3, 14, 5, 9, 120000, tzinfo=timezone.get_current_timezone())
    racing = {"title": "A racing run's copy", "source": "reddit", "external_id": "t3_1",
              "category_id": stored.category_id, "created_at": NOW, "updated_at": NOW}
    fresh = {"title": "Émoji 🛒 and \"quotes\"\ttab", "summary": "a\nb\\c", "source": "apify", "external_id": "x-2",
             "sources": ["apify", "reddit"], "engagement": {"apify": {"views": 1.5}}, "raw": {"k": [1, None, "é"]},
             "score": 12.25, "published_at": published, "category_id": categories["shipping_logistics"].pk,
             "created_at": NOW, "updated_at": NOW}

    insert_ignoring_conflicts(Topic, [racing, fresh])

    assert Topic.objects.get(source="reddit", external_id="t3_1").title == "Stored first"
    topic = Topic.objects.get(source="apify", external_id="x-2")
    assert (topic.title, topic.summary, topic.sources, topic.engagement, topic.raw, topic.score) == (
        fresh["title"], fresh["summary"], fresh["sources"], fresh["engagement"], fresh["raw"], 12.25)
    assert (topic.published_at, topic.created_at, topic.category.slug) == (published, NOW, "shipping_logistics")
    assert (topic.status, topic.category_locked, topic.url) == (Topic.Status.NEW, False, "")  # the fields' defaults
    assert Topic.objects.count() == 2
