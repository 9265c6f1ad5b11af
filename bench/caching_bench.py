"""Caching figures: the input cost per newsletter of a batch of 8, with the house style served from the prompt
cache and without (the fake API then never caches: its minimum cacheable prompt is set out of reach)."""
from __future__ import annotations

import os
import sys
from decimal import Decimal
from pathlib import Path

from bench.common import setup_django
from bench.fresh import fresh_database, preferred_vendor, verdict
from bench.parallel_bench import new_batch

ROOT = Path(__file__).resolve().parent.parent
SIZE = 8
NEVER_CACHES = 10**9


def run_batch_against(fake) -> dict[str, Decimal | int]:
    """Draft a batch of SIZE in this process against `fake`; its input tokens and cost, per newsletter."""
    from django.test import override_settings

    from batches import running
    from batches.models import CostLedgerEntry
    from batches.pricing import price_for

    with override_settings(ANTHROPIC_BASE_URL=fake.base_url, ANTHROPIC_API_KEY="bench-key-not-a-secret"):
        batch = running.run_inline(batch=new_batch(SIZE))
    assert batch.status == "done", (batch.status, batch.status_reason)
    price = price_for(batch.model)
    entries = list(CostLedgerEntry.objects.filter(batch=batch))
    tokens = {
        "input": sum(e.input_tokens for e in entries),
        "cache write": sum(e.cache_write_tokens for e in entries),
        "cache read": sum(e.cache_read_tokens for e in entries),
    }
    input_cost = (
        tokens["input"] * price.input_per_mtok + tokens["cache write"] * price.cache_write_per_mtok
        + tokens["cache read"] * price.cache_read_per_mtok
    ) / 1_000_000
    return {
        **{name: count // len(entries) for name, count in tokens.items()},
        "input cost": (input_cost / len(entries)).quantize(Decimal("0.000001")),
        "total cost": (sum(e.amount_usd for e in entries) / len(entries)).quantize(Decimal("0.000001")),
        "model": batch.model,
    }


def describe(label: str, figures: dict) -> str:
    return (f"  {label}: input ${figures['input cost']} per newsletter (of ${figures['total cost']} in all); "
            f"tokens per newsletter: {figures['input']} input, {figures['cache write']} cache write, "
            f"{figures['cache read']} cache read")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_DEBUG", "1")
    with fresh_database(vendor=preferred_vendor(), purpose="caching") as url:
        setup_django(database_url=url)
        measure()


def measure() -> None:
    from django.conf import settings

    from batches.claude_standin import FakeAnthropicServer

    vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    with FakeAnthropicServer() as fake:
        cached = run_batch_against(fake)
    with FakeAnthropicServer(min_cacheable_tokens=NEVER_CACHES) as fake:
        uncached = run_batch_against(fake)
    saving = 1 - cached["input cost"] / uncached["input cost"]
    print(f"caching bench on {vendor} (a fresh database): a batch of {SIZE} with {cached['model']}")
    print(describe("with prompt caching", cached))
    print(describe("without prompt caching", uncached))
    print(f"  prompt caching saves {saving:.0%} of the input cost per newsletter "
          f"(target: the cached prefix makes every newsletter after the first cheaper: {verdict(saving > 0)})")


if __name__ == "__main__":
    main()
