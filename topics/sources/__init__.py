"""Discovery sources: one module per outside service, all behind the small interface in `base`.

sources = build_sources(settings)            # every known source, configured or not
for source in sources:
    if source.is_configured():
        candidates = source.fetch(limit=50, meter=meter)
"""

from __future__ import annotations

from typing import Any

from topics.sources.apify import ApifySource
from topics.sources.base import (
    BudgetRefused,
    Candidate,
    NullMeter,
    Source,
    SourceError,
    SpendHold,
    SpendMeter,
)
from topics.sources.perplexity import PerplexitySource
from topics.sources.reddit import RedditSource
from topics.sources.tubelab import TubeLabSource

# Name → class; the order is the order discovery runs them in (free first).
SOURCES: dict[str, type] = {
    RedditSource.name: RedditSource,
    PerplexitySource.name: PerplexitySource,
    TubeLabSource.name: TubeLabSource,
    ApifySource.name: ApifySource,
}


def build_sources(settings: Any, names: list[str] | None = None) -> list[Source]:
    """The sources named (all of them by default), each built from settings; configured or not.

    Raises ValueError for an unknown name, so a typo in a command line or a setting is not silently ignored.
    """
    wanted = list(SOURCES) if names is None else names
    unknown = [name for name in wanted if name not in SOURCES]
    if unknown:
        raise ValueError(f"Unknown source(s): {', '.join(unknown)}. Known: {', '.join(SOURCES)}")
    return [SOURCES[name].from_settings(settings) for name in wanted]


__all__ = [
    "SOURCES",
    "ApifySource",
    "BudgetRefused",
    "Candidate",
    "NullMeter",
    "PerplexitySource",
    "RedditSource",
    "Source",
    "SourceError",
    "SpendHold",
    "SpendMeter",
    "TubeLabSource",
    "build_sources",
]
