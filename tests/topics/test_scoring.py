from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from topics import scoring
from topics.scoring import (
    COVERAGE_BOOST,
    HALF_LIFE_HOURS,
    REFERENCE,
    coverage_boost,
    engagement_value,
    freshness,
    normalised_engagement,
    score,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
README = Path(__file__).resolve().parents[2] / "README.md"
# The same raw number in each source's own units, and the engagement that counts as the top of each source.
RAW = {
    "reddit": lambda n: {"score": n},
    "tubelab": lambda n: {"views": n},
    "perplexity": lambda n: {"citations": n},
    "apify": lambda n: {"likes": n},
}


def hours_ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


# --- engagement, normalised per source ---------------------------------------------------------------------


def test_reddit_engagement_counts_comments_twice() -> None:
    assert engagement_value(source="reddit", engagement={"score": 100, "comments": 30}) == 160


def test_youtube_engagement_is_views_times_the_outlier_factor() -> None:
    assert engagement_value(source="tubelab", engagement={"views": 10_000, "outlier": 7.5}) == 75_000


def test_an_outlier_factor_below_one_does_not_shrink_youtube_views() -> None:
    assert engagement_value(source="tubelab", engagement={"views": 10_000, "outlier": 0.4}) == 10_000


def test_perplexity_engagement_is_the_number_of_citations() -> None:
    assert engagement_value(source="perplexity", engagement={"citations": 4}) == 4


def test_apify_engagement_is_likes_comments_and_shares_else_views() -> None:
    assert engagement_value(source="apify", engagement={"likes": 100, "comments": 20, "shares": 5}) == 125
    assert engagement_value(source="apify", engagement={"views": 9_000}) == 9_000


def test_the_reference_engagement_of_every_source_normalises_to_one() -> None:
    for source, reference in REFERENCE.items():
        assert normalised_engagement(source=source, engagement=RAW[source](reference)) == pytest.approx(1.0)


def test_a_reddit_score_and_a_youtube_view_count_are_not_compared_as_raw_numbers() -> None:
    upvotes = normalised_engagement(source="reddit", engagement={"score": 1_000})
    views = normalised_engagement(source="tubelab", engagement={"views": 1_000})

    assert upvotes > views + 0.3


def test_the_same_share_of_each_sources_reference_gives_the_same_normalised_engagement() -> None:
    # ln(1 + e) / ln(1 + reference): the square root of each reference sits about half-way on every scale.
    halves = [
        normalised_engagement(source=source, engagement=RAW[source](reference**0.5))
        for source, reference in REFERENCE.items()
    ]

    assert max(halves) - min(halves) < 0.1


@pytest.mark.parametrize("source", sorted(REFERENCE))
def test_more_engagement_never_lowers_the_normalised_engagement(source: str) -> None:
    levels = [0, 1, 2, 5, 10, 50, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000]

    values = [normalised_engagement(source=source, engagement=RAW[source](n)) for n in levels]

    assert values == sorted(values)
    assert len(set(values)) > 3


@pytest.mark.parametrize("source", sorted(REFERENCE))
def test_normalised_engagement_is_capped_at_one_beyond_the_reference(source: str) -> None:
    assert normalised_engagement(source=source, engagement=RAW[source](REFERENCE[source] * 1_000)) == 1.0


def test_no_engagement_normalises_to_zero() -> None:
    assert normalised_engagement(source="reddit", engagement={}) == 0.0


def test_negative_engagement_normalises_to_zero() -> None:
    assert normalised_engagement(source="reddit", engagement={"score": -250, "comments": 3}) == 0.0


def test_an_unknown_source_is_normalised_against_the_default_reference() -> None:
    value = normalised_engagement(source="newsletter-import", engagement={"score": scoring.DEFAULT_REFERENCE})

    assert value == pytest.approx(1.0)


# --- freshness --------------------------------------------------------------------------------------------


def test_a_story_published_now_is_fully_fresh() -> None:
    assert freshness(published_at=NOW, now=NOW) == 1.0


def test_freshness_halves_every_half_life() -> None:
    assert freshness(published_at=hours_ago(HALF_LIFE_HOURS), now=NOW) == pytest.approx(0.5)
    assert freshness(published_at=hours_ago(2 * HALF_LIFE_HOURS), now=NOW) == pytest.approx(0.25)
    assert freshness(published_at=hours_ago(3 * HALF_LIFE_HOURS), now=NOW) == pytest.approx(0.125)


def test_freshness_decays_smoothly_between_half_lives() -> None:
    assert freshness(published_at=hours_ago(HALF_LIFE_HOURS / 2), now=NOW) == pytest.approx(2**-0.5)


def test_a_date_in_the_future_counts_as_published_now() -> None:
    assert freshness(published_at=NOW + timedelta(hours=30), now=NOW) == 1.0


def test_an_unknown_publication_date_counts_as_one_half_life_old() -> None:
    assert freshness(published_at=None, now=NOW) == 0.5


# --- coverage ---------------------------------------------------------------------------------------------


def test_a_story_from_one_source_gets_no_coverage_boost() -> None:
    assert coverage_boost(1) == 1.0


def test_each_further_source_adds_the_coverage_boost() -> None:
    assert coverage_boost(2) == pytest.approx(1 + COVERAGE_BOOST)
    assert coverage_boost(3) == pytest.approx(1 + 2 * COVERAGE_BOOST)
    assert coverage_boost(4) == pytest.approx(1 + 3 * COVERAGE_BOOST)


def test_a_story_with_no_recorded_source_gets_no_coverage_boost() -> None:
    assert coverage_boost(0) == 1.0


# --- the score --------------------------------------------------------------------------------------------


def test_the_score_is_100_times_engagement_freshness_and_coverage() -> None:
    value = score(normalised=0.8, published_at=hours_ago(HALF_LIFE_HOURS), source_count=3, now=NOW)

    assert value == pytest.approx(100 * 0.8 * 0.5 * (1 + 2 * COVERAGE_BOOST), abs=0.005)


def test_the_score_is_rounded_to_two_decimals() -> None:
    value = score(normalised=0.123456, published_at=NOW, source_count=1, now=NOW)

    assert value == 12.35


def test_a_fresh_top_story_from_one_source_scores_100() -> None:
    assert score(normalised=1.0, published_at=NOW, source_count=1, now=NOW) == 100.0


def test_coverage_by_a_second_source_raises_the_score() -> None:
    alone = score(normalised=0.6, published_at=hours_ago(10), source_count=1, now=NOW)
    covered = score(normalised=0.6, published_at=hours_ago(10), source_count=2, now=NOW)

    assert covered == pytest.approx(alone * (1 + COVERAGE_BOOST), abs=0.01)


def test_an_older_story_scores_lower_than_the_same_story_fresh() -> None:
    fresh = score(normalised=0.6, published_at=hours_ago(1), source_count=1, now=NOW)
    older = score(normalised=0.6, published_at=hours_ago(100), source_count=1, now=NOW)

    assert older < fresh


def test_no_engagement_scores_zero() -> None:
    assert score(normalised=0.0, published_at=NOW, source_count=4, now=NOW) == 0.0


def test_the_readme_documents_the_formula_with_the_constants_the_code_uses() -> None:
    text = README.read_text(encoding="utf-8")
    formula = text[text.index("Scores (`topics/scoring.py`)") :][:1200]

    assert f"/ {HALF_LIFE_HOURS:g})" in formula
    assert f"(1 + {COVERAGE_BOOST:g} × (number of sources − 1))" in formula
    assert "ln(1 + e) / ln(1 + reference[source])" in formula
    listed = re.search(r"reference is what counts as top engagement there\s*\(([^)]*)\)", formula)
    assert listed is not None
    references = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\d|\d", listed.group(1))]
    assert references == [REFERENCE[s] for s in ("reddit", "tubelab", "perplexity", "apify")]
