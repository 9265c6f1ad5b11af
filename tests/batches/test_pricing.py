"""What a call costs: every token bucket at its own price, in exact Decimal dollars."""
from __future__ import annotations

import datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest

from batches.models import ModelPrice
from batches.pricing import PriceMissing, Usage, cost_of, price_for, worst_case_cost

pytestmark = pytest.mark.django_db

MILLION = 1_000_000
# The published prices seeded by batches/migrations/0002_seed_prices.py, per million tokens:
# input, output, cache write (5 min), cache write (1 h), cache read.
LIST_PRICES = {
    "claude-sonnet-4-6": ("3", "15", "3.75", "6", "0.30"),
    "claude-haiku-4-5": ("1", "5", "1.25", "2", "0.10"),
}
BUCKETS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_write_1h_tokens", "cache_read_tokens")


@pytest.mark.parametrize("model", list(LIST_PRICES))
@pytest.mark.parametrize("bucket", range(len(BUCKETS)))
def test_a_million_tokens_of_one_bucket_cost_exactly_its_list_price(model, bucket):
    usage = Usage(**{BUCKETS[bucket]: MILLION})

    assert cost_of(usage=usage, price=price_for(model)) == Decimal(LIST_PRICES[model][bucket])


@pytest.mark.parametrize(("model", "total"), [("claude-sonnet-4-6", "28.05"), ("claude-haiku-4-5", "9.35")])
def test_a_million_tokens_of_every_bucket_cost_the_sum_of_the_list_prices(model, total):
    usage = Usage(**{bucket: MILLION for bucket in BUCKETS})

    assert cost_of(usage=usage, price=price_for(model)) == Decimal(total)


def test_costs_are_decimals_with_six_places():
    cost = cost_of(usage=Usage(input_tokens=1234, output_tokens=567), price=price_for("claude-sonnet-4-6"))

    assert isinstance(cost, Decimal)
    assert cost == Decimal("0.012207")
    assert cost.as_tuple().exponent == -6


def test_many_small_costs_add_up_exactly_with_no_float_drift():
    price = price_for("claude-haiku-4-5")
    # 0.000001 + 0.000005 + 0.0000001 dollars each: floats drift on such sums, Decimal does not.
    usage = Usage(input_tokens=1, output_tokens=1, cache_read_tokens=1)

    total = sum((cost_of(usage=usage, price=price) for _ in range(100_000)), Decimal(0))

    assert cost_of(usage=usage, price=price) == Decimal("0.000006")
    assert total == Decimal("0.6")


def test_the_sum_of_many_varied_costs_equals_the_decimal_arithmetic_by_hand():
    price = price_for("claude-sonnet-4-6")
    usages = [Usage(input_tokens=n, output_tokens=3 * n + 1, cache_write_tokens=n // 2, cache_read_tokens=7 * n)
              for n in range(1, 2001)]

    total = sum((cost_of(usage=u, price=price) for u in usages), Decimal(0))

    by_hand = sum(
        (
            (Decimal(u.input_tokens * 3 + u.output_tokens * 15) + u.cache_write_tokens * Decimal("3.75")
             + u.cache_read_tokens * Decimal("0.30")) / MILLION
        ).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        for u in usages
    )
    assert total == by_hand


def test_a_cost_is_rounded_half_up_to_the_micro_dollar():
    price = price_for("claude-haiku-5-5")  # input $0.10 per million tokens: $0.0000001 a token

    assert cost_of(usage=Usage(input_tokens=4), price=price) == Decimal("0.000000")
    assert cost_of(usage=Usage(input_tokens=5), price=price) == Decimal("0.000001")


def test_a_batch_api_call_costs_the_batch_price():
    usage = Usage(input_tokens=MILLION, output_tokens=MILLION)

    assert cost_of(usage=usage, price=price_for("claude-sonnet-4-6"), batch_api=True) == Decimal("9")


def test_the_worst_case_prices_every_input_token_at_the_dearest_input_bucket():
    price = price_for("claude-sonnet-4-6")

    worst = worst_case_cost(input_tokens=MILLION, max_tokens=MILLION, price=price)

    assert worst == Decimal("21")  # $6 (one-hour cache write) + $15 output


@pytest.mark.parametrize("model", list(LIST_PRICES))
def test_the_worst_case_covers_every_way_the_api_can_split_the_input(model):
    price = price_for(model)
    worst = worst_case_cost(input_tokens=3001, max_tokens=2048, price=price)

    for bucket in ("input_tokens", "cache_write_tokens", "cache_write_1h_tokens", "cache_read_tokens"):
        assert cost_of(usage=Usage(output_tokens=2048, **{bucket: 3001}), price=price) <= worst
    mixed = Usage(input_tokens=1000, cache_write_tokens=1000, cache_write_1h_tokens=1000, cache_read_tokens=1,
                  output_tokens=2048)
    assert cost_of(usage=mixed, price=price) <= worst


def test_the_batch_worst_case_is_the_one_hour_write_and_max_tokens_at_the_batch_discount():
    price = price_for("claude-sonnet-4-6")

    worst = worst_case_cost(input_tokens=MILLION, max_tokens=MILLION, price=price, batch_api=True)

    assert worst == Decimal("10.5")  # ($6 one-hour cache write + $15 output) at half price
    for bucket in ("input_tokens", "cache_write_tokens", "cache_write_1h_tokens", "cache_read_tokens"):
        assert cost_of(usage=Usage(output_tokens=MILLION, **{bucket: MILLION}), price=price, batch_api=True) <= worst


def test_the_worst_case_is_rounded_up_never_down():
    price = price_for("claude-haiku-5-5")  # output $0.50 per million tokens

    assert worst_case_cost(input_tokens=0, max_tokens=1, price=price) == Decimal("0.000001")


def test_usage_from_the_api_keeps_one_hour_cache_writes_in_their_own_bucket():
    usage = Usage.from_api(
        {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 40,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        }
    )

    assert usage == Usage(input_tokens=10, output_tokens=20, cache_write_tokens=100, cache_read_tokens=40,
                          cache_write_1h_tokens=200)


def test_usage_from_the_api_tolerates_missing_cache_fields():
    assert Usage.from_api({"input_tokens": 5, "output_tokens": 6}) == Usage(input_tokens=5, output_tokens=6)


def test_a_model_with_no_price_raises_price_missing():
    with pytest.raises(PriceMissing, match="claude-unknown-1"):
        price_for("claude-unknown-1")


def test_the_price_in_force_is_the_latest_one_effective_on_that_day():
    current = price_for("claude-haiku-4-5")
    ModelPrice.objects.create(
        model="claude-haiku-4-5", input_per_mtok=Decimal("0.5"), output_per_mtok=Decimal("2.5"),
        cache_write_per_mtok=Decimal("0.625"), cache_write_1h_per_mtok=Decimal("1"),
        cache_read_per_mtok=Decimal("0.05"), source="test", effective_date=current.effective_date
        + datetime.timedelta(days=30),
    )

    assert price_for("claude-haiku-4-5", on=current.effective_date).input_per_mtok == Decimal("1")
    later = current.effective_date + datetime.timedelta(days=31)
    assert price_for("claude-haiku-4-5", on=later).input_per_mtok == Decimal("0.5")
