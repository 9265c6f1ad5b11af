"""Topic scores from engagement: normalised per source, decayed by age, boosted by multi-source coverage.

    score = 100 × min(1, log(1 + e) / log(1 + reference[source]))   engagement, comparable across sources
          × 0.5 ** (age_hours / HALF_LIFE_HOURS)                     freshness
          × (1 + COVERAGE_BOOST × (sources − 1))                     several sources told the same story

`e` is the source's own engagement figure (Reddit: score + 2 × comments; YouTube via TubeLab: views, times the
outlier factor when known; Perplexity: number of citations; Apify: likes + comments + shares, else views). The
reference is the engagement that counts as "as high as it gets" for that source. Logarithms because engagement is
heavy-tailed: a 10,000-upvote post is not a hundred times the story a 100-upvote post is.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from django.utils import timezone

HALF_LIFE_HOURS = 96.0
COVERAGE_BOOST = 0.25
REFERENCE = {"reddit": 2_000.0, "tubelab": 2_000_000.0, "perplexity": 12.0, "apify": 50_000.0}
DEFAULT_REFERENCE = 1_000.0


def engagement_value(*, source: str, engagement: Mapping[str, float]) -> float:
    """One engagement figure for a candidate, in its source's own units."""
    get = lambda key: float(engagement.get(key) or 0)  # noqa: E731
    if source == "reddit":
        return get("score") + 2 * get("comments")
    if source == "tubelab":
        return get("views") * max(1.0, get("outlier"))
    if source == "perplexity":
        return get("citations")
    likes = get("likes") + get("comments") + get("shares")
    return likes or get("views") or get("score")


def normalised_engagement(*, source: str, engagement: Mapping[str, float]) -> float:
    """Engagement on a 0-1 scale that means the same for every source."""
    value = max(0.0, engagement_value(source=source, engagement=engagement))
    reference = REFERENCE.get(source, DEFAULT_REFERENCE)
    return min(1.0, math.log1p(value) / math.log1p(reference))


def freshness(*, published_at: datetime | None, now: datetime | None = None) -> float:
    """1 for a story published now, halving every HALF_LIFE_HOURS; unknown dates count as a half-life old."""
    if published_at is None:
        return 0.5
    age_hours = max(0.0, ((now or timezone.now()) - published_at).total_seconds() / 3600)
    return 0.5 ** (age_hours / HALF_LIFE_HOURS)


def coverage_boost(source_count: int) -> float:
    return 1 + COVERAGE_BOOST * max(0, source_count - 1)


def score(*, normalised: float, published_at: datetime | None, source_count: int, now: datetime | None = None) -> float:
    return round(100 * normalised * freshness(published_at=published_at, now=now) * coverage_boost(source_count), 2)
