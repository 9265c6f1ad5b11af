"""What a call costs: usage priced bucket by bucket against the price table. Money rounding happens here."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.utils import timezone

from .models import ModelPrice

MONEY_QUANTUM = Decimal("0.000001")
MILLION = Decimal(1_000_000)


class PriceMissing(Exception):
    """No price is known for a model: no call may be made with it."""


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as the Messages API reports them (cached tokens are not in input_tokens)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @classmethod
    def from_api(cls, usage) -> Usage:
        """Build from an SDK `Usage` object (or a dict of the same shape)."""
        get = usage.get if isinstance(usage, dict) else lambda k, d=None: getattr(usage, k, d)
        creation = get("cache_creation") or {}
        one_hour = (creation.get if isinstance(creation, dict) else lambda k, d=None: getattr(creation, k, d))(
            "ephemeral_1h_input_tokens", 0
        ) or 0
        return cls(
            input_tokens=get("input_tokens", 0) or 0,
            output_tokens=get("output_tokens", 0) or 0,
            cache_write_tokens=(get("cache_creation_input_tokens", 0) or 0) - one_hour,
            cache_read_tokens=get("cache_read_input_tokens", 0) or 0,
            cache_write_1h_tokens=one_hour,
        )


def to_money(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def to_money_up(amount: Decimal) -> Decimal:
    """Round up: used for reservations, which must never be below what the call can cost."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_CEILING)


def price_for(model: str, *, on: datetime.date | None = None) -> ModelPrice:
    """The price of `model` in force on `on` (today by default)."""
    on = on or timezone.localdate()
    price = ModelPrice.objects.filter(model=model, effective_date__lte=on).order_by("-effective_date").first()
    if price is None:
        raise PriceMissing(
            f"No price is known for model {model!r}: add one under Batches and spend › Model prices "
            "before making calls with it."
        )
    return price


def cost_of(*, usage: Usage, price: ModelPrice, batch_api: bool = False) -> Decimal:
    """The actual cost of a call with `usage`, each token bucket at its own price."""
    raw = (
        usage.input_tokens * price.input_per_mtok
        + usage.output_tokens * price.output_per_mtok
        + usage.cache_write_tokens * price.cache_write_per_mtok
        + usage.cache_write_1h_tokens * price.cache_write_1h_per_mtok
        + usage.cache_read_tokens * price.cache_read_per_mtok
    ) / MILLION
    if batch_api:
        raw *= 1 - price.batch_discount
    return to_money(raw)


def worst_case_cost(*, input_tokens: int, max_tokens: int, price: ModelPrice, batch_api: bool = False) -> Decimal:
    """The most a call with this many input tokens and this `max_tokens` can cost.

    Every input token is priced at the dearest input bucket (a cache write costs more than plain input; the 1-hour
    write is the dearest of all), so however the API splits the prompt between buckets the actual cost cannot
    exceed this. `batch_api`: a Message Batches request, every bucket at the batch discount.
    """
    dearest_input = max(price.input_per_mtok, price.cache_write_per_mtok, price.cache_write_1h_per_mtok)
    raw = (input_tokens * dearest_input + max_tokens * price.output_per_mtok) / MILLION
    if batch_api:
        raw *= 1 - price.batch_discount
    return to_money_up(raw)
