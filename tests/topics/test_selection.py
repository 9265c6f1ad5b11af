from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from batches.models import Batch, Newsletter
from topics.dedupe import is_near_duplicate
from topics.models import Category, Topic
from topics.selection import candidate_pool, select_diverse

pytestmark = pytest.mark.django_db

SLUGS = [
    "shipping_logistics",
    "pricing_margins",
    "conversion_optimization",
    "ads_marketing",
    "inventory_management",
    "customer_retention",
    "product_sourcing",
    "platform_tools",
]


def distinct_title(n: int) -> str:
    """A title that shares no word with any other `distinct_title`, so no two are near-duplicates."""
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    return " ".join(f"w{digest[i:i + 8]}" for i in range(0, 32, 8))


@pytest.fixture
def topic(make_topic):
    counter = itertools.count(1000)

    def make(category: str, score: float, *, title: str = "", **extra) -> Topic:
        return make_topic(title or distinct_title(next(counter)), category=category, score=score, **extra)

    return make


def choose(size: int, *, include_new: bool = False) -> list[Topic]:
    return select_diverse(pool=candidate_pool(include_new=include_new), size=size)


def use_in_newsletter(topic: Topic, status: str) -> Newsletter:
    batch = Batch.objects.create(budget_usd=Decimal("40"), model="claude-sonnet-4-6")
    return Newsletter.objects.create(batch=batch, topic=topic, status=status)


def test_it_covers_eight_categories_when_eight_are_populated(topic):
    for slug in SLUGS:
        topic(slug, 5)
        topic(slug, 4)
    for score in range(90, 100):  # one category far ahead of the others
        topic("ads_marketing", score)

    chosen = choose(8)

    assert sorted(t.category.slug for t in chosen) == sorted(SLUGS)


def test_it_takes_each_categorys_best_topic_in_the_first_pass(topic):
    best = {}
    for n, slug in enumerate(SLUGS):
        topic(slug, 10 + n)
        best[slug] = topic(slug, 50 + n)
        topic(slug, 20 + n)

    chosen = choose(8)

    assert {t.pk for t in chosen} == {t.pk for t in best.values()}


def test_it_lists_the_first_pass_best_first(topic):
    for slug, score in zip(SLUGS, [12, 80, 33, 47, 5, 61, 29, 70]):
        topic(slug, score)

    chosen = choose(8)

    assert [t.score for t in chosen] == sorted((t.score for t in chosen), reverse=True)


def test_it_stops_the_first_pass_at_size_keeping_the_strongest_categories(topic):
    for slug, score in zip(SLUGS, [12, 80, 33, 47, 5, 61, 29, 70]):
        topic(slug, score)

    chosen = choose(3)

    assert [t.category.slug for t in chosen] == ["pricing_margins", "platform_tools", "customer_retention"]


def test_it_fills_the_second_pass_with_the_best_remaining_topics_of_any_category(topic):
    ship_leader = topic("shipping_logistics", 90)
    ship_second = topic("shipping_logistics", 85)
    ship_third = topic("shipping_logistics", 80)
    topic("shipping_logistics", 1)
    price_leader = topic("pricing_margins", 10)
    topic("pricing_margins", 9)

    chosen = choose(4)

    assert [t.pk for t in chosen] == [ship_leader.pk, price_leader.pk, ship_second.pk, ship_third.pk]


def test_it_breaks_a_score_tie_by_the_newest_publication_before_the_id(topic):
    newer = topic("shipping_logistics", 50, published_at=datetime(2026, 11, 20, tzinfo=timezone.utc))
    older = topic("shipping_logistics", 50, published_at=datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert older.pk > newer.pk

    assert [t.pk for t in choose(1)] == [newer.pk]


def test_it_breaks_a_score_and_date_tie_by_the_higher_id(topic):
    when = datetime(2026, 11, 20, tzinfo=timezone.utc)
    first = topic("shipping_logistics", 50, published_at=when)
    second = topic("shipping_logistics", 50, published_at=when)

    assert [t.pk for t in choose(2)] == [second.pk, first.pk]


def test_it_ranks_an_undated_topic_after_a_dated_one_with_the_same_score(topic):
    dated = topic("shipping_logistics", 50, published_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    undated = topic("shipping_logistics", 50)
    assert undated.pk > dated.pk

    assert [t.pk for t in choose(2)] == [dated.pk, undated.pk]


def test_it_breaks_a_tie_between_category_leaders_by_the_newest_publication(topic):
    newer = topic("shipping_logistics", 50, published_at=datetime(2026, 11, 20, tzinfo=timezone.utc))
    topic("pricing_margins", 50, published_at=datetime(2026, 11, 1, tzinfo=timezone.utc))

    assert [t.pk for t in choose(1)] == [newer.pk]


def test_it_breaks_a_tie_between_category_leaders_by_the_higher_id(topic):
    when = datetime(2026, 11, 20, tzinfo=timezone.utc)
    topic("shipping_logistics", 50, published_at=when)
    later_id = topic("pricing_margins", 50, published_at=when)

    assert [t.pk for t in choose(1)] == [later_id.pk]


def test_it_breaks_a_tie_in_the_second_pass_by_the_newest_publication(topic):
    ship_leader = topic("shipping_logistics", 90)
    newer = topic("shipping_logistics", 50, published_at=datetime(2026, 11, 20, tzinfo=timezone.utc))
    price_leader = topic("pricing_margins", 80)
    topic("pricing_margins", 50, published_at=datetime(2026, 11, 1, tzinfo=timezone.utc))

    assert [t.pk for t in choose(3)] == [ship_leader.pk, price_leader.pk, newer.pk]


def test_it_gives_the_same_answer_every_time(topic):
    for n in range(30):
        topic(SLUGS[n % 3], n % 4)

    assert [t.pk for t in choose(5)] == [t.pk for t in choose(5)]


def test_it_returns_the_whole_pool_when_it_is_smaller_than_size(topic):
    created = {topic("shipping_logistics", 5).pk, topic("shipping_logistics", 3).pk, topic("ads_marketing", 1).pk}

    assert {t.pk for t in choose(8)} == created


def test_it_copes_with_categories_that_have_no_topics(topic):
    leader = topic("inventory_management", 20)
    second = topic("inventory_management", 10)

    assert [t.pk for t in choose(8)] == [leader.pk, second.pk]


def test_it_returns_nothing_from_an_empty_pool(categories):
    assert choose(8) == []


def test_it_copes_with_a_category_an_editor_added(topic, categories):
    extra = Category.objects.create(slug="wholesale_b2b", name="Wholesale", position=9)
    for slug in SLUGS:
        topic(slug, 5)
    extra_topic = topic("platform_tools", 99)
    extra_topic.override_category(extra)

    chosen = choose(9)

    assert len({t.category_id for t in chosen}) == 9


def test_it_leaves_out_topics_used_in_a_generated_newsletter(topic):
    used = topic("shipping_logistics", 90)
    fresh = topic("shipping_logistics", 10)
    use_in_newsletter(used, Newsletter.Status.GENERATED)

    assert [t.pk for t in choose(8)] == [fresh.pk]


def test_it_leaves_out_topics_a_batch_is_drafting_now(topic):
    taken = topic("shipping_logistics", 90)
    use_in_newsletter(taken, Newsletter.Status.GENERATING)

    assert choose(8) == []


def test_it_offers_again_a_topic_whose_draft_failed(topic):
    failed = topic("shipping_logistics", 90)
    use_in_newsletter(failed, Newsletter.Status.FAILED)

    assert [t.pk for t in choose(8)] == [failed.pk]


def test_it_leaves_out_rejected_topics(topic):
    topic("shipping_logistics", 90, status=Topic.Status.REJECTED)
    approved = topic("shipping_logistics", 10)

    assert [t.pk for t in choose(8, include_new=True)] == [approved.pk]


def test_it_leaves_out_unreviewed_topics_by_default(topic):
    topic("shipping_logistics", 90, status=Topic.Status.NEW)
    approved = topic("shipping_logistics", 10)

    assert [t.pk for t in choose(8)] == [approved.pk]


def test_it_includes_unreviewed_topics_when_asked(topic):
    new = topic("shipping_logistics", 90, status=Topic.Status.NEW)
    approved = topic("shipping_logistics", 10)

    assert [t.pk for t in choose(8, include_new=True)] == [new.pk, approved.pk]


def test_it_draws_only_from_the_given_topics(topic):
    topic("shipping_logistics", 90)
    wanted = topic("pricing_margins", 10)

    pool = candidate_pool(topic_ids=[wanted.pk])

    assert [t.pk for t in select_diverse(pool=pool, size=8)] == [wanted.pk]


def test_it_never_chooses_two_near_duplicates_in_the_second_pass(topic):
    story = topic("shipping_logistics", 90, title="USPS announces 2027 Ground Advantage rate increase of 7.8%")
    topic(
        "shipping_logistics", 85,
        title="USPS Ground Advantage rates going up 7.8% in January 2027 - what this means for small shippers",
    )
    other = topic("shipping_logistics", 20, title="FedEx Ground to end Sunday residential delivery in rural ZIP codes")
    pricing = topic("pricing_margins", 10)

    assert [t.pk for t in choose(3)] == [story.pk, pricing.pk, other.pk]


def test_it_passes_over_a_category_leader_that_repeats_a_chosen_story(topic):
    story = topic(
        "pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1"
    )
    topic(
        "platform_tools", 80,
        title="35% tariff on Chinese goods starts Dec 1 - how are you protecting your margins?",
    )
    platform = topic("platform_tools", 40, title="WooCommerce 10.0 released: what's new for store owners")

    assert [t.pk for t in choose(2)] == [story.pk, platform.pk]


def test_it_looks_past_a_long_run_of_near_duplicates(topic):
    title = "Meta ads CPM spiked 40% this week before Black Friday"
    repeats = [topic("ads_marketing", 90 - n, title=f"{title} ({n})") for n in range(40)]
    different = topic("ads_marketing", 1, title="Influencer campaign results: 212 nano creators, full numbers")

    assert [t.pk for t in choose(2)] == [repeats[0].pk, different.pk]


def test_it_chooses_no_near_duplicate_pair_from_a_pool_full_of_them(topic):
    stories = [
        ("USPS announces 2027 Ground Advantage rate increase of 7.8%",
         "USPS Ground Advantage rates going up 7.8% in January 2027 - what this means for small shippers"),
        ("Meta ads CPM spiked 40% this week - anyone else seeing this before Black Friday?",
         "Meta ads CPMs spike 40% ahead of Black Friday, advertisers report"),
        ("Amazon lowers FBA capacity limits for Q1 2027, sellers scramble to adjust inventory",
         "FBA capacity limits cut again for Q1 - how are you managing inventory and reorders?"),
    ]
    for n, (a, b) in enumerate(stories):
        topic(SLUGS[n], 50 + n, title=a)
        topic(SLUGS[n + 3], 60 + n, title=b)

    chosen = choose(8)

    assert len(chosen) == len(stories)
    assert not any(is_near_duplicate(a.title, b.title) for a, b in itertools.combinations(chosen, 2))


def test_it_passes_over_a_story_a_recent_batch_already_drafted_from_another_source(topic):
    drafted = topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1")
    use_in_newsletter(drafted, Newsletter.Status.GENERATED)
    topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting your margins?")
    fresh = topic("pricing_margins", 40, title="Card processing fees compared: what 2.9% + 30 cents really costs")

    assert [t.pk for t in choose(1)] == [fresh.pk]


def test_it_takes_a_hand_picked_repost_of_a_drafted_story_as_meant(topic):
    from batches.planning import plan_batch

    drafted = topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1")
    use_in_newsletter(drafted, Newsletter.Status.GENERATED)
    repost = topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting margins?")

    assert plan_batch(size=1).topics == []
    assert [t.pk for t in plan_batch(size=1, topic_ids=[repost.pk]).topics] == [repost.pk]


def test_it_offers_a_story_again_once_its_only_draft_failed(topic):
    failed = topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1")
    use_in_newsletter(failed, Newsletter.Status.FAILED)
    topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting margins?")

    assert [t.pk for t in choose(1)] == [failed.pk]


def count_selection_queries(pool_size: int, categories: dict[str, Category]) -> int:
    Topic.objects.all().delete()
    cats = list(categories.values())
    Topic.objects.bulk_create(
        Topic(
            title=distinct_title(n), external_id=f"q{n}", score=n % 97, status=Topic.Status.APPROVED,
            category=cats[n % len(cats)],
        )
        for n in range(pool_size)
    )
    with CaptureQueriesContext(connection) as queries:
        chosen = choose(8)
    assert len(chosen) == 8
    return len(queries)


def test_it_makes_as_many_queries_for_a_large_pool_as_for_a_small_one(categories):
    assert count_selection_queries(500, categories) == count_selection_queries(50, categories)
