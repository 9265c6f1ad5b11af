from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rapidfuzz import fuzz

from topics import usage
from topics.dedupe import NEAR_DUPLICATE_THRESHOLD, is_near_duplicate, normalize_title
from topics.models import Category, Topic
from topics.selection import LeftOut, RecentStories, select_topics

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
    return select_topics(size=size, include_new=include_new).topics


def taken(topic: Topic) -> None:
    """A batch queued a draft of the topic (what batches records when it creates an item)."""
    usage.mark_taken(topic_ids=[topic.pk])


def drafted(topic: Topic) -> None:
    """A draft of the topic was saved."""
    taken(topic)
    usage.mark_drafted(topic_id=topic.pk)


def failed(topic: Topic) -> None:
    """The topic's only draft failed."""
    taken(topic)
    usage.record_outcome(topic_id=topic.pk, drafted=False)


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


def test_it_leaves_out_topics_a_draft_was_saved_from(topic):
    used = topic("shipping_logistics", 90)
    fresh = topic("shipping_logistics", 10)
    drafted(used)

    assert [t.pk for t in choose(8)] == [fresh.pk]


def test_it_leaves_out_topics_a_batch_is_drafting_now(topic):
    taken(topic("shipping_logistics", 90))

    assert choose(8) == []


def test_it_offers_again_a_topic_whose_draft_failed(topic):
    story = topic("shipping_logistics", 90)
    failed(story)

    assert [t.pk for t in choose(8)] == [story.pk]


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

    assert [t.pk for t in select_topics(size=8, topic_ids=[wanted.pk]).topics] == [wanted.pk]


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
    drafted(topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1"))
    topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting your margins?")
    fresh = topic("pricing_margins", 40, title="Card processing fees compared: what 2.9% + 30 cents really costs")

    assert [t.pk for t in choose(1)] == [fresh.pk]


def test_it_takes_a_hand_picked_repost_of_a_drafted_story_as_meant(topic):
    drafted(topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1"))
    repost = topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting margins?")

    assert select_topics(size=1).topics == []
    assert [t.pk for t in select_topics(size=1, topic_ids=[repost.pk]).topics] == [repost.pk]


def test_it_offers_a_story_again_once_its_only_draft_failed(topic):
    story = topic("pricing_margins", 93, title="US raises tariffs on Chinese consumer goods to 35%, effective December 1")
    failed(story)
    topic("pricing_margins", 80, title="35% tariff on Chinese goods starts Dec 1 - how are you protecting margins?")

    assert [t.pk for t in choose(1)] == [story.pk]


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


@pytest.mark.parametrize("include_new", [False, True])
def test_a_selection_makes_one_query_per_kind_of_read_on_postgresql(topic, include_new):
    for n, slug in enumerate(SLUGS):
        drafted(topic(slug, 90 - n))
        topic(slug, 50 - n)
        topic(slug, 40 - n, status=Topic.Status.NEW)

    with CaptureQueriesContext(connection) as queries:
        chosen = choose(8, include_new=include_new)

    assert len(chosen) == 8
    # The categories, the recent stories, every head, the chosen topics whole, the drafted count: one query each
    # on PostgreSQL (UNION ALL); on SQLite, where a query is no round trip, one per used state and per head.
    heads = len(SLUGS) * (2 if include_new else 1)
    expected = 5 if connection.vendor == "postgresql" else 1 + 2 + heads + 1 + 2
    assert len(queries) == expected, [q["sql"][:120] for q in queries.captured_queries]


def test_the_chosen_topics_come_whole_with_their_categories(topic):
    made = {slug: topic(slug, 10 + n, summary=f"Summary {n}") for n, slug in enumerate(SLUGS)}

    chosen = choose(8)

    with CaptureQueriesContext(connection) as queries:
        seen = {t.category.slug: (t.pk, t.title, t.summary, t.url, t.status) for t in chosen}
    assert len(queries) == 0  # nothing deferred but what a source sent (raw, engagement)
    assert seen == {slug: (t.pk, t.title, t.summary, t.url, t.status) for slug, t in made.items()}
    assert [type(t) for t in chosen] == [Topic] * 8


# --- Categories ranked by what may still be chosen (issue 10: the figures of a desk with earlier batches) -------

REPEATS = [
    # (category, score, title of the new topic, title of the story a recent batch drafted)
    ("shipping_logistics", 70, "USPS Ground Advantage rates going up 7.8% in January - what it means for you",
     "USPS announces 2027 Ground Advantage rate increase of 7.8%"),
    ("pricing_margins", 65, "35% tariff on Chinese goods starts Dec 1 - how are you protecting your margins?",
     "US raises tariffs on Chinese consumer goods to 35%, effective December 1"),
    ("ads_marketing", 60, "Meta ads CPMs spike 40% ahead of Black Friday, advertisers report",
     "Meta ads CPM spiked 40% this week before Black Friday"),
]


@pytest.fixture
def desk_after_earlier_batches(topic):
    """Three categories led by repeats of recently drafted stories; three others led by fresh, eligible topics."""
    for n, (slug, score, title, story) in enumerate(REPEATS):
        drafted(topic("platform_tools", 10 + n, title=story))
        topic(slug, score, title=title)
    seconds = {slug: topic(slug, score) for slug, score in
               [("shipping_logistics", 36.2), ("pricing_margins", 35.4), ("ads_marketing", 47.9)]}
    leaders = {slug: topic(slug, score) for slug, score in
               [("inventory_management", 54.8), ("customer_retention", 50.9), ("product_sourcing", 49.5)]}
    return seconds, leaders


def test_a_batch_of_one_takes_the_best_topic_that_may_still_be_drafted(desk_after_earlier_batches):
    _, leaders = desk_after_earlier_batches

    assert [t.score for t in choose(1)] == [54.8]
    assert [t.pk for t in choose(1)] == [leaders["inventory_management"].pk]


def test_a_batch_of_three_takes_the_three_categories_with_the_best_eligible_topics(desk_after_earlier_batches):
    assert [t.score for t in choose(3)] == [54.8, 50.9, 49.5]


def test_a_category_led_by_a_repeat_still_offers_its_next_topic_in_its_turn(desk_after_earlier_batches):
    assert [t.score for t in choose(6)] == [54.8, 50.9, 49.5, 47.9, 36.2, 35.4]


def test_it_says_how_many_repeats_of_recent_stories_it_passed_over(desk_after_earlier_batches):
    assert select_topics(size=1).left_out == LeftOut(recent_repeat=3, already_drafted=3)


def test_it_counts_only_repeats_that_ranked_above_the_last_topic_chosen(topic):
    drafted(topic("platform_tools", 5, title=REPEATS[0][3]))
    topic("shipping_logistics", 20, title=REPEATS[0][2])  # a repeat, but below everything chosen
    for slug in ("pricing_margins", "ads_marketing"):
        topic(slug, 50)

    assert select_topics(size=2).left_out.recent_repeat == 0


def test_it_says_how_many_approved_topics_a_draft_has_already_used(topic):
    for n in range(3):
        drafted(topic(SLUGS[n], 90 + n))
    taken(topic("platform_tools", 80))
    drafted(topic("platform_tools", 85, status=Topic.Status.NEW))  # not a candidate: not approved
    topic("shipping_logistics", 10)

    assert select_topics(size=8).left_out == LeftOut(already_drafted=4)


def test_it_says_how_many_near_duplicates_of_a_chosen_topic_it_passed_over(topic):
    topic("shipping_logistics", 90, title="USPS announces 2027 Ground Advantage rate increase of 7.8%")
    topic("shipping_logistics", 85,
          title="USPS Ground Advantage rates going up 7.8% in January 2027 - what this means for small shippers")
    topic("shipping_logistics", 20)

    selection = select_topics(size=2)

    assert [t.score for t in selection.topics] == [90, 20]
    assert selection.left_out == LeftOut(near_duplicate=1)


def test_it_says_which_hand_picked_topics_are_not_approved_or_already_drafted(topic):
    fine = topic("shipping_logistics", 50)
    unreviewed = topic("pricing_margins", 40, status=Topic.Status.NEW)
    rejected = topic("ads_marketing", 30, status=Topic.Status.REJECTED)
    used = topic("platform_tools", 20)
    drafted(used)

    selection = select_topics(size=8, topic_ids=[fine.pk, unreviewed.pk, rejected.pk, used.pk])

    assert [t.pk for t in selection.topics] == [fine.pk]
    assert selection.left_out == LeftOut(not_approved=2, already_drafted=1)
    assert selection.left_out.describe() == "3 left out: 1 already drafted, 2 not approved"


def test_it_leaves_nothing_out_of_a_fresh_pool(topic):
    for slug in SLUGS:
        topic(slug, 10)

    left_out = select_topics(size=8).left_out

    assert left_out.total == 0
    assert left_out.describe() == "No candidate was left out."


def test_it_reads_only_topics(topic):
    for slug in SLUGS:
        topic(slug, 10)

    with CaptureQueriesContext(connection) as queries:
        select_topics(size=8)

    assert queries.captured_queries
    assert not [q["sql"] for q in queries.captured_queries if "batches_" in q["sql"]]


def corpus_of_titles() -> list[str]:
    """The sample topics, each also retold the ways sources retell a story, and the test suite's repeats."""
    import json
    from pathlib import Path

    import topics

    sample = Path(topics.__file__).parent / "sample_data" / "sample_topics.json"
    titles = [row["title"] for row in json.loads(sample.read_text())]
    retold = [variant for title in titles for variant in (
        f"{title} - how are you handling it?", " ".join(reversed(title.split())), f"Report: {title.lower()}",
        " ".join(title.split()[:3]),
    )]
    return titles + retold + [title for row in REPEATS for title in row[2:]]


def test_the_fast_check_for_recent_stories_agrees_with_comparing_each_title():
    corpus = corpus_of_titles()
    recent, candidates = corpus[::3], corpus[1::3] + corpus[2::3]

    fast = [RecentStories(recent).repeated_by(title) for title in candidates]
    slow = [any(is_near_duplicate(title, other) for other in recent) for title in candidates]

    assert fast == slow
    assert 0 < sum(fast) < len(fast)  # the corpus has repeats and stories that are not


def test_the_candidates_for_the_full_check_include_every_title_either_score_would_let_through():
    corpus = corpus_of_titles()
    # Titles with a word twice, and two made of the same words: the distinct-word and sorted-word forms differ.
    corpus += ["Tariff tariff news for sellers today", "Sellers today news for tariff", "news news news"]
    recent = RecentStories(corpus[::2])

    for title in corpus[1::2] + corpus[::7]:
        query = normalize_title(title)
        if not query:
            continue
        either = {index for index, other in enumerate(recent.normalized)
                  if max(fuzz.token_set_ratio(query, other), fuzz.token_sort_ratio(query, other))
                  >= NEAR_DUPLICATE_THRESHOLD}
        assert either <= set(recent.candidates(query)), title


def test_the_topic_list_and_selection_find_the_same_repeats():
    corpus = corpus_of_titles()
    recent = RecentStories(corpus[::3])

    for title in corpus[1::3]:
        index = recent.repeated(title)
        assert (index is not None) == recent.repeated_by(title)
        if index is not None:  # the first recent title, in order, that it repeats
            assert index == next(i for i, other in enumerate(recent.titles) if is_near_duplicate(title, other))


def explain(sql: str) -> str:
    """The plan the database would use for `sql`. On PostgreSQL, scanning the whole table and sorting are
    discouraged, as they are on a big one: what remains shows whether an index gives the rows in order."""
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_sort = off")
            cursor.execute("EXPLAIN " + sql)
            return "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


@pytest.mark.parametrize("include_new", [False, True])
def test_each_category_head_is_read_in_order_from_the_selection_index(topic, include_new):
    for n, slug in enumerate(SLUGS):
        topic(slug, n, published_at=datetime(2026, 11, 1, tzinfo=timezone.utc) if n % 2 else None)

    with CaptureQueriesContext(connection) as queries:
        select_topics(size=8, include_new=include_new)

    heads = [q["sql"] for q in queries.captured_queries if '"usage" = \'unused\'' in q["sql"]]
    arms = len(SLUGS) * (2 if include_new else 1)  # one per (category, status)
    # One UNION ALL query on PostgreSQL (one round trip); one query per head on SQLite, where a query costs none.
    assert len(heads) == (1 if connection.vendor == "postgresql" else arms)
    assert sum(sql.count('"usage" = \'unused\'') for sql in heads) == arms
    plans = [explain(sql) for sql in heads]
    assert sum(plan.count("topic_selection_head") for plan in plans) == arms, plans  # every arm by the index
    assert not any("Sort" in plan or "TEMP B-TREE" in plan for plan in plans), plans  # read in order, no sorting


def test_used_topics_are_read_through_their_own_small_indexes(topic):
    drafted(topic("shipping_logistics", 5))

    with CaptureQueriesContext(connection) as queries:
        select_topics(size=8)

    used = [q["sql"] for q in queries.captured_queries if "'taken'" in q["sql"] or "'drafted'" in q["sql"]]
    # Recent titles and the drafted count, each per used state: two UNION ALL queries on PostgreSQL, four on SQLite.
    assert len(used) == (2 if connection.vendor == "postgresql" else 4)
    for sql in used:
        plan = explain(sql)
        for state, index in (("'taken'", "topic_taken_at"), ("'drafted'", "topic_drafted_at")):
            assert (state in sql) == (index in plan), plan
