"""Issue 3 figures: one discovery run of 2,000 candidates from four sources, 30% of them near-duplicates of another
source's story, must finish in under 10 s and create no duplicate topic when run a second time.

The candidates are served by in-memory sources standing in for Reddit, Perplexity, TubeLab and Apify, so the figure
is discovery's own work (normalise, de-duplicate, score, categorise, store), not the network's.

It runs in a database of its own (var/discovery_bench.sqlite3, recreated each time; DISCOVERY_BENCH_DATABASE_URL
for another one, whose topics it deletes first), never in BENCH_DATABASE_URL's, whose 100,000 selection topics would
turn this into a different measurement.
"""
from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from unittest import mock

from bench.common import ROOT, setup_django

CANDIDATES = 2_000
NEAR_DUPLICATE_SHARE = 0.3
TARGET_SECONDS = 10.0
SOURCES = ("reddit", "perplexity", "tubelab", "apify")
# One e-commerce word per headline, so categorisation has something to find.
BEATS = ("shipping", "tariff", "checkout", "ads", "inventory", "loyalty", "supplier", "shopify", "fedex", "margin",
         "upsell", "restock", "klaviyo", "alibaba", "etsy", "warehouse")
PARAPHRASES = ("tail", "reorder", "question", "report")


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    """Made-up words: random headlines built from them share almost nothing, as unrelated stories do."""
    consonants, vowels = "bdfgklmnprtvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(2, 3)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def paraphrase(title: str, kind: str, rng: random.Random) -> str:
    """The same headline as another source would word it (topics.dedupe.is_near_duplicate recognises each)."""
    if kind == "tail":
        return f"{title} - thoughts?"
    if kind == "reorder":
        words = title.split()
        rng.shuffle(words)
        return " ".join(words)
    if kind == "question":
        return f"Anyone else seeing {title.lower()}?"
    return f"Report: {title}"


def make_candidates(count: int = CANDIDATES, *, near_duplicate_share: float = NEAR_DUPLICATE_SHARE, seed: int = 3):
    """`count` candidates spread over the four sources; `near_duplicate_share` of them retell another source's story.

    Returns (candidates, number of distinct stories). Every candidate has its own id and its own URL (with tracking
    parameters); the near-duplicates come from a different source than the story they retell, in random order.
    """
    from topics.sources import Candidate

    rng = random.Random(seed)
    duplicates = round(count * near_duplicate_share)
    stories = count - duplicates
    vocabulary = _vocabulary(rng, 4_000)
    now = datetime.now(UTC)
    serial = {name: 0 for name in SOURCES}

    def candidate(source: str, title: str) -> Candidate:
        serial[source] += 1
        n = serial[source]
        engagement = {
            "reddit": {"score": float(rng.randint(10, 3_000)), "comments": float(rng.randint(0, 400))},
            "perplexity": {"citations": float(rng.randint(1, 12))},
            "tubelab": {"views": float(rng.randint(5_000, 2_000_000)), "outlier": round(rng.uniform(2, 20), 1)},
            "apify": {"views": float(rng.randint(1_000, 900_000)), "likes": float(rng.randint(10, 60_000))},
        }[source]
        return Candidate(
            source=source,
            external_id=f"{source}-bench-{seed}-{n}",
            title=title,
            summary=f"Sellers are discussing {title.lower()}.",
            url=f"https://www.{source}.example.com/story/{n}?utm_source=newsletter&utm_medium=email",
            engagement=engagement,
            published_at=now - timedelta(minutes=rng.randint(0, 72 * 60)),
            raw={"n": n},
        )

    originals = []
    for n in range(stories):
        words = [BEATS[n % len(BEATS)], *rng.sample(vocabulary, 6)]
        title = " ".join(words).capitalize()
        originals.append(candidate(SOURCES[n % len(SOURCES)], title))
    retold = []
    for n, original in enumerate(rng.sample(originals, duplicates)):
        other = rng.choice([s for s in SOURCES if s != original.source])
        retold.append(candidate(other, paraphrase(original.title, PARAPHRASES[n % len(PARAPHRASES)], rng)))
    candidates = originals + retold
    rng.shuffle(candidates)
    return candidates, stories


@dataclass
class StaticSource:
    """A configured, free source that returns the candidates it was given (a stand-in for a real service)."""

    name: str
    candidates: Sequence
    paid: bool = False

    def is_configured(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{self.name}: {len(self.candidates)} prepared candidates"

    def fetch(self, *, limit: int, meter) -> list:
        return list(self.candidates)[:limit]


def discover(candidates: Sequence):
    """One `run_discovery` over these candidates, each served by its own source; returns the DiscoveryRun."""
    from topics.discovery import run_discovery

    sources = [StaticSource(name, [c for c in candidates if c.source == name]) for name in SOURCES]
    with mock.patch("topics.discovery.build_sources", lambda settings, names=None: sources):
        return run_discovery(limit=len(candidates))


def _database_url() -> str:
    url = os.environ.get("DISCOVERY_BENCH_DATABASE_URL")
    if url:
        return url
    path = ROOT / "var" / "discovery_bench.sqlite3"
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def main() -> int:
    setup_django(database_url=_database_url())
    from django.conf import settings

    from topics.models import DiscoveryRun, Topic

    # A dedicated database: start from no topics, so the figures are this run's alone.
    DiscoveryRun.objects.all().delete()
    Topic.objects.all().delete()
    candidates, stories = make_candidates()
    duplicates = len(candidates) - stories
    print(f"discovery bench on {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")

    started = time.perf_counter()
    first = discover(candidates)
    elapsed = time.perf_counter() - started
    after_first = Topic.objects.count()
    multi_source = sum(1 for sources in Topic.objects.values_list("sources", flat=True) if len(sources) > 1)

    started = time.perf_counter()
    second = discover(candidates)
    elapsed_again = time.perf_counter() - started
    after_second = Topic.objects.count()

    print(f"  {len(candidates):,} candidates from {len(SOURCES)} sources ({duplicates:,} near-duplicates of "
          f"{stories:,} stories): {elapsed:.2f} s (target < {TARGET_SECONDS:g} s)")
    print(f"  first run: {first.created:,} topics created, {first.merged:,} merged, {first.dropped:,} dropped; "
          f"{multi_source:,} topics record more than one source")
    print(f"  second identical run: {elapsed_again:.2f} s, {second.created:,} created, {second.merged:,} merged, "
          f"{second.dropped:,} dropped; topics {after_first:,} -> {after_second:,}"
          f" ({'unchanged' if after_first == after_second else 'CHANGED'})")
    ok = elapsed < TARGET_SECONDS and after_first == stories and after_second == after_first
    if not ok:
        print("  FAILED: expected one topic per story, under the time target, and none added by the second run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
