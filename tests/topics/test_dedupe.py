from __future__ import annotations

import pytest

from topics.dedupe import canonical_url, is_near_duplicate

SAME_STORY = [
    (
        "USPS announces 2027 Ground Advantage rate increase of 7.8%",
        "USPS Ground Advantage rates going up 7.8% in January 2027 - what this means for small shippers",
    ),
    (
        "US raises tariffs on Chinese consumer goods to 35%, effective December 1",
        "35% tariff on Chinese goods starts Dec 1 - how are you protecting your margins?",
    ),
    (
        "Meta ads CPM spiked 40% this week - anyone else seeing this before Black Friday?",
        "Meta ads CPMs spike 40% ahead of Black Friday, advertisers report",
    ),
    (
        "Amazon lowers FBA capacity limits for Q1 2027, sellers scramble to adjust inventory",
        "FBA capacity limits cut again for Q1 - how are you managing inventory and reorders?",
    ),
    (
        "Checkout benchmark report: cart abandonment averaged 71.2% across 3,400 stores",
        "Checkout benchmark: 71% cart abandonment across 3,400 stores - surprise costs still the #1 reason",
    ),
]

DIFFERENT_STORIES = [
    # Alike in shape, but about different platforms or different figures.
    ("Meta ads CPM spiked 40% this week", "Google Ads CPC spiked 40% this week"),
    (
        "USPS announces 2027 Ground Advantage rate increase of 7.8%",
        "USPS announces 2027 Priority Mail rate increase of 5.9%",
    ),
    (
        "USPS announces 2027 Ground Advantage rate increase of 7.8%",
        "UPS peak season surcharges now hit residential delivery: what changes on November 2",
    ),
    (
        "Etsy policy change: new production partner rules take effect January 2027",
        "Etsy policy update: AI-generated listing images now require disclosure",
    ),
    (
        "Subscription churn dropped from 11% to 6.5% after we added skip-a-month",
        "Subscription box churn: why month 3 is when most subscribers cancel",
    ),
    (
        "Amazon FBA fees for 2027: referral fee cuts and the new low-price tier explained",
        "Amazon lowers FBA capacity limits for Q1 2027, sellers scramble to adjust inventory",
    ),
    ("Dead stock?", "Dead stock liquidation: 5 marketplaces that buy overstock in bulk"),
]


@pytest.mark.parametrize(("a", "b"), SAME_STORY)
def test_it_flags_the_same_story_told_by_two_sources(a, b):
    assert is_near_duplicate(a, b)


@pytest.mark.parametrize(("a", "b"), SAME_STORY)
def test_it_flags_near_duplicates_whichever_title_comes_first(a, b):
    assert is_near_duplicate(b, a)


@pytest.mark.parametrize(("a", "b"), DIFFERENT_STORIES)
def test_it_does_not_flag_clearly_different_stories(a, b):
    assert not is_near_duplicate(a, b)


def test_it_drops_utm_parameters_from_urls():
    assert canonical_url("https://example.com/post?utm_source=news&utm_medium=email&utm_campaign=q4") == (
        "https://example.com/post"
    )


def test_it_keeps_query_parameters_that_are_not_tracking():
    assert canonical_url("https://example.com/post?id=42&utm_source=news") == "https://example.com/post?id=42"


def test_it_drops_the_fragment_from_urls():
    assert canonical_url("https://example.com/post#comments") == "https://example.com/post"


def test_it_gives_one_url_for_trivially_different_spellings_of_a_link():
    spellings = [
        "http://www.Example.com/post/",
        "https://example.com/post?fbclid=abc123",
        "HTTPS://EXAMPLE.COM/post#top",
    ]

    assert {canonical_url(u) for u in spellings} == {"https://example.com/post"}


def test_it_keeps_a_non_default_port():
    assert canonical_url("https://example.com:8443/post") == "https://example.com:8443/post"


def test_it_leaves_an_empty_url_empty():
    assert canonical_url("") == ""
