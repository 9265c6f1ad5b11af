from __future__ import annotations

import random

import pytest

from bench.discovery_bench import PARAPHRASES, blocked_decisions, exhaustive_decisions, make_candidates, paraphrase
from topics.dedupe import canonical_url, is_near_duplicate, normalize_title, normalize_titles
from topics.models import Topic

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


@pytest.mark.parametrize("url", [
    "https://www.tiktok.com:99999/@dtc/video/1", "https://shop.example:abc/x", "http://[x",
])
def test_a_url_that_does_not_parse_is_its_own_canonical_form(url):
    assert canonical_url(f"  {url} ") == url


@pytest.mark.parametrize("url", [
    "http://example.com/" + "a" * 981,  # 1,000 characters; https makes it one more
    "https://example.com/?q=" + "\u00e9" * 300,  # percent-encoded, 1,823 characters
    "https://example.com:99999/" + "a" * 1200,  # does not parse
])
def test_a_canonical_url_always_fits_its_column(url):
    assert len(canonical_url(url)) == Topic._meta.get_field("canonical_url").max_length


# --- bulk normalisation and blocked matching (issue 12) ------------------------------------------------------

TRICKY_TITLES = [
    *[title for pair in SAME_STORY + DIFFERENT_STORIES for title in pair],
    "Tariffs, tariffs, tariffs!", "México: envíos más caros", "Почта России поднимает тарифы",
    "Shopify’s “new” checkout",
    "Sales sales sales - sales?", "Zoll: Zoll-Regeln ändern sich",
    "", "   ", "?", "Is it? yes - no", "U.S. sellers... 7.8%. BFCM!", "Ünïcödé café — straße: 3 ways to ship",
    "KELVIN \u212a and \u0130stanbul", "Tabs\tand\nnewlines - in titles? here", "a title with a \x00 separator in it",
    "Shipping - how are you handling it?", "FBA capacity",
]


def test_bulk_normalisation_gives_what_normalising_one_title_at_a_time_gives():
    assert normalize_titles(TRICKY_TITLES) == [normalize_title(t) for t in TRICKY_TITLES]


def test_bulk_normalisation_of_no_titles_is_empty():
    assert normalize_titles([]) == []


def test_bulk_normalisation_streams_every_titles_words_in_order_with_a_separator_between_titles():
    for titles in (TRICKY_TITLES, [t for t in TRICKY_TITLES if "\x00" not in t]):  # the one-by-one path, the bulk
        stream: list[str] = []

        norms = normalize_titles(titles, stream_into=stream)

        assert stream == " \x00 ".join(norms).split()
        assert "black" in stream and "friday" in stream  # "BFCM": an alias of two words is two words


def test_a_title_whose_alias_is_two_words_is_matched_and_breaks_nothing():
    stored = ["BFCM shipping delays hit sellers hard", "Tariff refunds for small importers explained"]
    incoming = ["Black Friday shipping delays hit sellers", "Klaviyo winback flow template ideas"]

    assert matched(stored=stored, incoming=incoming) == exhaustive(stored=stored, incoming=incoming) == [0, None]
    # "black" and "friday" are nowhere but in the alias: once a KeyError that stopped the whole discovery run.
    assert matched(stored=stored[:1], incoming=incoming[1:]) == [None]


def matched(*, stored: list[str], incoming: list[str]) -> list[int | None]:
    """What StoryMatcher decides for each incoming title: the story number it joins, None for a new story."""
    return blocked_decisions(stored, incoming)


def exhaustive(*, stored: list[str], incoming: list[str]) -> list[int | None]:
    """The same decided by comparing with every story (the reference kept in the benchmark)."""
    return exhaustive_decisions(stored, incoming)


def test_the_matcher_finds_each_same_story_pair_whichever_side_is_stored():
    for a, b in SAME_STORY:
        assert matched(stored=[a], incoming=[b]) == [0]
        assert matched(stored=[], incoming=[b, a]) == [None, 0]


def test_the_matcher_keeps_clearly_different_stories_apart():
    for a, b in DIFFERENT_STORIES:
        assert matched(stored=[a], incoming=[b]) == [None]


def test_a_title_contained_in_a_longer_one_is_found_however_rare_the_longer_ones_other_words():
    short = "Klaviyo winback flow template"
    long = "Klaviyo winback flow template zephyr quokka marzipan obsidian trellis"

    assert matched(stored=[long], incoming=[short]) == [0]
    assert matched(stored=[short], incoming=[long]) == [0]


SHORT_TOLD = "USPS Ground Advantage rate increase"
LONG_TOLD = ("USPS Ground Advantage rate increase hits small sellers hardest with surcharges on zones, "
             "dimensional weight, cubic pricing, padded envelopes and Pirate Ship labels")


@pytest.mark.parametrize(("stored", "incoming"), [
    ([LONG_TOLD], [SHORT_TOLD]), ([SHORT_TOLD], [LONG_TOLD]),
    ([], [LONG_TOLD, SHORT_TOLD]), ([], [SHORT_TOLD, LONG_TOLD]),
], ids=["long stored", "short stored", "long first in one run", "short first in one run"])
def test_a_title_held_whole_in_one_of_more_than_twelve_rarer_words_is_found(stored, incoming):
    # The long title's twelve rarest words are all its own: the short one's words are among its commonest.
    expected = [0] if stored else [None, 0]

    assert matched(stored=stored, incoming=incoming) == exhaustive(stored=stored, incoming=incoming) == expected


def test_a_title_repeating_one_word_is_that_word_once():
    assert normalize_title("Tariffs, tariffs, TARIFFS!") == "tariff"
    assert normalize_title("Shipping delays: shipping costs up") == "shipping delay cost up"
    assert not is_near_duplicate("Sales sales sales", "Amazon sales tax nexus rules")
    assert matched(stored=[], incoming=["Tariffs, tariffs, tariffs!", "Tariffs, tariffs, tariffs!"]) == [None, 0]


def test_two_longer_titles_sharing_only_one_word_are_different_stories():
    # One long shared word gives token_set_ratio 77 here; a reader sees two stories.
    assert not is_near_duplicate("Dropshipping dead in 2027?", "Dropshipping Q4 tips")
    assert matched(stored=[], incoming=["Dropshipping dead in 2027?", "Dropshipping Q4 tips"]) == exhaustive(
        stored=[], incoming=["Dropshipping dead in 2027?", "Dropshipping Q4 tips"]) == [None, None]


def test_letters_of_any_script_are_words():
    assert normalize_title("México: envíos más caros") == "méxico envío más caro"  # plurals stemmed as in English
    assert normalize_title("Почта России поднимает тарифы") == "почта россии поднимает тарифы"
    # the same story in Russian from two sources is one; two stories naming one brand in two scripts are two
    russian = "Почта России поднимает тарифы на доставку посылок"
    assert matched(stored=[russian], incoming=[russian, "Shopify 如何提高转化率"]) == [0, None]
    assert not is_near_duplicate("Shopify повышает комиссии для продавцов", "Shopify 如何提高转化率")


def test_curly_quotes_and_dashes_separate_words_as_their_ascii_forms_do():
    curly, straight = "Shopify’s “new” checkout — thoughts", 'Shopify\'s "new" checkout - thoughts'
    assert normalize_title(curly) == normalize_title(straight)


def test_short_titles_are_compared_whole_as_is_near_duplicate_does():
    stored = ["Dead stock liquidation: 5 marketplaces that buy overstock in bulk", "Dead stock"]

    assert matched(stored=stored, incoming=["Dead stock?", "Deadstock"]) == exhaustive(
        stored=stored, incoming=["Dead stock?", "Deadstock"]
    ) == [1, 1]


def test_of_two_equally_good_stories_the_earlier_one_is_chosen():
    stored = ["USPS Ground Advantage rates going up 7.8% in January",
              "USPS Ground Advantage rates going up 7.8% in Jan"]

    assert matched(stored=stored, incoming=["USPS ground advantage rates up 7.8% january - thoughts?"]) == [0]


def test_a_stored_story_wins_a_tie_with_a_story_new_in_this_run():
    stored = ["Meta ads CPM spiked 40% this week before Black Friday"]
    incoming = ["Meta ads CPMs spike 40% ahead of Black Friday", "Meta ads CPM spike 40% before Black Friday"]

    assert matched(stored=stored, incoming=incoming) == exhaustive(stored=stored, incoming=incoming)


def test_the_matcher_decides_as_exhaustive_comparison_does_on_a_generated_corpus():
    candidates, _ = make_candidates(600, near_duplicate_share=0.3, seed=21)
    titles = [c.title for c in candidates]
    stored, incoming = titles[:200], titles[200:] + [SAME_STORY[0][1], SAME_STORY[3][0], "FBA capacity"]

    assert matched(stored=stored, incoming=incoming) == exhaustive(stored=stored, incoming=incoming)


@pytest.mark.parametrize("pairs_per_stored", [0, 10**9], ids=["each stored title's pairs", "through the pairs' words"])
def test_the_matcher_decides_as_exhaustive_comparison_does_with_many_more_stored_stories_than_incoming(
    monkeypatch, pairs_per_stored
):
    # The stored side is narrowed to the stories holding both words of an incoming title's pair before any is
    # compared, one of two ways by how many pairs there are: what either leaves out must be what the comparison
    # would have rejected.
    monkeypatch.setattr("topics.dedupe._PAIRS_PER_STORED", pairs_per_stored)
    rng = random.Random(5)
    stories, _ = make_candidates(2_000, near_duplicate_share=0, seed=41)
    stored = [c.title for c in stories]
    fresh, _ = make_candidates(100, near_duplicate_share=0.2, seed=42)
    retold = [paraphrase(title, PARAPHRASES[n % len(PARAPHRASES)], rng) for n, title in
              enumerate(rng.sample(stored, 60))]
    incoming = [c.title for c in fresh] + retold + ["Dead stock?", "FBA capacity", ""]
    rng.shuffle(incoming)

    decisions = matched(stored=stored, incoming=incoming)

    assert decisions == exhaustive(stored=stored, incoming=incoming)
    assert sum(1 for d in decisions if d is not None and d < len(stored)) >= 60
